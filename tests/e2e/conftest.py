"""Shared fixtures and helpers of the e2e conformance suite (PROTOCOL.md over real sockets).

Every test module gets one ``server`` (default config, 2 workers) for all its
tests; tests stay independent by using channels of their own (:func:`fresh`).
Modules that need tight limits use ``tight_server`` instead. Nothing here
sleeps to synchronise: every wait is for a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import Client

# Importable from here as before (branches written before tests/support); new code
# imports it from tests.support.polling.
from tests.support.polling import wait_until as wait_until
from tests.support.servers import ServerProcess, running_server

T = TypeVar("T")

SCENARIO_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0

# PROTOCOL.md: "UTC ISO-8601 with milliseconds and a Z".
CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
CHIME_MESSAGE_KEYS = {
    "channelId",
    "channelName",
    "messageId",
    "userId",
    "content",
    "createdAt",
    "editedAt",
    "metadata",
    "threadId",
    "clientMsgId",
}

# Config of ``tight_server``: small limits a test can exceed quickly.
TIGHT_HANDSHAKE_TIMEOUT_MS = 300
TIGHT_MAX_RESUME = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real ``chime serve`` (default config, 2 gateways) per test module."""
    with running_server(tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a short handshake timeout and a small resume limit."""
    overrides = {
        "chat.handshake_timeout_ms": TIGHT_HANDSHAKE_TIMEOUT_MS,
        "chat.max_resume_messages": TIGHT_MAX_RESUME,
    }
    with running_server(tmp_path_factory.mktemp("tight"), overrides=overrides) as srv:
        yield srv


def fresh(prefix: str = "ch") -> str:
    """A channel id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def run(scenario: Coroutine[Any, Any, T], timeout: float = SCENARIO_TIMEOUT_S) -> T:
    """Run an async scenario from a sync test, bounded by ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(scenario, timeout)

    return asyncio.run(bounded())


class Clients:
    """Opens clients and closes every one of them at the end (warnings are errors)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self._open: list[Client] = []

    async def connect(
        self,
        user: str | None = None,
        channels: list[str] | None = None,
        resume: dict[str, str] | None = None,
    ) -> Client:
        """A client through the handshake (``channels`` given) or a raw socket (None)."""
        client = await self.raw()
        if channels is not None:
            frame: dict[str, Any] = {"type": "connect", "channels": channels}
            if user is not None:
                frame["userId"] = user
            if resume is not None:
                frame["resume"] = resume
            await client.send(frame)
            await client.expect("connected")
        return client

    async def raw(self, path: str = "/") -> Client:
        """An open WebSocket, no handshake sent."""
        ws = await websockets.connect(
            f"ws://127.0.0.1:{self.server.chat_port}{path}",
            open_timeout=10,
            close_timeout=5,
            max_size=None,
            # read everything: a client with unread frames must still close at once
            max_queue=None,
        )
        client = Client(ws)
        self._open.append(client)
        return client

    async def close_all(self) -> None:
        await asyncio.gather(*(c.close() for c in self._open), return_exceptions=True)
        self._open.clear()


@contextlib.asynccontextmanager
async def clients(server: ServerProcess) -> AsyncIterator[Clients]:
    """``async with clients(server) as cs: a = await cs.connect("alice", ["general"])``."""
    pool = Clients(server)
    try:
        yield pool
    finally:
        await pool.close_all()


async def send_message(
    client: Client,
    channel: str | None,
    content: str,
    client_msg_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Send and wait for the ack; returns the ack frame."""
    frame: dict[str, Any] = {"type": "send", "content": content, **extra}
    if channel is not None:
        frame["channelId"] = channel
    if client_msg_id is None:
        client_msg_id = f"c-{uuid.uuid4().hex[:12]}"
    frame["clientMsgId"] = client_msg_id
    await client.send(frame)
    return await expect_reply(client, "ack", clientMsgId=client_msg_id)


async def expect_reply(client: Client, kind: str, **match: Any) -> dict[str, Any]:
    """The next frame of type ``kind`` whose fields equal ``match``.

    An ``error`` frame for the same correlation id fails at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame
        correlation = {k: v for k, v in match.items() if k in ("clientMsgId", "requestId")}
        if (
            frame.get("type") == "error"
            and correlation
            and all(frame.get(k) == v for k, v in correlation.items())
        ):
            raise AssertionError(f"expected {kind} {match}, got {frame}")


async def expect_error(client: Client, code: str, timeout: float = 10) -> dict[str, Any]:
    """The next ``error`` frame; it must carry ``code``."""
    frame = await client.expect("error", timeout)
    assert frame["code"] == code, frame
    assert isinstance(frame["message"], str) and frame["message"], frame
    return frame


async def expect_close(client: Client, timeout: float = CLOSE_TIMEOUT_S) -> int | None:
    """Read until the server closes the socket; returns the close code it sent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            await client.recv(max(0.01, deadline - loop.time()))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


async def ping_pong(client: Client) -> None:
    """The connection is alive and in order: a ping is answered with a pong."""
    await client.send({"type": "ping"})
    await client.expect("pong")


def http_get(url: str, timeout: float = 10) -> tuple[int, Any]:
    """GET ``url``; returns (status, parsed JSON body or text)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    text = raw.decode()
    return status, json.loads(text) if "json" in ctype else text


def gateway_connections(server: ServerProcess) -> float | None:
    """``chime_connections`` in /metrics summed over both gateways (None until both report)."""
    _, text = http_get(f"{server.api}/metrics")
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("chime_connections{") and 'process="gateway' in line
    ]
    return sum(values) if len(values) == 2 else None


def http_request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    """Send a request (``body`` as JSON when given); returns (status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    text = raw.decode()
    return status, json.loads(text) if "json" in ctype and text else text


def assert_chime_message(msg: dict[str, Any]) -> None:
    """``msg`` has PROTOCOL.md's ChimeMessage shape."""
    assert set(msg) >= CHIME_MESSAGE_KEYS, msg
    assert isinstance(msg["messageId"], str) and msg["messageId"], msg
    assert isinstance(msg["channelId"], str), msg
    assert isinstance(msg["userId"], str), msg
    assert isinstance(msg["content"], str), msg
    assert CREATED_AT.match(msg["createdAt"]), msg
    assert msg["editedAt"] is None or CREATED_AT.match(msg["editedAt"]), msg
    assert isinstance(msg["metadata"], dict), msg
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in msg["metadata"].items())


def seen(client: Client, channel: str | None = None) -> list[dict[str, Any]]:
    """Every message (of ``channel``) the client has read so far, in arrival order."""
    return [
        f["message"]
        for f in client.frames
        if f.get("type") == "message" and (channel is None or f["message"]["channelId"] == channel)
    ]


async def received(
    client: Client, count: int, channel: str | None = None, timeout: float = 10
) -> list[dict[str, Any]]:
    """The first ``count`` messages (of ``channel``) this client got since it opened.

    Unlike ``Client.messages`` this also counts message frames already read while
    waiting for something else (an ack, say).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(got := seen(client, channel)) < count:
        await client.recv(max(0.01, deadline - loop.time()))
    return got[:count]
