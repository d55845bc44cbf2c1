"""What a :class:`~chime_actors.client.ChimeClient` delivers: typed, frozen events.

One class per server frame ``type`` of docs/protocol.md (``message``, ``ack``,
``error`` ...), plus two events the client makes itself (:class:`Disconnected`,
:class:`GapFilled`). A frame of a type this module does
not know, or a known type whose fields do not parse, becomes an
:class:`UnknownFrame`: a newer server never breaks an older client.

Every class is a frozen, slotted dataclass; mappings are tuples of pairs (with
a ``dict`` view where that helps), so an event is immutable all the way down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file referenced by a message (docs/protocol.md "Attachments").

    ``sha256`` (hex) is known from an upload's answer only: messages do not list it.
    """

    attachment_id: str
    filename: str
    content_type: str
    size: int
    sha256: str | None = None

    @classmethod
    def from_wire(cls, raw: object) -> Attachment:
        """Parse an attachment as a message lists it, or an upload's answer.

        Raises:
            ValueError: a required field is missing or has the wrong type.
        """
        wire = _object(raw, "attachment")
        return cls(
            attachment_id=_req_str(wire, "attachmentId"),
            filename=_req_str(wire, "filename"),
            content_type=_req_str(wire, "contentType"),
            size=_int(wire.get("size", 0), "size"),
            sha256=_opt_str(wire, "sha256"),
        )


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A ChimeMessage as the server stores, broadcasts and returns it.

    ``reactions`` (emoji, user ids) comes with history replies only.
    """

    channel_id: str
    message_id: str
    user_id: str
    content: str
    created_at: str
    edited_at: str | None = None
    metadata: Pairs = ()
    thread_id: str | None = None
    client_msg_id: str | None = None
    channel_name: str | None = None
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    attachments: tuple[Attachment, ...] = ()

    @property
    def metadata_dict(self) -> dict[str, str]:
        """``metadata`` as a new dict."""
        return dict(self.metadata)

    @classmethod
    def from_wire(cls, raw: object) -> ChatMessage:
        """Parse the JSON object of a ChimeMessage.

        Raises:
            ValueError: a required field is missing or has the wrong type.
        """
        wire = _object(raw, "message")
        metadata = _object(wire.get("metadata") or {}, "metadata")
        reactions = _object(wire.get("reactions") or {}, "reactions")
        return cls(
            channel_id=_req_str(wire, "channelId"),
            message_id=_req_str(wire, "messageId"),
            user_id=_req_str(wire, "userId"),
            content=_req_str(wire, "content"),
            created_at=_req_str(wire, "createdAt"),
            edited_at=_opt_str(wire, "editedAt"),
            metadata=tuple((str(k), _as_str(v, k)) for k, v in metadata.items()),
            thread_id=_opt_str(wire, "threadId"),
            client_msg_id=_opt_str(wire, "clientMsgId"),
            channel_name=_opt_str(wire, "channelName"),
            reactions=tuple(
                (str(emoji), tuple(_as_str(u, "reactions") for u in _list(users, "reactions")))
                for emoji, users in reactions.items()
            ),
            attachments=tuple(
                _attachment(item) for item in _list(wire.get("attachments") or [], "attachments")
            ),
        )


# --- events the client makes itself -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    """The server accepted a connect (``connected``).

    ``reconnect`` is False for the client's first connection and True after it.
    """

    user_id: str
    connection_id: str
    channels: tuple[str, ...]
    heartbeat_ms: int
    unread: tuple[tuple[str, int], ...] = ()
    reconnect: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection is gone.

    Attributes:
        code: the WebSocket close code the server sent, if any.
        reason: why, in words (close reason, or the error that ended it).
        retry_in_s: seconds until the next attempt; None when the client gives up
            (``final`` is then True and the event stream ends).
    """

    code: int | None
    reason: str
    retry_in_s: float | None
    final: bool = False


@dataclass(frozen=True, slots=True)
class GapFilled:
    """After ``resume_failed`` the client paged the gap from history itself.

    ``count`` messages were delivered as :class:`Message` events (``replayed``);
    ``complete`` is False when paging stopped early (an error or a lost connection:
    the next reconnect resumes from the last message delivered).
    """

    channel_id: str
    count: int
    complete: bool


# --- one per server frame type ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A channel message (``message``), live or ``replayed`` by a resume."""

    message: ChatMessage
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Ack:
    """One of this client's sends is durably stored."""

    client_msg_id: str | None
    channel_id: str
    message_id: str
    created_at: str


@dataclass(frozen=True, slots=True)
class Error:
    """An ``error`` frame; ``request_id``/``client_msg_id`` say what it answers."""

    code: str
    message: str
    request_id: str | None = None
    client_msg_id: str | None = None
    retry_after_ms: int | None = None

    @property
    def not_supported(self) -> bool:
        """Whether the server said it does not support this kind of frame yet."""
        return self.code == "bad_request" and "not supported" in self.message


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Reply to ``subscribe``."""

    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Reply to ``unsubscribe`` (or the server left channels for us: a token refresh)."""

    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class History:
    """Reply to ``history``: ``messages`` oldest first."""

    request_id: str | None
    channel_id: str
    messages: tuple[ChatMessage, ...]
    has_more: bool


@dataclass(frozen=True, slots=True)
class Resumed:
    """End of a channel's resume replay: ``count`` messages were replayed."""

    channel_id: str
    count: int


@dataclass(frozen=True, slots=True)
class ResumeFailed:
    """The server would not replay the gap (``too_many``, ``unavailable``).

    The client then pages it from history by itself (see :class:`GapFilled`).
    """

    channel_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MessageEdited:
    """A message's new content (``editedAt`` set)."""

    message: ChatMessage


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    """A message was deleted."""

    channel_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Reaction:
    """Someone added (``op`` ``add``) or removed a reaction."""

    channel_id: str
    message_id: str
    emoji: str
    user_id: str
    op: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """A user came ``online`` in a channel or went ``offline``."""

    channel_id: str
    user_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Presence:
    """Reply to a presence query: who is online in the channel."""

    request_id: str | None
    channel_id: str
    online: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Typing:
    """Someone is typing in a channel."""

    channel_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class Refreshed:
    """A token ``refresh`` was accepted; ``expires_at`` is the new deadline."""

    expires_at: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """Reply to an application-level ``ping``."""


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame this client does not understand (a newer server, or a malformed frame)."""

    type: str | None
    frame: Mapping[str, Any]


Event = (
    Connected
    | Disconnected
    | GapFilled
    | Message
    | Ack
    | Error
    | Subscribed
    | Unsubscribed
    | History
    | Resumed
    | ResumeFailed
    | MessageEdited
    | MessageDeleted
    | Reaction
    | PresenceChanged
    | Presence
    | Typing
    | Refreshed
    | Pong
    | UnknownFrame
)
"""Everything ``ChimeClient.events()`` yields."""


def parse_event(frame: Mapping[str, Any]) -> Event:
    """The event for one server frame (a decoded JSON object).

    ``connected`` is parsed with ``reconnect=False``; the client state sets it.
    Never raises: what does not parse is an :class:`UnknownFrame`.
    """
    kind = frame.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is not None:
        try:
            return parser(frame)
        except (ValueError, TypeError, KeyError):
            pass
    return UnknownFrame(kind if isinstance(kind, str) else None, MappingProxyType(dict(frame)))


def _connected(f: Mapping[str, Any]) -> Event:
    unread = _object(f.get("unread") or {}, "unread")
    return Connected(
        user_id=_req_str(f, "userId"),
        connection_id=_req_str(f, "connectionId"),
        channels=_str_tuple(f.get("channels") or [], "channels"),
        heartbeat_ms=_int(f.get("heartbeatMs", 0), "heartbeatMs"),
        unread=tuple((str(k), _int(v, "unread")) for k, v in unread.items()),
    )


def _ack(f: Mapping[str, Any]) -> Event:
    return Ack(
        client_msg_id=_opt_str(f, "clientMsgId"),
        channel_id=_req_str(f, "channelId"),
        message_id=_req_str(f, "messageId"),
        created_at=_req_str(f, "createdAt"),
    )


def _error(f: Mapping[str, Any]) -> Event:
    retry = f.get("retryAfterMs")
    return Error(
        code=_req_str(f, "code"),
        message=_opt_str(f, "message") or "",
        request_id=_opt_str(f, "requestId"),
        client_msg_id=_opt_str(f, "clientMsgId"),
        retry_after_ms=None if retry is None else _int(retry, "retryAfterMs"),
    )


def _history(f: Mapping[str, Any]) -> Event:
    return History(
        request_id=_opt_str(f, "requestId"),
        channel_id=_req_str(f, "channelId"),
        messages=tuple(ChatMessage.from_wire(m) for m in _list(f["messages"], "messages")),
        has_more=bool(f.get("hasMore", False)),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "connected": _connected,
    "message": lambda f: Message(ChatMessage.from_wire(f["message"])),
    "ack": _ack,
    "error": _error,
    "subscribed": lambda f: Subscribed(_str_tuple(f["channels"], "channels")),
    "unsubscribed": lambda f: Unsubscribed(_str_tuple(f["channels"], "channels")),
    "history": _history,
    "resumed": lambda f: Resumed(_req_str(f, "channelId"), _int(f.get("count", 0), "count")),
    "resume_failed": lambda f: ResumeFailed(
        _req_str(f, "channelId"), _opt_str(f, "reason") or "unknown"
    ),
    "message_edited": lambda f: MessageEdited(ChatMessage.from_wire(f["message"])),
    "message_deleted": lambda f: MessageDeleted(_req_str(f, "channelId"), _req_str(f, "messageId")),
    "reaction": lambda f: Reaction(
        _req_str(f, "channelId"),
        _req_str(f, "messageId"),
        _req_str(f, "emoji"),
        _req_str(f, "userId"),
        _req_str(f, "op"),
    ),
    "presence_changed": lambda f: PresenceChanged(
        _req_str(f, "channelId"), _req_str(f, "userId"), _req_str(f, "status")
    ),
    "presence": lambda f: Presence(
        _opt_str(f, "requestId"), _req_str(f, "channelId"), _str_tuple(f["online"], "online")
    ),
    "typing": lambda f: Typing(_req_str(f, "channelId"), _req_str(f, "userId")),
    "refreshed": lambda f: Refreshed(_req_str(f, "expiresAt"), _opt_str(f, "requestId")),
    "pong": lambda f: Pong(),
}


# --- field helpers: wrong types raise ValueError -----------------------------------------


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: not an object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: not a list")
    return value


def _as_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: not a string")
    return value


def _req_str(frame: Mapping[str, Any], key: str) -> str:
    return _as_str(frame.get(key), key)


def _opt_str(frame: Mapping[str, Any], key: str) -> str | None:
    value = frame.get(key)
    return None if value is None else _as_str(value, key)


def _int(value: object, what: str) -> int:
    # bool is an int in Python, never in JSON's sense.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what}: not an integer")
    return value


def _str_tuple(value: object, what: str) -> tuple[str, ...]:
    return tuple(_as_str(v, what) for v in _list(value, what))


def _attachment(raw: object) -> Attachment:
    return Attachment.from_wire(raw)
