"""chime_actors.handlers.after_store: order, gaps, retries, the bound, cursors, replies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import pytest

from chime_actors.config import HandlerConfig, HandlerFailure, HandlerStage
from chime_actors.errors import FencedOut, HandlerError
from chime_actors.handlers import Reply
from chime_actors.handlers.after_store import (
    FIRST_RETRY_S,
    HOLD_RETRY_S,
    REGISTERED,
    STUCK_AFTER_S,
    AfterStoreWorker,
    Backlog,
    Cursors,
)
from chime_actors.handlers.metrics import HandlerMetrics
from chime_actors.ids import format_message_id
from chime_actors.metrics import MetricsRegistry
from chime_actors.records import (
    ChangeKind,
    ChannelEvent,
    ChimeMessage,
    MessageChange,
    SendOutcome,
    SendRecord,
)
from chime_actors.storage.memory_store import MemoryStore
from tests.support.clock import FakeClock
from tests.support.polling import until

WAIT_S = 10.0


def message(seq: int, channel: str = "room", content: str = "") -> ChimeMessage:
    return ChimeMessage(
        channel_id=channel,
        message_id=format_message_id(seq),
        user_id="alice",
        content=content or f"{channel} {seq}",
        created_at="2026-01-01T00:00:00.000Z",
    )


def spec(
    *, channels: tuple[str, ...] = ("room", "other"), backlog: int = 100, accept: bool = False
) -> HandlerConfig:
    return HandlerConfig(
        name="h",
        use="test",
        stage=HandlerStage.AFTER_STORE,
        channels=channels,
        backlog=backlog,
        on_failure=HandlerFailure.ACCEPT if accept else HandlerFailure.REJECT,
    )


class Handler:
    """The handler as the worker sees it (``Call``): records, fails on demand, may reply."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.events: list[ChannelEvent] = []
        self.fail_next = 0
        self.replies: Callable[[ChannelEvent], Sequence[Any]] = lambda m: ()

    async def __call__(self, message: ChannelEvent) -> Sequence[Reply]:
        if self.fail_next:
            self.fail_next -= 1
            raise HandlerError("down")
        self.seen.append((message.channel_id, message.seq))
        self.events.append(message)
        return self.replies(message)


class Sent:
    """The persist link as the worker sees it (``Send``)."""

    def __init__(self) -> None:
        self.records: list[SendRecord] = []
        self.refuse = False

    async def __call__(self, record: SendRecord) -> SendOutcome:
        self.records.append(record)
        if self.refuse:
            return SendOutcome(record.token, error_code="unavailable", error_message="down")
        return SendOutcome(record.token, message=message(1, record.channel_id, record.content))


class Harness:
    def __init__(
        self,
        store: MemoryStore,
        handler_spec: HandlerConfig,
        *,
        fence: int | None = None,
        hold_max_s: float = 0.0,
    ) -> None:
        self.store = store
        self.fenced_out = 0
        self.handler = Handler()
        self.sent = Sent()
        self.sleeps: list[float] = []
        self.clock = FakeClock()
        self.registry = MetricsRegistry()

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.sleep(0)

        self.worker = AfterStoreWorker(
            handler_spec,
            store,
            self.handler,
            self.sent,
            HandlerMetrics.register(self.registry).of("h"),
            max_content_chars=50,
            clock=self.clock,
            sleep=sleep,
            fence=fence,
            hold_max_s=hold_max_s,
            on_fenced=self._on_fenced,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Harness:
        await self.worker.register()
        self._task = asyncio.get_running_loop().create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task

    def _on_fenced(self) -> None:
        self.fenced_out += 1

    def counter(self, name: str) -> float | None:
        return self.registry.snapshot("handler 1").value(name, "h")


def run(scenario: Callable[[MemoryStore], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await asyncio.wait_for(scenario(store), 30)

    asyncio.run(main())


def test_the_first_start_begins_at_every_channel_head() -> None:
    async def scenario(store: MemoryStore) -> None:
        await store.append([message(1), message(2), message(1, "other"), message(1, "ignored")])
        async with Harness(store, spec()) as h:
            await until(
                lambda: not h.worker._scan_wanted, WAIT_S, interval=0
            )  # the start-up scan ran
            assert h.handler.seen == []  # history before the handler existed is not handed over
        cursors = await store.handler_cursors("h")
        assert dict(cursors) == {"room": 2, "other": 1, REGISTERED: 0}

    run(scenario)


def test_live_messages_are_handed_over_in_order_and_confirmed() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            batch = [message(1), message(1, "other"), message(2), message(1, "ignored")]
            await store.append(batch)
            h.worker.offer(batch)
            await until(lambda: len(h.handler.seen) == 3, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("other", 1), ("room", 2)]
            await h.worker.flush()
        assert dict(await store.handler_cursors("h")) == {"room": 2, "other": 1, REGISTERED: 0}
        assert h.counter("chime_handler_handled_total") == 3
        assert h.worker.lag == 0

    run(scenario)


def change(seq: int, of: int, kind: ChangeKind = ChangeKind.DELETE) -> MessageChange:
    return MessageChange(
        channel_id="room",
        event_id=format_message_id(seq),
        kind=kind,
        message_id=format_message_id(of),
        user_id="alice",
        at="2026-01-01T00:00:01.000Z",
        emoji="+1" if kind is ChangeKind.REACTION_ADD else None,
    )


def test_a_message_ahead_of_its_predecessors_waits_for_them_from_storage() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            events = [message(1), message(2), message(3), change(4, of=2), message(5)]
            await store.append(events)
            h.worker.offer([message(5)])  # 1-4 never arrived live
            await until(lambda: h.worker.cursors.of("room") == 5, WAIT_S, interval=0)
            # Message 2 is deleted: the delete (4) is handed over, the message is not.
            assert h.handler.seen == [("room", 1), ("room", 3), ("room", 4), ("room", 5)]
            h.worker.offer([message(3), message(5)])  # late repeats: not handed over again
            await until(lambda: len(h.worker.backlog) == 0, WAIT_S, interval=0)
            assert len(h.handler.seen) == 4

    run(scenario)


def test_changes_are_handed_over_in_the_channel_order_with_the_messages() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            events = [message(1), change(2, of=1, kind=ChangeKind.REACTION_ADD), message(3)]
            await store.append(events)
            h.worker.offer(events)
            await until(lambda: len(h.handler.seen) == 3, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 2), ("room", 3)]
            assert isinstance(h.handler.events[1], MessageChange)

    run(scenario)


def test_a_failing_call_is_retried_with_backoff_until_it_succeeds() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            await store.append([message(1), message(2)])
            h.handler.fail_next = 3
            h.worker.offer([message(1), message(2)])
            await until(lambda: len(h.handler.seen) == 2, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 2)]
            assert h.sleeps[:3] == [FIRST_RETRY_S, FIRST_RETRY_S * 2, FIRST_RETRY_S * 4]
            assert h.counter("chime_handler_failures_total") == 3

    run(scenario)


def test_with_on_failure_accept_a_failed_message_is_skipped() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(accept=True)) as h:
            await store.append([message(1), message(2)])
            h.handler.fail_next = 1
            h.worker.offer([message(1), message(2)])
            await until(lambda: h.worker.cursors.of("room") == 2, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 2)]
            assert h.sleeps == []

    run(scenario)


def test_past_the_backlog_bound_it_pauses_and_reads_storage_dropping_nothing() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(backlog=3)) as h:
            gate = asyncio.Event()
            original = h.handler.__call__

            async def slow(m: ChannelEvent) -> Sequence[Reply]:
                await gate.wait()
                return await original(m)

            h.worker._call = slow
            batch = [message(n) for n in range(1, 21)] + [message(n, "other") for n in (1, 2)]
            await store.append(batch)
            h.worker.offer(batch)
            assert len(h.worker.backlog) <= 3
            assert h.worker.backlog.paused
            assert h.worker.backlog.behind == 2  # both channels will be read from storage
            gate.set()
            await until(lambda: len(h.handler.seen) == 22, WAIT_S, interval=0)
            assert h.handler.seen[:20] == [("room", n) for n in range(1, 21)]
            assert sorted(h.handler.seen) == sorted({(m.channel_id, m.seq) for m in batch})
            assert not h.worker.backlog.paused

    run(scenario)


def test_a_restart_resumes_after_the_saved_cursor_without_gaps() -> None:
    async def scenario(store: MemoryStore) -> None:
        await store.save_handler_cursors("h", {REGISTERED: 0, "room": 2})
        await store.append([message(n) for n in range(1, 6)] + [message(1, "other")])
        async with Harness(store, spec()) as h:
            await until(lambda: len(h.handler.seen) == 4, WAIT_S, interval=0)
            assert [s for s in h.handler.seen if s[0] == "room"] == [("room", n) for n in (3, 4, 5)]
            assert ("other", 1) in h.handler.seen

    run(scenario)


def test_storage_down_during_a_catch_up_is_retried_later() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            await store.append([message(n) for n in range(1, 4)])
            store.fail_next(1)
            h.worker.offer([message(3)])
            await until(lambda: len(h.handler.seen) == 3, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 2), ("room", 3)]

    run(scenario)


def test_replies_are_stored_with_a_key_per_message_and_failures_retried() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            h.handler.replies = lambda m: (Reply(content="re", user_id="bot"),)
            h.sent.refuse = True
            await store.append([message(1)])
            h.worker.offer([message(1)])
            await until(lambda: len(h.sent.records) >= 2, WAIT_S, interval=0)
            h.sent.refuse = False
            await until(lambda: h.worker.cursors.of("room") == 1, WAIT_S, interval=0)
            first, second = h.sent.records[0], h.sent.records[-1]
            assert first.client_msg_id == second.client_msg_id  # the same send, retried
            assert first.client_msg_id is not None and first.client_msg_id.startswith("handler:")
            assert first.token != second.token
            assert (second.channel_id, second.user_id, second.content) == ("room", "bot", "re")

    run(scenario)


@pytest.mark.parametrize(
    "bad",
    [
        Reply(content="x", user_id="not a user"),
        Reply(content="x", user_id="bot", channel_id="bad channel"),
        Reply(content="x" * 51, user_id="bot"),
        Reply(content=" ", user_id="bot"),
        Reply(content="x", user_id="bot", metadata={"k": "v"}),  # type: ignore[arg-type]
        "text",
    ],
)
def test_an_invalid_reply_is_a_failure(bad: Any) -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(accept=True)) as h:
            h.handler.replies = lambda m: (bad,)
            await store.append([message(1)])
            h.worker.offer([message(1)])
            await until(lambda: h.worker.cursors.of("room") == 1, WAIT_S, interval=0)
            assert h.sent.records == []
            assert h.counter("chime_handler_failures_total") == 1

    run(scenario)


def test_stuck_while_it_has_work_and_confirms_nothing() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec()) as h:
            assert not h.worker.stuck
            h.handler.fail_next = 10**6
            await store.append([message(1)])
            h.worker.offer([message(1)])
            await until(lambda: len(h.sleeps) > 2, WAIT_S, interval=0)
            assert h.worker.lag == 1
            assert not h.worker.stuck
            h.clock.now += STUCK_AFTER_S + 1
            assert h.worker.stuck
            h.handler.fail_next = 0
            await until(lambda: h.worker.cursors.of("room") == 1, WAIT_S, interval=0)
            assert not h.worker.stuck

    run(scenario)


def test_cursors_and_backlog_bookkeeping() -> None:
    cursors = Cursors()
    cursors.load({"a": 3})
    cursors.confirm("a", 2)
    cursors.confirm("b", 1)
    assert cursors.of("a") == 3 and cursors.of("b") == 1 and cursors.of("c") == 0
    assert cursors.unsaved() == {"b": 1}
    cursors.saved({"b": 1})
    assert cursors.unsaved() == {}

    async def backlog() -> None:
        queue = Backlog(1)
        queue.offer(message(1))
        queue.offer(message(2))
        assert queue.paused and len(queue) == 1
        assert queue.next() == message(1)
        assert queue.next() == "room"
        assert not queue.paused
        assert queue.next() is None

    asyncio.run(backlog())


# --- several hosts: fences, repeats, holes still being stored -----------------------


def test_under_a_fence_cursors_are_saved_until_a_newer_holder_claims() -> None:
    async def scenario(store: MemoryStore) -> None:
        await store.claim_handler_fence("h", 3)
        await store.save_handler_cursors("h", {"room": 0, REGISTERED: 0}, fence=3)
        async with Harness(store, spec(), fence=3) as h:
            await store.append([message(1), message(2)])
            h.worker.offer([message(1)])
            await until(lambda: h.worker.cursors.of("room") == 1, WAIT_S, interval=0)
            await h.worker.flush()
            assert dict(await store.handler_cursors("h"))["room"] == 1
            await store.claim_handler_fence("h", 4)  # another host took over
            h.worker.offer([message(2)])
            await until(lambda: h.worker.cursors.of("room") == 2, WAIT_S, interval=0)
            await h.worker.flush()
            assert h.fenced_out == 1
            assert dict(await store.handler_cursors("h"))["room"] == 1  # not overwritten
            with pytest.raises(FencedOut):  # what the holder sees when it stops
                await store.save_handler_cursors("h", h.worker.cursors.unsaved(), fence=3)

    run(scenario)


def test_an_event_arriving_twice_is_queued_once_and_one_ahead_is_read_from_storage() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(), hold_max_s=1.0) as h:
            gate = asyncio.Event()
            original = h.handler.__call__

            async def gated(m: ChannelEvent) -> Sequence[Reply]:
                await gate.wait()
                return await original(m)

            h.worker._call = gated
            await store.append([message(1), message(2), message(3)])
            h.worker.offer([message(1), message(3)])  # from another host, ahead of 2
            h.worker.offer([message(1), message(2), message(3)])  # the local persister's
            await until(
                lambda: h.worker.backlog.paused or len(h.worker.backlog) <= 2, WAIT_S, interval=0
            )
            assert len(h.worker.backlog) <= 2  # 1 (perhaps taken already) and 3, once each
            gate.set()
            await until(lambda: h.worker.cursors.of("room") == 3, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 2), ("room", 3)]

    run(scenario)


def test_with_several_hosts_a_hole_is_held_until_another_host_stores_it() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(), hold_max_s=1.0) as h:
            await store.append([message(1), message(3)])  # 2: still being stored elsewhere
            h.worker.offer([message(3)])
            await until(lambda: h.handler.seen == [("room", 1)], WAIT_S, interval=0)
            await until(
                lambda: h.sleeps.count(HOLD_RETRY_S) >= 3, WAIT_S, interval=0
            )  # asking storage again
            assert h.worker.cursors.of("room") == 1
            await store.append([message(2)])
            await until(lambda: h.worker.cursors.of("room") == 3, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 2), ("room", 3)]

    run(scenario)


def test_with_several_hosts_a_hole_that_never_comes_is_skipped_after_the_hold() -> None:
    async def scenario(store: MemoryStore) -> None:
        async with Harness(store, spec(), hold_max_s=1.0) as h:
            await store.append([message(1), message(3), message(5)])  # 2, 4: writes that failed
            h.worker.offer([message(5)])
            await until(lambda: h.handler.seen == [("room", 1)], WAIT_S, interval=0)
            await until(lambda: h.sleeps.count(HOLD_RETRY_S) >= 3, WAIT_S, interval=0)
            h.clock.now += 1.0  # the hold is over for every id below the head seen then
            await until(lambda: h.worker.cursors.of("room") == 5, WAIT_S, interval=0)
            assert h.handler.seen == [("room", 1), ("room", 3), ("room", 5)]
            held = h.sleeps.count(HOLD_RETRY_S)
            # A hole below a head seen long ago is not held again.
            await store.append([message(7, "other"), message(6)])
            h.worker.offer([message(6)])
            await until(lambda: h.worker.cursors.of("room") == 6, WAIT_S, interval=0)
            assert h.sleeps.count(HOLD_RETRY_S) == held

    run(scenario)
