"""Heartbeat (docs/protocol.md): idle clients are pinged, a silent one is closed 1011.

The clients here speak WebSocket by hand over a TCP stream, so a test decides
whether a ping is answered (a library client answers them by itself). The
server's heartbeat is short (``HEARTBEAT_MS``): the gateway's one keepalive
sweep pings every connection that sent nothing for a heartbeat, and closes one
whose ping went unanswered for two, with 1011 "keepalive ping timeout".
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import fresh, gateway_connections, ping_pong, run
from tests.support.polling import until_async
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

HEARTBEAT_MS = 300
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
# Far above the 3 heartbeats a dead peer may take: the box is shared.
FRAME_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"chat.heartbeat_ms": HEARTBEAT_MS}
    with running_server(tmp_path_factory.mktemp("keepalive"), overrides=overrides) as srv:
        yield srv


class RawClient:
    """A WebSocket client by hand: masked frames out, frames in as (opcode, payload)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pings = 0

    @classmethod
    async def connect(cls, port: int, user: str, channel: str) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), FRAME_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        client.send(TEXT, orjson.dumps({"type": "connect", "channels": [channel], "userId": user}))
        opcode, payload = await client.frame()
        assert opcode == TEXT and orjson.loads(payload)["type"] == "connected", payload
        return client

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        assert len(payload) < 126
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked, never fragmented)."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), FRAME_TIMEOUT_S)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def until_closed(self, *, answer: bool) -> tuple[int, str, bool]:
        """Read (answering pings or not) to the close frame: (code, reason, then EOF)."""
        while True:
            opcode, payload = await self.frame()
            if opcode == PING:
                self.pings += 1
                if answer:
                    self.send(PONG, payload)
            elif opcode == CLOSE:
                (code,) = struct.unpack("!H", payload[:2])
                rest = await asyncio.wait_for(self.reader.read(), FRAME_TIMEOUT_S)
                return code, payload[2:].decode(), rest == b""

    def close(self) -> None:
        self.writer.close()


def test_a_client_that_never_answers_pings_is_closed_1011(server: ServerProcess) -> None:
    async def scenario() -> None:
        silent = await RawClient.connect(server.chat_port, "silent", fresh("ka"))
        try:
            code, reason, eof = await silent.until_closed(answer=False)
        finally:
            silent.close()
        assert silent.pings == 1, "pinged once, then left to time out"
        assert (code, reason) == (1011, "keepalive ping timeout")
        assert eof, "the server ends the TCP connection after its close frame"

    run(scenario())


def test_a_dead_peer_is_dropped_by_the_server(server: ServerProcess) -> None:
    """A client that reads nothing and sends nothing more: the server lets it go.

    The close frame cannot be answered, so the server ends the TCP connection
    itself (after its close timeout); its connection count goes back down while
    this client still holds its socket open. What the server wrote waits unread
    in the client's socket: a ping, the close frame, the end of the stream.
    """

    async def scenario() -> None:
        async def count_is(wanted: int) -> bool:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, gateway_connections, server) == wanted

        # Alone on this server (the module's other tests have closed theirs).
        await until_async(lambda: count_is(0), FRAME_TIMEOUT_S, "no connection", interval=0.1)
        dead = await RawClient.connect(server.chat_port, "dead", fresh("ka"))
        try:
            await until_async(lambda: count_is(1), FRAME_TIMEOUT_S, "it counted", interval=0.1)
            await until_async(lambda: count_is(0), FRAME_TIMEOUT_S, "it dropped", interval=0.1)
            code, reason, eof = await dead.until_closed(answer=False)
        finally:
            dead.close()
        assert dead.pings == 1
        assert (code, reason, eof) == (1011, "keepalive ping timeout", True)

    run(scenario())


def test_idle_clients_that_answer_pings_stay_connected(server: ServerProcess) -> None:
    """Idle (no data frames) but answering: pinged every heartbeat, never closed.

    They connect before a silent client and stay until it is closed: by then
    each has been idle for more than the two heartbeats that closed it.
    """

    async def scenario() -> None:
        channel = fresh("ka")
        raw = await RawClient.connect(server.chat_port, "answering", channel)
        # A library client answers pings by itself, as browsers do.
        library = await Client.connect(server.url, "library", [channel])
        answering = asyncio.get_running_loop().create_task(raw.until_closed(answer=True))
        silent = await RawClient.connect(server.chat_port, "silent", channel)
        try:
            code, _, _ = await silent.until_closed(answer=False)
            assert code == 1011
            assert not answering.done(), answering
            assert raw.pings >= 2
            await ping_pong(library)
        finally:
            silent.close()
            answering.cancel()
            raw.close()
            await library.close()

    run(scenario())


def test_the_connected_frame_tells_the_heartbeat(server: ServerProcess) -> None:
    async def scenario() -> dict[str, Any]:
        client = await Client.connect(server.url, "hb", [fresh("ka")])
        try:
            return next(f for f in client.frames if f["type"] == "connected")
        finally:
            await client.close()

    assert run(scenario())["heartbeatMs"] == HEARTBEAT_MS
