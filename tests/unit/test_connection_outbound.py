"""Tests for ConnectionActor's outbound side: frames coalesced per loop turn.

A small fake WebSocket stands in for websockets' ``ServerConnection``: its
transport records the bytes written, and its write buffer size can be set to
play a client that does not read. The connection's timers (handshake timeout,
abort grace, token expiry) run on a ``FakeClock``: tests step past them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import cast

import jwt
import msgspec.structs
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from chime_actors.auth import Authenticator
from chime_actors.config import Config, load_config
from chime_actors.errors import StoreUnavailable
from chime_actors.gateway.channel_actor import JoinResult, Subscriber
from chime_actors.gateway.connection_actor import ConnectionActor
from chime_actors.gateway.outbox import FlushQueue
from chime_actors.gateway.rate_limit import MessageRate
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.records import SendOutcome, SendRecord
from chime_actors.storage.store import HistoryPage
from tests.support.clock import FakeClock
from tests.support.polling import until

TIMEOUT = 5.0


class FakeTransport:
    """Records what is written; ``unread`` plays bytes the client has not taken."""

    def __init__(self) -> None:
        self.aborted = False
        self.writes: list[bytes] = []
        self.unread = 0

    def write(self, data: bytes) -> None:
        assert not self.aborted
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.unread

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    def __init__(self) -> None:
        self.state = State.OPEN


class FakeWebSocket:
    """The parts of websockets' ``ServerConnection`` a connection actor uses."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, str]] = []
        self.transport = FakeTransport()
        self.protocol = FakeProtocol()
        self._incoming: asyncio.Queue[str | None] = asyncio.Queue()

    @property
    def sent(self) -> list[str]:
        """The text of every frame written, in order."""
        return [frame.decode() for frame in split_frames(b"".join(self.transport.writes))]

    def receive(self, frame: str) -> None:
        self._incoming.put_nowait(frame)

    def peer_closes(self) -> None:
        self._incoming.put_nowait(None)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closes.append((code, reason))
        self.protocol.state = State.CLOSING
        self._incoming.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        while True:
            frame = await self._incoming.get()
            if frame is None:
                return
            yield frame


def split_frames(data: bytes) -> list[bytes]:
    """Payloads of the unmasked text frames in ``data`` (made by ``text_frame``)."""
    payloads = []
    while data:
        size = data[1]
        header = 2 if size < 126 else 4 if size == 126 else 10
        if size >= 126:
            size = int.from_bytes(data[2:header], "big")
        assert data[0] == 0x81
        payloads.append(data[header : header + size])
        data = data[header + size :]
    return payloads


class FakeServices:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self.fault_injection = False
        self.authenticator = Authenticator(config.auth)
        self.message_rate = MessageRate(config.limits.messages_per_10s, time.monotonic)
        self.flush_queue = FlushQueue()

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

    def typing(self, channel_id: str, user_id: str) -> None:
        pass

    async def presence_online(self, channel_id: str) -> list[str]:
        return []

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        pass

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        return dict.fromkeys(channel_ids, 0)


@dataclasses.dataclass
class Harness:
    ws: FakeWebSocket
    services: FakeServices
    actor: ConnectionActor
    clock: FakeClock

    def waiting(self) -> int:
        return getattr(self.actor, "_outbox").waiting  # type: ignore[no-any-return]  # noqa: B009

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)


def run(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    frames: int = 10_000,
    max_bytes: int = 4 * 1024 * 1024,
    stall_ms: int = 60_000,
    handshake_timeout_ms: int = 60_000,
    abort_grace_s: float = 2.0,
) -> None:
    async def main() -> None:
        config = load_config(env={})
        chat = msgspec.structs.replace(
            config.chat,
            send_queue_frames=frames,
            send_queue_bytes=max_bytes,
            send_stall_ms=stall_ms,
            handshake_timeout_ms=handshake_timeout_ms,
        )
        services = FakeServices(msgspec.structs.replace(config, chat=chat))
        clock = FakeClock()
        # Held outboxes are polled on the loop (every 10 ms), their stall timed on the clock.
        services.flush_queue = FlushQueue(clock=clock)
        ws = FakeWebSocket()
        actor = ConnectionActor(
            cast(ServerConnection, ws), services, clock=clock, abort_grace_s=abort_grace_s
        )
        runner = asyncio.get_running_loop().create_task(actor.run())
        harness = Harness(ws, services, actor, clock)
        await harness.settle()
        try:
            await scenario(harness)
        finally:
            ws.peer_closes()
            await asyncio.wait_for(runner, TIMEOUT)

    asyncio.run(main())


def test_an_idle_connection_holds_nothing_outbound() -> None:
    async def scenario(h: Harness) -> None:
        assert h.waiting() == 0
        assert getattr(getattr(h.actor, "_outbox"), "_frames") is None  # noqa: B009
        assert not hasattr(h.actor, "__dict__")

    run(scenario)


def test_frames_of_one_turn_are_written_in_order_in_one_write() -> None:
    async def scenario(h: Harness) -> None:
        for i in range(5):
            h.actor.push(f"f{i}")
        h.actor.push(WireFrame.of("broadcast"))
        assert h.waiting() == 6
        assert h.ws.transport.writes == []  # nothing written before the turn ends
        await h.settle()
        assert len(h.ws.transport.writes) == 1
        h.actor.push("next turn")
        await h.settle()
        assert len(h.ws.transport.writes) == 2
        assert h.ws.sent == [*(f"f{i}" for i in range(5)), "broadcast", "next turn"]
        assert h.waiting() == 0
        assert h.services.value("chime_messages_out_total") == 7

    run(scenario)


def test_a_long_frame_uses_the_extended_length() -> None:
    async def scenario(h: Harness) -> None:
        medium, long = "m" * 300, "l" * 70_000
        h.actor.push(medium)
        h.actor.push(WireFrame.of(long))
        await h.settle()
        assert h.ws.sent == [medium, long]

    run(scenario)


def test_a_burst_past_the_frame_bound_is_held_back_not_closed() -> None:
    async def scenario(h: Harness) -> None:
        woken: list[str] = []
        offered = [
            h.actor.offer(WireFrame.of(f"m{i}"), lambda: woken.append("room")) for i in range(4)
        ]
        assert offered == [True, True, True, False]  # the fourth waits for the next turn
        h.actor.push("a reply")  # replies are never refused
        await h.settle()
        assert h.ws.sent == ["m0", "m1", "m2", "a reply"]
        assert woken == ["room"]  # the kernel took it all: the channel may go on
        assert h.ws.closes == []

    run(scenario, frames=3)


def test_a_client_that_does_not_read_is_closed_1008_once_it_stalls_past_the_bound() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.transport.unread = 900  # the client stopped reading
        assert h.actor.offer(WireFrame.of("x" * 10), lambda: None)
        await h.settle()  # written; the outbox now knows 900 bytes wait unread
        assert h.actor.offer(WireFrame.of("y" * 100), lambda: None)  # 900 + 102 <= 1,024
        assert not h.actor.offer(WireFrame.of("z" * 200), lambda: None)  # held back
        await h.settle()
        assert h.ws.sent == ["x" * 10, "y" * 100]
        assert h.ws.closes == []  # not yet: a client may be slow and still read

        def stalled() -> bool:
            """Whether it was closed; else send_stall_ms more pass with nothing taken."""
            if h.ws.closes:
                return True
            h.clock.advance(0.05)
            return False

        await until(stalled, TIMEOUT, "the slow consumer to be closed")
        assert h.ws.closes == [(1008, "slow consumer: send queue full")]
        assert h.services.value("chime_errors_total", "slow_consumer") == 1
        # The client cannot take the close frame either: the socket is dropped
        # once the abort grace has passed, not before.
        h.clock.advance(0.49)
        assert not h.ws.transport.aborted
        h.clock.advance(0.01)
        assert h.ws.transport.aborted

    run(scenario, max_bytes=1024, stall_ms=50, abort_grace_s=0.5)


def test_a_held_client_that_reads_is_released_not_closed() -> None:
    async def scenario(h: Harness) -> None:
        woken: list[str] = []
        h.ws.transport.unread = 2000  # what the last write left unread
        assert h.actor.offer(WireFrame.of("a"), lambda: woken.append("room"))
        await h.settle()
        assert h.ws.sent == ["a"]
        assert not h.actor.offer(WireFrame.of("b"), lambda: woken.append("room"))
        h.ws.transport.unread = 100  # it reads: below the low-water mark
        await until(lambda: woken, TIMEOUT, "the room callback")
        assert h.actor.offer(WireFrame.of("b"), lambda: None)
        await h.settle()
        assert h.ws.sent == ["a", "b"]
        assert h.ws.closes == []

    run(scenario, max_bytes=1024, stall_ms=60_000)


class Requests(FakeServices):
    """Serves history pages: a reply that can exceed the bound."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.pages = 0

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        self.pages += 1
        return HistoryPage((), has_more=False)


def test_past_the_bound_the_client_s_requests_wait_until_it_takes_the_replies() -> None:
    async def main() -> None:
        config = load_config(env={})
        chat = msgspec.structs.replace(config.chat, send_queue_bytes=1024)
        services = Requests(msgspec.structs.replace(config, chat=chat))
        ws = FakeWebSocket()
        actor = ConnectionActor(cast(ServerConnection, ws), services)
        runner = asyncio.get_running_loop().create_task(actor.run())
        ws.receive('{"type": "connect", "channels": [], "userId": "alice"}')
        await until(lambda: ws.sent, TIMEOUT, "connected")
        ws.transport.unread = 5000  # "connected" and more wait unread: it stopped reading
        for i in range(3):
            ws.receive(f'{{"type": "history", "channelId": "general", "requestId": "r{i}"}}')
        await until(lambda: services.pages >= 1, TIMEOUT, "the first page")
        for _ in range(50):  # every frame is there to read: nothing but the bound stops it
            await asyncio.sleep(0)
        assert services.pages == 1  # the next requests are not read
        ws.transport.unread = 0  # it read them (the outbox's poll notices)
        await until(lambda: services.pages == 3, TIMEOUT, "the other pages")
        assert ws.closes == []
        ws.peer_closes()
        await asyncio.wait_for(runner, TIMEOUT)

    asyncio.run(main())


def test_close_after_queued_writes_the_queued_frames_first() -> None:
    async def scenario(h: Harness) -> None:
        h.actor.push("a")
        h.actor.push("b")
        h.actor.close_after_queued(1001, "server shutting down")
        h.actor.push("c")  # after the close: dropped
        await h.settle()
        assert h.ws.sent == ["a", "b"]
        assert h.ws.closes == [(1001, "server shutting down")]
        assert h.services.value("chime_errors_total", "slow_consumer") is None

    run(scenario)


def test_nothing_is_written_once_websockets_is_closing() -> None:
    async def scenario(h: Harness) -> None:
        h.ws.protocol.state = State.CLOSING  # e.g. the client sent a close frame
        h.actor.push("late")
        await h.settle()
        assert h.ws.transport.writes == []

    run(scenario)


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
        h.clock.advance(0.019)
        await h.settle()
        assert h.ws.closes == []
        h.clock.advance(0.001)  # chat.handshake_timeout_ms has passed
        await h.settle()
        assert [code for code, _ in h.ws.closes] == [4008]

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
        await until(lambda: len(ws.sent) >= 3, TIMEOUT, "connected and two errors")
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


class SlowJoins(FakeServices):
    """Joins that wait for ``release``; records who is a member of what."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.release = asyncio.Event()
        self.members: set[tuple[str, str]] = set()

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Subscriber,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        self.members.add((channel_id, subscriber.connection_id))
        await self.release.wait()
        return JoinResult()

    async def activate_channel(self, channel_id: str, connection_id: str) -> JoinResult:
        return JoinResult()

    def leave_channel(self, channel_id: str, connection_id: str) -> None:
        self.members.discard((channel_id, connection_id))


def test_a_connect_racing_the_handshake_timeout_leaves_no_memberships() -> None:
    """The timer fires while the connect's joins are in flight: when they finish,
    the connection is closed, and every channel it joined must be left."""

    async def main() -> None:
        config = load_config(env={})
        chat = msgspec.structs.replace(config.chat, handshake_timeout_ms=50)
        services = SlowJoins(msgspec.structs.replace(config, chat=chat))
        ws = FakeWebSocket()
        clock = FakeClock()
        actor = ConnectionActor(cast(ServerConnection, ws), services, clock=clock)
        runner = asyncio.get_running_loop().create_task(actor.run())
        ws.receive(json.dumps({"type": "connect", "channels": ["a", "b"], "userId": "u"}))
        await until(lambda: services.members, TIMEOUT, "the first join in flight")
        clock.advance(0.05)  # the handshake timeout passes meanwhile
        await until(lambda: ws.closes, TIMEOUT, "the close")
        assert ws.closes[0][0] == 4008
        services.release.set()
        await asyncio.wait_for(runner, TIMEOUT)
        assert services.members == set()
        assert not any('"connected"' in frame for frame in ws.sent)

    asyncio.run(main())


class BrokenStore(FakeServices):
    """Storage that fails with the words a real store uses: a path and a host."""

    LEAK = "sqlite history on /srv/secret/chime.db via db-7.internal:9042"

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Subscriber,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        raise StoreUnavailable(self.LEAK)

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        raise StoreUnavailable(self.LEAK)

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        raise StoreUnavailable(self.LEAK)

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        raise StoreUnavailable(self.LEAK)


def test_error_texts_sent_to_clients_name_no_paths_or_hosts() -> None:
    async def main() -> None:
        services = BrokenStore(load_config(env={}))
        ws = FakeWebSocket()
        actor = ConnectionActor(cast(ServerConnection, ws), services)
        runner = asyncio.get_running_loop().create_task(actor.run())
        ws.receive(json.dumps({"type": "connect", "channels": ["a"], "userId": "u"}))
        ws.receive(json.dumps({"type": "history", "requestId": "h", "channelId": "a"}))
        ws.receive(json.dumps({"type": "subscribe", "channels": ["b"]}))
        await until(
            lambda: sum('"unavailable"' in frame for frame in ws.sent) >= 3,
            TIMEOUT,
            "three unavailable errors",
        )
        ws.peer_closes()
        await asyncio.wait_for(runner, TIMEOUT)
        errors = [json.loads(f) for f in ws.sent if '"error"' in f]
        # the failed join, the failed history, the failed join of b (the unread
        # counts that failed too are left out of ``connected``, not reported)
        assert len(errors) == 3, ws.sent
        connected = next(json.loads(f) for f in ws.sent if '"connected"' in f)
        assert "unread" not in connected
        for error in errors:
            assert error["code"] == "unavailable"
            assert "/srv" not in error["message"] and "internal" not in error["message"]

    asyncio.run(main())


def test_every_request_the_protocol_passes_on_has_a_handler() -> None:
    from chime_actors.protocol.events import CLIENT_EVENT_TYPES, Ping

    handled = set(ConnectionActor._HANDLERS)
    assert {t for t in CLIENT_EVENT_TYPES if t is not Ping} == handled  # ping: the core answers


SECRET = "s" * 32


def jwt_token(exp: float, user: str = "alice") -> str:
    return jwt.encode({"sub": user, "exp": int(exp)}, SECRET, "HS256")


def test_a_token_expires_on_the_clock_and_a_refresh_moves_the_deadline() -> None:
    """exp (plus auth.jwt.leeway_s, 10 s) passes: ``unauthorized``, close 4001; a
    ``refresh`` before it replaces the deadline with the new token's."""

    async def main() -> None:
        config = load_config(env={}, overrides={"auth.mode": "jwt", "auth.jwt.secret": SECRET})
        services = FakeServices(config)
        # Wall-clock time on the fake clock is real now: the tokens must verify.
        clock = FakeClock(float(int(time.time())))
        ws = FakeWebSocket()
        actor = ConnectionActor(cast(ServerConnection, ws), services, clock=clock)
        runner = asyncio.get_running_loop().create_task(actor.run())
        try:
            connect = {"type": "connect", "channels": [], "token": jwt_token(clock() + 60)}
            ws.receive(json.dumps(connect))
            await until(lambda: ws.sent, TIMEOUT, "connected")
            # The handshake timeout (moot once connected), then exp + leeway.
            assert clock.pending == [10.0, 60 + 10]
            clock.advance(30)
            assert ws.closes == []
            refresh = {"type": "refresh", "requestId": "r", "token": jwt_token(clock() + 100)}
            ws.receive(json.dumps(refresh))
            await until(lambda: len(ws.sent) == 2, TIMEOUT, "refreshed")
            assert json.loads(ws.sent[1])["type"] == "refreshed"
            clock.advance(40 + 10)  # the first token's deadline: moved, nothing happens
            assert ws.closes == [] and len(ws.sent) == 2
            clock.advance(60 - 0.5)
            assert ws.closes == []
            clock.advance(0.5)  # the refreshed token's exp + leeway
            await until(lambda: ws.closes, TIMEOUT, "the close")
            error = json.loads(ws.sent[-1])
            assert (error["type"], error["code"]) == ("error", "unauthorized")
            assert "token expired" in error["message"]
            assert ws.closes == [(4001, "token expired")]
        finally:
            ws.peer_closes()
            await asyncio.wait_for(runner, TIMEOUT)

    asyncio.run(main())
