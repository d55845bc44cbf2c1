"""A minimal RFC 6455 WebSocket client for the load generator, on a raw ``asyncio.Protocol``.

Why it exists: ``chime bench`` receives tens of thousands of frames per second in
one load process, and the ``websockets`` client spent about 25-30 µs of CPU on
each one (its generator-based frame parser, assembler, queues and stream
reader). At 50,000 deliveries/s that is more than one of the development box's
two cores, so the bench measured its own client instead of the server. This
client does the least a benchmark needs: ``data_received`` cuts complete frames
out of one buffer and hands each text/binary payload, as ``bytes``, to a
callback (the load generator parses it with ``orjson.loads``, which takes bytes);
no per-message task, queue or UTF-8 decode.

What it supports: ``ws://`` URLs only, no extensions (no compression), no
subprotocols; fragmented messages are reassembled; pings are answered at once
(the server closes connections that do not answer its pings); close frames are
answered. Sending is synchronous (``transport.write``) and has no back-pressure:
the load generator sends at a fixed, modest rate. The callbacks run inside
``data_received`` and must not raise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

from chime_actors.errors import ChimeError
from chime_actors.protocol.wire_frames import frame_header

__all__ = ["BenchSocket", "HandshakeFailed", "SocketClosed", "open_connection"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024  # an HTTP response head longer than this is not a WebSocket server
CLOSE_TIMEOUT_S = 2.0

_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
_CLOSE_PROTOCOL_ERROR = 1002
_NO_STATUS = 1005

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")

MessageCallback = Callable[[bytes], None]
CloseCallback = Callable[[int | None], None]


class HandshakeFailed(ChimeError):
    """The server did not accept the WebSocket upgrade (status, headers or accept key)."""


class SocketClosed(ChimeError):
    """The connection is closing or closed: nothing more can be sent."""


def _ignore_message(payload: bytes) -> None:
    pass


def _ignore_close(code: int | None) -> None:
    pass


def _mask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask``, as one big-integer operation.

    A Python loop over the bytes would cost more than the rest of the frame;
    ``int.from_bytes``/``to_bytes`` do it in C.
    """
    n = len(payload)
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    return frame_header(0x80 | opcode, len(payload), masked=True) + mask + _mask(payload, mask)


def _accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class BenchSocket(asyncio.Protocol):
    """One client WebSocket connection; get one from :func:`open_connection`.

    ``on_message(payload)`` is called for every complete text or binary message;
    ``on_close(code)`` exactly once when the TCP connection is gone, with the
    code of the server's close frame (1005 if it had none) or ``None`` if there
    was no close frame. Both may be replaced at any time, e.g. from inside
    ``on_message``; the next frame uses the new one.
    """

    __slots__ = (
        "_buf",
        "_close_sent",
        "_fragments",
        "_handshake",
        "_head",
        "_key",
        "_lost",
        "_open",
        "_receiving",
        "_request",
        "_transport",
        "close_code",
        "error",
        "on_close",
        "on_message",
    )

    def __init__(
        self,
        request: bytes,
        key: bytes,
        loop: asyncio.AbstractEventLoop,
        on_message: MessageCallback,
        on_close: CloseCallback,
    ) -> None:
        self.on_message = on_message
        self.on_close = on_close
        self.close_code: int | None = None  # of the server's close frame
        self.error: str | None = None  # why we failed the connection, if we did
        self._request = request
        self._key = key
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Future[None] = loop.create_future()
        self._lost: asyncio.Future[None] = loop.create_future()
        self._head = bytearray()  # the HTTP response head, until it is complete
        self._buf = bytearray()  # frame bytes not yet parsed (an incomplete frame)
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._open = False  # the opening handshake succeeded
        self._receiving = True  # False once a close frame came or we failed
        self._close_sent = False

    # --- state --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection is lost."""
        return self._close_sent or not self._receiving or self._lost.done()

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's TCPTransport is no asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._receiving = False
        if not self._lost.done():
            self._lost.set_result(None)
        if self._open:
            self.on_close(self.close_code)
        elif not self._handshake.done():  # open_connection raises; nobody has this socket
            why = f": {exc!r}" if exc is not None else ""
            self._handshake.set_exception(
                HandshakeFailed(f"connection closed during the opening handshake{why}")
            )

    def data_received(self, data: bytes) -> None:
        if not self._open:
            if self._handshake.done():  # rejected, or open_connection gave up
                return
            data = self._read_head(data)
            if not data:
                return
        if not self._receiving:
            return
        # Parse straight from ``data`` when nothing is buffered (the usual case):
        # only an incomplete tail is copied into the buffer, and the buffer is
        # compacted once per call, never once per frame.
        buffered = bool(self._buf)
        buf: bytes | bytearray
        if buffered:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        end = len(buf)
        pos = 0
        while end - pos >= 2 and self._receiving:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                self._fail("masked frame from the server")
                return
            n = b1 & 0x7F
            start = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = _U16.unpack_from(buf, start)[0]
                start += 2
            elif n == 127:
                if end - pos < 10:
                    break
                n = _U64.unpack_from(buf, start)[0]
                start += 8
            stop = start + n
            if stop > end:
                break
            pos = stop
            # bytes(bytes) is the same object: a copy only when parsing the buffer.
            payload = bytes(buf[start:stop])
            if b0 & 0x70:
                self._fail("reserved bits set (no extension was negotiated)")
                return
            if 0x81 <= b0 <= 0x82:  # FIN + text or binary, RSV bits clear: a whole message
                if self._fragments is not None:
                    self._fail("new message inside a fragmented one")
                    return
                self.on_message(payload)
            else:
                self._other_frame(b0 & 0x80, b0 & 0x0F, payload)
        if buffered:
            del self._buf[:pos]
        elif pos < end and self._receiving:
            self._buf += memoryview(data)[pos:]

    # --- receiving --------------------------------------------------------------------

    def _read_head(self, data: bytes) -> bytes:
        """Collect the HTTP response head; check it; return the bytes after it."""
        head = self._head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > _MAX_HEAD:
                self._reject(f"response head longer than {_MAX_HEAD} bytes")
            return b""
        rest = bytes(head[end + 4 :])
        problem = self._check_head(head[:end].decode("latin-1"))
        self._head = bytearray()
        if problem is not None:
            self._reject(problem)
            return b""
        self._open = True
        self._handshake.set_result(None)
        return rest

    def _check_head(self, head: str) -> str | None:
        """What is wrong with the upgrade response, or None if it accepts ours."""
        status, *lines = head.split("\r\n")
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "101":
            return f"server answered {status!r}"
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            return f"Upgrade header is {headers.get('upgrade')!r}"
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if "upgrade" not in connection:
            return f"Connection header is {headers.get('connection')!r}"
        if headers.get("sec-websocket-accept", "").encode() != _accept_for(self._key):
            return "wrong Sec-WebSocket-Accept"
        for offered_none in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if offered_none in headers:
                return f"{offered_none} {headers[offered_none]!r} was not offered"
        return None

    def _reject(self, problem: str) -> None:
        self._handshake.set_exception(HandshakeFailed(problem))
        self._receiving = False
        if self._transport is not None:
            self._transport.abort()

    def _other_frame(self, fin: int, opcode: int, payload: bytes) -> None:
        """Every frame but a final text/binary one: continuation and control frames."""
        if opcode == _OP_CONT:
            if self._fragments is None:
                self._fail("continuation frame without a message to continue")
                return
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = None
                self.on_message(message)
            return
        if opcode in (_OP_TEXT, _OP_BINARY):  # first fragment of a message
            if self._fragments is not None:
                self._fail("new message inside a fragmented one")
                return
            self._fragments = [payload]
            return
        if opcode < _OP_CLOSE or opcode > _OP_PONG:
            self._fail(f"unknown opcode {opcode}")
            return
        if not fin or len(payload) > 125:
            self._fail("fragmented or oversized control frame")
            return
        if opcode == _OP_PING:
            # Answer at once: the server closes connections that miss its pings.
            if not self._close_sent:
                self._write(_client_frame(_OP_PONG, payload))
        elif opcode == _OP_CLOSE:
            self.close_code = _U16.unpack_from(payload)[0] if len(payload) >= 2 else _NO_STATUS
            self._receiving = False
            if not self._close_sent:
                # Echo the code (RFC 6455 §5.5.1); an empty close gets an empty reply.
                self._send_close(payload[:2])
            # The server closes TCP after our reply; closing our side too does not
            # leave the socket in TIME_WAIT on the server for long runs.
            if self._transport is not None:
                self._transport.close()
        # A pong (we never ping) needs nothing.

    def _fail(self, why: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): close 1002, then drop TCP."""
        self.error = why
        self._receiving = False
        if not self._close_sent:
            self._send_close(_U16.pack(_CLOSE_PROTOCOL_ERROR))
        if self._transport is not None:
            self._transport.close()

    # --- sending ----------------------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)

    def _send_close(self, payload: bytes) -> None:
        self._close_sent = True
        self._write(_client_frame(_OP_CLOSE, payload))

    def send_text(self, data: bytes | str) -> None:
        """Send one text message (``data`` is UTF-8 if bytes); raise SocketClosed if closed."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise SocketClosed("the WebSocket is closed")
        if isinstance(data, str):
            data = data.encode()
        self._transport.write(_client_frame(_OP_TEXT, data))

    async def close(self, code: int = 1000, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send a close frame, wait for the server to close (``timeout``), then drop TCP."""
        if not self._close_sent and self._receiving:
            self._send_close(_U16.pack(code))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            pass
        finally:
            if not self._lost.done() and self._transport is not None:
                self._transport.abort()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a close frame."""
        self._receiving = False
        if self._transport is not None:
            self._transport.abort()


async def open_connection(
    url: str,
    *,
    timeout: float,
    on_message: MessageCallback = _ignore_message,
    on_close: CloseCallback = _ignore_close,
) -> BenchSocket:
    """Open a WebSocket to ``url`` (``ws://host[:port]/path[?query]``) within ``timeout`` s.

    The callbacks are given here, not set afterwards, because the server may
    send frames in the same TCP segment as its upgrade response. Raises
    ``OSError`` if the TCP connection fails, ``TimeoutError``, ``HandshakeFailed``.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"not a ws:// URL: {url!r}")
    host = parts.hostname
    port = parts.port or 80
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != 80:
        host_header += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host_header}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    sock = BenchSocket(request, key, loop, on_message, on_close)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: sock, host, port)
            await sock._handshake
    except BaseException:
        # Timeout or cancellation: nobody will await the handshake any more.
        sock._handshake.cancel()
        sock.abort()
        raise
    return sock
