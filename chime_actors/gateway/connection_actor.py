"""``ConnectionActor``: one per WebSocket, created by the gateway's accept loop.

It owns the socket and drives the sans-I/O ``ConnectionProtocol`` with it: frames
in, outputs out. Its mailbox is the socket itself (websockets reads ahead at most
``max_queue`` frames, so a flooding client is throttled by TCP, not by our memory);
its outbound side is an ``Outbox``: frames pushed during one turn of the event
loop are written to the socket in one write, already framed, and never wait on
the client, so fan-out never waits on one slow client either. An idle
connection's outbox holds nothing.

Flow control (``gateway/outbox.py``): past ``chat.send_queue_bytes`` waiting for
the client, channel messages offered to it are refused (each channel catches it
up from storage once it has room), and its requests are not read until it has
taken what waits, so a burst or a replay of any size reaches a client that
reads, in bounded memory.

Failure policy (``local_supervisor``):

============================  =========================================================
handling a frame raises       logged with a correlation id, the client gets
                              ``internal`` naming it; the actor goes on with its
                              state (subscriptions) intact: a restart of the handler
> 5 failures in 10 s          escalate: close 1011; the client resumes on reconnect
held back, nothing taken      the client is not reading: close 1008 "slow consumer"
for ``chat.send_stall_ms``    (memory stays bounded; neighbours are unaffected)
the socket breaks             leave every channel; owed acks are dropped with it
the token's exp passes        ``unauthorized`` "token expired", close 4001 (a
                              ``refresh`` before then moves the deadline)
over limits.messages_per_10s  ``rate_limited``; at twice the limit close 4008
============================  =========================================================
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar, Protocol

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from chime_actors.auth import Authenticator, Identity
from chime_actors.config import AuthMode, Config
from chime_actors.errors import MessageNotFound, PresenceUnavailable, ProtocolError, StoreError
from chime_actors.gateway.channel_actor import JoinResult, Subscriber
from chime_actors.gateway.local_supervisor import RestartBudget, RestartPolicy
from chime_actors.gateway.outbox import FlushQueue, Outbox
from chime_actors.gateway.rate_limit import MessageRate
from chime_actors.gateway.timers import LOOP_CLOCK, Clock, Timer
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics
from chime_actors.persister.link import next_token
from chime_actors.presence.hub import Member as PresenceMember
from chime_actors.protocol import server_frames
from chime_actors.protocol.codes import CloseCode, ErrorCode
from chime_actors.protocol.connection import (
    Close,
    ConnectionProtocol,
    ConnState,
    Output,
    Reply,
    Request,
)
from chime_actors.protocol.events import (
    Connect,
    Delete,
    Edit,
    History,
    PresenceQuery,
    React,
    ReactionOp,
    Read,
    Refresh,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from chime_actors.protocol.frames import Limits, is_user_id
from chime_actors.protocol.wire_frames import WireFrame, text_frame
from chime_actors.records import (
    ChangeKind,
    ChangeRecord,
    SendOutcome,
    SendRecord,
    format_timestamp,
    server_client_msg_id,
)
from chime_actors.storage.store import HistoryPage

log = get_logger(__name__)

JOIN_TIMEOUT_S = 10.0
# ``connected`` waits at most this for its unread counts (then goes without them).
UNREAD_TIMEOUT_S = 2.0
ABORT_GRACE_S = 2.0
CLOSE_WAIT_S = 5.0
DEFAULT_POLICY = RestartPolicy()
# The frames limits.messages_per_10s counts (docs/protocol.md "Errors and close codes").
_RATE_LIMITED = (Send, Edit, React, Typing)


class Member(Subscriber, PresenceMember, Protocol):
    """What the gateway needs of a connection: a channel subscriber and a presence member."""


class GatewayServices(Protocol):
    """What a connection needs from its gateway (a small interface, faked in tests)."""

    config: Config
    metrics: ChimeMetrics
    fault_injection: bool
    authenticator: Authenticator
    flush_queue: FlushQueue
    message_rate: MessageRate

    def submit_send(self, record: SendRecord | ChangeRecord) -> asyncio.Future[SendOutcome]:
        """Hand a send (or a change) to the channel's persister; resolves with its outcome."""
        ...

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Member,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        """Subscribe to a channel's local fan-out; replays when ``resume_after``.

        ``deferred``: register only; ``activate_channel`` starts the delivery.
        """
        ...

    async def activate_channel(self, channel_id: str, connection_id: str) -> JoinResult:
        """Replay (if resuming) and start live delivery after a deferred join."""
        ...

    def leave_channel(self, channel_id: str, connection_id: str) -> None:
        """Unsubscribe."""
        ...

    def inject_channel_fault(self, channel_id: str) -> None:
        """Fault injection: make a ChannelActor's handler raise."""
        ...

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        """Read a page of stored messages (with reactions and reply counts)."""
        ...

    def typing(self, channel_id: str, user_id: str) -> None:
        """Pass a ``typing`` on (throttled) to the channel's other subscribers."""
        ...

    async def presence_online(self, channel_id: str) -> list[str]:
        """Who is online in the channel; raises ``PresenceUnavailable``."""
        ...

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        """Store a read marker; raises ``MessageNotFound`` or ``StoreError``."""
        ...

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        """Unread counts per channel; raises ``StoreError``."""
        ...


class _WebSocketSink:
    """websockets' ``ServerConnection`` as an outbox's ``FrameSink``.

    Frames are written to the transport directly, beside websockets' own writes
    (pongs, pings, the close frame), always whole, so they never interleave
    inside a frame. websockets' protocol state is untouched by data frames it
    did not send: it tracks only fragmentation (we never fragment) and closing
    (``is_open`` checks it before every write).
    """

    __slots__ = ("_ws",)

    def __init__(self, websocket: ServerConnection) -> None:
        self._ws = websocket

    def is_open(self) -> bool:
        return self._ws.protocol.state is State.OPEN and not self._ws.transport.is_closing()

    def write(self, data: bytes) -> None:
        self._ws.transport.write(data)

    def buffered(self) -> int:
        return self._ws.transport.get_write_buffer_size()

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)


class ConnectionActor:
    """Serves one WebSocket client."""

    # No per-instance ``__dict__``: tens of thousands of these live in a gateway.
    __slots__ = (
        "_abort_grace_s",
        "_budget",
        "_clock",
        "_closing",
        "_expiry",
        "_id",
        "_identity",
        "_outbox",
        "_owed_acks",
        "_policy",
        "_proto",
        "_query_user_id",
        "_rate",
        "_services",
        "_transport_token",
        "_ws",
    )

    def __init__(
        self,
        websocket: ServerConnection,
        services: GatewayServices,
        *,
        query_user_id: str | None = None,
        transport_token: str | None = None,
        policy: RestartPolicy = DEFAULT_POLICY,
        clock: Clock = LOOP_CLOCK,
        abort_grace_s: float = ABORT_GRACE_S,
    ) -> None:
        """Serve ``websocket`` for ``services`` (the gateway).

        Args:
            websocket: the accepted connection.
            services: what the connection needs of its gateway.
            query_user_id: the ``userId`` query parameter, if any.
            transport_token: a token from ``?token=`` or the ``Authorization`` header.
            policy: the failure budget of the frame handler.
            clock: the timers' clock (the handshake timeout, the abort grace, the
                token's exp): the event loop's, or a test's fake.
            abort_grace_s: how long an aborted connection's close frame may take
                before the TCP connection is dropped.
        """
        chat = services.config.chat
        self._clock = clock
        self._abort_grace_s = abort_grace_s
        self._ws = websocket
        self._services = services
        self._query_user_id = query_user_id
        # A token from ``?token=`` or the ``Authorization: Bearer`` header; the
        # connect frame's ``token`` field takes precedence.
        self._transport_token = transport_token
        self._identity = Identity("")
        # Fires when the token's exp (plus leeway) passes: error unauthorized, close 4001.
        self._expiry: Timer | None = None
        self._rate = services.message_rate.for_connection()
        self._id = uuid.uuid4().hex[:16]
        self._proto = ConnectionProtocol(
            limits=Limits(
                max_content_chars=chat.max_content_chars,
                max_channels_per_connection=chat.max_channels_per_connection,
                max_frame_bytes=chat.max_frame_bytes,
            ),
            heartbeat_ms=chat.heartbeat_ms,
            may_access=self._may_access,
        )
        self._outbox = Outbox(
            _WebSocketSink(websocket),
            services.flush_queue,
            max_frames=chat.send_queue_frames,
            max_bytes=chat.send_queue_bytes,
            stall_s=chat.send_stall_ms / 1000,
            on_written=services.metrics.messages_out.add,
            on_overflow=self._slow_consumer,
        )
        self._policy = policy
        # The failure budget, made on the first failure (most connections never fail).
        self._budget: RestartBudget | None = None
        self._closing = False
        self._owed_acks = 0

    # --- Subscriber (for ChannelActor) -------------------------------------------

    @property
    def connection_id(self) -> str:
        """Unique id of this connection."""
        return self._id

    @property
    def user_id(self) -> str:
        """The connected user ("" before the connect)."""
        return self._identity.user_id

    def _may_access(self, channel_id: str) -> bool:
        return self._identity.may_access(channel_id)

    @property
    def owed_acks(self) -> int:
        """Sends accepted but not yet answered (drain waits for these)."""
        return self._owed_acks

    def push(self, frame: str | WireFrame) -> None:
        """Queue a frame for the client without waiting (written when this loop turn ends).

        Never refused: for replies and markers, which exist nowhere else. A
        ``WireFrame`` is already framed; a ``str`` is framed here.
        """
        if self._closing:
            return
        self._outbox.put(frame.data if isinstance(frame, WireFrame) else text_frame(frame.encode()))

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        """Queue a channel message unless the client is held back (flow control).

        False: not queued; ``on_room`` is called once the client has room (never
        once the connection is closing: it leaves its channels then).
        """
        if self._closing:
            return False
        return self._outbox.offer(frame.data, on_room)

    def _slow_consumer(self) -> None:
        log.warning("slow consumer closed", connectionId=self._id)
        self._services.metrics.errors.labels(code="slow_consumer").inc()
        self.abort(CloseCode.SLOW_CONSUMER, "slow consumer: send queue full")

    def abort(self, code: CloseCode, reason: str) -> None:
        """Close the connection now, dropping frames not yet written."""
        if self._closing:
            return
        self._closing = True
        self._outbox.discard()
        self._outbox.close(code, reason)
        # A client that does not read cannot take a close frame either: it waits
        # behind a full write buffer. Give the close a moment, then drop the TCP
        # connection so the reader, the buffer and the memory are released.
        self._clock.call_later(self._abort_grace_s, self._drop_transport)

    def _drop_transport(self) -> None:
        transport = self._ws.transport
        if transport is not None and not transport.is_closing():
            log.info("dropping unresponsive connection", connectionId=self._id)
            transport.abort()

    def close_after_queued(self, code: CloseCode, reason: str) -> None:
        """Close once every frame already queued is written (graceful shutdown)."""
        if self._closing:
            return
        self._closing = True
        self._outbox.flush()
        self._outbox.close(code, reason)

    # --- the actor ----------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; never raises."""
        metrics = self._services.metrics
        metrics.connections.inc()
        timer = self._clock.call_later(
            self._services.config.chat.handshake_timeout_ms / 1000, self._handshake_timeout
        )
        try:
            async for frame in self._ws:
                if self._closing:
                    break
                await self._receive(frame)
                if self._outbox.over_bound:
                    # Replies past the bound: read no more requests until the
                    # client has taken them (it is closed if it takes nothing).
                    await self._outbox.wait_room()
        except ConnectionClosed:
            pass
        finally:
            timer.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            self._proto.close()
            for channel_id in self._proto.channels:
                self._services.leave_channel(channel_id, self._id)
            self.close_after_queued(CloseCode.NORMAL, "")
            await self._outbox.wait_closed(CLOSE_WAIT_S)
            metrics.connections.dec()

    def _handshake_timeout(self) -> None:
        self._apply(self._proto.handshake_timed_out())

    async def _receive(self, frame: str | bytes) -> None:
        if (
            self._services.fault_injection
            # Never before the connect: an unauthenticated socket may crash nothing.
            and self._proto.state is ConnState.OPEN
            and isinstance(frame, str)
            and "debug_crash" in frame
            and self._inject_fault(frame)
        ):
            return
        try:
            outputs = (
                self._proto.receive_text(frame)
                if isinstance(frame, str)
                else self._proto.receive_binary(frame)
            )
            await self._carry_out(outputs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._on_failure(exc)

    def _inject_fault(self, frame: str) -> bool:
        """Tests only (``testing.fault_injection``): crash a handler on purpose.

        ``{"type": "debug_crash", "target": "connection"}`` fails this actor's
        handler; ``"target": "channel", "channelId": ...`` fails a ChannelActor's.
        Returns False when the frame is not such a request after all.
        """
        try:
            request = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(request, dict) or request.get("type") != "debug_crash":
            return False
        if request.get("target") == "channel":
            self._services.inject_channel_fault(str(request.get("channelId")))
            return True
        try:
            raise RuntimeError("injected fault in connection actor")
        except RuntimeError as exc:
            self._on_failure(exc)
        return True

    def _on_failure(self, exc: Exception) -> None:
        """The failure policy of the frame handler (see the module docstring)."""
        correlation = uuid.uuid4().hex[:12]
        log.error(
            "connection handler failed",
            connectionId=self._id,
            correlationId=correlation,
            exc_info=exc,
        )
        self._send_error(ErrorCode.INTERNAL, f"internal error (correlation id {correlation})")
        if self._budget is None:
            self._budget = RestartBudget(self._policy)
        if not self._budget.allow_restart():
            self.close_after_queued(
                CloseCode.INTERNAL_ERROR, f"repeated internal errors ({correlation})"
            )

    async def _carry_out(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Reply):
                self.push(output.text)
            elif isinstance(output, Close):
                self.close_after_queued(output.code, output.reason)
            else:
                await self._handle_request(output)

    def _apply(self, outputs: list[Output]) -> None:
        """Carry out outputs that need no I/O (replies and closes)."""
        for output in outputs:
            if isinstance(output, Reply):
                self.push(output.text)
            elif isinstance(output, Close):
                self.close_after_queued(output.code, output.reason)

    def _count_error(self, code: str) -> None:
        self._services.metrics.errors.labels(code=code).inc()

    def _send_error(
        self,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        client_msg_id: str | None = None,
    ) -> None:
        """Count an error and send its ``error`` frame (no state change)."""
        self._count_error(code)
        self.push(
            server_frames.error(code, message, request_id=request_id, client_msg_id=client_msg_id)
        )

    async def _handle_request(self, request: Request) -> None:
        event = request.event
        if isinstance(event, _RATE_LIMITED) and self._rate_limited(event):
            return
        # Every request the protocol core passes on has a handler (a test checks);
        # a missing one is a bug, met by the failure policy (``internal``).
        await self._HANDLERS[type(event)](self, event)

    def _rate_limited(self, event: Send | Edit | React | Typing) -> bool:
        """``limits.messages_per_10s``: refuse (and at twice the limit close) a flood."""
        limited = self._rate.check(self._identity.user_id)
        if limited is None:
            return False
        client_msg_id = event.client_msg_id if isinstance(event, Send) else None
        self._count_error(ErrorCode.RATE_LIMITED)
        self.push(
            server_frames.error(
                ErrorCode.RATE_LIMITED,
                f"over {self._services.config.limits.messages_per_10s} messages per 10 s",
                request_id=getattr(event, "request_id", None),
                client_msg_id=client_msg_id,
                retry_after_ms=limited.retry_after_ms,
            )
        )
        if limited.close:
            log.info("closing a flooding connection", connectionId=self._id)
            self.close_after_queued(CloseCode.FLOODING, "rate limit exceeded")
        return True

    # --- requests -----------------------------------------------------------------

    async def _connect(self, event: Connect) -> None:
        query_user_id = self._query_user_id
        if event.user_id is None and query_user_id is not None and not is_user_id(query_user_id):
            # Same rule as the frame's userId; the client may retry with a valid one.
            self._count_error(ErrorCode.BAD_REQUEST)
            self._apply(
                self._proto.fail(
                    ProtocolError(
                        ErrorCode.BAD_REQUEST,
                        "the userId query parameter is not valid: 1-64 of A-Z a-z 0-9 _ . @ : -",
                    )
                )
            )
            return
        try:
            identity = self._services.authenticator.identify(
                token=event.token or self._transport_token,
                claimed_user=event.user_id,
                query_user=query_user_id,
            )
        except ProtocolError as exc:
            log.info("connect refused", connectionId=self._id, reason=exc.message)
            self._count_error(exc.code)
            self._apply(self._proto.fail(exc))  # closes with 4001
            return
        self._identity = identity
        self._arm_expiry()
        user_id = identity.user_id
        granted = self._granted(event.channels)
        resume = dict(event.resume)
        # Two phases. Register every channel first, so that whatever is stored
        # once the client reads ``connected`` reaches it; then send ``connected``;
        # then let each channel replay (if resuming) and deliver, so that no
        # message frame precedes ``connected``.
        joined, failed = await self._register(granted, resume)
        unread = await self._unread(user_id, joined)
        self._apply(self._proto.accept_connect(user_id, joined, self._id, unread=unread))
        if self._proto.state is not ConnState.OPEN:
            # The handshake timeout (or the peer) closed the connection while the
            # joins were in flight: the protocol never took these channels, so
            # run()'s cleanup would not leave them. Leave them here.
            for channel_id in joined:
                self._services.leave_channel(channel_id, self._id)
            return
        for channel_id, error in failed:
            self._join_failed(channel_id, error, subscribed=False)
        await self._activate(joined)
        # debug, not info: at thousands of connects a second this line alone cost
        # ~16% of a gateway (docs/performance.md).
        log.debug("connection opened", connectionId=self._id, userId=user_id, channels=len(granted))

    async def _register(
        self, channels: Sequence[str], resume: Mapping[str, str]
    ) -> tuple[list[str], list[tuple[str, BaseException]]]:
        """Join ``channels`` deferred (nothing is pushed yet): (joined, failed)."""
        joined: list[str] = []
        failed: list[tuple[str, BaseException]] = []
        for channel_id in channels:
            try:
                await asyncio.wait_for(
                    self._services.join_channel(
                        channel_id, self, resume.get(channel_id), deferred=True
                    ),
                    JOIN_TIMEOUT_S,
                )
                joined.append(channel_id)
            except (StoreError, TimeoutError) as exc:
                failed.append((channel_id, exc))
        return joined, failed

    async def _activate(self, channels: Sequence[str]) -> None:
        """Start delivery (replay first, when resuming) on registered channels."""
        for channel_id in channels:
            try:
                await asyncio.wait_for(
                    self._services.activate_channel(channel_id, self._id), JOIN_TIMEOUT_S
                )
            except (StoreError, TimeoutError) as exc:
                self._join_failed(channel_id, exc, subscribed=True)

    def _join_failed(self, channel_id: str, exc: BaseException, *, subscribed: bool) -> None:
        # The store's words name hosts and files: they go to our log, not to the client.
        log.warning("join failed", channelId=channel_id, error=str(exc) or "timeout")
        self._send_error(ErrorCode.UNAVAILABLE, f"could not join {channel_id}: storage unavailable")
        self._services.leave_channel(channel_id, self._id)
        if subscribed:
            # Not subscribed after all: say so (``unsubscribed``) rather than keep
            # a channel that delivers nothing; the client may subscribe again.
            self._apply(self._proto.apply_unsubscribe([channel_id]))

    def _granted(self, channels: tuple[str, ...]) -> tuple[str, ...]:
        """The channels the token grants; ``forbidden`` names the others."""
        denied = [c for c in channels if not self._identity.may_access(c)]
        if denied:
            self._send_error(ErrorCode.FORBIDDEN, f"the token does not grant: {', '.join(denied)}")
        return tuple(c for c in channels if self._identity.may_access(c))

    async def _subscribe(self, event: Subscribe) -> None:
        channels = self._granted(event.channels)
        if not channels:
            return
        new = [c for c in channels if not self._proto.is_subscribed(c)]
        outputs = self._proto.apply_subscribe(channels)
        # Same two phases as a connect: register, reply ``subscribed``, deliver;
        # so no message frame of a channel precedes its ``subscribed``.
        joined, failed = await self._register([c for c in new if self._proto.is_subscribed(c)], {})
        self._apply(outputs)
        for channel_id, error in failed:
            self._join_failed(channel_id, error, subscribed=True)
        await self._activate(joined)

    def _arm_expiry(self) -> None:
        """(Re)start the timer of the token's ``exp``; no token, no timer."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires_at = self._identity.expires_at
        if expires_at is None:
            return
        # exp is wall-clock time; the timer runs on the loop's monotonic clock.
        delay = expires_at + self._services.authenticator.leeway_s - self._clock.time()
        self._expiry = self._clock.call_later(max(0.0, delay), self._token_expired)

    def _token_expired(self) -> None:
        self._expiry = None
        log.info("token expired", connectionId=self._id, userId=self._identity.user_id)
        self._send_error(ErrorCode.UNAUTHORIZED, "token expired: connect again with a new token")
        self.close_after_queued(CloseCode.UNAUTHORIZED, "token expired")

    async def _refresh(self, event: Refresh) -> None:
        """A new token for the same user: new deadline, new grants (docs/protocol.md)."""
        authenticator = self._services.authenticator
        if authenticator.mode is AuthMode.INSECURE:
            self._send_error(
                ErrorCode.BAD_REQUEST,
                "refresh needs auth.mode jwt: this server uses no tokens",
                request_id=event.request_id,
            )
            return
        try:
            identity = authenticator.verify(event.token)
        except ProtocolError as exc:
            # The current token still holds until it expires: refuse, do not close.
            self._send_error(exc.code, exc.message, request_id=event.request_id)
            return
        if identity.user_id != self._identity.user_id:
            self._send_error(
                ErrorCode.UNAUTHORIZED,
                "the new token is for another user",
                request_id=event.request_id,
            )
            return
        self._identity = identity
        self._arm_expiry()
        assert identity.expires_at is not None  # verify() requires exp
        expires_at = format_timestamp(datetime.fromtimestamp(identity.expires_at, UTC))
        self.push(server_frames.refreshed(expires_at, event.request_id))
        revoked = [c for c in self._proto.channels if not identity.may_access(c)]
        if revoked:
            for channel_id in revoked:
                self._services.leave_channel(channel_id, self._id)
            self._apply(self._proto.apply_unsubscribe(revoked))

    async def _unsubscribe(self, event: Unsubscribe) -> None:
        for channel_id in event.channels:
            if self._proto.is_subscribed(channel_id):
                self._services.leave_channel(channel_id, self._id)
        self._apply(self._proto.apply_unsubscribe(event.channels))

    async def _send(self, event: Send) -> None:
        assert event.channel_id is not None  # the state machine fills it in
        user_id = self._proto.user_id or ""
        record = SendRecord(
            token=next_token(),
            channel_id=event.channel_id,
            user_id=user_id,
            content=event.content,
            metadata=event.metadata,
            thread_id=event.thread_id,
            # Always a key, so the send is always safe to retry (records.py).
            client_msg_id=event.client_msg_id or server_client_msg_id(),
            # Checked by the channel's persister as it stores the send.
            attachments=event.attachments,
        )
        self._services.metrics.messages_in.inc()
        self._owed_acks += 1
        future = self._services.submit_send(record)
        future.add_done_callback(functools.partial(self._on_outcome_done, event.client_msg_id))

    def _on_outcome_done(
        self, client_msg_id: str | None, future: asyncio.Future[SendOutcome]
    ) -> None:
        self._owed_acks -= 1
        outcome = future.result()
        if outcome.message is not None:
            self._services.metrics.acks.inc()
            self.push(server_frames.ack(outcome.message))
            return
        code = outcome.error_code or ErrorCode.UNAVAILABLE
        self._send_error(code, outcome.error_message or code, client_msg_id=client_msg_id)

    async def _change(self, event: Edit | Delete | React) -> None:
        """An edit, delete or reaction: to the channel's persister, which checks it.

        Any channel the token grants may be changed, subscribed or not (as
        history may be read). The requester's confirmation is the change's
        own frame with its ``requestId``, once it is stored; subscribers get
        the frame from the channel, in the channel's order.
        """
        if not self._identity.may_access(event.channel_id):
            self._send_error(
                ErrorCode.FORBIDDEN,
                f"the token does not grant {event.channel_id}",
                request_id=event.request_id,
            )
            return
        record = change_record(event, next_token(), self._proto.user_id or "")
        self._owed_acks += 1
        future = self._services.submit_send(record)
        future.add_done_callback(functools.partial(self._on_change_done, event, record))

    def _on_change_done(
        self,
        event: Edit | Delete | React,
        record: ChangeRecord,
        future: asyncio.Future[SendOutcome],
    ) -> None:
        self._owed_acks -= 1
        outcome = future.result()
        if outcome.error_code is not None:
            self._send_error(
                outcome.error_code,
                outcome.error_message or outcome.error_code,
                request_id=event.request_id,
            )
            return
        if outcome.change is not None:
            self.push(server_frames.change(outcome.change, event.request_id))
        else:
            # Nothing to change (a reaction already there, or already gone): done
            # all the same, with no position of its own.
            self.push(unchanged_frame(record, event.request_id))

    async def _history(self, event: History) -> None:
        if not self._identity.may_access(event.channel_id):
            self._send_error(
                ErrorCode.FORBIDDEN,
                f"the token does not grant {event.channel_id}",
                request_id=event.request_id,
            )
            return
        try:
            page = await self._services.history(
                event.channel_id,
                before=event.before,
                after=event.after,
                limit=event.limit,
                thread_id=event.thread_id,
            )
        except StoreError as exc:
            log.warning("history failed", channelId=event.channel_id, error=str(exc))
            self._send_error(
                ErrorCode.UNAVAILABLE,
                "history unavailable: storage unavailable",
                request_id=event.request_id,
            )
            return
        self.push(
            server_frames.history(
                event.request_id,
                event.channel_id,
                page.messages,
                page.has_more,
                page.reactions,
                page.reply_counts,
            )
        )

    # --- presence, typing, read markers (chime_actors.presence) ---------------------

    async def _unread(self, user_id: str, channels: Sequence[str]) -> dict[str, int] | None:
        """``connected``'s unread counts; None (the key is left out) if storage fails."""
        try:
            return await asyncio.wait_for(
                self._services.unread_counts(user_id, channels), UNREAD_TIMEOUT_S
            )
        except (StoreError, TimeoutError) as exc:
            log.warning("unread counts unavailable", error=str(exc) or "timeout")
            return None

    async def _presence(self, event: PresenceQuery) -> None:
        if not self._identity.may_access(event.channel_id):
            self._send_error(
                ErrorCode.FORBIDDEN,
                f"the token does not grant {event.channel_id}",
                request_id=event.request_id,
            )
            return
        try:
            online = await self._services.presence_online(event.channel_id)
        except PresenceUnavailable as exc:
            log.warning("presence lookup failed", channelId=event.channel_id, error=str(exc))
            self._send_error(
                ErrorCode.UNAVAILABLE, "presence unavailable", request_id=event.request_id
            )
            return
        self.push(server_frames.presence(event.request_id, event.channel_id, online))

    async def _typing(self, event: Typing) -> None:
        # Subscribed (so granted) and within the rate limit: the state machine and
        # _handle_request checked both.
        self._services.typing(event.channel_id, self._identity.user_id)

    async def _read(self, event: Read) -> None:
        try:
            await self._services.mark_read(
                event.channel_id, self._identity.user_id, event.message_id
            )
        except MessageNotFound:
            self._send_error(
                ErrorCode.NOT_FOUND, f"no message {event.message_id} in {event.channel_id}"
            )
        except StoreError as exc:
            log.warning("read marker failed", channelId=event.channel_id, error=str(exc))
            self._send_error(ErrorCode.UNAVAILABLE, "read marker not stored: storage unavailable")

    _HANDLERS: ClassVar[dict[type, Callable[[ConnectionActor, object], Awaitable[None]]]] = {
        Connect: _connect,  # type: ignore[dict-item]
        Subscribe: _subscribe,  # type: ignore[dict-item]
        Unsubscribe: _unsubscribe,  # type: ignore[dict-item]
        Send: _send,  # type: ignore[dict-item]
        History: _history,  # type: ignore[dict-item]
        Refresh: _refresh,  # type: ignore[dict-item]
        Edit: _change,  # type: ignore[dict-item]
        Delete: _change,  # type: ignore[dict-item]
        React: _change,  # type: ignore[dict-item]
        PresenceQuery: _presence,  # type: ignore[dict-item]
        Typing: _typing,  # type: ignore[dict-item]
        Read: _read,  # type: ignore[dict-item]
    }


def change_record(event: Edit | Delete | React, token: int, user_id: str) -> ChangeRecord:
    """The ``ChangeRecord`` of a client's edit, delete or react frame."""
    if isinstance(event, Edit):
        kind, content, emoji = ChangeKind.EDIT, event.content, None
    elif isinstance(event, Delete):
        kind, content, emoji = ChangeKind.DELETE, None, None
    else:
        added = event.op is ReactionOp.ADD
        kind = ChangeKind.REACTION_ADD if added else ChangeKind.REACTION_REMOVE
        content, emoji = None, event.emoji
    return ChangeRecord(
        token=token,
        channel_id=event.channel_id,
        message_id=event.message_id,
        user_id=user_id,
        kind=kind,
        content=content,
        emoji=emoji,
    )


def unchanged_frame(record: ChangeRecord, request_id: str | None) -> str:
    """The confirmation of a change that had nothing to change (no ``eventId``)."""
    if record.kind is ChangeKind.DELETE:
        return server_frames.message_deleted(
            record.channel_id, record.message_id, request_id=request_id
        )
    assert record.emoji is not None  # edits always change something
    op = ReactionOp.ADD if record.kind is ChangeKind.REACTION_ADD else ReactionOp.REMOVE
    return server_frames.reaction(
        record.channel_id,
        record.message_id,
        record.emoji,
        record.user_id,
        op,
        request_id=request_id,
    )
