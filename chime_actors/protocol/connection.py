"""One client connection's protocol state machine, sans I/O.

The actor that owns a WebSocket feeds every frame it reads into a
:class:`ConnectionProtocol` and carries out what comes back:

* :class:`Reply` - send this text frame to this client;
* :class:`Request` - a client request that needs I/O (auth, storage, the bus);
  the actor does it and reports back (``accept_connect``, ``apply_subscribe``,
  ``apply_unsubscribe``, ``fail``) or sends its own frames (``ack``, ``history``);
* :class:`Close` - close the WebSocket with this code.

Example (the shape of an actor's read loop)::

    proto = ConnectionProtocol(limits=limits, heartbeat_ms=chat.heartbeat_ms)
    async for text in websocket:
        for output in proto.receive_text(text):
            match output:
                case Reply(text=frame): await websocket.send(frame)
                case Request(event=Connect() as connect):
                    user, channels = await authorize(connect)
                    for out in proto.accept_connect(user, channels, new_connection_id()):
                        ...

Contract for the caller: finish a ``Request(Connect)``, ``Request(Subscribe)``
or ``Request(Unsubscribe)`` (call the matching ``accept_*``/``apply_*`` or
``fail``) before feeding the next frame. The state machine checks limits against
its current state, so handling those requests concurrently would check against
stale state; ``apply_subscribe`` re-checks the channel cap as a last line.

Which requests need a subscription: ``send``, ``typing`` and ``read`` must name
a channel the connection is subscribed to (docs/protocol.md, ``not_subscribed``).
A channel the token does not grant is ``forbidden`` first (the ``may_access``
predicate the actor passes in: grants are its business, the order of the checks
is this table's). ``history``, ``presence``, ``edit``, ``delete`` and ``react``
may name any channel: whether the user may see or change it is an authorization
question (``forbidden``), which the actor answers with the token's grants.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from chime_actors.config import ChatConfig
from chime_actors.errors import ProtocolError
from chime_actors.protocol import server_frames
from chime_actors.protocol.codes import CloseCode, ErrorCode
from chime_actors.protocol.events import (
    CLIENT_EVENT_TYPES,
    ClientEvent,
    Connect,
    Delete,
    Edit,
    History,
    Ping,
    PresenceQuery,
    React,
    Read,
    Refresh,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from chime_actors.protocol.frames import DEFAULT_LIMITS, Limits, parse_binary, parse_frame

DEFAULT_HEARTBEAT_MS = ChatConfig().heartbeat_ms
"""``chat.heartbeat_ms``'s default, from the configuration schema."""

# RFC 6455 5.5.1: a close frame's payload is at most 125 bytes, 2 of them the code.
_MAX_CLOSE_REASON_BYTES = 123


class ConnState(enum.Enum):
    """Where a connection is in its life."""

    AWAITING_CONNECT = enum.auto()
    """Only a connect is accepted; the handshake timer runs."""
    OPEN = enum.auto()
    """Connected: every request type is accepted."""
    CLOSED = enum.auto()
    """Closed by either side; every input is ignored."""


# --- outputs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``text`` to this client as a text frame."""

    text: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with ``code`` and ``reason`` (at most 123 UTF-8 bytes)."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Request:
    """A validated client request the actor must carry out (it needs I/O)."""

    event: ClientEvent


Output = Reply | Close | Request
"""Anything ``ConnectionProtocol`` asks its actor to do."""


# --- inputs that are not client requests ---------------------------------------------
# Frame failures and the actor's reports go through the same table as client
# requests, so every state change lives in ``_TRANSITIONS``.


@dataclass(frozen=True, slots=True)
class _BadFrame:
    error: ProtocolError


@dataclass(frozen=True, slots=True)
class _OversizedFrame:
    size: int


@dataclass(frozen=True, slots=True)
class _ConnectAccepted:
    user_id: str
    channels: tuple[str, ...]
    connection_id: str
    unread: Mapping[str, int] | None


@dataclass(frozen=True, slots=True)
class _SubscribeApplied:
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _UnsubscribeApplied:
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Failed:
    error: ProtocolError


@dataclass(frozen=True, slots=True)
class _HandshakeTimedOut:
    pass


@dataclass(frozen=True, slots=True)
class _Closed:
    pass


_CONTROL_TYPES: tuple[type[object], ...] = (
    _BadFrame,
    _OversizedFrame,
    _ConnectAccepted,
    _SubscribeApplied,
    _UnsubscribeApplied,
    _Failed,
    _HandshakeTimedOut,
    _Closed,
)


def _everything(channel_id: str) -> bool:
    return True


class ConnectionProtocol:
    """The protocol state of one client connection; see the module docstring.

    Args:
        limits: bounds for frames and subscriptions.
        heartbeat_ms: announced in ``connected``.
        may_access: whether the connection's token grants a channel (asked for
            ``send``, ``typing`` and ``read`` before their subscription check);
            every channel by default.
    """

    __slots__ = (
        "_channels",
        "_connect_channels",
        "_connection_id",
        "_heartbeat_ms",
        "_limits",
        "_may_access",
        "_state",
        "_user_id",
    )

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        may_access: Callable[[str], bool] = _everything,
    ) -> None:
        self._limits = limits
        self._heartbeat_ms = heartbeat_ms
        # The token's grants, asked before the subscription (``forbidden`` first).
        self._may_access = may_access
        self._state = ConnState.AWAITING_CONNECT
        # dict as an insertion-ordered set: ``connected`` lists channels in order.
        self._channels: dict[str, None] = {}
        # The channels the connect *asked* for: its first one is where a send
        # without channelId goes, even if the actor did not grant it (then the
        # send fails with not_subscribed instead of landing somewhere else).
        self._connect_channels: tuple[str, ...] = ()
        self._user_id: str | None = None
        self._connection_id: str | None = None

    # --- read-only state ---------------------------------------------------------------

    @property
    def state(self) -> ConnState:
        """The current state."""
        return self._state

    @property
    def limits(self) -> Limits:
        """The limits this connection enforces."""
        return self._limits

    @property
    def user_id(self) -> str | None:
        """The connected user, once the connect is accepted."""
        return self._user_id

    @property
    def connection_id(self) -> str | None:
        """The server's id for this connection, once the connect is accepted."""
        return self._connection_id

    @property
    def channels(self) -> tuple[str, ...]:
        """Subscribed channels, in the order they were subscribed."""
        return tuple(self._channels)

    @property
    def default_channel(self) -> str | None:
        """Where a send without ``channelId`` goes: the connect's first channel."""
        return self._connect_channels[0] if self._connect_channels else None

    def is_subscribed(self, channel_id: str) -> bool:
        """True when the connection is subscribed to ``channel_id``."""
        return channel_id in self._channels

    # --- client input ------------------------------------------------------------------

    def receive_text(self, text: str) -> list[Output]:
        """Handle one text frame from the client.

        Args:
            text: the frame's text.

        Returns:
            What the actor must do, in order.
        """
        size = _utf8_size_over(text, self._limits.max_frame_bytes)
        if size is not None:
            return self._dispatch(_OversizedFrame(size))
        try:
            event: object = parse_frame(text, limits=self._limits)
        except ProtocolError as exc:
            event = _BadFrame(exc)
        return self._dispatch(event)

    def receive_binary(self, data: bytes) -> list[Output]:
        """Handle one binary frame: always a ``bad_request`` (or 1009 if oversized)."""
        if len(data) > self._limits.max_frame_bytes:
            return self._dispatch(_OversizedFrame(len(data)))
        try:
            parse_binary()
        except ProtocolError as exc:
            return self._dispatch(_BadFrame(exc))

    # --- the actor's reports -------------------------------------------------------------

    def accept_connect(
        self,
        user_id: str,
        channels: Iterable[str],
        connection_id: str,
        *,
        unread: Mapping[str, int] | None = None,
    ) -> list[Output]:
        """The actor authorized the connect and subscribed ``channels``: go OPEN.

        Args:
            user_id: the settled identity (token ``sub``, frame ``userId`` or ``anon-...``).
            channels: the channels actually subscribed (those granted).
            connection_id: the server's id for this connection.
            unread: unread counts for the ``connected`` frame, when known.

        Returns:
            The ``connected`` reply; nothing if the connection closed meanwhile
            (e.g. the handshake timed out during auth).

        Raises:
            RuntimeError: when the connection is already open (a bug in the caller).
        """
        return self._dispatch(
            _ConnectAccepted(user_id, tuple(dict.fromkeys(channels)), connection_id, unread)
        )

    def apply_subscribe(self, channels: Iterable[str]) -> list[Output]:
        """The actor subscribed ``channels`` (for a ``Request(Subscribe)``).

        Channels that would take the connection past
        ``max_channels_per_connection`` are not recorded and reported to the
        client as a ``bad_request`` error; the actor should leave them again.

        Returns:
            The ``subscribed`` reply (and that error, if any).

        Raises:
            RuntimeError: before the connect is accepted (a bug in the caller).
        """
        return self._dispatch(_SubscribeApplied(tuple(dict.fromkeys(channels))))

    def apply_unsubscribe(self, channels: Iterable[str]) -> list[Output]:
        """The actor left ``channels`` (for a ``Request(Unsubscribe)``).

        Returns:
            The ``unsubscribed`` reply.

        Raises:
            RuntimeError: before the connect is accepted (a bug in the caller).
        """
        return self._dispatch(_UnsubscribeApplied(tuple(dict.fromkeys(channels))))

    def fail(self, error: ProtocolError) -> list[Output]:
        """Report a failed request to the client.

        Sends the ``error`` frame; when ``error.close_code`` is set (e.g. 4001 for
        a refused connect) also closes the connection.
        """
        return self._dispatch(_Failed(error))

    def handshake_timed_out(self) -> list[Output]:
        """The handshake timer fired: close with 4008 if still awaiting the connect."""
        return self._dispatch(_HandshakeTimedOut())

    def close(self) -> None:
        """The connection is closed (by us or the peer): ignore all further input."""
        self._dispatch(_Closed())

    # --- the table -------------------------------------------------------------------

    def _dispatch(self, event: object) -> list[Output]:
        handler = _TRANSITIONS.get((self._state, type(event)))
        if handler is None:
            raise RuntimeError(
                f"{type(event).__name__.lstrip('_')} is not allowed in state {self._state.name}"
            )
        return handler(self, event)


def _utf8_size_over(text: str, limit: int) -> int | None:
    """The UTF-8 size of ``text`` if it exceeds ``limit`` bytes, else None."""
    # A code point is 1-4 UTF-8 bytes, so most frames are decided without encoding.
    if len(text) * 4 <= limit:
        return None
    if len(text) > limit:
        return len(text)
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > limit else None


def _close_reason(text: str) -> str:
    return text.encode("utf-8")[:_MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


# --- handlers: (protocol, event) -> outputs ---------------------------------------------
# Only these functions change ``ConnectionProtocol``'s state, and only through
# the table below.

_Handler = Callable[[ConnectionProtocol, Any], list[Output]]


def _error(code: ErrorCode, message: str, event: ClientEvent) -> list[Output]:
    """An error reply about ``event``, echoing its requestId/clientMsgId."""
    request_id: str | None = None
    client_msg_id: str | None = None
    match event:
        case Send():
            client_msg_id = event.client_msg_id
        case History() | Edit() | Delete() | React() | PresenceQuery():
            request_id = event.request_id
    frame = server_frames.error(code, message, request_id=request_id, client_msg_id=client_msg_id)
    return [Reply(frame)]


def _ignore(proto: ConnectionProtocol, event: object) -> list[Output]:
    return []


def _request(proto: ConnectionProtocol, event: ClientEvent) -> list[Output]:
    return [Request(event)]


def _reply_error(proto: ConnectionProtocol, event: _BadFrame) -> list[Output]:
    return [Reply(server_frames.error_from(event.error))]


def _close_oversized(proto: ConnectionProtocol, event: _OversizedFrame) -> list[Output]:
    proto._state = ConnState.CLOSED
    limit = proto._limits.max_frame_bytes
    return [Close(CloseCode.MESSAGE_TOO_BIG, f"frame of {event.size} bytes exceeds {limit}")]


def _fail(proto: ConnectionProtocol, event: _Failed) -> list[Output]:
    error = event.error
    outputs: list[Output] = [Reply(server_frames.error_from(error))]
    if error.close_code is not None:
        proto._state = ConnState.CLOSED
        outputs.append(Close(CloseCode(error.close_code), _close_reason(error.message)))
    return outputs


def _mark_closed(proto: ConnectionProtocol, event: _Closed) -> list[Output]:
    proto._state = ConnState.CLOSED
    return []


# AWAITING_CONNECT


def _refuse_before_connect(proto: ConnectionProtocol, event: ClientEvent) -> list[Output]:
    return _error(ErrorCode.HANDSHAKE_REQUIRED, "the first frame must be a connect", event)


def _request_connect(proto: ConnectionProtocol, event: Connect) -> list[Output]:
    proto._connect_channels = event.channels
    return [Request(event)]


def _open(proto: ConnectionProtocol, event: _ConnectAccepted) -> list[Output]:
    proto._state = ConnState.OPEN
    proto._user_id = event.user_id
    proto._connection_id = event.connection_id
    proto._channels = dict.fromkeys(event.channels)
    frame = server_frames.connected(
        event.user_id, event.connection_id, event.channels, proto._heartbeat_ms, event.unread
    )
    return [Reply(frame)]


def _close_handshake_timeout(proto: ConnectionProtocol, event: _HandshakeTimedOut) -> list[Output]:
    proto._state = ConnState.CLOSED
    return [Close(CloseCode.HANDSHAKE_TIMEOUT, "no connect within the handshake timeout")]


# OPEN


def _refuse_second_connect(proto: ConnectionProtocol, event: Connect) -> list[Output]:
    return _error(ErrorCode.BAD_REQUEST, "already connected: connect only once", event)


def _reply_pong(proto: ConnectionProtocol, event: Ping) -> list[Output]:
    return [Reply(server_frames.pong())]


def _request_send(proto: ConnectionProtocol, event: Send) -> list[Output]:
    channel_id = event.channel_id if event.channel_id is not None else proto.default_channel
    if channel_id is None:
        return _error(
            ErrorCode.BAD_REQUEST, "'channelId' is required: the connect named no channels", event
        )
    refused = _refuse_channel(proto, channel_id, event)
    if refused is not None:
        return refused
    return [Request(replace(event, channel_id=channel_id))]


def _request_if_subscribed(proto: ConnectionProtocol, event: Typing | Read) -> list[Output]:
    refused = _refuse_channel(proto, event.channel_id, event)
    if refused is not None:
        return refused
    return [Request(event)]


def _refuse_channel(
    proto: ConnectionProtocol, channel_id: str, event: Send | Typing | Read
) -> list[Output] | None:
    """``forbidden`` (not granted), else ``not_subscribed``, else None (go ahead)."""
    if channel_id in proto._channels:
        # Subscribed channels are granted ones: a refresh that revokes a grant
        # unsubscribes the channel first.
        return None
    if not proto._may_access(channel_id):
        return _error(ErrorCode.FORBIDDEN, f"the token does not grant {channel_id!r}", event)
    return _error(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to channel {channel_id!r}", event)


def _request_subscribe(proto: ConnectionProtocol, event: Subscribe) -> list[Output]:
    new = [c for c in event.channels if c not in proto._channels]
    limit = proto._limits.max_channels_per_connection
    if len(proto._channels) + len(new) > limit:
        return _error(
            ErrorCode.BAD_REQUEST,
            f"subscribing would hold {len(proto._channels) + len(new)} channels; "
            f"a connection holds at most {limit}",
            event,
        )
    return [Request(event)]


def _apply_subscribe(proto: ConnectionProtocol, event: _SubscribeApplied) -> list[Output]:
    limit = proto._limits.max_channels_per_connection
    accepted: list[str] = []
    refused: list[str] = []
    for channel_id in event.channels:
        if channel_id in proto._channels or len(proto._channels) < limit:
            proto._channels[channel_id] = None
            accepted.append(channel_id)
        else:
            refused.append(channel_id)
    outputs: list[Output] = []
    if accepted or not refused:
        outputs.append(Reply(server_frames.subscribed(accepted)))
    if refused:
        message = f"not subscribed to {refused}: a connection holds at most {limit} channels"
        outputs.append(Reply(server_frames.error(ErrorCode.BAD_REQUEST, message)))
    return outputs


def _apply_unsubscribe(proto: ConnectionProtocol, event: _UnsubscribeApplied) -> list[Output]:
    for channel_id in event.channels:
        proto._channels.pop(channel_id, None)
    return [Reply(server_frames.unsubscribed(event.channels))]


_AWAITING = ConnState.AWAITING_CONNECT
_OPEN = ConnState.OPEN
_CLOSED = ConnState.CLOSED

_TRANSITIONS: dict[tuple[ConnState, type[object]], _Handler] = {
    # AWAITING_CONNECT: only a connect goes through; the connection opens when
    # the actor accepts it. Missing on purpose: subscribe/unsubscribe reports
    # (no such request can be outstanding yet).
    **{(_AWAITING, event_type): _refuse_before_connect for event_type in CLIENT_EVENT_TYPES},
    (_AWAITING, Connect): _request_connect,
    (_AWAITING, _BadFrame): _reply_error,
    (_AWAITING, _OversizedFrame): _close_oversized,
    (_AWAITING, _ConnectAccepted): _open,
    (_AWAITING, _Failed): _fail,
    (_AWAITING, _HandshakeTimedOut): _close_handshake_timeout,
    (_AWAITING, _Closed): _mark_closed,
    # OPEN: every request; ping is answered here, the rest need the actor.
    # Missing on purpose: a second connect acceptance.
    (_OPEN, Connect): _refuse_second_connect,
    (_OPEN, Send): _request_send,
    (_OPEN, Subscribe): _request_subscribe,
    (_OPEN, Unsubscribe): _request,
    (_OPEN, History): _request,
    (_OPEN, Ping): _reply_pong,
    (_OPEN, Refresh): _request,
    (_OPEN, Edit): _request,
    (_OPEN, Delete): _request,
    (_OPEN, React): _request,
    (_OPEN, PresenceQuery): _request,
    (_OPEN, Typing): _request_if_subscribed,
    (_OPEN, Read): _request_if_subscribed,
    (_OPEN, _BadFrame): _reply_error,
    (_OPEN, _OversizedFrame): _close_oversized,
    (_OPEN, _SubscribeApplied): _apply_subscribe,
    (_OPEN, _UnsubscribeApplied): _apply_unsubscribe,
    (_OPEN, _Failed): _fail,
    (_OPEN, _HandshakeTimedOut): _ignore,  # the timer lost a race with the connect
    (_OPEN, _Closed): _mark_closed,
    # CLOSED: everything is ignored, including late reports from the actor
    # (the peer may vanish while auth or a subscribe is in flight).
    **{(_CLOSED, event_type): _ignore for event_type in CLIENT_EVENT_TYPES + _CONTROL_TYPES},
}
"""Every state transition: (state, input type) -> handler.

Rule (after h11's ``_state.py``): everything that changes a connection's state
lives in this table and its handlers. An input is a parsed client event, a
frame failure (``_BadFrame``, ``_OversizedFrame``) or a report from the actor
(``_ConnectAccepted``, ``_SubscribeApplied``, ``_UnsubscribeApplied``,
``_Failed``, ``_HandshakeTimedOut``, ``_Closed``). A pair missing from the
table is a bug in the caller and raises ``RuntimeError``.
"""
