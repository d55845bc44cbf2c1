"""``chime client``: a small interactive terminal client.

Type a line to send it to the channel; ``/history`` shows the last 20 messages,
``/join NAME`` subscribes, ``/quit`` leaves. Incoming frames print as one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

CONNECT_TIMEOUT_S = 10.0


def format_frame(frame: dict[str, Any]) -> str:
    """One line of text for a server frame."""
    kind = frame.get("type")
    if kind == "message":
        msg = frame["message"]
        return f"[{msg['channelId']}] {msg['userId']}: {msg['content']}"
    if kind == "history":
        lines = [f"  [{m['channelId']}] {m['userId']}: {m['content']}" for m in frame["messages"]]
        return "history:\n" + "\n".join(lines) if lines else "history: (empty)"
    if kind == "ack":
        return f"(stored as {frame['messageId']})"
    if kind == "error":
        return f"error {frame.get('code')}: {frame.get('message')}"
    return orjson.dumps(frame).decode()


def command_frame(line: str, channel: str) -> dict[str, Any] | None:
    """The frame to send for a line typed by the user; None for ``/quit``."""
    if line == "/quit":
        return None
    if line == "/history":
        return {"type": "history", "requestId": "h", "channelId": channel, "limit": 20}
    if line.startswith("/join "):
        return {"type": "subscribe", "channels": [line.split(None, 1)[1].strip()]}
    return {"type": "send", "channelId": channel, "content": line}


async def _session(url: str, user: str | None, channel: str, token: str | None) -> int:
    try:
        websocket = await asyncio.wait_for(websockets.connect(url), CONNECT_TIMEOUT_S)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        print(f"chime client: cannot connect to {url}: {exc}", file=sys.stderr)
        return 1
    async with websocket:
        connect: dict[str, Any] = {"type": "connect", "channels": [channel]}
        if user:
            connect["userId"] = user
        if token:
            connect["token"] = token
        await websocket.send(orjson.dumps(connect).decode())

        async def printer() -> None:
            async for raw in websocket:
                print(format_frame(orjson.loads(raw)), flush=True)

        reader = asyncio.get_running_loop().create_task(printer())
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                if not line:
                    break
                frame = command_frame(line.rstrip("\n"), channel)
                if frame is None:
                    break
                if line.strip():
                    await websocket.send(orjson.dumps(frame).decode())
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader
    return 0


def run_client(url: str, *, user: str | None, channel: str, token: str | None) -> int:
    """Run the interactive client until ``/quit`` or end of input."""
    try:
        return asyncio.run(_session(url, user, channel, token))
    except KeyboardInterrupt:
        return 0
