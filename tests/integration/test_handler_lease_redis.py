"""An after_store handler's lease and feed against a real Redis (redis_lease.py, redis_feed.py).

Each test uses a handler name of its own, so its keys are its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import redis.asyncio as redis_asyncio

from chime_actors.bus.codec import encode_publication, topic_for
from chime_actors.config import RedisConfig
from chime_actors.handlers.lease import Attempt, LeaseKeeper
from chime_actors.handlers.redis_feed import RedisFeed
from chime_actors.handlers.redis_lease import RedisLease, fence_key, lease_key
from chime_actors.records import ChannelEvent, ChimeMessage
from tests.integration.services import load_services
from tests.support.polling import until

pytestmark = pytest.mark.integration

WAIT_S = 15.0
TTL_MS = 1000


@pytest.fixture(scope="module")
def redis_config() -> RedisConfig:
    redis = load_services("redis")["redis"]
    return RedisConfig(host=redis["host"], port=int(redis["port"]), password=redis.get("password"))


def _client(config: RedisConfig) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(host=config.host, port=config.port, password=config.password)


def _name() -> str:
    return f"h-{uuid.uuid4().hex[:10]}"


def test_acquire_renew_release_and_no_stealing(redis_config: RedisConfig) -> None:
    name = _name()

    async def scenario() -> None:
        raw = _client(redis_config)
        lease = RedisLease(_client(redis_config), name)
        try:
            first = await lease.acquire("a", TTL_MS, 0)
            assert first.fence is not None and first.fence >= 1
            assert await raw.get(lease_key(name)) == b"a"
            assert 0 < await raw.pttl(lease_key(name)) <= TTL_MS
            # Another token is refused and told how long the lease still runs.
            other = await lease.acquire("b", TTL_MS, 0)
            assert other.fence is None and 0 < other.expires_in_s <= TTL_MS / 1000
            # Nor can it renew or release what it does not hold.
            assert await lease.renew("b", 60_000) is False
            assert await lease.release("b") is False
            assert await raw.get(lease_key(name)) == b"a"
            assert await raw.pttl(lease_key(name)) <= TTL_MS
            # The holder renews (to a longer ttl here, to see it took) ...
            assert await lease.renew("a", 60_000) is True
            assert await raw.pttl(lease_key(name)) > TTL_MS
            # ... takes its own lease again under a new fence ...
            again = await lease.acquire("a", TTL_MS, 0)
            assert again.fence == first.fence + 1
            # ... and releases it: the next token gets it at once.
            assert await lease.release("a") is True
            assert await raw.get(lease_key(name)) is None
            taken = await lease.acquire("b", TTL_MS, 0)
            assert taken.fence == first.fence + 2
        finally:
            await lease.close()
            await raw.delete(lease_key(name), fence_key(name))
            await raw.aclose()

    asyncio.run(scenario())


def test_an_expired_lease_goes_to_the_next_token_with_a_higher_fence(
    redis_config: RedisConfig,
) -> None:
    name = _name()

    async def scenario() -> None:
        raw = _client(redis_config)
        lease = RedisLease(_client(redis_config), name)
        try:
            first = await lease.acquire("a", 500, 0)
            assert first.fence is not None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while (attempt := await lease.acquire("b", TTL_MS, 0)).fence is None:
                assert loop.time() < deadline, "the lease never expired"
                await asyncio.sleep(max(0.01, attempt.expires_in_s))
            assert attempt.fence == first.fence + 1
            # The old holder renews too late: refused, the lease stays b's.
            assert await lease.renew("a", TTL_MS) is False
            assert await raw.get(lease_key(name)) == b"b"
        finally:
            await lease.close()
            await raw.delete(lease_key(name), fence_key(name))
            await raw.aclose()

    asyncio.run(scenario())


def test_the_fence_starts_above_the_floor_storage_knows(redis_config: RedisConfig) -> None:
    name = _name()

    async def scenario() -> None:
        raw = _client(redis_config)
        lease = RedisLease(_client(redis_config), name)
        try:
            # Redis lost the counter; storage holds fence 100 from before.
            assert (await lease.acquire("a", TTL_MS, 100)).fence == 101
            assert int(await raw.get(fence_key(name))) == 101
            assert (await lease.acquire("a", TTL_MS, 100)).fence == 102
        finally:
            await lease.close()
            await raw.delete(lease_key(name), fence_key(name))
            await raw.aclose()

    asyncio.run(scenario())


@dataclass
class Holder:
    """A ``LeaseHolder`` that notes its fences and whether it is handing over now."""

    fences: list[int] = field(default_factory=list)
    active: bool = False
    overlaps: list[str] = field(default_factory=list)
    peers: list[Holder] = field(default_factory=list)

    async def begin(self, fence: int) -> None:
        if any(peer.active for peer in self.peers):
            self.overlaps.append(f"began {fence} while another was active")
        self.fences.append(fence)
        self.active = True

    async def end(self) -> None:
        self.active = False


def test_two_keepers_on_one_redis_hold_in_turn(redis_config: RedisConfig) -> None:
    """One holds; the other takes over once the first dies (cancelled, not stopped)."""
    name = _name()

    async def scenario() -> None:
        raw = _client(redis_config)
        holders = [Holder(), Holder()]
        holders[0].peers, holders[1].peers = [holders[1]], [holders[0]]
        leases = [Counting(RedisLease(_client(redis_config), name)) for _ in holders]
        keepers = [
            LeaseKeeper(name, lease, holder, ttl_ms=TTL_MS)
            for lease, holder in zip(leases, holders, strict=True)
        ]
        try:
            keepers[0].start()
            await until(lambda: holders[0].active, WAIT_S, "the first keeper to hold")
            keepers[1].start()
            # Past several renewals of the first (each after a refused try of
            # the second), the second still stands by.
            await until(lambda: leases[0].renewals >= 4, WAIT_S, "renewals")
            assert leases[1].acquires >= 1 and holders[1].fences == []
            assert keepers[0].held and not keepers[1].held
            # The first dies: no release, no end.
            task = keepers[0]._task
            assert task is not None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            holders[0].active = False  # dead: it hands nothing over any more
            await until(lambda: holders[1].active, WAIT_S, "the second keeper to take over")
            assert holders[1].fences == [holders[0].fences[-1] + 1]
            await keepers[1].stop()
            assert await raw.get(lease_key(name)) is None  # released on a clean stop
            assert holders[0].overlaps == holders[1].overlaps == []
        finally:
            for lease in leases:
                await lease.inner.close()
            await raw.delete(lease_key(name), fence_key(name))
            await raw.aclose()

    asyncio.run(scenario())


@dataclass
class Counting:
    """A ``Lease`` that counts the calls it passes on."""

    inner: RedisLease
    acquires: int = 0
    renewals: int = 0

    async def acquire(self, token: str, ttl_ms: int, floor: int) -> Attempt:
        self.acquires += 1
        return await self.inner.acquire(token, ttl_ms, floor)

    async def renew(self, token: str, ttl_ms: int) -> bool:
        self.renewals += 1
        return await self.inner.renew(token, ttl_ms)

    async def release(self, token: str) -> bool:
        return await self.inner.release(token)


def _message(channel: str, seq: int) -> ChimeMessage:
    return ChimeMessage(channel, f"{seq:016d}", "alice", f"m{seq}", "2026-11-27T10:00:00.000Z")


def test_the_feed_hands_over_every_publication_of_the_handler_channels(
    redis_config: RedisConfig,
) -> None:
    tag = uuid.uuid4().hex[:8]
    globs = (f"hook-{tag}-*", f"ci-{tag}-[ab]")

    async def scenario() -> None:
        raw = _client(redis_config)
        got: list[ChannelEvent] = []
        subscribed: list[bool] = []

        def offer(events: Sequence[ChannelEvent]) -> None:
            got.extend(events)

        feed = RedisFeed(redis_config, globs, offer, lambda: subscribed.append(True))
        task = asyncio.get_running_loop().create_task(feed.run())
        try:
            await until(lambda: bool(subscribed), WAIT_S, "the subscription")
            wanted = [_message(f"hook-{tag}-1", 1), _message(f"ci-{tag}-a", 1)]
            for event in [*wanted, _message(f"other-{tag}", 1)]:
                await raw.publish(topic_for(event.channel_id), encode_publication("x", [event]))
            await raw.publish(topic_for(f"hook-{tag}-2"), b"not json")  # logged, skipped
            await until(lambda: len(got) >= 2, WAIT_S, "two events")
            # The bracket glob subscribes wider (ci-<tag>-*); the worker narrows it.
            assert got == wanted
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await raw.aclose()

    asyncio.run(scenario())
