"""A TCP relay on loopback that a test can cut, hold shut, or make drop replies.

Reconnect tests need the network to fail on cue: a client behind a ``TcpProxy``
loses its connection when the test says (``cut``), cannot come back until the
test lets it (``hold``/``release``), and can be made to lose what the server
sends while its own frames still arrive (``drop_replies``: the server stores a
send, the ack never reaches the client). Everything is real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Relays ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held = False
        self.drop_replies = False
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def cut(self) -> None:
        """Drop every relayed connection at once (as a crashed host would)."""
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()
        self._links.clear()

    def hold(self) -> None:
        """Cut, and refuse new connections until ``release``."""
        self.held = True
        self.cut()

    def release(self) -> None:
        self.held = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.held:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        link = (writer, up_writer)
        self._links.add(link)
        for task in (
            asyncio.ensure_future(self._pump(reader, up_writer, replies=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, replies=True)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if replies and self.drop_replies:
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
