"""The Redis bus against a real Redis: id ranges, client-id claims, the bridge."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from chime_actors.actors.wiring import bridge_adapters
from chime_actors.bus.messages import Interest, Resync
from chime_actors.bus.redis_bridge import RedisBridgeCore
from chime_actors.config import load_config
from chime_actors.errors import StoreUnavailable
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.redis_ids import RedisIds
from chime_actors.persister.writer import PersistWriter
from chime_actors.records import ChimeMessage, Deliveries, PersistBatch, PersistResult, SendRecord
from chime_actors.runtime.messages import ActorId, ActorKind, Wiring
from chime_actors.storage import MemoryStore
from chime_actors.storage.store import ChannelState
from tests.integration.services import load_services
from tests.support.polling import until, until_async

pytestmark = pytest.mark.integration

WAIT_S = 10.0


@pytest.fixture(scope="module")
def redis_address() -> tuple[str, int]:
    redis = load_services("redis")["redis"]
    return redis["host"], int(redis["port"])


def _client(address: tuple[str, int]) -> redis_asyncio.Redis:
    return redis_asyncio.Redis(host=address[0], port=address[1])


def _message(channel: str, seq: int) -> ChimeMessage:
    return ChimeMessage(channel, f"{seq:016d}", "alice", f"m{seq}", "2026-11-27T10:00:00.000Z")


def test_reserved_ranges_are_contiguous_and_start_after_storage(
    redis_address: tuple[str, int],
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def stored_last(channel_id: str) -> int:
        assert channel_id == channel
        return 41  # storage already holds ids 1..41

    async def scenario() -> None:
        first_host = RedisIds(_client(redis_address), stored_last)
        second_host = RedisIds(_client(redis_address), stored_last)
        try:
            # Neither host knows of a stored id (floor 0): the missing counter
            # is created from storage.
            a = await first_host.reserve({channel: 3}, {})
            b = await second_host.reserve({channel: 2}, {channel: 0})
            c = await first_host.reserve({channel: 1}, {channel: 44})
        finally:
            await first_host.close()
            await second_host.close()
        assert (a.firsts[channel], b.firsts[channel], c.firsts[channel]) == (42, 45, 47)
        # A missing counter of a channel with stored ids: Redis lost data.
        assert (a.redis_lost_data, b.redis_lost_data, c.redis_lost_data) == (True, False, False)

    asyncio.run(scenario())


def test_a_counter_behind_the_floor_is_raised_before_it_is_used(
    redis_address: tuple[str, int],
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"
    storage = {"last": 30}

    async def stored_last(channel_id: str) -> int:
        return storage["last"]

    async def scenario() -> None:
        host = RedisIds(_client(redis_address), stored_last)
        probe = _client(redis_address)
        try:
            await probe.set(f"chime:seq:{channel}", 10)
            # This host stored up to 20 itself; storage (other hosts) holds 30.
            raised = await host.reserve({channel: 2}, {channel: 20})
            assert raised.firsts[channel] == 31 and raised.redis_lost_data
            assert int(await probe.get(f"chime:seq:{channel}")) == 32
            # At or above the floor: used as it is, storage is not asked.
            storage["last"] = 1000
            plain = await host.reserve({channel: 1}, {channel: 32})
            assert plain.firsts[channel] == 33 and not plain.redis_lost_data
        finally:
            await probe.aclose()
            await host.close()

    asyncio.run(scenario())


def test_client_id_claims_dedupe_across_hosts(redis_address: tuple[str, int]) -> None:
    key = (f"c-{uuid.uuid4().hex[:8]}", "alice", "cmid-1")

    async def no_storage(channel_id: str) -> int:
        return 0

    async def scenario() -> None:
        host_a = RedisIds(_client(redis_address), no_storage)
        host_b = RedisIds(_client(redis_address), no_storage)
        try:
            (first,) = await host_a.claim([key])
            (racing,) = await host_b.claim([key])
            assert first.won and not racing.won and racing.message_id is None
            await host_a.settle([(*key, f"{7:016d}", "2026-11-27T10:00:00.000Z")], [])
            (later,) = await host_b.claim([key])
            assert not later.won
            assert later.message_id == f"{7:016d}"
            assert later.created_at == "2026-11-27T10:00:00.000Z"
            # A failed write leaves the claim "unknown" (it may have landed): a
            # retry must look in storage, then may take the claim over, once.
            other = (key[0], "bob", "cmid-9")
            (claimed,) = await host_a.claim([other])
            await host_a.settle([], [(*other, f"{8:016d}")])
            (again,) = await host_b.claim([other])
            assert claimed.won and not again.won and again.unknown
            assert again.message_id == f"{8:016d}"  # the id the failed write used
            assert await host_b.take_over([(*other, f"{8:016d}")]) == [True]
            assert await host_a.take_over([(*other, f"{8:016d}")]) == [False]
            (now,) = await host_a.claim([other])
            assert not now.won and not now.unknown and now.message_id is None
        finally:
            await host_a.close()
            await host_b.close()

    asyncio.run(scenario())


def test_claims_and_reservations_in_one_call(redis_address: tuple[str, int]) -> None:
    """``claim_and_reserve``: won claims take ids, lost ones say what they found."""
    a, b = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    stored_key = (a, "alice", "stored")
    pending_key = (b, "bob", "pending")

    async def no_storage(channel_id: str) -> int:
        return 0

    async def scenario() -> None:
        other = RedisIds(_client(redis_address), no_storage)
        host = RedisIds(_client(redis_address), no_storage)
        try:
            # Another host stored one send and is storing another.
            (_, first) = await other.claim_and_reserve([stored_key, pending_key], {}, {})
            assert (first.firsts, first.redis_lost_data) == ({a: 1, b: 1}, False)
            await other.settle([(*stored_key, f"{1:016d}", "2026-11-27T10:00:00.000Z")], [])
            keys = [stored_key, (a, "alice", "new-1"), pending_key, (a, "carol", "new-2")]
            # Channel a also needs one id for a change, channel c only for a change.
            c = f"c-{uuid.uuid4().hex[:8]}"
            claims, reservation = await host.claim_and_reserve(keys, {a: 1, c: 1}, {a: 1})
            assert [claim.won for claim in claims] == [False, True, False, True]
            assert (claims[0].message_id, claims[0].created_at) == (
                f"{1:016d}",
                "2026-11-27T10:00:00.000Z",
            )
            assert claims[2].message_id is None and not claims[2].unknown  # being stored
            # a: two won claims and the change, after the other host's id 1;
            # b: every claim lost, so no range; c: a new counter.
            assert reservation.firsts == {a: 2, c: 1}
            again = await host.reserve({a: 1, b: 1}, {a: 4, b: 1})
            assert again.firsts == {a: 5, b: 2}  # the ranges were contiguous: no hole
        finally:
            await other.close()
            await host.close()

    asyncio.run(scenario())


class _Outbox:
    """Records what a core posts (our own `post` interface, not a mock)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def post(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))

    def delivered(self, address: Any) -> list[ChimeMessage]:
        return [
            m
            for to, sent in self.sent
            if to == address and isinstance(sent, Deliveries)
            for m in sent.messages
        ]


def _bridge(address: tuple[str, int], index: int, outbox: _Outbox) -> RedisBridgeCore:
    config = load_config(
        env={}, overrides={"bus.redis.host": address[0], "bus.redis.port": address[1]}
    )
    connect = bridge_adapters(config).connect
    core = RedisBridgeCore(ActorId(ActorKind.GATEWAY, index), config, outbox.post, connect=connect)
    core.handle(Wiring(gateways=(f"gw-{index}",), persisters=(), api=None, generation=1), None)
    return core


def _run_bridges(
    address: tuple[str, int],
    body: Callable[[RedisBridgeCore, RedisBridgeCore, _Outbox, _Outbox], Awaitable[None]],
) -> None:
    async def scenario() -> None:
        out_a, out_b = _Outbox(), _Outbox()
        host_a, host_b = _bridge(address, 1, out_a), _bridge(address, 2, out_b)
        await host_a.start()
        await host_b.start()
        try:
            await body(host_a, host_b, out_a, out_b)
        finally:
            await host_a.stop()
            await host_b.stop()

    asyncio.run(scenario())


def test_bridge_carries_messages_to_hosts_with_subscribers_only(
    redis_address: tuple[str, int],
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def body(
        host_a: RedisBridgeCore, host_b: RedisBridgeCore, out_a: _Outbox, out_b: _Outbox
    ) -> None:
        host_b.handle(Interest(1, channel, subscribed=True), None)
        # Wait until B's subscription is live (it asks gateways to resync then).
        await until(
            lambda: any(isinstance(m, Resync) and channel in m.channels for _, m in out_b.sent),
            WAIT_S,
            "B to subscribe",
        )
        sent = (_message(channel, 1), _message(channel, 2))
        host_a.handle(Deliveries(sent), None)
        await until(lambda: len(out_b.delivered("gw-2")) == 2, WAIT_S, "B to receive")
        assert tuple(out_b.delivered("gw-2")) == sent
        # A has no interest, and never echoes its own publications to itself.
        assert out_a.delivered("gw-1") == []

    _run_bridges(redis_address, body)


def test_bridge_stops_receiving_after_the_last_subscriber_leaves(
    redis_address: tuple[str, int],
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def body(
        host_a: RedisBridgeCore, host_b: RedisBridgeCore, out_a: _Outbox, out_b: _Outbox
    ) -> None:
        host_b.handle(Interest(1, channel, subscribed=True), None)
        await until(lambda: len(out_b.sent) > 0, WAIT_S, "B to subscribe")
        host_b.handle(Interest(1, channel, subscribed=False), None)
        probe = _client(redis_address)
        try:

            async def unsubscribed() -> bool:
                counts = await probe.pubsub_numsub(f"channel:{channel}")
                return int(counts[0][1]) == 0

            await until_async(unsubscribed, WAIT_S, "B to drop its subscription")
        finally:
            await probe.aclose()

    _run_bridges(redis_address, body)


class AnswerLostStore(MemoryStore):
    """The next ``append`` is applied, then fails: the reply was lost on the way."""

    def __init__(self) -> None:
        super().__init__()
        self.lose_next_answer = False

    async def append(self, messages: Sequence[ChimeMessage]) -> None:
        await super().append(messages)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise StoreUnavailable("connection reset after the write")


def _send(token: int, cmid: str, channel: str) -> SendRecord:
    return SendRecord(token, channel, "alice", f"content {cmid}", client_msg_id=cmid)


def _result(posts: _Outbox, batch_id: int) -> PersistResult | None:
    return next(
        (m for _, m in posts.sent if isinstance(m, PersistResult) and m.batch_id == batch_id),
        None,
    )


@contextlib.asynccontextmanager
async def two_hosts_writing(
    redis_address: tuple[str, int],
) -> AsyncIterator[tuple[AnswerLostStore, _Outbox, PersistWriter, PersistWriter]]:
    """Two hosts' persister writers on one store and one Redis, running."""
    store = AnswerLostStore()
    await store.open()
    posts = _Outbox()
    host_a = RedisIds(_client(redis_address), store.last_seq)
    host_b = RedisIds(_client(redis_address), store.last_seq)
    metrics = ChimeMetrics.register(MetricsRegistry())
    writer_a = PersistWriter(store, posts.post, metrics, ids=host_a)
    writer_b = PersistWriter(store, posts.post, metrics, ids=host_b)
    writer_a.start()
    writer_b.start()
    try:
        yield store, posts, writer_a, writer_b
    finally:
        await writer_a.stop()
        await writer_b.stop()
        await host_a.close()
        await host_b.close()
        await store.close()


def test_a_write_whose_answer_was_lost_is_not_stored_again_on_retry(
    redis_address: tuple[str, int],
) -> None:
    """A retry (here through another host's persister) finds the landed original."""
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with two_hosts_writing(redis_address) as (store, posts, writer_a, writer_b):
            # B has this channel's state cached already: its local dedupe cannot
            # know what A stores next.
            writer_b.submit(PersistBatch(9, 2, (_send(9, "c-0", channel),)), "gw-b")
            await until(lambda: _result(posts, 9) is not None, WAIT_S, "B's first write")
            store.lose_next_answer = True
            writer_a.submit(PersistBatch(1, 1, (_send(1, "c-1", channel),)), "gw-a")
            await until(lambda: _result(posts, 1) is not None, WAIT_S, "the first answer")
            first = _result(posts, 1)
            assert first is not None and first.outcomes[0].error_code == "unavailable"
            writer_b.submit(PersistBatch(2, 2, (_send(2, "c-1", channel),)), "gw-b")
            await until(lambda: _result(posts, 2) is not None, WAIT_S, "the retry's answer")
            retry = _result(posts, 2)
            assert retry is not None
            outcome = retry.outcomes[0]
            assert outcome.duplicate and outcome.message is not None
            page = await store.history(channel, limit=10)
            assert [m.client_msg_id for m in page.messages] == ["c-0", "c-1"]
            assert outcome.message.message_id == page.messages[1].message_id

    asyncio.run(scenario())


def test_repeats_of_another_hosts_send_in_one_batch_share_its_outcome(
    redis_address: tuple[str, int],
) -> None:
    """Two copies of a send stored by host A reach host B in one batch, with a new one."""
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with two_hosts_writing(redis_address) as (store, posts, writer_a, writer_b):
            writer_b.submit(PersistBatch(9, 2, (_send(9, "c-0", channel),)), "gw-b")
            await until(lambda: _result(posts, 9) is not None, WAIT_S, "B's first write")
            writer_a.submit(PersistBatch(1, 1, (_send(1, "c-5", channel),)), "gw-a")
            await until(lambda: _result(posts, 1) is not None, WAIT_S, "A's write")
            original = _result(posts, 1)
            assert original is not None and original.outcomes[0].message is not None
            batch = (_send(2, "c-5", channel), _send(3, "c-5", channel), _send(4, "c-6", channel))
            writer_b.submit(PersistBatch(2, 2, batch), "gw-b")
            await until(lambda: _result(posts, 2) is not None, WAIT_S, "B's batch")
            result = _result(posts, 2)
            assert result is not None
            first, second, new = result.outcomes
            assert first.duplicate and second.duplicate
            assert first.message is not None and second.message is not None
            assert first.message.message_id == original.outcomes[0].message.message_id
            assert second.message.message_id == first.message.message_id
            assert new.message is not None and not new.duplicate
            page = await store.history(channel, limit=10)
            assert [m.client_msg_id for m in page.messages] == ["c-0", "c-5", "c-6"]

    asyncio.run(scenario())


@pytest.mark.parametrize("in_one_batch", [False, True], ids=["next-batch", "same-batch"])
def test_a_counter_found_behind_makes_every_channel_check_storage(
    redis_address: tuple[str, int], in_one_batch: bool
) -> None:
    """Redis set back (an old snapshot): a channel that cannot see it is protected too.

    Host A last saw channel X at id 1; host B stored 2..6 since. The counters
    are set back: X's to 2 (at or above all A knows of X, so X alone shows
    nothing), Y's to 1 (below A's own writes 1..3). Once A sees Y's counter
    behind, it checks X against storage too before numbering in X.
    """
    x, y = f"x-{uuid.uuid4().hex[:8]}", f"y-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with two_hosts_writing(redis_address) as (store, posts, writer_a, writer_b):
            writer_a.submit(
                PersistBatch(
                    1, 1, (_send(1, "x-0", x), *(_send(t, f"y-{t}", y) for t in (2, 3, 4)))
                ),
                "gw-a",
            )
            await until(lambda: _result(posts, 1) is not None, WAIT_S, "A's first write")
            writer_b.submit(
                PersistBatch(2, 2, tuple(_send(t, f"x-{t}", x) for t in range(5, 10))), "gw-b"
            )
            await until(lambda: _result(posts, 2) is not None, WAIT_S, "B's write")
            before = (await store.history(x, limit=100)).messages
            assert [m.seq for m in before] == [1, 2, 3, 4, 5, 6]
            probe = _client(redis_address)
            try:
                await probe.set(f"chime:seq:{x}", 2)
                await probe.set(f"chime:seq:{y}", 1)
            finally:
                await probe.aclose()
            if in_one_batch:
                writer_a.submit(
                    PersistBatch(3, 1, (_send(20, "y-new", y), _send(21, "x-new", x))), "gw-a"
                )
                await until(lambda: _result(posts, 3) is not None, WAIT_S, "A's batch")
                result = _result(posts, 3)
            else:
                writer_a.submit(PersistBatch(3, 1, (_send(20, "y-new", y),)), "gw-a")
                await until(lambda: _result(posts, 3) is not None, WAIT_S, "A's write in Y")
                writer_a.submit(PersistBatch(4, 1, (_send(21, "x-new", x),)), "gw-a")
                await until(lambda: _result(posts, 4) is not None, WAIT_S, "A's write in X")
                result = _result(posts, 4)
            assert result is not None
            new = result.outcomes[-1]
            assert new.error_code is None, new
            assert new.message is not None and new.message.seq > 6
            after = (await store.history(x, limit=100)).messages
            assert after[:6] == before
            assert [m.client_msg_id for m in after[6:]] == ["x-new"]
            in_y = (await store.history(y, limit=100)).messages
            assert [m.client_msg_id for m in in_y] == ["y-2", "y-3", "y-4", "y-new"]

    asyncio.run(scenario())


class LoadCountingStore(MemoryStore):
    """Counts ``load_channel_state`` per channel (how often a writer re-reads one)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: dict[str, int] = {}

    async def load_channel_state(self, channel_id: str, *, dedupe_since: str) -> ChannelState:
        self.loads[channel_id] = self.loads.get(channel_id, 0) + 1
        return await super().load_channel_state(channel_id, dedupe_since=dedupe_since)


def test_one_loss_of_redis_data_re_reads_each_channel_once(
    redis_address: tuple[str, int],
) -> None:
    """Each channel found behind is one more sign of the same loss, not a new one.

    Re-reading every channel at each sign would re-read storage on almost every
    write until every counter is repaired (after a Redis restart, every channel
    with stored messages is such a sign once).
    """
    channels = [f"{name}-{uuid.uuid4().hex[:8]}" for name in ("x", "y", "z")]
    x, y, z = channels

    async def scenario() -> None:
        store = LoadCountingStore()
        await store.open()
        posts = _Outbox()
        ids = RedisIds(_client(redis_address), store.last_seq)
        writer = PersistWriter(store, posts.post, ChimeMetrics.register(MetricsRegistry()), ids=ids)
        writer.start()
        probe = _client(redis_address)
        try:
            sends = tuple(_send(t, f"m-{t}", channels[t % 3]) for t in range(9))
            writer.submit(PersistBatch(1, 1, sends), "gw")
            await until(lambda: _result(posts, 1) is not None, WAIT_S, "the first write")
            assert store.loads == {x: 1, y: 1, z: 1}
            await probe.delete(f"chime:seq:{y}", f"chime:seq:{z}")  # Redis lost them
            batch_id = 1
            for channel in (y, x, z, x, y):
                batch_id += 1
                writer.submit(
                    PersistBatch(batch_id, 1, (_send(100 + batch_id, f"n-{batch_id}", channel),)),
                    "gw",
                )
                await until(
                    lambda b=batch_id: _result(posts, b) is not None, WAIT_S, f"write {batch_id}"
                )
                result = _result(posts, batch_id)
                assert result is not None and result.outcomes[0].error_code is None
            # y's loss re-read x and z once; z's, the same loss, re-read nothing more.
            assert store.loads == {x: 2, y: 1, z: 2}
            for channel in channels:
                page = await store.history(channel, limit=100)
                assert len(page.messages) == 3 + (2 if channel != z else 1)
                assert len({m.seq for m in page.messages}) == len(page.messages)
        finally:
            await probe.aclose()
            await writer.stop()
            await ids.close()
            await store.close()

    asyncio.run(scenario())
