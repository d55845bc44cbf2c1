"""``GatewayConnection`` on a real socket: a websockets server with it, a library client.

Each test runs a server whose handler does what the gateway does with the
connection (release the handshake, ping, time out) and a websockets client
that answers pings by itself, as browsers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from chime_actors.gateway.ws_connection import TIMEOUT_REASON, GatewayConnection
from tests.support.polling import until

Handler = Callable[[GatewayConnection], Awaitable[None]]


def serve_one(handler: Handler, client: Callable[[str], Awaitable[None]]) -> None:
    async def main() -> None:
        async def accept(websocket: ServerConnection) -> None:
            assert isinstance(websocket, GatewayConnection)
            websocket.heard_at = websocket.ping_sent_at = 0.0  # as Keepalive.add does
            await handler(websocket)

        async with websockets.serve(
            accept, "127.0.0.1", 0, create_connection=GatewayConnection, ping_interval=None
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            await asyncio.wait_for(client(f"ws://127.0.0.1:{port}/?token=secret"), 10)

    asyncio.run(main())


def test_frames_still_flow_after_the_handshake_is_released() -> None:
    async def handler(ws: GatewayConnection) -> None:
        assert ws.request is not None and ws.request.headers.get("X-Probe") == "1"
        ws.release_handshake()
        assert ws.request is not None and not list(ws.request.headers.raw_items())
        assert ws.request.path == "/"
        assert ws.response is None
        async for frame in ws:
            await ws.send(f"echo {frame}")

    async def client(url: str) -> None:
        async with websockets.connect(url, additional_headers={"X-Probe": "1"}) as ws:
            await ws.send("one")
            assert await ws.recv() == "echo one"
            await ws.send("two")
            assert await ws.recv() == "echo two"

    serve_one(handler, client)


def test_any_bytes_received_and_the_pong_move_heard_at() -> None:
    heard: list[float] = []

    async def handler(ws: GatewayConnection) -> None:
        await ws.recv()
        heard.append(ws.heard_at)
        assert heard[0] > 0.0, "a data frame counts"
        before = ws.heard_at
        assert ws.send_keepalive_ping()
        await until(lambda: ws.heard_at > before, what="the pong", interval=0.001)
        await ws.send("done")
        await ws.wait_closed()

    async def client(url: str) -> None:
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("hello")
            assert await ws.recv() == "done"

    serve_one(handler, client)


def test_a_timed_out_connection_is_closed_1011_and_no_longer_pinged() -> None:
    async def handler(ws: GatewayConnection) -> None:
        await ws.recv()
        ws.keepalive_timed_out()
        assert not ws.send_keepalive_ping(), "closing: no more pings"
        ws.keepalive_timed_out()  # twice is harmless
        await ws.wait_closed()

    async def client(url: str) -> None:
        async with websockets.connect(url, ping_interval=None) as ws:
            await ws.send("hello")
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                assert (exc.rcvd.code, exc.rcvd.reason) == (1011, TIMEOUT_REASON)
            else:
                raise AssertionError("not closed")

    serve_one(handler, client)
