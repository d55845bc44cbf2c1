"""A connection's outbound side: frames coalesced per loop turn, written as bytes.

Fan-out pushes the same pre-framed bytes (``protocol.wire_frames``) to every
subscriber of a channel. Instead of one ``await websocket.send`` per frame per
connection (a task, a lock, a frame object and a socket write each: ~30 µs of a
gateway's CPU per delivery, docs/performance.md), an ``Outbox`` collects what
is pushed during one turn of the event loop and hands it to the socket in one
write when the turn ends. An idle connection's outbox holds nothing (no list,
no task, no pending callback); the outboxes with frames waiting are flushed
together by their gateway's ``FlushQueue``, one loop callback for all of them.

Flow control. What waits in the server for one client, its *backlog* (frames
queued this turn plus bytes written but not yet taken by the kernel), is
bounded by ``chat.send_queue_bytes``; a client that reads is never closed for
a burst, however large (docs/protocol.md "Errors and close codes"). Frames come in two
kinds:

* channel messages (``offer``): each can be read again from storage, so one
  that would take the backlog past the bound (or past ``chat.send_queue_frames``
  in one turn) is refused. The outbox is then *held*: it refuses every offer
  until the client has taken the backlog down to the low-water mark (a quarter
  of the bound), and then calls the ``on_room`` callback of each refused offer;
  the channel catches the client up from storage (``ChannelActor``) in order.
* replies (``put``: acks, errors, history pages, ``resumed`` ...): they exist
  nowhere else, so they are never refused. Past the bound they hold the outbox
  too (``over_bound``), and the connection reads no more of the client's
  requests until it is released (``wait_room``).

A held outbox is watched by its ``FlushQueue`` (every ``HOLD_POLL_S``): a
client that takes nothing at all for ``chat.send_stall_ms`` while held is not
reading, and ``on_overflow`` is called: the connection closes it as a slow
consumer (1008). Memory per connection is therefore bounded in every case, and
a slow reader never delays anyone else: nothing here ever waits on the socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from chime_actors.logs import get_logger

log = get_logger(__name__)

# How often held outboxes are checked for room (one timer per gateway, not per
# connection). At 4 MiB a quarter of the bound is still queued in the kernel
# when the catch-up resumes, which a reader needs far longer than this to take.
HOLD_POLL_S = 0.01
# A held outbox is released once its backlog is at most the bound // LOW_WATER_DIVISOR.
LOW_WATER_DIVISOR = 4


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
    one callback, not 500. It also watches the held outboxes, on one timer.
    ``observe`` gets how long each ``flush_all`` held the loop, in seconds (the
    gateway's ``chime_delivery_step_seconds{step="flush"}``).
    """

    __slots__ = ("_clock", "_held", "_observe", "_poll_s", "_timer", "_waiting")

    def __init__(
        self,
        *,
        poll_s: float = HOLD_POLL_S,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self._observe = observe
        self._waiting: list[Outbox] = []
        self._held: dict[Outbox, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._poll_s = poll_s
        self._clock = clock

    def add(self, outbox: Outbox) -> None:
        """Flush ``outbox`` at the end of this turn (call once per turn per outbox)."""
        if not self._waiting:
            asyncio.get_running_loop().call_soon(self.flush_all)
        self._waiting.append(outbox)

    def flush_all(self) -> None:
        """Flush every waiting outbox (each flush is guarded: one failing is logged)."""
        started = time.perf_counter()
        waiting, self._waiting = self._waiting, []
        for outbox in waiting:
            try:
                outbox.flush()
            except Exception:
                # A transport that broke in an unexpected way; that connection's
                # reader sees it close. The others must still get their frames.
                log.exception("outbox flush failed")
        if self._observe is not None:
            self._observe(time.perf_counter() - started)

    @property
    def held(self) -> int:
        """Outboxes held (flow control) right now."""
        return len(self._held)

    def watch(self, outbox: Outbox) -> None:
        """Check ``outbox`` every ``poll_s`` until it is released or closed."""
        self._held[outbox] = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._poll_s, self._poll)

    def _poll(self) -> None:
        self._timer = None
        now = self._clock()
        for outbox in list(self._held):
            try:
                still_held = outbox.poll(now)
            except Exception:
                log.exception("outbox poll failed")
                still_held = False
            if not still_held:
                self._held.pop(outbox, None)
        if self._held:
            self._timer = asyncio.get_running_loop().call_later(self._poll_s, self._poll)


class _Hold:
    """What a held outbox keeps (made only when one is held)."""

    __slots__ = ("backlog_at_start", "progress_at", "room", "taken", "wakes", "written")

    def __init__(self, backlog: int) -> None:
        # The refused offers' callbacks, each once, in the order they were refused.
        self.wakes: list[Callable[[], None]] = []
        # Resolved on release: what the connection's reader waits for.
        self.room: asyncio.Future[None] | None = None
        # Bytes the kernel has taken since the hold began are the socket's
        # backlog then, plus what was written since, minus its backlog now.
        self.backlog_at_start = backlog
        self.written = 0
        # The most seen taken, and when it last grew (None: not polled yet).
        self.taken = 0
        self.progress_at: float | None = None


class Outbox:
    """Frames on their way to one client (see the module docstring)."""

    __slots__ = (
        "_backlog",
        "_closer",
        "_flush_queue",
        "_frames",
        "_hold",
        "_max_bytes",
        "_max_frames",
        "_on_overflow",
        "_on_written",
        "_pending_bytes",
        "_sink",
        "_stall_s",
    )

    def __init__(
        self,
        sink: FrameSink,
        flush_queue: FlushQueue,
        *,
        max_frames: int,
        max_bytes: int,
        stall_s: float,
        on_written: Callable[[int], None],
        on_overflow: Callable[[], None],
    ) -> None:
        self._sink = sink
        self._flush_queue = flush_queue
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._stall_s = stall_s
        self._on_written = on_written
        self._on_overflow = on_overflow
        # Frames pushed this turn; None when nothing waits (no flush is scheduled).
        self._frames: list[bytes] | None = None
        self._pending_bytes = 0
        # The sink's write buffer as of the last flush.
        self._backlog = 0
        # Set while held (flow control); None otherwise.
        self._hold: _Hold | None = None
        # The close handshake, once started; after it nothing more is written.
        self._closer: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Frames pushed but not yet handed to the socket."""
        return 0 if self._frames is None else len(self._frames)

    @property
    def held(self) -> bool:
        """True while channel messages are refused (until the client takes the backlog)."""
        return self._hold is not None

    @property
    def over_bound(self) -> bool:
        """More than ``max_bytes`` wait for the client (replies: they are never refused).

        Asks the socket (several requests may be handled within one loop turn,
        before the flush that would update the outbox's view of it).
        """
        return self._pending_bytes + self._sink.buffered() > self._max_bytes

    def put(self, data: bytes) -> None:
        """Queue a reply frame; it is written when this loop turn ends. Never refused.

        Past the byte bound the outbox is held (see ``over_bound``).
        """
        if self._closer is not None:
            return
        frames = self._frames
        if frames is None:
            frames = self._frames = []
            self._flush_queue.add(self)
        frames.append(data)
        self._pending_bytes += len(data)
        if self._hold is None and self._pending_bytes + self._backlog > self._max_bytes:
            self._start_hold()

    def offer(self, data: bytes, on_room: Callable[[], None]) -> bool:
        """Queue a channel message frame if the bounds allow; False if it was refused.

        After a refusal ``on_room`` is called (once, however many offers it was
        given with) when the client has taken the backlog down to the low-water
        mark; not if the connection closes first.
        """
        hold = self._hold
        if hold is None:
            if self._closer is not None:
                return False
            frames = self._frames
            size = self._pending_bytes + len(data)
            if frames is None:
                # An empty outbox takes any one frame, however large the frame.
                if size + self._backlog <= self._max_bytes or not self._backlog:
                    self._frames = [data]
                    self._pending_bytes = size
                    self._flush_queue.add(self)
                    return True
            elif len(frames) < self._max_frames and size + self._backlog <= self._max_bytes:
                frames.append(data)
                self._pending_bytes = size
                return True
            hold = self._start_hold()
        if on_room not in hold.wakes:
            hold.wakes.append(on_room)
        return False

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
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        sink.write(data)
        self._on_written(len(frames))
        self._backlog = sink.buffered()
        hold = self._hold
        if hold is not None:
            hold.written += len(data)
            if self._backlog <= self._max_bytes // LOW_WATER_DIVISOR:
                self._release()  # the kernel took it all at once: no need to wait a poll
        elif self._backlog > self._max_bytes:
            self._start_hold()

    def poll(self, now: float) -> bool:
        """Check a held outbox (``FlushQueue``); False once it is no longer held."""
        hold = self._hold
        if hold is None or self._closer is not None:
            return False
        backlog = self._backlog = self._sink.buffered()
        if self._pending_bytes + backlog <= self._max_bytes // LOW_WATER_DIVISOR:
            self._release()
            return False
        # Progress is bytes taken, not a smaller backlog: replies written
        # meanwhile (acks of its own sends) must not hide a client that reads.
        taken = hold.backlog_at_start + hold.written - backlog
        if hold.progress_at is None or taken > hold.taken:
            hold.taken, hold.progress_at = taken, now
        elif now - hold.progress_at >= self._stall_s:
            # Nothing taken for that long while data for it waits past the bound:
            # the client does not read. (The wake-ups are dropped: it is closed.)
            self._drop_hold()
            self._on_overflow()
            return False
        return True

    async def wait_room(self) -> None:
        """Return once at most the low-water mark waits (or the outbox is closing)."""
        if self._closer is not None or not self.over_bound:
            return
        hold = self._hold or self._start_hold()
        if hold.room is None:
            hold.room = asyncio.get_running_loop().create_future()
        await asyncio.shield(hold.room)

    def discard(self) -> None:
        """Drop the frames not yet written (an abort)."""
        self._frames = None
        self._pending_bytes = 0

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake after what is already written; idempotent."""
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._sink.close(code, reason))
            self._drop_hold()  # a reader waiting for room goes on, to its end

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

    def _start_hold(self) -> _Hold:
        hold = self._hold = _Hold(self._sink.buffered())
        self._flush_queue.watch(self)
        return hold

    def _drop_hold(self) -> _Hold | None:
        """No longer held: the reader waiting for room goes on; returns the hold."""
        hold, self._hold = self._hold, None
        if hold is not None and hold.room is not None and not hold.room.done():
            hold.room.set_result(None)
        return hold

    def _release(self) -> None:
        hold = self._drop_hold()
        if hold is None:
            return
        for wake in hold.wakes:
            try:
                wake()
            except Exception:
                # One channel's bug must not keep the connection's others held.
                log.exception("outbox wake-up failed")
