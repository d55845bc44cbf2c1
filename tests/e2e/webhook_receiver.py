"""A webhook receiver for the handler tests: an aiohttp server on a free port, on its own thread.

It checks every request's ``X-Chime-Signature`` and records what it accepted;
``modes`` makes it fail (500) or be slow (past the handler's budget) on demand.
``/hook/<sender>`` is ``/hook`` too, with each acceptance noted under ``sender``
(several hosts, each configured with a URL of its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

SECRET = "webhook-secret"
SLOW_S = 3.0


@dataclass
class Receiver:
    """A webhook receiver; ``modes`` says how to answer the next requests."""

    port: int = 0
    # "ok", "fail" (500) or "slow" (answers after SLOW_S, past the handler's budget);
    # consumed one per request, then ``default``.
    modes: list[str] = field(default_factory=list)
    default: str = "ok"
    accepted: list[dict[str, Any]] = field(default_factory=list)
    # (sender, body) of each acceptance: the ``<sender>`` of ``/hook/<sender>``, or "".
    senders: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
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
            self.senders.append((request.match_info.get("sender", ""), self.accepted[-1]))
        return web.Response(status=200)

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Accepted messages of ``channel`` (a change's body has a ``type``)."""
        with self.lock:
            return [m for m in self.accepted if "type" not in m and m["channelId"] == channel]

    def contents(self, channel: str) -> list[str]:
        return [m["content"] for m in self.messages(channel)]

    def ids(self, channel: str) -> list[str]:
        return [m["messageId"] for m in self.messages(channel)]

    def changes(self) -> list[dict[str, Any]]:
        """Accepted changes (edits, deletes, reactions), as their frames."""
        with self.lock:
            return [m for m in self.accepted if "type" in m]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving_receiver() as found:
        yield found


@contextmanager
def serving_receiver() -> Iterator[Receiver]:
    """A ``Receiver`` listening on a free port until the block ends."""
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
        app.router.add_post("/hook/{sender}", found.receive)
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


def webhook_handler(receiver: Receiver, timeout_ms: int = 500) -> dict[str, Any]:
    """A ``handlers`` entry: the webhook built-in posting ``hook-*`` channels to ``receiver``."""
    return {
        "name": "hook",
        "use": "webhook",
        "stage": "after_store",
        "channels": ["hook-*"],
        "timeout_ms": timeout_ms,
        "options": {"url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET},
    }
