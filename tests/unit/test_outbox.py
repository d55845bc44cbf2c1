"""Tests for ``Outbox`` and ``FlushQueue`` against a fake ``FrameSink``."""

from __future__ import annotations

import asyncio

from chime_actors.gateway.outbox import FlushQueue, Outbox
from tests.support.clock import FakeClock
from tests.support.polling import until


class FakeSink:
    def __init__(self, *, broken: bool = False) -> None:
        self.writes: list[bytes] = []
        self.broken = broken
        self.unread = 0

    def is_open(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("transport broke")
        self.writes.append(data)

    def buffered(self) -> int:
        return self.unread

    async def close(self, code: int, reason: str) -> None:
        pass


def make(
    sink: FakeSink, queue: FlushQueue, overflows: list[str], *, stall_s: float = 60.0
) -> Outbox:
    return Outbox(
        sink,
        queue,
        max_frames=100,
        max_bytes=1000,
        stall_s=stall_s,
        on_written=lambda _: None,
        on_overflow=lambda: overflows.append("overflow"),
    )


def test_one_callback_flushes_every_waiting_outbox_once_per_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue = FlushQueue()
        sinks = [FakeSink() for _ in range(3)]
        boxes = [make(sink, queue, []) for sink in sinks]
        scheduled: list[object] = []
        original = loop.call_soon

        def counting_call_soon(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            scheduled.append(callback)
            return original(callback, *args, **kwargs)

        setattr(loop, "call_soon", counting_call_soon)  # noqa: B010
        try:
            for box in boxes:
                box.put(b"a")
                box.put(b"b")
        finally:
            setattr(loop, "call_soon", original)  # noqa: B010
        assert scheduled == [queue.flush_all]
        await asyncio.sleep(0)
        assert [sink.writes for sink in sinks] == [[b"ab"]] * 3

    asyncio.run(main())


def test_each_flush_of_the_queue_is_observed_once() -> None:
    async def main() -> None:
        held: list[float] = []
        queue = FlushQueue(observe=held.append)
        sinks = [FakeSink(), FakeSink()]
        for sink in sinks:
            make(sink, queue, []).put(b"a")
        await asyncio.sleep(0)
        assert [sink.writes for sink in sinks] == [[b"a"]] * 2
        # One flush of both outboxes: one step of the loop, one observation.
        assert len(held) == 1
        assert held[0] >= 0

    asyncio.run(main())


def test_a_flush_that_raises_does_not_keep_the_others_from_their_frames() -> None:
    async def main() -> None:
        queue = FlushQueue()
        broken, fine = FakeSink(broken=True), FakeSink()
        make(broken, queue, []).put(b"x")
        make(fine, queue, []).put(b"y")
        await asyncio.sleep(0)
        assert fine.writes == [b"y"]

    asyncio.run(main())


def test_a_write_that_leaves_too_much_unread_holds_instead_of_overflowing() -> None:
    async def main() -> None:
        sink, overflows = FakeSink(), list[str]()
        box = make(sink, FlushQueue(), overflows)
        sink.unread = 1001
        box.put(b"z")
        await asyncio.sleep(0)
        assert sink.writes == [b"z"]
        assert box.held and box.over_bound
        assert overflows == []  # a client that reads is not closed for a burst
        assert not box.offer(b"m", lambda: None)

    asyncio.run(main())


def test_offers_past_the_bound_are_refused_until_the_client_takes_the_backlog() -> None:
    async def main() -> None:
        sink, wakes = FakeSink(), list[str]()
        box = make(sink, FlushQueue(poll_s=0.001), [])
        assert box.offer(b"a" * 600, lambda: wakes.append("one"))
        assert not box.offer(b"b" * 600, lambda: wakes.append("one"))  # 1,200 > 1,000
        # Held: nothing more is taken, not even a frame that would fit.
        wake = lambda: wakes.append("two")  # noqa: E731
        assert not box.offer(b"c", wake)
        assert not box.offer(b"d", wake)  # the same callback is kept once
        sink.unread = 600  # the kernel took none of it yet
        await asyncio.sleep(0)
        assert sink.writes == [b"a" * 600]
        assert box.held and wakes == []
        sink.unread = 251  # above the low-water mark (a quarter of the bound)
        await asyncio.sleep(0.01)
        assert box.held and wakes == []
        sink.unread = 250
        await until(lambda: not box.held, interval=0)
        assert wakes == ["one", "two"]
        assert box.offer(b"e", wake)

    asyncio.run(main())


def test_a_flush_the_kernel_takes_at_once_releases_without_waiting_for_a_poll() -> None:
    async def main() -> None:
        sink, wakes = FakeSink(), list[str]()
        box = make(sink, FlushQueue(poll_s=3600), [])
        for _ in range(10):
            box.offer(b"x" * 100, lambda: None)
        assert not box.offer(b"y", lambda: wakes.append("room"))
        await asyncio.sleep(0)  # written; the fake's kernel took everything
        assert wakes == ["room"]
        assert not box.held

    asyncio.run(main())


def test_an_empty_outbox_takes_one_frame_larger_than_the_bound() -> None:
    async def main() -> None:
        sink = FakeSink()
        box = make(sink, FlushQueue(), [])
        assert box.offer(b"L" * 5000, lambda: None)  # else it could never be given
        assert not box.offer(b"s", lambda: None)
        await asyncio.sleep(0)
        assert sink.writes == [b"L" * 5000]

    asyncio.run(main())


def test_offers_past_the_frame_bound_of_one_turn_are_refused() -> None:
    async def main() -> None:
        box = make(FakeSink(), FlushQueue(), [])
        assert all(box.offer(b"f", lambda: None) for _ in range(100))
        assert not box.offer(b"f", lambda: None)
        for _ in range(200):
            box.put(b"r")  # replies are never refused
        assert box.waiting == 300

    asyncio.run(main())


def test_a_held_client_that_takes_nothing_for_the_stall_time_overflows() -> None:
    async def main() -> None:
        clock = FakeClock()
        sink, overflows, wakes = FakeSink(), list[str](), list[str]()
        box = make(sink, FlushQueue(poll_s=0.001, clock=clock), overflows, stall_s=10.0)
        sink.unread = 900
        box.offer(b"a", lambda: None)
        await asyncio.sleep(0)
        assert not box.offer(b"b" * 200, lambda: wakes.append("room"))
        await asyncio.sleep(0.01)  # polled: the baseline
        clock.now = 9.0
        sink.unread = 890  # it read a little: progress
        await asyncio.sleep(0.01)
        clock.now = 18.0  # 9 s since: still within the stall time
        await asyncio.sleep(0.01)
        assert overflows == [] and box.held
        clock.now = 19.5  # nothing taken for 10.5 s
        await until(lambda: overflows == ["overflow"], interval=0)
        assert wakes == []  # closed: nobody is woken to send it more
        assert not box.held

    asyncio.run(main())


def test_a_held_client_that_reads_while_replies_keep_coming_is_not_closed() -> None:
    async def main() -> None:
        clock = FakeClock()
        sink, overflows = FakeSink(), list[str]()
        box = make(sink, FlushQueue(poll_s=0.001, clock=clock), overflows, stall_s=10.0)
        sink.unread = 900
        box.offer(b"a", lambda: None)
        await asyncio.sleep(0)
        assert not box.offer(b"b" * 200, lambda: None)  # held
        await asyncio.sleep(0.01)
        for _ in range(5):
            # Every few seconds an ack is written and the client takes as much:
            # the backlog stays the same, but the client reads.
            clock.now += 6.0
            box.put(b"k" * 100)
            await asyncio.sleep(0)
            await asyncio.sleep(0.01)
        assert overflows == [] and box.held

    asyncio.run(main())


def test_the_reader_waits_for_room_until_release_or_close() -> None:
    async def main() -> None:
        sink = FakeSink()
        box = make(sink, FlushQueue(poll_s=0.001), [])
        await box.wait_room()  # not held: at once
        sink.unread = 2000
        box.put(b"history page")
        await asyncio.sleep(0)
        assert box.over_bound
        waiter = asyncio.ensure_future(box.wait_room())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        sink.unread = 0
        await asyncio.wait_for(waiter, 5)
        sink.unread = 2000
        box.put(b"another")
        await asyncio.sleep(0)
        waiter = asyncio.ensure_future(box.wait_room())
        await asyncio.sleep(0)
        box.close(1008, "bye")
        await asyncio.wait_for(waiter, 5)
        await box.wait_closed(5)

    asyncio.run(main())
