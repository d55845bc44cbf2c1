"""A client that stops reading is closed (1008); nobody else notices.

The flood is paced (``FLOOD_RATE``), as a chat is. Past ``chat.send_queue_bytes``
waiting for a client the server holds back (flow control,
tests/e2e/test_flow_control.py); a client held back that takes nothing for
``chat.send_stall_ms`` does not read, and is closed.

One subscriber of a channel stops reading (its socket receive buffer made small,
its WebSocket read queue tiny, so TCP pushes back on the server at once) while a
sender floods the channel. The other subscribers must keep receiving every
message, in order, with bounded latency; the server must close the slow one with
1008 once more than ``chat.send_queue_bytes`` (small here) wait for it in the
server, written but not taken by the kernel, and it takes nothing for
``chat.send_stall_ms`` (the close frame cannot reach a client that does not
read, so the server drops its TCP connection shortly after), and the server's
memory must not grow with the backlog.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from chime_actors.bench.stats import summarize
from chime_actors.bench.target import Target
from tests.e2e.conftest import fresh, run
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

QUEUE_BYTES = 1024 * 1024
FLOOD = 3000
FLOOD_RATE = 250  # msg/s: a paced flood
CONTENT = "x" * 2000  # 3000 x ~2.3 KB frames: ~7 MB per subscriber
FAST_READERS = 3
SENDERS = 4  # each sender also gets an ack per message: spread them
MAX_GROWTH_KIB = 64 * 1024
LATENCY_P99_BOUND_MS = 5000
LATENCY_MAX_BOUND_MS = 10_000  # generous: the 2 cores are shared with other test runs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    overrides = {
        "chat.send_queue_bytes": QUEUE_BYTES,
        "limits.messages_per_10s": 0,
    }
    with running_server(tmp_path_factory.mktemp("slow"), overrides=overrides) as srv:
        yield srv


async def open_client(
    server: ServerProcess, user: str, channel: str, *, slow: bool = False
) -> ClientConnection:
    sock = None
    if slow:
        # A small receive buffer (set before connect, so the window stays small).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.chat_port))
    ws = await websockets.connect(
        server.url,
        sock=sock,
        compression=None,
        ping_interval=None,
        open_timeout=10,
        close_timeout=5,
        max_queue=1 if slow else 16,  # the slow one pauses TCP reads after a frame
    )
    await ws.send(orjson.dumps({"type": "connect", "channels": [channel], "userId": user}).decode())
    while orjson.loads(await ws.recv()).get("type") != "connected":
        pass
    return ws


class Reader:
    """Reads every frame of a fast client; keeps message ids and latencies."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids: list[str] = []
        self.latency_us: list[int] = []
        self.acks = 0
        self.closed: str | None = None
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.time_ns()
                frame = orjson.loads(raw)
                if frame["type"] == "message":
                    self.ids.append(frame["message"]["messageId"])
                    self.latency_us.append((now - int(frame["message"]["metadata"]["t"])) // 1000)
                elif frame["type"] == "ack":
                    self.acks += 1
        except ConnectionClosed as exc:
            self.closed = str(exc)


def slow_consumer_closed(server: ServerProcess) -> bool:
    return any(line.get("message") == "slow consumer closed" for line in server.log_lines())


async def flood(server: ServerProcess, memory: dict[str, int]) -> None:
    channel = fresh("slow")
    slow = await open_client(server, "slowpoke", channel, slow=True)
    readers = [Reader(await open_client(server, f"fast{i}", channel)) for i in range(FAST_READERS)]
    senders = [Reader(await open_client(server, f"flooder{i}", channel)) for i in range(SENDERS)]
    try:
        start = time.monotonic()
        for k in range(FLOOD):
            due = start + k / FLOOD_RATE
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            frame = {
                "type": "send",
                "channelId": channel,
                "content": CONTENT,
                "clientMsgId": f"f-{k}",
                "metadata": {"t": str(time.time_ns())},
            }
            await senders[k % SENDERS].ws.send(orjson.dumps(frame).decode())
        everyone = [*readers, *senders]
        deadline = time.monotonic() + 60
        while any(len(r.ids) < FLOOD for r in everyone) or sum(s.acks for s in senders) < FLOOD:
            assert time.monotonic() < deadline, [(len(r.ids), r.closed) for r in everyone]
            await asyncio.sleep(0.05)

        # Every fast subscriber got the whole flood once, in order.
        for reader in everyone:
            assert len(reader.ids) == FLOOD
            assert reader.ids == sorted(reader.ids)
            assert len(set(reader.ids)) == FLOOD
        latency = summarize(*(r.latency_us for r in everyone)).to_ms()
        assert latency["p99_ms"] is not None and latency["p99_ms"] < LATENCY_P99_BOUND_MS, latency
        assert latency["max_ms"] is not None and latency["max_ms"] < LATENCY_MAX_BOUND_MS, latency

        # The server gave up on the slow one ...
        await asyncio.to_thread(
            wait_until, lambda: slow_consumer_closed(server), 30, "slow consumer closed"
        )
        memory["after"] = Target(server.url, server.proc.pid, server.sessions).memory().rss_kib
        # ... and, once it reads again, it finds a cut-off stream and the end of the
        # connection: a 1008 close frame if the server could still write it, else
        # (the usual case: its TCP window is full) the server dropped the TCP
        # connection after its abort grace period and logged that it did.
        received = 0
        code = None
        try:
            async with asyncio.timeout(30):
                while True:
                    frame = orjson.loads(await slow.recv())
                    received += frame["type"] == "message"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        if code is None:
            assert any(
                line.get("message") == "dropping unresponsive connection"
                for line in server.log_lines()
            ), "closed without a close frame, and the server did not say it dropped it"
        else:
            assert code == 1008, code
        assert received < FLOOD
    finally:
        await asyncio.gather(
            slow.close(), *(r.ws.close() for r in [*readers, *senders]), return_exceptions=True
        )


def test_slow_consumer_is_closed_and_the_others_keep_up(server: ServerProcess) -> None:
    target = Target(server.url, server.proc.pid, server.sessions)
    memory = {"before": target.memory().rss_kib}
    run(flood(server, memory), timeout=150)
    growth = memory["after"] - memory["before"]
    assert growth < MAX_GROWTH_KIB, f"server RSS grew {growth} KiB during the flood"
    # The server is still healthy for everyone else.
    assert not any(line.get("level") == "error" for line in server.log_lines())
