"""The webhook built-in against a local HTTP receiver that fails, is slow and comes back.

The receiver is an aiohttp server on a free port, on a thread of its own; it
checks every request's ``X-Chime-Signature`` and records what it accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.e2e.conftest import clients, fresh, run, send_message, wait_until
from tests.e2e.server_process import ServerProcess, running_server

pytestmark = pytest.mark.e2e

SECRET = "webhook-secret"
SLOW_S = 3.0
TIMEOUT_MS = 500


@dataclass
class Receiver:
    """A webhook receiver; ``modes`` says how to answer the next requests."""

    port: int = 0
    # "ok", "fail" (500) or "slow" (answers after SLOW_S, past the handler's budget);
    # consumed one per request, then ``default``.
    modes: list[str] = field(default_factory=list)
    default: str = "ok"
    accepted: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        with self.lock:
            self.requests += 1
            if not hmac.compare_digest(request.headers.get("X-Chime-Signature", ""), expected):
                self.bad_signatures += 1
                return web.Response(status=401)
            mode = self.modes.pop(0) if self.modes else self.default
        if mode == "slow":
            await asyncio.sleep(SLOW_S)
        if mode == "fail":
            return web.Response(status=500)
        with self.lock:
            self.accepted.append(orjson.loads(body))
        return web.Response(status=200)

    def contents(self, channel: str) -> list[str]:
        with self.lock:
            return [m["content"] for m in self.accepted if m["channelId"] == channel]

    def ids(self, channel: str) -> list[str]:
        with self.lock:
            return [m["messageId"] for m in self.accepted if m["channelId"] == channel]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    found = Receiver(port=port)
    loop = asyncio.new_event_loop()
    runner: list[web.AppRunner] = []
    started = threading.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/hook", found.receive)
        app_runner = web.AppRunner(app)
        await app_runner.setup()
        await web.TCPSite(app_runner, "127.0.0.1", port).start()
        runner.append(app_runner)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    started.wait(10)
    yield found
    asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def webhook_server(tmp: Path, receiver: Receiver) -> Any:
    handlers = [
        {
            "name": "hook",
            "use": "webhook",
            "stage": "after_store",
            "channels": ["hook-*"],
            "timeout_ms": TIMEOUT_MS,
            "options": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET},
        }
    ]
    return running_server(tmp, overrides={"handlers": handlers})


def send_all(server: ServerProcess, channel: str, contents: list[str]) -> list[str]:
    async def scenario() -> list[str]:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            return [(await send_message(alice, channel, c))["messageId"] for c in contents]

    return run(scenario())


def test_each_message_is_posted_signed_in_order(tmp_path: Path, receiver: Receiver) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        ids = send_all(server, channel, ["one", "two", "three"])
        wait_until(lambda: len(receiver.ids(channel)) == 3, what="3 posts")
    assert receiver.ids(channel) == ids
    assert receiver.contents(channel) == ["one", "two", "three"]
    assert receiver.bad_signatures == 0
    (first, *_) = receiver.accepted
    assert set(first) == {
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


def test_a_failing_then_slow_receiver_gets_everything_once_it_answers_2xx(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    receiver.modes = ["fail", "slow", "fail"]
    with webhook_server(tmp_path, receiver) as server:
        ids = send_all(server, channel, [f"m{n}" for n in range(5)])
        wait_until(lambda: len(receiver.ids(channel)) >= 5, timeout=30, what="5 posts")
    # The first message was offered until it was confirmed, the others waited behind it.
    assert receiver.requests >= 8
    assert receiver.ids(channel)[:5] == ids


def test_a_server_restart_resumes_from_the_cursor_without_gaps(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        before = send_all(server, channel, ["a", "b", "c"])
        wait_until(lambda: len(receiver.ids(channel)) == 3, what="3 posts")
        receiver.default = "fail"  # the receiver goes down; these wait in storage
        during = send_all(server, channel, ["d", "e", "f"])
        wait_until(lambda: receiver.requests >= 5, what="retries while down")
    receiver.default = "ok"
    with webhook_server(tmp_path, receiver) as server:
        after = send_all(server, channel, ["g"])
        wait_until(lambda: len(receiver.ids(channel)) >= 7, timeout=30, what="7 posts")
    got = receiver.ids(channel)
    assert got[:3] == before  # confirmed before the stop: not posted again
    assert got == before + during + after
    assert receiver.contents(channel) == ["a", "b", "c", "d", "e", "f", "g"]


def test_a_handler_killed_under_load_resumes_with_nothing_missed(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        title = "chime: handler 1"
        (pid,) = wait_until(lambda: server.pids_by_title(title), what="the handler process")

        async def scenario() -> list[str]:
            async with clients(server) as cs:
                alice = await cs.connect("alice", [channel])
                ids = []
                for n in range(60):
                    if n == 20:
                        os.kill(pid, signal.SIGKILL)
                    ids.append((await send_message(alice, channel, f"m{n}"))["messageId"])
                return ids

        ids = run(scenario())
        wait_until(lambda: set(ids) <= set(receiver.ids(channel)), timeout=30, what="every message")
        restarted = wait_until(lambda: server.pids_by_title(title), what="the new handler")
        assert restarted != [pid]
    got = receiver.ids(channel)
    # At least once: a message may be posted again after the kill, never skipped,
    # and each first arrival is in id order.
    first_arrivals = list(dict.fromkeys(got))
    assert first_arrivals == ids
