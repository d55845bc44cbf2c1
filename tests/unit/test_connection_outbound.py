"""Tests for ConnectionActor's outbound side: a queue and a writer only while frames wait.

A small fake WebSocket stands in for websockets' ``ServerConnection``: it records
what is sent and closed, and its ``send`` can be held to play a client that does
not read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosedOK

from chime_actors.auth import Authenticator
from chime_actors.config import Config, load_config
from chime_actors.errors import StoreUnavailable
from chime_actors.gateway import connection_actor as connection_actor_module
from chime_actors.gateway.channel_actor import JoinResult, Subscriber
from chime_actors.gateway.connection_actor import ConnectionActor
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.records import SendOutcome, SendRecord
from chime_actors.storage.store import HistoryPage

TIMEOUT = 5.0


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class FakeWebSocket:
    """Records sends and closes; ``hold()`` makes ``send`` wait until ``release()``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closes: list[tuple[int, str]] = []
        self.transport = FakeTransport()
        self._incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self._open = asyncio.Event()
        self._open.set()
        self.sending = asyncio.Event()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def receive(self, frame: str) -> None:
        self._incoming.put_nowait(frame)

    def peer_closes(self) -> None:
        self._incoming.put_nowait(None)

    async def send(self, frame: str) -> None:
        self.sending.set()
        await self._open.wait()
        if self.closes:
            raise ConnectionClosedOK(None, None)
        self.sent.append(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.append((code, reason))
        self._incoming.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        while True:
            frame = await self._incoming.get()
            if frame is None:
                return
            yield frame


class FakeServices:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self.fault_injection = False
        self.authenticator = Authenticator(config.auth)

    def value(self, name: str, *labels: str) -> float | None:
        return self.registry.snapshot("test").value(name, *labels)

    def submit_send(self, record: SendRecord) -> asyncio.Future[SendOutcome]:
        raise AssertionError("not used")

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Subscriber,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        raise AssertionError("not used")

    async def activate_channel(self, channel_id: str, connection_id: str) -> JoinResult:
        raise AssertionError("not used")

    def leave_channel(self, channel_id: str, connection_id: str) -> None:
        pass

    def inject_channel_fault(self, channel_id: str) -> None:
        pass

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        raise AssertionError("not used")


@dataclasses.dataclass
class Harness:
    ws: FakeWebSocket
    services: FakeServices
    actor: ConnectionActor

    def outbound_items(self) -> int:
        outbound: Any = getattr(self.actor, "_outbound")  # noqa: B009
        return 0 if outbound is None else len(outbound)

    def has_writer(self) -> bool:
        return getattr(self.actor, "_writer") is not None  # noqa: B009

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


def run(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    frames: int = 10_000,
    chars: int = 4 * 1024 * 1024,
    handshake_timeout_ms: int = 60_000,
) -> None:
    async def main() -> None:
        config = load_config(env={})
        chat = dataclasses.replace(
            config.chat,
            send_queue_frames=frames,
            send_queue_bytes=chars,
            handshake_timeout_ms=handshake_timeout_ms,
        )
        services = FakeServices(dataclasses.replace(config, chat=chat))
        ws = FakeWebSocket()
        actor = ConnectionActor(cast(ServerConnection, ws), services)
        runner = asyncio.get_running_loop().create_task(actor.run())
        harness = Harness(ws, services, actor)
        await harness.settle()
        try:
            await scenario(harness)
        finally:
            ws.release()
            ws.peer_closes()
            await asyncio.wait_for(runner, TIMEOUT)

    asyncio.run(main())


def test_an_idle_connection_has_no_queue_and_no_writer() -> None:
    async def scenario(h: Harness) -> None:
        assert h.outbound_items() == 0
        assert getattr(h.actor, "_outbound") is None  # noqa: B009
        assert not h.has_writer()
        assert not hasattr(h.actor, "__dict__")

    run(scenario)


def test_frames_are_written_in_order_then_queue_and_writer_go() -> None:
    async def scenario(h: Harness) -> None:
        for i in range(5):
            h.actor.push(f"f{i}")
        assert h.has_writer()
        await h.settle()
        h.actor.push("f5")
        await h.settle()
        assert h.ws.sent == [f"f{i}" for i in range(6)]
        assert getattr(h.actor, "_outbound") is None  # noqa: B009
        assert not h.has_writer()
        assert h.services.value("chime_messages_out_total") == 6

    run(scenario)


def test_frames_pushed_while_one_is_being_written_follow_it() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.hold()
        h.actor.push("a")
        await h.settle()  # "a" is in send(), held
        h.actor.push("b")
        h.actor.push("c")
        assert h.outbound_items() == 2
        h.ws.release()
        await h.settle()
        assert h.ws.sent == ["a", "b", "c"]
        assert not h.has_writer()

    run(scenario)


def test_too_many_frames_closes_1008_drops_the_queue_then_the_transport(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(connection_actor_module, "ABORT_GRACE_S", 0.05)

    async def scenario(h: Harness) -> None:
        h.ws.hold()
        h.actor.push("in flight")
        await h.ws.sending.wait()  # the writer took it: it no longer counts
        for i in range(3):
            h.actor.push(f"q{i}")
        assert h.ws.closes == []
        h.actor.push("one too many")
        assert h.outbound_items() == 1  # only the close is left
        h.actor.push("after the abort")  # ignored
        h.ws.release()
        await h.settle()
        assert h.ws.sent == ["in flight"]
        assert h.ws.closes == [(1008, "slow consumer: send queue full")]
        assert h.services.value("chime_errors_total", "slow_consumer") == 1
        await asyncio.sleep(0.1)
        assert h.ws.transport.aborted

    run(scenario, frames=3)


def test_too_many_characters_closes_1008() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.hold()
        h.actor.push("x" * 10)
        await h.ws.sending.wait()
        h.actor.push("y" * 600)
        h.actor.push("z" * 500)  # 1,100 > 1,024 characters waiting
        h.ws.release()
        await h.settle()
        assert h.ws.sent == ["x" * 10]
        assert h.ws.closes == [(1008, "slow consumer: send queue full")]

    run(scenario, chars=1024)


def test_close_after_queued_writes_the_queued_frames_first() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.hold()
        h.actor.push("a")
        h.actor.push("b")
        h.actor.close_after_queued(1001, "server shutting down")
        h.actor.push("c")  # after the close: dropped
        h.ws.release()
        await h.settle()
        assert h.ws.sent == ["a", "b"]
        assert h.ws.closes == [(1001, "server shutting down")]
        assert h.services.value("chime_errors_total", "slow_consumer") is None

    run(scenario)


def test_close_after_queued_with_a_full_queue_aborts() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.hold()
        h.actor.push("in flight")
        await h.ws.sending.wait()
        h.actor.push("a")
        h.actor.push("b")
        h.actor.close_after_queued(1001, "server shutting down")
        h.ws.release()
        await h.settle()
        assert h.ws.sent == ["in flight"]
        assert h.ws.closes == [(1001, "server shutting down")]

    run(scenario, frames=2)


def test_the_peer_closing_gets_a_1000_and_the_gauge_goes_back() -> None:
    async def scenario(h: Harness) -> None:
        assert h.services.value("chime_connections") == 1
        h.ws.peer_closes()
        await h.settle()
        assert h.ws.closes == [(1000, "")]
        assert h.services.value("chime_connections") == 0

    run(scenario)


def test_no_connect_frame_in_time_closes_4008() -> None:
    async def scenario(h: Harness) -> None:
        await asyncio.sleep(0.1)
        await h.settle()
        assert [code for code, _ in h.ws.closes] == [4008]
        assert not h.has_writer()

    run(scenario, handshake_timeout_ms=20)


class UnjoinableServices(FakeServices):
    """Storage is down: every join fails."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.left: list[str] = []

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Subscriber,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        raise StoreUnavailable("storage is down")

    def leave_channel(self, channel_id: str, connection_id: str) -> None:
        self.left.append(channel_id)


def test_a_failed_join_is_reported_and_the_channel_is_not_kept() -> None:
    async def main() -> None:
        services = UnjoinableServices(load_config(env={}))
        ws = FakeWebSocket()
        actor = ConnectionActor(cast(ServerConnection, ws), services)
        runner = asyncio.get_running_loop().create_task(actor.run())
        ws.receive('{"type": "connect", "channels": ["general"], "userId": "alice"}')
        ws.receive('{"type": "send", "channelId": "general", "content": "hi"}')
        for _ in range(50):
            await asyncio.sleep(0)
        ws.peer_closes()
        await asyncio.wait_for(runner, TIMEOUT)
        kinds = [json.loads(frame)["type"] for frame in ws.sent]
        errors = [json.loads(frame) for frame in ws.sent if '"error"' in frame]
        assert kinds[:3] == ["connected", "error", "error"], kinds
        assert json.loads(ws.sent[0])["channels"] == []  # not subscribed after all
        assert errors[0]["code"] == "unavailable"
        assert errors[1]["code"] == "not_subscribed"  # the send finds no subscription
        assert services.left == ["general"]

    asyncio.run(main())
