"""Tests for chime_actors.gateway.channel_actor: fan-out, resume, gaps, failure policy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from chime_actors.errors import StoreError
from chime_actors.gateway.channel_actor import (
    ChannelActor,
    ChannelStats,
    InjectFault,
    JoinResult,
    Leave,
    Publish,
)
from chime_actors.gateway.local_supervisor import RestartPolicy
from chime_actors.ids import format_message_id
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange
from chime_actors.storage import HistoryPage, MemoryStore
from tests.support.clock import FakeClock
from tests.support.polling import until

CHANNEL = "general"
TIMEOUT = 5.0


def msg(seq: int) -> ChimeMessage:
    return ChimeMessage(
        channel_id=CHANNEL,
        message_id=format_message_id(seq),
        user_id="alice",
        content=f"m{seq}",
        created_at="2026-11-27T10:00:00.000Z",
    )


def msgs(first: int, last: int) -> tuple[ChimeMessage, ...]:
    return tuple(msg(seq) for seq in range(first, last + 1))


def deleted(seq: int, target: int) -> MessageChange:
    """A delete of message ``target``, at position ``seq``."""
    return MessageChange(
        CHANNEL,
        format_message_id(seq),
        ChangeKind.DELETE,
        format_message_id(target),
        "alice",
        "2026-11-27T10:00:01.000Z",
    )


class FakeSubscriber:
    """A connection as the channel sees it: records frames and aborts.

    ``room`` plays flow control: how many more message frames its client takes
    before offers are refused (None: no limit); ``make_room`` gives it more and
    wakes the channels it refused, as an outbox does.
    """

    def __init__(
        self, connection_id: str, *, failing_pushes: int = 0, room: int | None = None
    ) -> None:
        self._connection_id = connection_id
        self.frames: list[dict[str, Any]] = []
        self.aborted: list[tuple[int, str]] = []
        self.failing_pushes = failing_pushes
        self.room = room
        self.refused = 0
        self.wakes: list[Callable[[], None]] = []

    @property
    def connection_id(self) -> str:
        return self._connection_id

    def push(self, frame: str | WireFrame) -> None:
        if self.failing_pushes > 0:
            self.failing_pushes -= 1
            raise RuntimeError("push failed")
        self.frames.append(json.loads(frame if isinstance(frame, str) else frame.text))

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        if self.room is not None:
            if self.room <= 0 or self.wakes:
                self.refused += 1
                if on_room not in self.wakes:
                    self.wakes.append(on_room)
                return False
            self.room -= 1
        self.push(frame)
        return True

    def make_room(self, frames: int | None) -> None:
        self.room = frames
        wakes, self.wakes = self.wakes, []
        for wake in wakes:
            wake()

    def abort(self, code: int, reason: str) -> None:
        self.aborted.append((code, reason))

    @property
    def seqs(self) -> list[int]:
        """Sequence numbers of the message frames received, in order."""
        return [int(f["message"]["messageId"]) for f in self.frames if f["type"] == "message"]

    @property
    def types(self) -> list[str]:
        return [f["type"] for f in self.frames]


class FaultyStore(MemoryStore):
    """A MemoryStore whose reads can raise a bug (not a ``StoreError``) once."""

    def __init__(self) -> None:
        super().__init__()
        self.crash: set[str] = set()

    def _maybe_crash(self, operation: str) -> None:
        if operation in self.crash:
            self.crash.discard(operation)
            raise RuntimeError(f"{operation} bug")

    async def events_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChannelEvent, ...]:
        self._maybe_crash("events_range")
        return await super().events_range(channel_id, after_seq=after_seq, up_to_seq=up_to_seq)

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
        thread_id: str | None = None,
    ) -> HistoryPage:
        self._maybe_crash("history")
        return await super().history(
            channel_id, before=before, after=after, limit=limit, thread_id=thread_id
        )


class Harness:
    """One channel actor over a store, plus what it reported."""

    def __init__(self, store: FaultyStore, actor: ChannelActor, stopped: list[str]) -> None:
        self.store = store
        self.actor = actor
        self.stopped = stopped

    async def stored(self, messages: Sequence[ChannelEvent]) -> None:
        await self.store.append(messages)

    async def barrier(self) -> None:
        """Return once every mail told so far has been handled.

        The mailbox is handled in order, so a join of a fresh probe subscriber
        completes only after everything before it.
        """
        probe = FakeSubscriber(f"probe-{id(object())}")
        await asyncio.wait_for(self.actor.join(probe, None), TIMEOUT)
        self.actor.tell(Leave(probe.connection_id))


Scenario = Callable[[Harness], Awaitable[None]]


def run(
    scenario: Scenario,
    *,
    max_resume: int = 100,
    policy: RestartPolicy | None = None,
    clock: FakeClock | None = None,
    start: bool = True,
    hold_max_s: float = 0.0,
    **bounds: Any,
) -> None:
    """Run ``scenario`` on a fresh actor; ``bounds`` are its mailbox and catch-up ones."""

    async def main() -> None:
        store = FaultyStore()
        await store.open()
        stopped: list[str] = []
        actor = ChannelActor(
            CHANNEL,
            store,
            max_resume_messages=max_resume,
            on_stopped=stopped.append,
            policy=policy or RestartPolicy(),
            stats=ChannelStats(),
            clock=clock or FakeClock(),
            hold_max_s=hold_max_s,
            **bounds,
        )
        if start:
            actor.start()
        try:
            await scenario(Harness(store, actor, stopped))
        finally:
            await actor.stop()
            await store.close()

    asyncio.run(main())


# --- join and live fan-out ----------------------------------------------------------


def test_join_takes_the_stored_baseline() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 3))
        sub = FakeSubscriber("c1")
        assert await h.actor.join(sub, None) == JoinResult()
        assert h.actor.member_count == 1
        assert sub.frames == []
        # Already stored at join time: not live for this subscriber.
        h.actor.tell(Publish(msgs(1, 3)))
        await h.stored([msg(4)])
        h.actor.tell(Publish((msg(4),)))
        await h.barrier()
        assert sub.seqs == [4]
        assert sub.frames[0]["message"] == msg(4).to_wire()
        assert h.actor.stats.delivered == 1

    run(scenario)


def test_every_member_gets_every_message_once() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        await h.stored(msgs(1, 2))
        h.actor.tell(Publish(msgs(1, 2)))
        h.actor.tell(Publish(msgs(1, 2)))  # a repeat is skipped
        await h.barrier()
        assert a.seqs == [1, 2]
        assert b.seqs == [1, 2]

    run(scenario)


def test_join_without_storage_still_delivers_live() -> None:
    async def scenario(h: Harness) -> None:
        h.store.fail_next(1)  # the baseline read
        sub = FakeSubscriber("c1")
        assert await h.actor.join(sub, None) == JoinResult()
        await h.stored(msgs(1, 2))
        h.actor.tell(Publish((msg(2),)))
        await h.barrier()
        assert sub.seqs == [2]

    run(scenario)


# --- fan-out in slices ---------------------------------------------------------------


class FlushLog:
    """Plays the gateway's ``FlushQueue``: the first offer after a flush schedules
    the next one (``call_soon``); each flush records whose frames it wrote, and
    then runs ``on_flush`` (what else the loop does between two slices)."""

    def __init__(self) -> None:
        self.flushes: list[list[str]] = []
        self.on_flush: Callable[[], None] = lambda: None
        self._waiting: list[str] | None = None

    def offered(self, connection_id: str) -> None:
        if self._waiting is None:
            self._waiting = []
            asyncio.get_running_loop().call_soon(self._flush)
        if connection_id not in self._waiting:
            self._waiting.append(connection_id)

    def _flush(self) -> None:
        assert self._waiting is not None
        self.flushes.append(self._waiting)
        self._waiting = None
        self.on_flush()


class FlushingSubscriber(FakeSubscriber):
    """A subscriber whose accepted offers wait for a ``FlushLog`` flush."""

    def __init__(self, connection_id: str, log: FlushLog, **kwargs: Any) -> None:
        super().__init__(connection_id, **kwargs)
        self._log = log

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        accepted = super().offer(frame, on_room)
        if accepted:
            self._log.offered(self.connection_id)
        return accepted


async def members(h: Harness, log: FlushLog, count: int, **kwargs: Any) -> list[FakeSubscriber]:
    subs: list[FakeSubscriber] = [FlushingSubscriber(f"m{i}", log, **kwargs) for i in range(count)]
    for sub in subs:
        await h.actor.join(sub, None)
    return subs


def test_a_big_fan_out_is_given_a_slice_at_a_time_each_flushed_before_the_next() -> None:
    steps: list[float] = []

    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 5)
        await h.stored(msgs(1, 3))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        # The loop ran (and flushed) between two slices: each slice's members
        # were written before the next slice was offered anything.
        assert log.flushes == [["m0", "m1"], ["m2", "m3"], ["m4"]]
        # Each member got the delivery's messages once, in order.
        assert [sub.seqs for sub in subs] == [[1, 2, 3]] * 5
        assert h.actor.stats.delivered == 15

    run(scenario, fanout_slice=2, observe_step=steps.append)
    # One observed step per slice (the probe's join delivers nothing).
    assert len(steps) == 3


def test_back_to_back_deliveries_keep_every_members_order_once() -> None:
    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 5)
        await h.stored(msgs(1, 7))
        h.actor.tell(Publish(msgs(1, 3)))
        h.actor.tell(Publish(msgs(2, 5)))  # overlaps the first: 2 and 3 are not given again
        h.actor.tell(Publish(msgs(6, 7)))
        await h.barrier()
        assert [sub.seqs for sub in subs] == [[1, 2, 3, 4, 5, 6, 7]] * 5

    run(scenario, fanout_slice=2)


def test_deliveries_queued_behind_each_other_are_fanned_out_as_one() -> None:
    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 5)
        await h.stored(msgs(1, 6))
        # Told within one loop turn: queued behind each other when the actor runs.
        h.actor.tell(Publish(msgs(1, 2)))
        h.actor.tell(Publish(msgs(3, 4)))
        h.actor.tell(Publish(msgs(5, 6)))
        await h.barrier()
        # One fan-out: each member was written to once, with all six.
        assert log.flushes == [["m0", "m1"], ["m2", "m3"], ["m4"]]
        assert [sub.seqs for sub in subs] == [[1, 2, 3, 4, 5, 6]] * 5

    run(scenario, fanout_slice=2)


def test_a_member_that_leaves_during_a_sliced_fan_out_gets_nothing_more() -> None:
    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 6)
        # Between the first two slices: m0 (given the delivery already) and m4
        # (in the last slice, not reached yet) leave.
        log.on_flush = lambda: (h.actor.tell(Leave("m0")), h.actor.tell(Leave("m4")), None)[-1]
        await h.stored(msgs(1, 4))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        log.on_flush = lambda: None
        h.actor.tell(Publish((msg(4),)))
        await h.barrier()
        assert subs[0].seqs == [1, 2, 3]
        assert subs[4].seqs == []
        for i in (1, 2, 3, 5):
            assert subs[i].seqs == [1, 2, 3, 4], i
        assert h.actor.member_count == 4

    run(scenario, fanout_slice=2)


def test_a_member_held_back_during_a_sliced_fan_out_catches_up_in_order() -> None:
    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 4)
        slow = subs[3]
        assert isinstance(slow, FakeSubscriber)
        slow.room = 1  # takes message 1, refuses 2 (the last slice)
        await h.stored(msgs(1, 4))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        assert slow.seqs == [1]
        slow.make_room(None)
        await until(lambda: slow.seqs == [1, 2, 3], TIMEOUT, interval=0)
        h.actor.tell(Publish((msg(4),)))
        await h.barrier()
        assert [sub.seqs for sub in subs] == [[1, 2, 3, 4]] * 4

    run(scenario, fanout_slice=2)


def test_a_fan_out_interrupted_by_a_failure_is_finished_from_storage() -> None:
    async def scenario(h: Harness) -> None:
        log = FlushLog()
        subs = await members(h, log, 5)
        # m3 (second slice) raises on its first offer: m4 (third slice) has not
        # been reached when the actor restarts.
        subs[3].failing_pushes = 1
        await h.stored(msgs(1, 3))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        await until(lambda: all(sub.seqs == [1, 2, 3] for sub in subs), TIMEOUT, interval=0)
        assert h.actor.stats.restarts == 1

    run(scenario, fanout_slice=2)


# --- resume -----------------------------------------------------------------------


def test_resume_replays_then_says_resumed() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 5))
        sub = FakeSubscriber("c1")
        result = await h.actor.join(sub, format_message_id(2))
        assert result == JoinResult(replayed=3)
        assert sub.seqs == [3, 4, 5]
        assert sub.frames[-1] == {"type": "resumed", "channelId": CHANNEL, "count": 3}

    run(scenario)


def test_resume_with_nothing_new() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 2))
        sub = FakeSubscriber("c1")
        assert await h.actor.join(sub, format_message_id(2)) == JoinResult(replayed=0)
        assert sub.frames == [{"type": "resumed", "channelId": CHANNEL, "count": 0}]

    run(scenario)


def test_resume_too_many_fails_but_subscribes() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 5))
        sub = FakeSubscriber("c1")
        result = await h.actor.join(sub, format_message_id(1))
        assert result == JoinResult(resume_failed="too_many")
        assert sub.frames == [{"type": "resume_failed", "channelId": CHANNEL, "reason": "too_many"}]
        await h.stored([msg(6)])
        h.actor.tell(Publish((msg(6),)))
        await h.barrier()
        assert sub.seqs == [6]

    run(scenario, max_resume=3)


def test_resume_at_exactly_the_limit_replays() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 4))
        sub = FakeSubscriber("c1")
        assert await h.actor.join(sub, format_message_id(1)) == JoinResult(replayed=3)

    run(scenario, max_resume=3)


def test_resume_with_storage_down_fails_unavailable() -> None:
    async def scenario(h: Harness) -> None:
        await h.barrier()  # baseline read
        h.store.fail_next(1)  # the history read
        sub = FakeSubscriber("c1")
        result = await h.actor.join(sub, format_message_id(1))
        assert result == JoinResult(resume_failed="unavailable")
        assert sub.types == ["resume_failed"]
        assert sub.frames[0]["reason"] == "unavailable"

    run(scenario)


def test_replayed_and_published_message_arrives_once() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 3))
        live = FakeSubscriber("live")
        await h.actor.join(live, None)  # baseline 3
        # 4 and 5 are durable but their Deliveries have not reached the gateway.
        await h.stored(msgs(4, 5))
        resuming = FakeSubscriber("resuming")
        assert await h.actor.join(resuming, format_message_id(3)) == JoinResult(replayed=2)
        h.actor.tell(Publish(msgs(4, 5)))
        await h.stored([msg(6)])
        h.actor.tell(Publish((msg(6),)))
        await h.barrier()
        assert live.seqs == [4, 5, 6]
        assert resuming.seqs == [4, 5, 6]
        assert resuming.types == ["message", "message", "resumed", "message"]

    run(scenario)


def test_resume_ahead_of_this_gateway_gets_no_duplicates() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 3))
        await h.barrier()  # baseline 3
        # The client saw 4 and 5 through another gateway before reconnecting here,
        # where their Deliveries are still on the way.
        await h.stored(msgs(4, 5))
        sub = FakeSubscriber("c1")
        assert await h.actor.join(sub, format_message_id(5)) == JoinResult(replayed=0)
        h.actor.tell(Publish(msgs(4, 5)))
        await h.stored([msg(6)])
        h.actor.tell(Publish((msg(6),)))
        await h.barrier()
        assert sub.seqs == [6]

    run(scenario)


# --- gaps -------------------------------------------------------------------------


def test_jump_in_ids_is_filled_from_storage() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 2))
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)  # baseline 2
        await h.stored(msgs(3, 6))
        await h.stored([deleted(7, 4)])
        h.actor.tell(Publish((msg(6),)))  # 3..5 never reached this gateway
        await h.barrier()  # (told together, the two would be handled as one delivery)
        h.actor.tell(Publish(msgs(3, 5)))  # late: already filled
        await h.barrier()
        assert sub.seqs == [3, 5, 6]  # 4 was deleted
        assert h.actor.stats.gap_filled == 2

    run(scenario)


def test_gap_fill_failure_waits_for_storage_instead_of_skipping() -> None:
    """1 is stored but storage cannot be read right now: 2 waits, then both come."""

    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)  # baseline 0
        await h.stored(msgs(1, 2))
        h.store.fail_next(1)  # events_range
        h.actor.tell(Publish((msg(2),)))
        await until(lambda: sub.seqs == [1, 2], interval=0)

    run(scenario)


def test_dropped_publish_is_recovered_by_the_next_gap_fill() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)
        await h.stored(msgs(1, 2))
        assert h.actor.tell(Publish((msg(1),)))
        assert not h.actor.tell(Publish((msg(2),)))  # mailbox full: dropped
        assert h.actor.stats.dropped_mail == 1
        await until(lambda: sub.seqs == [1], interval=0)
        await h.stored([msg(3)])
        h.actor.tell(Publish((msg(3),)))
        await until(lambda: sub.seqs == [1, 2, 3], interval=0)

    run(scenario, mailbox_size=1)


# --- failure policy ---------------------------------------------------------------


def test_injected_fault_restarts_and_resyncs() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)  # baseline 0
        await h.stored(msgs(1, 2))  # stored, but the Deliveries were lost
        h.actor.tell(InjectFault())
        await h.barrier()
        assert h.actor.stats.restarts == 1
        assert sub.seqs == [1, 2]
        assert not h.actor.stopped  # still subscribed: gets what follows
        h.actor.tell(Publish(msgs(1, 2)))  # arriving late changes nothing
        await h.stored([msg(3)])
        h.actor.tell(Publish((msg(3),)))
        await h.barrier()
        assert sub.seqs == [1, 2, 3]

    run(scenario)


def test_fault_while_publishing_does_not_lose_the_message() -> None:
    async def scenario(h: Harness) -> None:
        flaky = FakeSubscriber("flaky")
        steady = FakeSubscriber("steady")
        await h.actor.join(flaky, None)
        await h.actor.join(steady, None)
        await h.stored([msg(1)])
        flaky.failing_pushes = 1
        h.actor.tell(Publish((msg(1),)))
        await h.barrier()
        assert h.actor.stats.restarts == 1
        assert flaky.seqs == [1]
        assert steady.seqs == [1]

    run(scenario)


def test_store_bug_during_gap_fill_restarts_and_resyncs() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)
        await h.stored(msgs(1, 3))
        h.store.crash.add("events_range")
        h.actor.tell(Publish((msg(3),)))
        await h.barrier()
        assert h.actor.stats.restarts == 1
        assert sub.seqs == [1, 2, 3]

    run(scenario)


def test_join_that_raises_tells_the_joiner() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 2))
        h.store.crash.add("events_range")  # the replay's read
        sub = FakeSubscriber("c1")
        with pytest.raises(RuntimeError, match="events_range bug"):
            await h.actor.join(sub, format_message_id(1))
        assert h.actor.stats.restarts == 1
        assert not h.actor.stopped

    run(scenario)


def test_repeated_failures_escalate_and_close_subscribers() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        for _ in range(3):
            h.actor.tell(InjectFault())
        late = asyncio.get_running_loop().create_task(h.actor.join(FakeSubscriber("late"), None))
        await until(lambda: h.stopped == [CHANNEL], interval=0)
        assert h.actor.stopped
        assert h.actor.stats.restarts == 2
        assert h.actor.member_count == 0
        for sub in (a, b):
            ((code, reason),) = sub.aborted
            assert code == 1011
            assert reason.startswith("channel failed (correlation ")
        with pytest.raises(StoreError, match="retry"):
            await asyncio.wait_for(late, TIMEOUT)  # queued behind: not left hanging
        with pytest.raises(StoreError, match="retry"):
            await h.actor.join(FakeSubscriber("after"), None)

    run(scenario, policy=RestartPolicy(max_restarts=2, within_s=10.0))


def test_failures_spread_out_in_time_do_not_escalate() -> None:
    clock = FakeClock()

    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)
        for _ in range(5):
            h.actor.tell(InjectFault())
            await h.barrier()
            clock.now += 11.0
        assert h.actor.stats.restarts == 5
        assert not h.actor.stopped
        assert sub.aborted == []

    run(scenario, policy=RestartPolicy(max_restarts=1, within_s=10.0), clock=clock)


# --- lifetime ---------------------------------------------------------------------


def test_stops_when_the_last_member_leaves() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b")
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        h.actor.tell(Leave("a"))
        h.actor.tell(Leave("unknown"))  # harmless
        await h.stored([msg(1)])
        h.actor.tell(Publish((msg(1),)))
        await until(lambda: b.seqs == [1], interval=0)
        assert not h.actor.stopped
        assert a.seqs == []
        h.actor.tell(Leave("b"))
        await until(lambda: h.stopped == [CHANNEL], interval=0)
        assert h.actor.stopped
        assert h.actor.member_count == 0

    run(scenario)


def test_stop_cancels_the_loop() -> None:
    async def scenario(h: Harness) -> None:
        await h.actor.join(FakeSubscriber("a"), None)
        await h.actor.stop()
        assert h.actor.stopped
        assert h.stopped == []  # a shutdown is not an idle stop

    run(scenario)


def test_stop_before_start_is_fine() -> None:
    async def scenario(h: Harness) -> None:
        await h.actor.stop()
        assert h.actor.stopped

    run(scenario, start=False)


# --- several hosts: ids may arrive out of order -------------------------------------


def test_with_several_hosts_a_later_id_waits_for_an_earlier_one() -> None:
    """Host B stored 3 while host A was still storing 2: deliver 2, then 3."""

    async def scenario(h: Harness) -> None:
        await h.stored([msg(1)])
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)  # baseline 1
        await h.stored([msg(3)])
        h.actor.tell(Publish((msg(3),)))
        await h.barrier()
        assert sub.seqs == []  # 2 is not stored yet: 3 waits
        await h.stored([msg(2)])
        h.actor.tell(Publish((msg(2),)))
        await until(lambda: sub.seqs == [2, 3], interval=0)

    run(scenario, hold_max_s=1.0)


def test_with_several_hosts_a_hole_that_never_fills_is_skipped_after_the_hold() -> None:
    """An id whose write failed on another host never comes: move on."""
    clock = FakeClock()

    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)  # baseline 0
        await h.stored([msg(1), msg(3)])
        h.actor.tell(Publish((msg(1),)))
        h.actor.tell(Publish((msg(3),)))
        await until(lambda: sub.seqs == [1], interval=0)
        clock.now += 2.0  # past the hold: the retry gives up on 2
        await until(lambda: sub.seqs == [1, 3], interval=0)

    run(scenario, hold_max_s=1.0, clock=clock)


# --- deferred joins (a connect registers, sends ``connected``, then activates) --------


def test_a_deferred_subscriber_gets_nothing_until_activated_then_everything_once() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 3))
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, format_message_id(1), deferred=True)
        await h.stored([msg(4)])
        h.actor.tell(Publish((msg(4),)))  # stored after registration: kept for it
        await h.barrier()
        assert sub.frames == []  # nothing may precede the client's ``connected``
        result = await h.actor.activate("c1")
        assert result.replayed == 3  # 2, 3 and 4 from storage
        assert sub.seqs == [2, 3, 4]  # 4 once, though it was also kept live
        assert sub.frames[-1]["type"] == "resumed"
        await h.stored([msg(5)])
        h.actor.tell(Publish((msg(5),)))
        await until(lambda: sub.seqs == [2, 3, 4, 5], interval=0)

    run(scenario)


def test_a_deferred_plain_subscriber_receives_what_arrived_before_activation() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None, deferred=True)  # baseline 0
        await h.stored([msg(1)])
        h.actor.tell(Publish((msg(1),)))
        await h.barrier()
        assert sub.frames == []
        await h.actor.activate("c1")
        assert sub.seqs == [1]

    run(scenario)


# --- flow control: a member whose connection holds back catches up from storage ------


def test_a_member_held_back_catches_up_from_storage_in_order_then_goes_live() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b", room=2)
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        await h.stored(msgs(1, 7))
        h.actor.tell(Publish(msgs(1, 6)))
        await h.barrier()
        assert a.seqs == [1, 2, 3, 4, 5, 6]
        assert b.seqs == [1, 2]  # 3 was refused: b is behind, nothing live for it
        assert b.refused == 1
        h.actor.tell(Publish((msg(7),)))
        await h.barrier()
        assert a.seqs[-1] == 7
        assert b.seqs == [1, 2] and b.refused == 1  # not even offered
        b.make_room(3)  # its client took some: 3, 4, 5 from storage, then held again
        await until(lambda: b.refused == 2, interval=0)
        assert b.seqs == [1, 2, 3, 4, 5]
        b.make_room(None)
        await until(lambda: b.seqs == [1, 2, 3, 4, 5, 6, 7], interval=0)
        await h.stored([msg(8)])
        h.actor.tell(Publish((msg(8),)))  # live again
        await until(lambda: b.seqs[-1] == 8, interval=0)
        assert a.seqs == b.seqs == list(range(1, 9))
        assert h.actor.stats.caught_up == 5

    run(scenario)


def test_a_resume_replay_is_paced_by_the_connection_then_resumed_then_live() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 10))
        sub = FakeSubscriber("c1", room=3)
        result = await h.actor.join(sub, format_message_id(0))
        assert result == JoinResult(replayed=3)  # what went before the join returned
        assert sub.types == ["message"] * 3
        await h.stored([msg(11)])
        h.actor.tell(Publish((msg(11),)))  # newer than the replay: after ``resumed``
        await h.barrier()
        assert sub.seqs == [1, 2, 3]
        sub.make_room(None)
        await until(lambda: len(sub.frames) == 12, interval=0)
        assert sub.seqs == list(range(1, 12))
        assert sub.frames[10] == {"type": "resumed", "channelId": CHANNEL, "count": 10}
        await h.stored([msg(12)])
        h.actor.tell(Publish((msg(12),)))
        await until(lambda: sub.seqs[-1] == 12, interval=0)
        assert sub.seqs == list(range(1, 13))

    run(scenario)


def test_a_long_catch_up_lets_other_mail_through_and_stays_in_order() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b", room=0)
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        await h.stored(msgs(1, 20))
        h.actor.tell(Publish(msgs(1, 20)))
        await h.barrier()
        b.make_room(None)
        # Four ids per turn of the actor; live messages keep coming meanwhile.
        for seq in range(21, 25):
            await h.stored([msg(seq)])
            h.actor.tell(Publish((msg(seq),)))
        await until(lambda: len(b.seqs) == 24, interval=0)
        assert a.seqs == b.seqs == list(range(1, 25))

    run(scenario, catch_up_page=2, catch_up_turn=4)


def test_a_member_behind_that_leaves_is_not_caught_up() -> None:
    async def scenario(h: Harness) -> None:
        a, b = FakeSubscriber("a"), FakeSubscriber("b", room=0)
        await h.actor.join(a, None)
        await h.actor.join(b, None)
        await h.stored(msgs(1, 3))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        h.actor.tell(Leave("b"))
        b.make_room(None)  # a late wake-up of a member that is gone
        await h.barrier()
        assert a.seqs == [1, 2, 3]
        assert b.seqs == []

    run(scenario)


def test_a_catch_up_that_storage_fails_is_tried_again() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1", room=1)
        await h.actor.join(sub, None)
        await h.stored(msgs(1, 3))
        h.actor.tell(Publish(msgs(1, 3)))
        await h.barrier()
        assert sub.seqs == [1]
        h.store.fail_next(1)
        sub.make_room(None)
        await until(lambda: sub.seqs == [1, 2, 3], interval=0)

    run(scenario, catch_up_retry_s=0.01)


def test_a_deferred_subscriber_that_missed_more_than_it_keeps_reads_them_from_storage() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None, deferred=True)  # baseline 0
        await h.stored(msgs(1, 5))
        h.actor.tell(Publish(msgs(1, 5)))
        await h.barrier()
        assert sub.frames == []
        await h.actor.activate("c1")
        assert sub.seqs == [1, 2, 3, 4, 5]
        assert sub.aborted == []  # it was never the client's fault

    run(scenario, max_pending=2)


def test_resume_limit_counts_stored_messages_not_ids() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored(msgs(1, 7))
        # Deleted messages keep their ids but are not replayed; the deletes are.
        await h.stored([deleted(8, 2), deleted(9, 3)])
        sub = FakeSubscriber("c1")
        # Nine ids after the resume point, but only seven events: within the limit.
        assert await h.actor.join(sub, format_message_id(0)) == JoinResult(replayed=7)
        assert sub.seqs == [1, 4, 5, 6, 7]
        assert [f["eventId"] for f in sub.frames if f["type"] == "message_deleted"] == [
            format_message_id(8),
            format_message_id(9),
        ]

    run(scenario, max_resume=7)


# --- changes (edits, deletes, reactions) --------------------------------------------


def edited(seq: int, target: int, content: str) -> MessageChange:
    """An edit of message ``target``, at position ``seq``."""
    at = "2026-11-27T10:00:02.000Z"
    new = ChimeMessage(
        CHANNEL, format_message_id(target), "alice", content, msg(target).created_at, at
    )
    return MessageChange(
        CHANNEL,
        format_message_id(seq),
        ChangeKind.EDIT,
        format_message_id(target),
        "alice",
        at,
        message=new,
    )


def test_changes_reach_subscribers_in_the_channels_order() -> None:
    async def scenario(h: Harness) -> None:
        sub = FakeSubscriber("c1")
        await h.actor.join(sub, None)
        events = (msg(1), edited(2, 1, "new"), msg(3), deleted(4, 3))
        await h.stored(events)
        # The edit's Publish is lost on the way: it is filled from storage.
        h.actor.tell(Publish((msg(1),)))
        h.actor.tell(Publish(events[2:]))
        await h.barrier()
        assert sub.types == ["message", "message_edited", "message", "message_deleted"]
        assert sub.frames[1]["message"]["content"] == "new"
        event_ids = [f.get("eventId") for f in sub.frames]
        assert event_ids == [None, format_message_id(2), None, format_message_id(4)]

    run(scenario)


def test_a_resume_past_an_edit_and_a_delete_learns_of_both() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored([*msgs(1, 3), edited(4, 1, "new"), deleted(5, 2)])
        sub = FakeSubscriber("c1")
        # The client had seen everything up to message 3, not the changes.
        assert await h.actor.join(sub, format_message_id(3)) == JoinResult(replayed=2)
        assert sub.types == ["message_edited", "message_deleted", "resumed"]
        assert sub.frames[0]["message"]["messageId"] == format_message_id(1)
        assert sub.frames[1]["messageId"] == format_message_id(2)
        assert sub.frames[2]["count"] == 2
        # From before message 1: the messages as they are now, then the changes.
        again = FakeSubscriber("c2")
        await h.actor.join(again, format_message_id(0))
        assert again.types == ["message", "message", "message_edited", "message_deleted", "resumed"]
        assert again.frames[0]["message"]["content"] == "new"

    run(scenario)
