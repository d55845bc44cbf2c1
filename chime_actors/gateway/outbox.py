"""A connection's outbound side: frames coalesced per loop turn, written as bytes.

Fan-out pushes the same pre-framed bytes (``protocol.wire_frames``) to every
subscriber of a channel. Instead of one ``await websocket.send`` per frame per
connection (a task, a lock, a frame object and a socket write each: ~30 µs of a
gateway's CPU per delivery, docs/performance.md), an ``Outbox`` collects what
is pushed during one turn of the event loop and hands it to the socket in one
write when the turn ends. An idle connection's outbox holds nothing (no list,
no task, no pending callback); the outboxes with frames waiting are flushed
together by their gateway's ``FlushQueue``, one loop callback for all of them.

Bounds (``chat.send_queue_frames``, ``chat.send_queue_bytes``): frames waiting
for the end of the turn, and bytes waiting anywhere in the server (in the
outbox plus the socket's write buffer, i.e. written by us but not yet taken by
the kernel). A client that does not read fills its write buffer; past either
bound ``on_overflow`` is called, and the connection closes it as a slow
consumer. Memory per connection is therefore bounded, and a slow reader never
delays anyone else: nothing here ever waits on the socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from chime_actors.logs import get_logger

log = get_logger(__name__)


class FrameSink(Protocol):
    """The socket side of an outbox (a WebSocket connection, or a fake in tests)."""

    def is_open(self) -> bool:
        """True while data frames may be written (no close frame sent or received)."""
        ...

    def write(self, data: bytes) -> None:
        """Write complete frames; never blocks (the transport buffers)."""
        ...

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame after everything written, and finish the handshake."""
        ...


class FlushQueue:
    """The outboxes with frames waiting, flushed together when the loop turn ends.

    One per event loop (the gateway's): a fan-out to 500 subscribers schedules
    one callback, not 500.
    """

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[Outbox] = []

    def add(self, outbox: Outbox) -> None:
        """Flush ``outbox`` at the end of this turn (call once per turn per outbox)."""
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self.flush_all)
        self._waiting.append(outbox)

    def flush_all(self) -> None:
        """Flush every waiting outbox (each flush is guarded: one failing is logged)."""
        waiting, self._waiting = self._waiting, []
        for outbox in waiting:
            try:
                outbox.flush()
            except Exception:
                # A transport that broke in an unexpected way; that connection's
                # reader sees it close. The others must still get their frames.
                log.exception("outbox flush failed")


class Outbox:
    """Frames on their way to one client (see the module docstring)."""

    __slots__ = (
        "_backlog",
        "_closer",
        "_flush_queue",
        "_frames",
        "_max_bytes",
        "_max_frames",
        "_on_overflow",
        "_on_written",
        "_pending_bytes",
        "_sink",
    )

    def __init__(
        self,
        sink: FrameSink,
        flush_queue: FlushQueue,
        *,
        max_frames: int,
        max_bytes: int,
        on_written: Callable[[int], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self._sink = sink
        self._flush_queue = flush_queue
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._on_written = on_written
        self._on_overflow = on_overflow
        # Frames pushed this turn; None when nothing waits (no flush is scheduled).
        self._frames: list[bytes] | None = None
        self._pending_bytes = 0
        # The sink's write buffer as of the last flush.
        self._backlog = 0
        # The close handshake, once started; after it nothing more is written.
        self._closer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Frames pushed but not yet handed to the socket."""
        return 0 if self._frames is None else len(self._frames)

    def put(self, data: bytes) -> None:
        """Queue a complete frame; it is written when this loop turn ends.

        Past a bound the frame is not queued and ``on_overflow`` is called.
        """
        if self._closer is not None:
            return
        frames = self._frames
        if frames is None:
            frames = self._frames = []
            self._flush_queue.add(self)
        elif len(frames) >= self._max_frames:
            self._on_overflow()
            return
        size = self._pending_bytes + len(data)
        if size + self._backlog > self._max_bytes:
            self._on_overflow()
            return
        frames.append(data)
        self._pending_bytes = size

    def flush(self) -> None:
        """Hand every waiting frame to the socket in one write."""
        frames = self._frames
        if frames is None:
            return
        self._frames = None
        self._pending_bytes = 0
        sink = self._sink
        if self._closer is not None or not sink.is_open():
            return  # closing: a data frame after a close frame breaks the protocol
        sink.write(frames[0] if len(frames) == 1 else b"".join(frames))
        self._on_written(len(frames))
        self._backlog = sink.buffered()
        if self._backlog > self._max_bytes:
            self._on_overflow()

    def discard(self) -> None:
        """Drop the frames not yet written (an abort)."""
        self._frames = None
        self._pending_bytes = 0

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake after what is already written; idempotent."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._sink.close(code, reason))

    async def wait_closed(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the close handshake started by ``close``."""
        closer = self._closer
        if closer is None:
            return
        done, _ = await asyncio.wait({closer}, timeout=timeout)
        if not done:
            closer.cancel()
        elif not closer.cancelled():
            # A close on a broken socket may raise; the connection is gone either way.
            closer.exception()
