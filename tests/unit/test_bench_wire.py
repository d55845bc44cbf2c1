"""Tests for the bench's own WebSocket client (chime_actors.bench.wire).

Against a real ``websockets`` server (the library the Chime gateway uses) on
both event loops the load generator may run: echo, fragmented messages, the
three payload length encodings, server pings, both closing handshakes; against
raw TCP servers for the bytes websockets would never send (bad handshakes,
masked frames, frames cut at every byte).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import uvloop
from websockets.asyncio.server import ServerConnection, serve

from chime_actors.bench.wire import BenchSocket, HandshakeFailed, SocketClosed, open_connection

TIMEOUT = 5.0
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(main())


class Inbox:
    """The client's callbacks: messages in a queue, the close code in a future."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_calls = 0

    def on_message(self, payload: bytes) -> None:
        assert type(payload) is bytes
        self.messages.put_nowait(payload)

    def on_close(self, code: int | None) -> None:
        self.close_calls += 1
        self.closed.set_result(code)

    async def next(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            return await self.messages.get()

    async def close_code(self) -> int | None:
        async with asyncio.timeout(TIMEOUT):
            return await self.closed

    async def connect(self, url: str) -> BenchSocket:
        return await open_connection(
            url, timeout=TIMEOUT, on_message=self.on_message, on_close=self.on_close
        )


# --- against a websockets server ---------------------------------------------------


async def scripted(ws: ServerConnection) -> None:
    """Obey the client's commands; anything else is echoed."""
    async for command in ws:
        assert isinstance(command, str)
        if command == "fragments":
            await ws.send(["frag", "men", "ted ✓"])
        elif command == "sizes":
            await ws.send("a" * 70_000)  # 64-bit length
            await ws.send("b" * 300)  # 16-bit length
            await ws.send("")  # empty
        elif command == "ping":
            pong = await ws.ping(b"are you there")
            async with asyncio.timeout(TIMEOUT):
                await pong
            await ws.send("pong received")
        elif command == "close":
            await ws.close(4001, "bye")
        else:
            await ws.send(command)


@asynccontextmanager
async def websockets_server() -> AsyncIterator[str]:
    async with serve(scripted, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/chat?token=x"


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_messages_both_ways_fragments_sizes_and_pings(loop_name: str) -> None:
    async def main() -> None:
        async with websockets_server() as url:
            inbox = Inbox()
            sock = await inbox.connect(url)
            sock.send_text("hello ✓")
            assert await inbox.next() == "hello ✓".encode()
            sock.send_text(b'{"type":"ping"}')
            assert await inbox.next() == b'{"type":"ping"}'
            # A 70,000-byte client frame: the 64-bit length and the masking of
            # a long payload, checked by the server's unmasking.
            big = bytes(range(32, 127)) * 800
            sock.send_text(big)
            assert await inbox.next() == big
            sock.send_text("fragments")
            assert (await inbox.next()).decode() == "fragmented ✓"
            sock.send_text("sizes")
            assert await inbox.next() == b"a" * 70_000
            assert await inbox.next() == b"b" * 300
            assert await inbox.next() == b""
            sock.send_text("ping")  # the server waits for our pong before answering
            assert await inbox.next() == b"pong received"
            assert not sock.closed
            await sock.close()
            assert await inbox.close_code() == 1000  # the server echoed our close
            assert sock.closed
            assert sock.close_code == 1000
            assert sock.error is None
            with pytest.raises(SocketClosed):
                sock.send_text("too late")
            assert inbox.messages.empty()
            assert inbox.close_calls == 1

    run(loop_name, main)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_server_close_code_reaches_on_close(loop_name: str) -> None:
    async def main() -> None:
        seen: list[int | None] = []

        async def handler(ws: ServerConnection) -> None:
            await ws.recv()
            await ws.close(4001, "bye")
            # websockets completes the closing handshake only if we answered.
            seen.append(ws.close_code)

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            inbox = Inbox()
            sock = await inbox.connect(f"ws://127.0.0.1:{port}/")
            sock.send_text("close please")
            assert await inbox.close_code() == 4001
            assert sock.close_code == 4001
            assert sock.closed
            with pytest.raises(SocketClosed):
                sock.send_text("after close")
            await sock.close()  # already closed: returns at once, no second on_close
            async with asyncio.timeout(TIMEOUT):
                while not seen:
                    await asyncio.sleep(0.01)
            assert seen == [4001]
            assert inbox.close_calls == 1

    run(loop_name, main)


def test_connection_loss_without_close_frame_gives_none() -> None:
    async def main() -> None:
        async def handler(ws: ServerConnection) -> None:
            await ws.recv()
            ws.transport.abort()

        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            inbox = Inbox()
            sock = await inbox.connect(f"ws://127.0.0.1:{port}/")
            sock.send_text("drop me")
            assert await inbox.close_code() is None
            assert sock.close_code is None
            assert sock.closed

    run("uvloop", main)


# --- against raw TCP servers ---------------------------------------------------------


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[str]:
    """A TCP server running ``handler``; every connection it accepted is closed on exit."""
    writers: list[asyncio.StreamWriter] = []

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"
        for writer in writers:
            writer.close()
        await asyncio.sleep(0)  # let the transports finish closing


async def read_key(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return value.strip()
    raise AssertionError(f"no key in {head!r}")


def upgrade_response(key: bytes, *extra: str) -> bytes:
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
        *extra,
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 1 << 16:
        return bytes((first, 126)) + struct.pack("!H", n) + payload
    return bytes((first, 127)) + struct.pack("!Q", n) + payload


def unmask(frame: bytes) -> tuple[int, bytes]:
    """Opcode and payload of one masked client frame with a payload under 126 bytes."""
    assert frame[1] & 0x80, "client frames must be masked"
    n = frame[1] & 0x7F
    mask, data = frame[2:6], frame[6 : 6 + n]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def refusing(response: bytes) -> RawHandler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        writer.write(response.replace(b"{accept}", upgrade_response(key)))
        await writer.drain()
        writer.close()

    return handler


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", "400 Bad Request"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IGl0\r\n\r\n",
            "Sec-WebSocket-Accept",
        ),
        (b"HTTP/1.1 101 Switching", "closed during the opening handshake"),
    ],
    ids=["status", "accept", "cut"],
)
def test_refused_upgrade_is_handshake_failed(response: bytes, problem: str) -> None:
    async def main() -> None:
        async with raw_server(refusing(response)) as url:
            with pytest.raises(HandshakeFailed, match=problem):
                await open_connection(url, timeout=TIMEOUT)

    run("uvloop", main)


def test_unoffered_extension_is_handshake_failed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        writer.write(upgrade_response(key, "Sec-WebSocket-Extensions: permessage-deflate"))
        await writer.drain()
        await reader.read()  # until the client hangs up

    async def main() -> None:
        async with raw_server(handler) as url:
            with pytest.raises(HandshakeFailed, match="permessage-deflate"):
                await open_connection(url, timeout=TIMEOUT)

    run("uvloop", main)


def test_silent_server_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as url:
            with pytest.raises(TimeoutError):
                await open_connection(url, timeout=0.2)

    run("uvloop", main)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_frames_cut_anywhere_and_glued_to_the_head(loop_name: str) -> None:
    """Frames in the same segment as the 101, then frames trickled a byte at a time."""
    frames = [
        server_frame(1, b"first"),
        server_frame(1, b"x" * 300),
        server_frame(2, b"y" * 70_000),
        server_frame(1, b"par", fin=False),
        server_frame(9, b"ping inside a message"),  # control frames may interleave
        server_frame(0, b"ts", fin=False),
        server_frame(0, b"!"),
        server_frame(10, b"unsolicited pong"),
        server_frame(1, b"last"),
    ]
    pongs: list[tuple[int, bytes]] = []
    server_done = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        writer.write(upgrade_response(key) + frames[0])
        await writer.drain()
        for byte in b"".join(frames[1:4])[:400]:
            writer.write(bytes((byte,)))
            await asyncio.sleep(0)  # most bytes reach the client in reads of their own
        writer.write(b"".join(frames[1:4])[400:])
        writer.write(b"".join(frames[4:]))  # pings and the rest in one segment
        await writer.drain()
        pongs.append(unmask(await reader.readexactly(6 + len(b"ping inside a message"))))
        writer.write(server_frame(8, struct.pack("!H", 1001) + b"going away"))
        await writer.drain()
        pongs.append(unmask(await reader.readexactly(8)))  # the client's close reply
        assert await reader.read() == b""  # then the client closed TCP
        server_done.set()

    async def main() -> None:
        async with raw_server(handler) as url:
            inbox = Inbox()
            await inbox.connect(url)
            got = [await inbox.next() for _ in range(5)]
            assert got == [b"first", b"x" * 300, b"y" * 70_000, b"parts!", b"last"]
            assert await inbox.close_code() == 1001
            async with asyncio.timeout(TIMEOUT):
                await server_done.wait()
            assert pongs == [(10, b"ping inside a message"), (8, struct.pack("!H", 1001))]

    run(loop_name, main)


def test_close_gives_up_on_a_server_that_never_answers() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        writer.write(upgrade_response(key))
        await writer.drain()
        await reader.read()  # reads our close frame, never answers it

    async def main() -> None:
        async with raw_server(handler) as url:
            inbox = Inbox()
            sock = await inbox.connect(url)
            started = asyncio.get_running_loop().time()
            await sock.close(timeout=0.2)
            assert asyncio.get_running_loop().time() - started < 1.0
            assert await inbox.close_code() is None  # dropped without the server's close
            assert sock.closed

    run("uvloop", main)


def test_masked_server_frame_fails_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = await read_key(reader)
        writer.write(upgrade_response(key) + bytes((0x81, 0x80 | 2, 1, 2, 3, 4, 5, 6)))
        await writer.drain()
        await reader.read()

    async def main() -> None:
        async with raw_server(handler) as url:
            inbox = Inbox()
            sock = await inbox.connect(url)
            assert await inbox.close_code() is None  # no close frame from the server
            assert sock.error == "masked frame from the server"
            assert inbox.messages.empty()

    run("uvloop", main)


class FakeTransport:
    """Records what the socket writes; enough of a transport for data_received."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 126, 1000, 1 << 20])
def test_any_split_of_the_byte_stream_gives_the_same_messages(chunk: int) -> None:
    """The buffer path, deterministically: the stream fed in chunks of every size."""
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    stream = (
        upgrade_response(key)
        + server_frame(1, b"a")
        + server_frame(1, b"b" * 126)
        + server_frame(1, b"c" * 65_536)  # the first 64-bit length
        + server_frame(2, b"d", fin=False)
        + server_frame(0, b"", fin=False)
        + server_frame(9, b"p")
        + server_frame(0, b"e")
        + server_frame(1, b"")
        + server_frame(8, struct.pack("!H", 1000))
        + server_frame(1, b"after close: ignored")
    )
    got: list[bytes] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = BenchSocket(b"GET / HTTP/1.1\r\n\r\n", key, loop, got.append, lambda code: None)
        transport = FakeTransport()
        sock.connection_made(cast(asyncio.Transport, transport))
        for i in range(0, len(stream), chunk):
            sock.data_received(stream[i : i + chunk])
        assert got == [b"a", b"b" * 126, b"c" * 65_536, b"de", b""]
        assert sock.close_code == 1000
        assert transport.closing
        assert [unmask(frame) for frame in transport.written[1:]] == [
            (10, b"p"),
            (8, struct.pack("!H", 1000)),
        ]

    asyncio.run(main())
