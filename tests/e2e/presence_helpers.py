"""Helpers of the presence, typing and read marker tests (one server or two hosts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import psutil

from tests.e2e.client import Client
from tests.support.servers import ServerProcess, group_pids


def gateway_serving(server: ServerProcess, client: Client, workers: int = 2) -> int:
    """The index of the gateway whose process holds the server end of ``client``."""
    port = client.ws.local_address[1]
    for index in range(1, workers + 1):
        for pid in server.pids_by_title(f"chime: gateway {index}"):
            try:
                connections = psutil.Process(pid).net_connections(kind="tcp")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if any(c.raddr and c.raddr.port == port for c in connections):
                return index
    raise AssertionError(f"no gateway of the server holds the connection from port {port}")


async def connect_on(
    server: ServerProcess,
    gateway: int,
    user: str,
    channels: list[str],
    opened: list[Client],
) -> Client:
    """A client of ``user`` whose connection the kernel gave to gateway ``gateway``.

    Connections are opened (subscribed to nothing) until one lands there
    (``SO_REUSEPORT`` spreads them), the others closed again; the one kept then
    subscribes to ``channels``, so no presence flickers on the way. Every client
    kept is appended to ``opened``.
    """
    for _ in range(60):
        client = await Client.connect(server.url, user, [])
        if gateway_serving(server, client) == gateway:
            opened.append(client)
            if channels:
                await client.send({"type": "subscribe", "channels": channels})
                await client.expect("subscribed")
            return client
        await client.close()
    raise AssertionError(f"60 connections and none on gateway {gateway}")


def presence_of(client: Client, user: str, channel: str) -> list[str]:
    """The ``presence_changed`` statuses ``client`` got so far for ``user`` in ``channel``."""
    return [
        f["status"]
        for f in client.frames
        if f.get("type") == "presence_changed"
        and f.get("userId") == user
        and f.get("channelId") == channel
    ]


async def expect_presence(
    client: Client, user: str, channel: str, status: str, timeout: float = 10
) -> float:
    """Wait for ``presence_changed`` of ``user`` to ``status``; returns when it arrived."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        if (
            frame.get("type") == "presence_changed"
            and frame.get("userId") == user
            and frame.get("channelId") == channel
            and frame.get("status") == status
        ):
            return time.monotonic()


async def has_presence(
    client: Client, user: str, channel: str, status: str, timeout: float = 10
) -> None:
    """``client`` got (already, or now) ``presence_changed`` of ``user`` to ``status``."""
    if status in presence_of(client, user, channel):
        return
    await expect_presence(client, user, channel, status, timeout)


async def query_presence(client: Client, channel: str, request_id: str = "p") -> list[str]:
    """The ``online`` list of a ``presence`` request."""
    await client.send({"type": "presence", "requestId": request_id, "channelId": channel})
    while True:
        frame = await client.recv()
        if frame.get("type") == "error" and frame.get("requestId") == request_id:
            raise AssertionError(f"presence refused: {frame}")
        if frame.get("type") == "presence" and frame.get("requestId") == request_id:
            assert frame["channelId"] == channel
            online: list[str] = frame["online"]
            return online


async def wait_online(
    client: Client, channel: str, expected: list[str], timeout: float = 10
) -> None:
    """Ask ``presence`` until it answers ``expected``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (online := await query_presence(client, channel)) != expected:
        if loop.time() > deadline:
            raise AssertionError(f"presence of {channel}: {online}, expected {expected}")
        await asyncio.sleep(0.05)


def http(
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One HTTP request; (status, JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    return status, json.loads(raw) if raw else None


def kill(pid: int) -> float:
    """SIGKILL ``pid`` (a process of a server this test started); returns when."""
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def kill_process_group(server: ServerProcess) -> float:
    """SIGKILL every process of ``server`` at once, as a host that loses power."""
    members = group_pids(server.proc.pid, server.sessions)
    pids = [server.proc.pid, *(p for p in members if p != server.proc.pid)]
    now = time.monotonic()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return now
