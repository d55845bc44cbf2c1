"""PersisterCore: what a persister does with the messages of its actor.

A ``PersistBatch`` is answered (``PersistResult``, to its sender) only once it
is stored, and then delivered to every gateway and handler the last ``Wiring``
named; repeats of a ``clientMsgId`` are answered with the original; a failed
write is answered ``unavailable`` and delivered nowhere. The store is a
``MemoryStore`` whose writes a test can hold back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from chime_actors.config import load_config
from chime_actors.persister.core import PersisterCore
from chime_actors.records import (
    ChannelEvent,
    Deliveries,
    PersistBatch,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.messages import ActorId, ActorKind, MetricsReport, Wiring
from chime_actors.storage import MemoryStore
from tests.support.polling import until
from tests.support.posts import PostLog

PERSISTER = ActorId(ActorKind.PERSISTER, 1)
WIRING = Wiring(
    gateways=("gateway-1", None, "gateway-3"),  # gateway 2 is restarting
    persisters=("persister-1",),
    api="api",
    generation=1,
    handlers=("handler-1",),
)


class HeldStore(MemoryStore):
    """A ``MemoryStore`` whose appends wait until ``released`` is set, and that logs calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.released = asyncio.Event()
        self.released.set()
        self.held = 0  # appends waiting for ``released`` now

    async def open(self) -> None:
        self.calls.append("open")
        await super().open()

    async def close(self) -> None:
        self.calls.append("close")
        await super().close()

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        self.held += 1
        try:
            await self.released.wait()
        finally:
            self.held -= 1
        await super().append(events)
        self.calls.append(f"append {len(events)}")


class Posts(PostLog):
    """The core's ``post``: what it sent to whom, in order."""

    def to(self, address: Any, kind: type) -> list[Any]:
        return self.of(kind, to=address)

    def outcomes(self, address: Any) -> list[SendOutcome]:
        return [o for r in self.of(PersistResult, to=address) for o in r.outcomes]


def send(token: int, channel: str = "general", client_msg_id: str | None = None) -> SendRecord:
    return SendRecord(
        token=token,
        channel_id=channel,
        user_id="alice",
        content=f"m{token}",
        client_msg_id=client_msg_id or f"c-{token}",
    )


def batch(batch_id: int, *records: SendRecord, origin: int = 1) -> PersistBatch:
    return PersistBatch(batch_id, origin, records)


Scenario = Callable[[PersisterCore, HeldStore, Posts], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        store, posts = HeldStore(), Posts()
        core = PersisterCore(PERSISTER, load_config(env={}), posts, store=store, ids=None)
        await core.start()
        try:
            await scenario(core, store, posts)
        finally:
            store.released.set()
            await core.stop()

    asyncio.run(main())


def test_start_opens_the_given_store_and_stop_writes_what_is_queued_then_closes_it() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        assert store.calls == ["open"]
        core.handle(WIRING, None)
        store.released.clear()
        core.handle(batch(1, send(1)), "gateway-1")
        await until(lambda: store.held, interval=0)  # being written
        core.handle(batch(2, send(2)), "gateway-1")  # queued behind it
        stopping = asyncio.get_running_loop().create_task(core.stop())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not stopping.done()  # it waits for the queued batches
        store.released.set()
        await stopping
        assert store.calls == ["open", "append 1", "append 1", "close"]
        assert [o.message.seq for o in posts.outcomes("gateway-1") if o.message] == [1, 2]

    run(scenario)


def test_a_batch_is_acked_only_after_it_is_stored_then_delivered_to_every_receiver() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(WIRING, None)
        store.released.clear()
        core.handle(batch(7, send(1), send(2)), "gateway-1")
        await until(lambda: store.held, interval=0)  # the write waits for storage
        assert posts.to("gateway-1", PersistResult) == []  # not stored: no ack
        assert not any(isinstance(m, Deliveries) for _, m in posts.sent)
        store.released.set()
        (result,) = await until(lambda: posts.to("gateway-1", PersistResult), interval=0)
        assert result.batch_id == 7
        assert [o.token for o in result.outcomes] == [1, 2]
        stored = await store.history("general", limit=10)
        assert [m.message_id for m in stored.messages] == [
            o.message.message_id for o in result.outcomes if o.message
        ]
        # The ack first, then one Deliveries to each gateway that is up and each handler.
        kinds = [(a, type(m).__name__) for a, m in posts.sent if not isinstance(m, MetricsReport)]
        assert kinds == [
            ("gateway-1", "PersistResult"),
            ("gateway-1", "Deliveries"),
            ("gateway-3", "Deliveries"),
            ("handler-1", "Deliveries"),
        ]
        (delivered,) = posts.to("handler-1", Deliveries)
        assert [m.seq for m in delivered.messages] == [1, 2]

    run(scenario)


def test_a_batch_before_the_first_wiring_waits_for_it_then_is_delivered_everywhere() -> None:
    # A client may send in the first milliseconds of a start (or of a restart of
    # this persister), before the supervisor's Wiring has reached it. Stored and
    # acked then, it would be delivered to nobody: the gateways are not known yet.
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(batch(1, send(1)), "gateway-1")
        for _ in range(50):
            await asyncio.sleep(0)
        assert posts.to("gateway-1", PersistResult) == []
        assert store.message_count("general") == 0
        core.handle(WIRING, None)
        (result,) = await until(lambda: posts.to("gateway-1", PersistResult), interval=0)
        assert [o.message.seq for o in result.outcomes if o.message] == [1]
        for receiver in ("gateway-1", "gateway-3", "handler-1"):
            (delivered,) = posts.to(receiver, Deliveries)
            assert [m.seq for m in delivered.messages] == [1]

    run(scenario)


def test_batches_of_a_persister_that_stops_before_any_wiring_are_answered_unavailable() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(batch(1, send(1), send(2)), "gateway-1")
        await core.stop()
        outcomes = posts.outcomes("gateway-1")
        assert [(o.token, o.error_code) for o in outcomes] == [
            (1, "unavailable"),
            (2, "unavailable"),
        ]
        assert store.message_count("general") == 0

    run(scenario)


def test_ids_follow_the_order_of_the_batches_across_senders() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(WIRING, None)
        core.handle(batch(1, send(1), origin=1), "gateway-1")
        # Tokens are per sender: gateway 3's token 1 is another send (its own client id).
        core.handle(batch(1, send(1, client_msg_id="g3-1"), origin=3), "gateway-3")
        core.handle(batch(2, send(2), send(3), origin=1), "gateway-1")
        await until(lambda: len(posts.to("gateway-1", PersistResult)) == 2, interval=0)
        await until(lambda: posts.to("gateway-3", PersistResult), interval=0)
        seqs_1 = [o.message.seq for o in posts.outcomes("gateway-1") if o.message]
        seqs_3 = [o.message.seq for o in posts.outcomes("gateway-3") if o.message]
        assert seqs_1 == [1, 3, 4] and seqs_3 == [2]
        delivered = [m.seq for d in posts.to("gateway-3", Deliveries) for m in d.messages]
        assert delivered == [1, 2, 3, 4]

    run(scenario)


def test_a_repeated_client_msg_id_gets_the_original_and_is_stored_once() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(WIRING, None)
        core.handle(batch(1, send(1, client_msg_id="once")), "gateway-1")
        await until(lambda: posts.outcomes("gateway-1"), interval=0)
        core.handle(batch(2, send(2, client_msg_id="once")), "gateway-1")  # a retry
        await until(lambda: len(posts.outcomes("gateway-1")) == 2, interval=0)
        original, repeat = posts.outcomes("gateway-1")
        assert original.message is not None and not original.duplicate
        assert repeat.duplicate and repeat.message is not None
        # The ack names the original (its content is not kept for repeats: an ack has none).
        same = ("message_id", "created_at", "client_msg_id")
        assert [getattr(repeat.message, k) for k in same] == [
            getattr(original.message, k) for k in same
        ]
        assert repeat.token == 2  # answered under the retry's own token
        assert store.message_count("general") == 1
        # Only the original was delivered.
        assert [len(d.messages) for d in posts.to("gateway-3", Deliveries)] == [1]

    run(scenario)


def test_a_failed_write_is_answered_unavailable_and_delivered_nowhere() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle(WIRING, None)
        core.handle(batch(1, send(1)), "gateway-1")
        await until(lambda: posts.outcomes("gateway-1"), interval=0)
        store.fail_next(1)  # the append of the next write
        core.handle(batch(2, send(2), send(3)), "gateway-1")
        await until(lambda: len(posts.outcomes("gateway-1")) == 3, interval=0)
        failed = posts.outcomes("gateway-1")[1:]
        assert [o.error_code for o in failed] == ["unavailable", "unavailable"]
        assert [len(d.messages) for d in posts.to("gateway-3", Deliveries)] == [1]
        # Nothing acked was lost, and the next write takes the next id: no gap.
        core.handle(batch(3, send(4)), "gateway-1")
        await until(lambda: len(posts.outcomes("gateway-1")) == 4, interval=0)
        last = posts.outcomes("gateway-1")[3].message
        assert last is not None and last.seq == 2

    run(scenario)


def test_wiring_reports_metrics_to_the_api_at_once_with_the_inbox_depth() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        # Before the first Wiring nothing is written: all three wait in the inbox.
        core.handle(batch(1, send(1)), "gateway-1")
        core.handle(batch(2, send(2)), "gateway-1")
        core.handle(batch(3, send(3)), "gateway-1")
        core.handle(WIRING, None)
        (report,) = posts.to("api", MetricsReport)
        assert report.actor_id == PERSISTER
        assert report.snapshot.value("chime_queue_depth", "persist_inbox") == 3

    run(scenario)


def test_an_unknown_message_is_ignored() -> None:
    async def scenario(core: PersisterCore, store: HeldStore, posts: Posts) -> None:
        core.handle("what is this", "someone")
        core.handle(WIRING, None)
        core.handle(batch(1, send(1)), "gateway-1")
        await until(lambda: posts.outcomes("gateway-1"), interval=0)
        assert not any(a == "someone" for a, _ in posts.sent)

    run(scenario)
