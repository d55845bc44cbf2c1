"""HostPresence against a real Redis: host state, liveness, reaping, resync, seqs.

Two ``HostPresence`` (two hosts' bridges) share the Redis; fake gateways record
what each bridge tells them. ``presence.ttl_s`` is 1 s: a heartbeat every 0.25 s,
a liveness key that lives 0.5 s.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from chime_actors.bus.redis_bridge import redis_client
from chime_actors.config import Config, load_config
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.presence.codec import PresenceEvent, decode_event, encode_event, presence_topic
from chime_actors.presence.messages import (
    HostsGone,
    PresenceLookup,
    PresenceLookupResult,
    PresenceSnapshot,
    RemoteChannels,
    RemotePresence,
)
from chime_actors.presence.redis_presence import HostPresence, alive_key, online_key
from chime_actors.runtime.messages import Wiring
from tests.integration.services import load_services
from tests.support.polling import until, until_async

pytestmark = pytest.mark.integration

WAIT_S = 10.0
GATEWAY = "gateway-1"


@pytest.fixture(scope="module")
def config() -> Config:
    redis = load_services("redis")["redis"]
    return load_config(
        env={},
        overrides={
            "bus.backend": "redis",
            "bus.redis.host": redis["host"],
            "bus.redis.port": int(redis["port"]),
            "presence.ttl_s": 1,
        },
    )


class Gateway:
    """Records what a bridge posts."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.got.append((address, message))

    def of(self, kind: type) -> list[Any]:
        return [m for _, m in self.got if isinstance(m, kind)]


def bridge(config: Config, host: str) -> tuple[HostPresence, Gateway]:
    posts = Gateway()
    metrics = ChimeMetrics.register(MetricsRegistry())
    presence = HostPresence(host, config, posts, metrics, lambda: redis_client(config.bus.redis))
    presence.rewire(Wiring(gateways=(GATEWAY,), persisters=(), api=None, generation=1))
    presence.start()
    return presence, posts


def snapshot(*entries: tuple[str, str]) -> PresenceSnapshot:
    return PresenceSnapshot(1, "epoch", 0, 1, entries)


def hosts() -> tuple[str, str]:
    return f"h1-{uuid.uuid4().hex[:8]}", f"h2-{uuid.uuid4().hex[:8]}"


async def fields(client: redis_asyncio.Redis, channel: str) -> set[str]:
    return {f.decode() for f in await client.hkeys(online_key(channel))}


def test_a_hosts_state_is_read_by_another_and_looked_up(config: Config) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    one, two = hosts()

    async def main() -> None:
        first, first_seen = bridge(config, one)
        second, seen = bridge(config, two)
        client = redis_client(config.bus.redis)
        try:
            first.handle(snapshot((channel, "alice"), (channel, "bob")), GATEWAY)
            await until_async(
                lambda: fields(client, channel), WAIT_S, "the first host's entries in Redis"
            )
            await until_async(
                lambda: client.exists(alive_key(two)), WAIT_S, "the second host's liveness key"
            )
            await second.load([channel])
            (loaded,) = seen.of(RemoteChannels)
            assert loaded.channels == ((channel, ((one, "alice"), (one, "bob"))),)
            second.handle(PresenceLookup(5, channel), GATEWAY)
            result = await until(
                lambda: seen.of(PresenceLookupResult), WAIT_S, "the lookup's answer"
            )
            assert result == [PresenceLookupResult(5, ("alice", "bob"))]
            # A host does not look itself up: its gateways know their own.
            first.handle(PresenceLookup(6, channel), GATEWAY)
            await until(
                lambda: first_seen.of(PresenceLookupResult), WAIT_S, "the first host's answer"
            )
            assert first_seen.of(PresenceLookupResult) == [PresenceLookupResult(6, ())]
        finally:
            await first.close()
            await second.close()
            await client.aclose()

    asyncio.run(main())


def test_events_already_in_a_read_are_skipped(config: Config) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    one, two = hosts()

    async def main() -> None:
        first, _ = bridge(config, one)
        second, seen = bridge(config, two)
        client = redis_client(config.bus.redis)
        try:
            first.handle(snapshot((channel, "alice")), GATEWAY)
            await until_async(lambda: fields(client, channel), WAIT_S, "the entry in Redis")
            await second.load([channel])
            topic = presence_topic(channel)
            # The event that wrote the entry (seq 1) arrives after the read: skipped.
            second.on_publication(topic, encode_event(PresenceEvent(one, 1, "alice", True)))
            second.on_publication(topic, encode_event(PresenceEvent(one, 2, "alice", False)))
            assert [m.changes for m in seen.of(RemotePresence)] == [
                ((one, channel, "alice", False),)
            ]
            # Its own events are never forwarded.
            second.on_publication(topic, encode_event(PresenceEvent(two, 9, "x", True)))
            assert len(seen.of(RemotePresence)) == 1
        finally:
            await first.close()
            await second.close()
            await client.aclose()

    asyncio.run(main())


def test_a_host_that_stops_refreshing_is_declared_gone_and_reaped(config: Config) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    one, two = hosts()

    async def main() -> None:
        second, seen = bridge(config, two)
        client = redis_client(config.bus.redis)
        try:
            # What a host leaves behind when it dies right after its last refresh.
            async with client.pipeline(transaction=True) as pipe:
                pipe.hset(online_key(channel), f"{one}|alice", 1)
                pipe.sadd(f"chime:host-channels:{one}", channel)
                pipe.sadd("chime:hosts", one)
                pipe.set(alive_key(one), "1", px=500)
                await pipe.execute()
            await second.load([channel])
            (loaded,) = seen.of(RemoteChannels)
            assert loaded.channels == ((channel, ((one, "alice"),)),)
            gone = await until(lambda: seen.of(HostsGone), WAIT_S, "HostsGone at the second host")
            assert gone == [HostsGone((one,))]
            assert not await fields(client, channel)
            assert not await client.sismember("chime:hosts", one)
        finally:
            await second.close()
            await client.aclose()

    asyncio.run(main())


def test_a_host_whose_key_expired_writes_its_state_again(config: Config) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    one, _ = hosts()

    async def main() -> None:
        first, _ = bridge(config, one)
        client = redis_client(config.bus.redis)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            first.handle(snapshot((channel, "alice")), GATEWAY)
            await until_async(lambda: fields(client, channel), WAIT_S, "the entry in Redis")
            await pubsub.subscribe(presence_topic(channel))
            # As if the host had stalled past its lifetime and been reaped.
            await client.delete(alive_key(one))
            await client.hdel(online_key(channel), f"{one}|alice")
            assert await until_async(
                lambda: fields(client, channel), WAIT_S, "the state written again"
            )
            state = await until_async(
                lambda: pubsub.get_message(timeout=0.1), WAIT_S, "a state event"
            )
            event = decode_event(state["data"])
            assert (event.origin, getattr(event, "users", None)) == (one, ("alice",))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await first.close()
            await client.aclose()

    asyncio.run(main())


def test_a_graceful_stop_deletes_the_liveness_key(config: Config) -> None:
    one, _ = hosts()

    async def main() -> None:
        first, _ = bridge(config, one)
        client = redis_client(config.bus.redis)
        try:
            await until_async(lambda: client.exists(alive_key(one)), WAIT_S, "the liveness key")
            await first.close()
            assert not await client.exists(alive_key(one))
        finally:
            await client.aclose()

    asyncio.run(main())
