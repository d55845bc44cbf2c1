"""PROTOCOL.md "Errors and limits": a client that reads is never closed as a slow consumer.

However large a burst or a resume replay is, the server holds back (flow
control) instead of closing a client that reads. Every burst here is 300
messages of 4,000 emoji (~16 KB of UTF-8 per message frame, ~5 MB in all):
more than ``chat.send_queue_bytes``. Every client reads; none may be closed,
and each must get every message exactly once, in order.

Some readers read at the pace of a slow link (a small TCP receive window and
one frame every few milliseconds, ~3 MB/s), so that the burst waits in the
server. Each scenario runs against the default bound (4 MiB) and a small one
(256 KiB): on loopback the kernel's socket send buffer grows to 4 MB and
takes most of a 5 MB burst off the server's hands, so with the default bound
only what lands within one loop turn exceeds it; with the small bound the
backlog in the server is many times the bound for seconds.

A client that stops reading is still closed with 1008: during a live flood,
tests/e2e/test_slow_consumer.py; during a replay, the last test here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from chime_actors.ids import format_message_id
from tests.e2e.client import Client
from tests.e2e.conftest import (
    clients,
    fresh,
    ping_pong,
    received,
    run,
    seen,
    send_message,
)
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

BURST = 300
# 4,000 code points (the default chat.max_content_chars), 4 bytes of UTF-8 each.
CONTENT = "\U0001f600" * 4000
READERS = 3  # besides the sender, which reads too
SLOW_READERS = 2  # of the readers: on a slow link
SLOW_RCVBUF = 8192
SLOW_PACE_S = 0.005  # a frame every 5 ms: ~3 MB/s of these frames
SMALL_QUEUE_BYTES = 256 * 1024
STALL_MS = 2000
# Twice the burst: well past what the kernel's socket buffer (up to 4 MB) takes.
STALLED_REPLAY = 2 * BURST
READ_TIMEOUT_S = 90.0
SCENARIO_TIMEOUT_S = 240.0


@pytest.fixture(scope="module", params=["default-queue", "small-queue"])
def queue_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with the default ``chat.send_queue_bytes``, or a small one."""
    small = request.param == "small-queue"
    overrides = {"chat.send_queue_bytes": SMALL_QUEUE_BYTES} if small else {}
    with running_server(tmp_path_factory.mktemp("flow"), overrides=overrides) as srv:
        yield srv


@pytest.fixture(scope="module")
def stall_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A small ``chat.send_queue_bytes`` and a short ``chat.send_stall_ms``."""
    overrides = {"chat.send_queue_bytes": SMALL_QUEUE_BYTES, "chat.send_stall_ms": STALL_MS}
    with running_server(tmp_path_factory.mktemp("stall"), overrides=overrides) as srv:
        yield srv


@contextlib.asynccontextmanager
async def slow_link_client(
    server: ServerProcess, user: str, channel: str, resume: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """A client behind a small TCP receive window (it reads with ``read_paced``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Before connect, so the window stays small.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.chat_port))
    ws = await websockets.connect(
        server.url, sock=sock, open_timeout=10, close_timeout=5, max_size=None, max_queue=4
    )
    client = Client(ws)
    try:
        frame: dict[str, Any] = {"type": "connect", "channels": [channel], "userId": user}
        if resume is not None:
            frame["resume"] = resume
        await client.send(frame)
        await client.expect("connected")
        yield client
    finally:
        await client.close()


async def read_paced(client: Client, count: int, channel: str) -> None:
    """Read until ``count`` messages of ``channel`` arrived, at a slow link's pace."""
    while len(seen(client, channel)) < count:
        await client.recv(READ_TIMEOUT_S)
        await asyncio.sleep(SLOW_PACE_S)  # not a synchronisation: the link's speed


def send_frame(channel: str, k: int) -> dict[str, Any]:
    return {"type": "send", "channelId": channel, "content": CONTENT, "clientMsgId": f"b-{k}"}


async def acks(client: Client, count: int) -> list[str]:
    """The message ids of the first ``count`` acks (frames already read included)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READ_TIMEOUT_S

    def got() -> list[dict[str, Any]]:
        return [f for f in client.frames if f.get("type") == "ack"]

    while len(got()) < count:
        frame = await client.recv(max(0.01, deadline - loop.time()))
        assert frame.get("type") != "error", frame
    return [f["messageId"] for f in got()[:count]]


async def complete_and_alive(client: Client, channel: str, ids: list[str]) -> None:
    """``client`` got exactly ``ids`` on ``channel``, in order, once each, and is open."""
    got = await received(client, len(ids), channel, timeout=READ_TIMEOUT_S)
    assert [m["messageId"] for m in got] == ids
    assert all(m["content"] == CONTENT for m in got)
    # Anything still queued for it (a duplicate, say) precedes the pong.
    await ping_pong(client)
    assert [m["messageId"] for m in seen(client, channel)] == ids
    assert not [f for f in client.frames if f.get("type") == "error"], client.frames


@pytest.mark.parametrize("reader", ["fast", "slow-link"])
def test_a_resume_replay_larger_than_the_send_queue_completes(
    queue_server: ServerProcess, reader: str
) -> None:
    async def scenario() -> None:
        channel = fresh("replay")
        async with clients(queue_server) as cs, contextlib.AsyncExitStack() as stack:
            alice = await cs.connect("alice", [channel])
            ids = [
                (await send_message(alice, channel, CONTENT, f"r-{k}"))["messageId"]
                for k in range(BURST)
            ]
            resume = {channel: format_message_id(0)}
            if reader == "fast":
                bob = await cs.connect("bob", [channel], resume=resume)
                await received(bob, BURST, channel, timeout=READ_TIMEOUT_S)
            else:
                bob = await stack.enter_async_context(
                    slow_link_client(queue_server, "bob", channel, resume)
                )
                await read_paced(bob, BURST, channel)
            marker = await bob.expect("resumed", READ_TIMEOUT_S)
            assert marker == {"type": "resumed", "channelId": channel, "count": BURST}
            await complete_and_alive(bob, channel, ids)
            # Live delivery follows the replay, once.
            live = (await send_message(alice, channel, "after the replay"))["messageId"]
            (*_, last) = await received(bob, BURST + 1, channel, timeout=READ_TIMEOUT_S)
            assert last["messageId"] == live

    run(scenario(), timeout=SCENARIO_TIMEOUT_S)


def test_a_pipelined_burst_larger_than_the_send_queue_reaches_every_reader(
    queue_server: ServerProcess,
) -> None:
    async def scenario() -> None:
        channel = fresh("burst")
        async with clients(queue_server) as cs, contextlib.AsyncExitStack() as stack:
            readers = [
                await stack.enter_async_context(slow_link_client(queue_server, f"slow{i}", channel))
                for i in range(SLOW_READERS)
            ]
            readers += [
                await cs.connect(f"reader{i}", [channel]) for i in range(READERS - SLOW_READERS)
            ]
            sender = await cs.connect("sender", [channel])

            async def burst() -> list[str]:
                # One client sends the whole burst without waiting for an ack.
                for k in range(BURST):
                    await sender.send(send_frame(channel, k))
                return await acks(sender, BURST)

            # Every reader reads all along, at its own pace.
            reading = [
                *(read_paced(reader, BURST, channel) for reader in readers[:SLOW_READERS]),
                *(
                    received(reader, BURST, channel, READ_TIMEOUT_S)
                    for reader in readers[SLOW_READERS:]
                ),
            ]
            ids, *_ = await asyncio.gather(burst(), *reading)
            assert ids == sorted(ids) and len(set(ids)) == BURST
            for client in [*readers, sender]:
                await complete_and_alive(client, channel, ids)

    run(scenario(), timeout=SCENARIO_TIMEOUT_S)


def test_a_client_that_stops_reading_during_a_replay_is_still_closed(
    stall_server: ServerProcess,
) -> None:
    """Flow control is not a way to hold the server's memory: 1008 still comes."""

    async def scenario() -> None:
        channel = fresh("stall")
        async with clients(stall_server) as cs:
            alice = await cs.connect("alice", [channel])
            for k in range(STALLED_REPLAY):
                await send_message(alice, channel, CONTENT, f"s-{k}")
            resume = {channel: format_message_id(0)}
            async with slow_link_client(stall_server, "mallory", channel, resume) as mallory:
                # Mallory reads nothing more: the replay stalls past the bound.
                await asyncio.to_thread(
                    wait_until,
                    lambda: any(
                        line.get("message") == "slow consumer closed"
                        for line in stall_server.log_lines()
                    ),
                    30,
                    "slow consumer closed",
                )
                replayed = 0
                code = None
                try:
                    async with asyncio.timeout(30):
                        while True:
                            frame = orjson.loads(await mallory.ws.recv())
                            replayed += frame["type"] == "message"
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                assert code in (1008, None), code  # None: dropped, it could not take the close
                assert replayed < STALLED_REPLAY
            # Everyone else is served as before.
            await ping_pong(alice)

    run(scenario(), timeout=SCENARIO_TIMEOUT_S)
