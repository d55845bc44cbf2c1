"""Tests for ``Outbox`` and ``FlushQueue`` against a fake ``FrameSink``."""

from __future__ import annotations

import asyncio

from chime_actors.gateway.outbox import FlushQueue, Outbox


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


def make(sink: FakeSink, queue: FlushQueue, overflows: list[str]) -> Outbox:
    return Outbox(
        sink,
        queue,
        max_frames=100,
        max_bytes=1000,
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


def test_a_flush_that_raises_does_not_keep_the_others_from_their_frames() -> None:
    async def main() -> None:
        queue = FlushQueue()
        broken, fine = FakeSink(broken=True), FakeSink()
        make(broken, queue, []).put(b"x")
        make(fine, queue, []).put(b"y")
        await asyncio.sleep(0)
        assert fine.writes == [b"y"]

    asyncio.run(main())


def test_a_write_that_leaves_too_much_unread_overflows() -> None:
    async def main() -> None:
        sink, overflows = FakeSink(), list[str]()
        box = make(sink, FlushQueue(), overflows)
        sink.unread = 1001
        box.put(b"z")
        await asyncio.sleep(0)
        assert sink.writes == [b"z"]
        assert overflows == ["overflow"]

    asyncio.run(main())
