"""A small test client written from PROTOCOL.md alone."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

# Generous: on 2 shared cores a busy CI box can stall a frame for seconds.
RECV_TIMEOUT_S = 20.0


class Client:
    """A WebSocket chat client with helpers to wait for frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        user: str | None = None,
        channels: list[str] | None = None,
        resume: dict[str, str] | None = None,
    ) -> Client:
        ws = await websockets.connect(url, open_timeout=10, close_timeout=5)
        client = cls(ws)
        if channels is not None:
            frame: dict[str, Any] = {"type": "connect", "channels": channels}
            if user:
                frame["userId"] = user
            if resume:
                frame["resume"] = resume
            await client.send(frame)
            await client.expect("connected")
        return client

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = orjson.loads(raw)
        self.frames.append(frame)
        return frame

    async def expect(self, kind: str, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """Read frames until one of type ``kind`` (others are kept in ``frames``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if frame.get("type") == kind:
                return frame

    async def messages(self, count: int, timeout: float = RECV_TIMEOUT_S) -> list[dict[str, Any]]:
        """The next ``count`` chat messages (``message`` frames' payloads)."""
        got = []
        while len(got) < count:
            frame = await self.expect("message", timeout)
            got.append(frame["message"])
        return got

    async def close(self) -> None:
        await self.ws.close()
