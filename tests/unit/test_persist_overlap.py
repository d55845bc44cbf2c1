"""Overlapped writes of chime_actors.persister.writer: ordered release, failures.

The fake store holds every ``append`` until the test finishes it, so writes can
be made to land out of order: the writer must still answer and deliver in plan
order, and only what its own write stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from chime_actors.errors import StoreUnavailable
from chime_actors.ids import format_message_id
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.writer import PersistWriter
from chime_actors.records import (
    ChangeKind,
    ChangeRecord,
    ChannelEvent,
    Deliveries,
    PersistBatch,
    PersistResult,
    SendRecord,
)
from chime_actors.storage import MemoryStore
from tests.support.polling import until
from tests.support.posts import PostLog

NOW = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
GATEWAY = "gateway-1"


class GatedStore(MemoryStore):
    """A MemoryStore whose appends wait until the test lands or fails each one."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Future[Exception | None]] = []
        self.stored: list[int] = []  # ids of the rows stored, in the order they landed

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        error = await gate
        if error is not None:
            raise error
        await super().append(events)
        self.stored += [event.seq for event in events]

    def land(self, index: int) -> None:
        """Let append number ``index`` (0-based, in call order) store its rows."""
        self.gates[index].set_result(None)

    def fail(self, index: int) -> None:
        """Make append number ``index`` fail, storing nothing."""
        self.gates[index].set_result(StoreUnavailable("GatedStore: failed on purpose"))


class Posts(PostLog):
    """The writer's ``post``, with the two views the tests read."""

    def results(self) -> list[PersistResult]:
        return self.of(PersistResult)

    def delivered(self) -> list[int]:
        return [e.seq for m in self.of(Deliveries) for e in m.messages]


def send(token: int, cmid: str | None = None) -> PersistBatch:
    record = SendRecord(token, "general", "alice", f"m{token}", client_msg_id=cmid)
    return PersistBatch(token, 1, (record,))


Scenario = Callable[[PersistWriter, GatedStore, Posts], Awaitable[None]]


def run(scenario: Scenario, writes_in_flight: int = 4) -> None:
    async def main() -> None:
        store = GatedStore()
        await store.open()
        posts = Posts()
        writer = PersistWriter(
            store,
            posts,
            ChimeMetrics.register(MetricsRegistry()),
            clock=lambda: NOW,
            writes_in_flight=writes_in_flight,
        )
        writer.set_gateways((GATEWAY,))
        writer.start()
        try:
            await scenario(writer, store, posts)
        finally:
            for gate in store.gates:
                if not gate.done():
                    gate.set_result(None)
            await writer.stop()
            await store.close()

    asyncio.run(main())


async def in_flight(writer: PersistWriter, store: GatedStore, *batches: PersistBatch) -> None:
    """Submit each batch alone and wait until its append has started."""
    for batch in batches:
        before = len(store.gates)
        writer.submit(batch, "reply")
        await until(lambda n=before + 1: len(store.gates) == n, interval=0)


def acked(result: PersistResult) -> list[int | None]:
    return [o.message.seq if o.message is not None else None for o in result.outcomes]


def test_writes_landing_out_of_order_are_answered_and_delivered_in_order() -> None:
    async def scenario(writer: PersistWriter, store: GatedStore, posts: Posts) -> None:
        # Three writes in flight at once: the later ones did not wait for the first.
        await in_flight(writer, store, send(1), send(2), send(3))
        store.land(2)
        store.land(1)
        # Both landed, but the first write has not: nothing may be answered yet.
        await until(lambda: store.stored == [3, 2], interval=0)
        for _ in range(20):
            await asyncio.sleep(0)  # give a wrong release every chance to happen
        assert posts.sent == []
        store.land(0)
        await until(lambda: len(posts.results()) == 3, interval=0)
        assert [r.batch_id for r in posts.results()] == [1, 2, 3]
        assert [acked(r) for r in posts.results()] == [[1], [2], [3]]
        assert posts.delivered() == [1, 2, 3]
        # Each batch's ack went out before its delivery, and after the one before.
        kinds = [(type(m).__name__, a) for a, m in posts.sent]
        assert kinds == [("PersistResult", "reply"), ("Deliveries", GATEWAY)] * 3

    run(scenario)


def test_after_a_failed_write_later_ones_are_not_released_as_stored() -> None:
    async def scenario(writer: PersistWriter, store: GatedStore, posts: Posts) -> None:
        await in_flight(writer, store, send(1))
        store.land(0)
        await until(lambda: len(posts.results()) == 1, interval=0)
        await in_flight(writer, store, send(2), send(3))
        # The later write lands (its rows are stored at id 3), the earlier fails.
        store.land(2)
        store.fail(1)
        await until(lambda: len(posts.results()) == 3, interval=0)
        failed = posts.results()[1:]
        assert [o.error_code for r in failed for o in r.outcomes] == ["unavailable"] * 2
        assert posts.delivered() == [1]  # nothing of either is delivered
        # The channel is read again once nothing is in flight: the id the landed
        # write used is never handed out again (no message is overwritten).
        await in_flight(writer, store, send(4))
        store.land(3)
        await until(lambda: len(posts.results()) == 4, interval=0)
        assert acked(posts.results()[3]) == [4]
        assert posts.delivered() == [1, 4]
        assert store.stored == [1, 3, 4]

    run(scenario)


def test_a_repeat_of_a_send_being_written_shares_its_fate() -> None:
    async def scenario(writer: PersistWriter, store: GatedStore, posts: Posts) -> None:
        await in_flight(writer, store, send(1, "x"))
        writer.submit(send(2, "x"), "reply")  # a retry while the first is written
        writer.submit(send(3, "y"), "reply")
        await until(lambda: len(store.gates) == 2, interval=0)
        store.land(1)
        store.land(0)
        await until(lambda: len(posts.results()) == 3, interval=0)
        first, repeat, other = posts.results()
        assert acked(first) == [1] and acked(other) == [2]
        (outcome,) = repeat.outcomes
        assert outcome.duplicate and outcome.message == first.outcomes[0].message
        assert posts.delivered() == [1, 2]  # the repeat stored and delivered nothing
        # Had the first failed, the repeat would fail with it:
        await in_flight(writer, store, send(4, "z"))
        writer.submit(send(5, "z"), "reply")
        await until(lambda: len(posts.results()) == 3 and len(store.gates) == 3, interval=0)
        store.fail(2)
        await until(lambda: len(posts.results()) == 5, interval=0)
        assert [o.error_code for r in posts.results()[3:] for o in r.outcomes] == [
            "unavailable",
            "unavailable",
        ]

    run(scenario)


def test_writes_in_flight_are_bounded() -> None:
    async def scenario(writer: PersistWriter, store: GatedStore, posts: Posts) -> None:
        await in_flight(writer, store, send(1), send(2))
        writer.submit(send(3), "reply")
        # The window is full: the third is not written until the first is answered.
        for _ in range(20):
            await asyncio.sleep(0)  # give a third write every chance to start
        assert len(store.gates) == 2
        store.land(0)
        await until(lambda: len(store.gates) == 3, interval=0)
        assert [r.batch_id for r in posts.results()] == [1]
        store.land(1)
        store.land(2)
        await until(lambda: len(posts.results()) == 3, interval=0)
        assert [acked(r) for r in posts.results()] == [[1], [2], [3]]

    run(scenario, writes_in_flight=2)


def test_a_change_is_checked_only_after_the_writes_before_it_landed() -> None:
    async def scenario(writer: PersistWriter, store: GatedStore, posts: Posts) -> None:
        await in_flight(writer, store, send(1))
        react = ChangeRecord(
            2, "general", format_message_id(1), "alice", ChangeKind.REACTION_ADD, emoji="+1"
        )
        writer.submit(PersistBatch(2, 1, (react,)), "reply")
        for _ in range(20):
            await asyncio.sleep(0)  # give the change every chance to be written early
        assert len(store.gates) == 1
        # Checked now, the reaction finds its message (not ``not_found``).
        store.land(0)
        await until(lambda: len(store.gates) == 2, interval=0)
        store.land(1)
        await until(lambda: len(posts.results()) == 2, interval=0)
        (outcome,) = posts.results()[1].outcomes
        assert outcome.error_code is None and outcome.change is not None
        assert posts.delivered() == [1, 2]

    run(scenario)
