"""Lanes: the data plane between process actors, off Thespian (docs/architecture.md).

A Thespian message costs ~1.5 ms of CPU, and a chat message in a small room
crosses processes alone several times. So everything on the hot path (send
records to persisters, results and deliveries back, bus traffic, metrics)
travels on lanes: Unix stream sockets between the process actors' event loops.
Thespian keeps the control plane (creation, supervision, ``Configure``,
``Ready``, ``Wiring``, drain and stop).

::

    gateway loop                                       persister loop
    core.post(addr, PersistBatch) ─► Router ─► Lane ══ unix socket ══► LaneServer ─► core.handle
    core.handle ◄─ LaneServer ◄══ unix socket ══ Lane ◄─ Router ◄─ core.post(PersistResult)

* **Where.** Each process actor listens on ``<run_dir>/<kind>-<index>-<pid>.sock``;
  ``run_dir`` is a 0700 directory the main process makes per run. Its path
  travels in ``Ready`` to the supervisor, and to every peer in ``Wiring``, keyed
  by the actor's Thespian address: a restarted peer has a new address and a new
  socket, and its lane follows the wiring exactly as Thespian sends do.
* **Who.** Only the server's own processes: the directory is the owner's alone,
  and before a byte of a connection is decoded the peer must answer a
  challenge, ``HMAC-SHA256(key, nonce)``, under the key the main process made
  for the sealed Thespian transport (it reaches the actors only by fork). Its
  first frame is then its Thespian address (unpickled by an unpickler that can
  build Thespian's address classes only, ``lane_codec.load_address``).
* **Framing.** ``<4-byte big-endian length><msgpack array of records>``: one
  frame carries every message one loop turn posted to that peer (batching
  without a timer). The messages are lane records only (``actors.lane_records``: tagged,
  frozen msgspec Structs of ``records`` and friends), checked when posted and
  decoded to exactly those types: a frame holding anything else (an unknown
  tag, a pickle) is refused and its lane closed; nothing read is executed.
* **Bounded, with flow control.** A lane holds at most ``MAX_PENDING`` unsent
  messages (past that a producer has no window of its own: ``ActorError``, as
  the loop bridge does). When the socket's write buffer passes
  ``HIGH_WATER_BYTES`` the lane is *congested*; ``Router.wait_writable`` lets a
  producer (the persister's writer) wait until the reader catches up.
* **Failure.** A peer that dies closes its socket: what was queued for it is
  dropped, as Thespian drops sends to a dead address; the owners of that data
  already handle it (``PersistLink.rewire`` resends in-flight records). A lane
  that broke is replaced on the next post, so a peer that is still alive is
  reached again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from chime_actors.errors import ActorError
from chime_actors.logs import get_logger
from chime_actors.runtime import lane_codec
from chime_actors.runtime.lane_codec import LaneCodec

log = get_logger(__name__)

MAX_PENDING = 100_000
HIGH_WATER_BYTES = 8 * 1024 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024
HANDSHAKE_TIMEOUT_S = 5.0
WRITABLE_TIMEOUT_S = 5.0
_NONCE_BYTES = 32
_LENGTH = struct.Struct(">I")
_TAG_BYTES = hashlib.sha256().digest_size

Deliver = Callable[[tuple[Any, ...], Any], None]
"""Called with ``(messages, sender_address)`` for each frame a lane server reads."""
Fallback = Callable[[Any, Any], None]
"""Where ``Router.post`` sends what has no lane (the Thespian loop bridge)."""


class LaneStats:
    """What the lanes of one process did (reported in ``/metrics``)."""

    __slots__ = ("batches_in", "batches_out", "bytes_in", "bytes_out", "dropped")

    def __init__(self) -> None:
        self.batches_out = 0
        self.bytes_out = 0
        self.batches_in = 0
        self.bytes_in = 0
        self.dropped = 0


def address_key(address: Any) -> str:
    """How a lane is looked up: the address's text, as its own process prints it.

    The supervisor's handle on a child it created prints differently
    (``ActorAddr-0-ActorAddr-(T|:port)``) from the address everyone else holds,
    so each actor reports its own key in ``Ready``.
    """
    return str(address)


def _tag(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, b"chime-lane\0" + nonce, hashlib.sha256).digest()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ActorError(f"lane frame of {length} bytes refused")
    return await reader.readexactly(length)


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


# --- receiving side -----------------------------------------------------------------


class LaneServer:
    """Accepts lanes from peers and hands their messages to ``deliver``."""

    def __init__(
        self, path: Path, key: bytes, deliver: Deliver, stats: LaneStats, *, codec: LaneCodec
    ) -> None:
        """``codec`` reads the frames (``actors.lane_records.LANE_CODEC``)."""
        self.path = path
        self._codec = codec
        self._key = key
        self._deliver = deliver
        self._stats = stats
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Listen on ``path`` (owner-only; the directory is 0700 too)."""
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        # Aborting the transports ends each reader with IncompleteReadError; a
        # cancelled task would make asyncio's stream callback log it (3.11).
        for writer in list(self._connections.values()):
            writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            sender = await self._handshake(reader, writer)
            if sender is None:
                return
            while True:
                payload = await _read_frame(reader)
                self._stats.batches_in += 1
                self._stats.bytes_in += len(payload) + _LENGTH.size
                self._deliver(self._codec.decode(payload), sender)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away (it died, or was replaced)
        except ActorError as exc:
            # Too long, or not lane records (LaneCodec.decode): a bug on one
            # side. Close this lane; the peer's next send opens a new one.
            log.warning("lane closed", reason=str(exc))
        except Exception:
            # A bug of ours past the decoder: the lane goes, the process stays.
            log.exception("lane frame could not be handled; lane closed")
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Any | None:
        """Challenge the peer; only then is its first frame (its address) read."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        writer.write(nonce)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                answer = await reader.readexactly(_TAG_BYTES)
                if not hmac.compare_digest(answer, _tag(self._key, nonce)):
                    log.warning("lane refused: the peer does not hold the server's key")
                    return None
                return lane_codec.load_address(await _read_frame(reader))
        except TimeoutError:
            log.warning("lane refused: no handshake in time")
            return None


# --- sending side -------------------------------------------------------------------


class Lane:
    """This process's connection to one peer; batches what one loop turn posts."""

    def __init__(
        self,
        path: str,
        my_address: Any,
        key: bytes,
        stats: LaneStats,
        on_closed: Callable[[Lane], None] = lambda lane: None,
        *,
        codec: LaneCodec,
        max_pending: int = MAX_PENDING,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        self.path = path
        self._codec = codec
        self._max_pending = max_pending
        self._high_water_bytes = high_water_bytes
        self._on_closed = on_closed
        self._my_address = my_address
        self._key = key
        self._stats = stats
        self._pending: list[Any] = []
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._failed = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Messages waiting to be written."""
        return len(self._pending)

    @property
    def congested(self) -> bool:
        """True while the socket holds more than ``high_water_bytes`` unsent."""
        writer = self._writer
        return (
            writer is not None and writer.transport.get_write_buffer_size() > self._high_water_bytes
        )

    def send(self, message: Any) -> None:
        """Queue ``message``; it leaves with the others of this loop turn.

        Raises:
            ActorError: ``message`` is not a lane record (``LaneCodec.check``),
                or the lane holds ``max_pending`` messages already.
        """
        self._codec.check(message)
        if self._failed:
            self._stats.dropped += 1
            return
        if len(self._pending) >= self._max_pending:
            raise ActorError(f"lane to {self.path} overflow: a producer has no window")
        self._pending.append(message)
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect())
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def wait_writable(self) -> None:
        """Return once the socket's backlog is below the high-water mark."""
        while self.congested and not self._failed and self._writer is not None:
            try:
                await self._writer.drain()  # returns below the transport's low-water mark
            except ConnectionError:
                return

    def close(self) -> None:
        """Drop the connection and whatever was queued."""
        if self._failed:
            return
        self._failed = True
        self._stats.dropped += len(self._pending)
        self._pending.clear()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        if self._writer is not None:
            self._writer.close()
        self._on_closed(self)

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                nonce = await reader.readexactly(_NONCE_BYTES)
            writer.write(_tag(self._key, nonce))
            writer.write(_frame(lane_codec.dump_address(self._my_address)))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.info("lane unreachable; its messages are dropped", path=self.path, error=str(exc))
            self.close()
            return
        self._writer = writer
        self._connecting = None
        # The peer never writes after the challenge: EOF means it closed or died.
        self._watch = asyncio.get_running_loop().create_task(self._watch_peer(reader))
        self._flush()

    async def _watch_peer(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(1)
        if not self._failed:
            log.info("lane closed by its peer; its messages are dropped", path=self.path)
            self.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        writer = self._writer
        if writer is None or not self._pending or self._failed:
            return
        batch, self._pending = tuple(self._pending), []
        payload = self._codec.encode(batch)
        try:
            writer.write(_frame(payload))
        except (ConnectionError, RuntimeError) as exc:
            log.info("lane broke; its messages are dropped", path=self.path, error=str(exc))
            self._stats.dropped += len(batch)
            self.close()
            return
        self._stats.batches_out += 1
        self._stats.bytes_out += len(payload) + _LENGTH.size


class Router:
    """``post(address, message)`` for a core: a lane when the peer has one, else Thespian."""

    def __init__(
        self,
        my_address: Any,
        key: bytes,
        fallback: Fallback,
        *,
        codec: LaneCodec,
        max_pending: int = MAX_PENDING,
        high_water_bytes: int = HIGH_WATER_BYTES,
    ) -> None:
        """``codec`` writes the frames (``actors.lane_records.LANE_CODEC``);
        ``max_pending`` and ``high_water_bytes`` bound each of its lanes (see the
        module docstring)."""
        self._my_address = my_address
        self._codec = codec
        self._max_pending = max_pending
        self._high_water_bytes = high_water_bytes
        self._key = key
        self._fallback = fallback
        self._paths: dict[str, str] = {}
        self._lanes: dict[str, Lane] = {}
        self.stats = LaneStats()

    def update(self, lanes: Mapping[str, str]) -> None:
        """New wiring: ``{address_key(address): socket path}`` of every peer with a lane."""
        self._paths = dict(lanes)
        for key in [k for k, lane in self._lanes.items() if self._paths.get(k) != lane.path]:
            self._lanes[key].close()  # that peer was replaced or is gone (forgets itself)

    def post(self, address: Any, message: Any) -> None:
        """Send ``message`` to the actor at ``address`` (None: dropped)."""
        if address is None:
            return
        key = address_key(address)
        lane = self._lanes.get(key)
        if lane is None:
            path = self._paths.get(key)
            if path is None:
                self._fallback(address, message)
                return
            lane = Lane(
                path,
                self._my_address,
                self._key,
                self.stats,
                self._forget_lane,
                codec=self._codec,
                max_pending=self._max_pending,
                high_water_bytes=self._high_water_bytes,
            )
            self._lanes[key] = lane
        lane.send(message)

    def _forget_lane(self, lane: Lane) -> None:
        # A closed lane is replaced on the next post: if the peer still listens
        # (the lane broke for another reason) that reconnects; if it is dead, the
        # connect fails at once and the message is dropped until the new wiring.
        for key, known in list(self._lanes.items()):
            if known is lane:
                del self._lanes[key]

    async def wait_writable(self) -> None:
        """Wait (bounded) until no lane is congested: a producer's backpressure."""
        congested = [lane.wait_writable() for lane in self._lanes.values() if lane.congested]
        if congested:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WRITABLE_TIMEOUT_S):
                    await asyncio.gather(*congested)

    @property
    def depth(self) -> int:
        """Messages waiting in every lane of this process."""
        return sum(lane.depth for lane in self._lanes.values())

    def close(self) -> None:
        """Close every lane (the process is stopping)."""
        for lane in list(self._lanes.values()):
            lane.close()
        self._lanes.clear()
