"""Parse client text frames into :mod:`events`, enforcing docs/protocol.md.

:func:`parse_frame` is the only way a client's bytes become an event. It either
returns a fully validated event or raises :class:`~chime_actors.errors.ProtocolError`
with the wire error code; it never raises anything else, whatever the input
(a property test holds it to that). It knows nothing about connection state:
"is this allowed now" is :mod:`connection`'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import orjson

from chime_actors.config import ChatConfig
from chime_actors.errors import ProtocolError
from chime_actors.ids import is_attachment_id, is_message_id
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.events import (
    ChannelList,
    ClientEvent,
    Connect,
    Delete,
    Edit,
    History,
    Ping,
    PresenceQuery,
    React,
    ReactionOp,
    Read,
    Refresh,
    ResumePoints,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from chime_actors.records import SERVER_CLIENT_MSG_ID_PREFIX, Metadata

_CHANNEL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_USER_ID = re.compile(r"[A-Za-z0-9_.@:-]{1,64}")
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# Only JSON's own whitespace counts as "blank" before a ``{``: whatever we then
# treat as JSON is something orjson can actually parse.
_JSON_WHITESPACE = " \t\n\r"

# Client-chosen correlation ids and free-text fields are bounded so a single
# frame cannot make us store or echo arbitrarily large strings. docs/protocol.md is
# silent on these, so the bounds are generous.
MAX_CORRELATION_ID_CHARS = 128
MAX_TOKEN_CHARS = 8192
MAX_EMOJI_CHARS = 64

# How much of an offending client value an error message quotes.
_QUOTE_CHARS = 40

# The bounds that are configuration keys (chat.*) default to the schema's values.
_CHAT = ChatConfig()


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a frame must respect.

    The ones named like ``chat.*`` keys take their defaults from the configuration
    schema (``ChatConfig``) and the gateway passes the configured values; the
    others are docs/protocol.md's fixed bounds.

    Attributes:
        max_content_chars: longest message content, in code points (``too_large`` past it).
        max_channels_per_connection: most channels a connect or a connection may hold.
        max_metadata_keys: most keys in a send's ``metadata``.
        max_metadata_value_chars: longest metadata value, in code points.
        max_attachments: most attachment ids one send may list.
        history_max_limit: largest ``limit`` a history request may ask for.
        history_default_limit: ``limit`` when the request gives none.
        max_frame_bytes: largest text frame, in UTF-8 bytes; the connection
            closes with 1009 past it (the WebSocket library should enforce it
            first; :mod:`connection` checks again so the core is safe alone).
    """

    max_content_chars: int = _CHAT.max_content_chars
    max_channels_per_connection: int = _CHAT.max_channels_per_connection
    max_metadata_keys: int = 16
    max_metadata_value_chars: int = 256
    max_attachments: int = 10
    history_max_limit: int = 100
    history_default_limit: int = 50
    max_frame_bytes: int = _CHAT.max_frame_bytes


DEFAULT_LIMITS = Limits()
"""docs/protocol.md's bounds with the configuration's defaults."""


def parse_binary() -> NoReturn:
    """Reject a binary frame: docs/protocol.md speaks only text frames.

    Raises:
        ProtocolError: always, with code ``bad_request``.
    """
    raise ProtocolError(ErrorCode.BAD_REQUEST, "binary frames are not supported; send text")


def is_channel_id(value: str) -> bool:
    """True when ``value`` is a valid channel id (1-64 of ``A-Z a-z 0-9 _ . : -``)."""
    return _CHANNEL_ID.fullmatch(value) is not None


def is_user_id(value: str) -> bool:
    """True when ``value`` is a valid user id (1-64 of ``A-Z a-z 0-9 _ . @ : -``).

    The rule of a connect frame's ``userId``; the gateway applies it to the
    ``?userId=`` query parameter too, so both ways of naming a user agree.
    """
    return _USER_ID.fullmatch(value) is not None


def parse_frame(text: str, *, limits: Limits = DEFAULT_LIMITS) -> ClientEvent:
    """Parse one client text frame.

    A frame whose first non-blank character is not ``{`` is a plain-text send of
    the whole frame (``hello``, ``[1,2]`` and ``42`` are messages). Anything
    starting with ``{`` must be a JSON object. An object without ``type`` is a
    connect if it has ``channels``, else a send if it has ``content`` (the seed
    forms). Unknown fields are ignored; optional fields may be null or absent.

    Args:
        text: the frame's text.
        limits: the bounds to enforce.

    Returns:
        The validated event. A ``Send`` may have ``channel_id=None`` ("the
        first channel of the connect").

    Raises:
        ProtocolError: ``bad_request`` for anything malformed, ``too_large`` for
            over-long content. ``request_id``/``client_msg_id`` are set when the
            frame carried them as strings.
    """
    if not text.lstrip(_JSON_WHITESPACE).startswith("{"):
        return _parse_plain_text(text, limits)
    try:
        # orjson also rejects lone surrogates, NaN, infinities and deep nesting.
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"frame starts with '{{' but is not valid JSON: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        # e.g. ``{"a":1} [`` cannot parse, but keep the guard: only objects are frames.
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame must be a JSON object")
    return _FrameReader(obj, limits).parse()


def _parse_plain_text(text: str, limits: Limits) -> Send:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            # Only reachable when called directly: WebSocket text is valid UTF-8.
            raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid UTF-8") from exc
    _check_content(text, "content", limits, _raise_plain)
    return Send(channel_id=None, content=text)


def _raise_plain(code: ErrorCode, message: str) -> NoReturn:
    raise ProtocolError(code, message)


def _check_content(
    content: str,
    field: str,
    limits: Limits,
    fail: Callable[[ErrorCode, str], NoReturn],
) -> None:
    if len(content) > limits.max_content_chars:
        fail(
            ErrorCode.TOO_LARGE,
            f"{field} is {len(content)} characters; the limit is {limits.max_content_chars}",
        )
    if not content.strip():
        fail(ErrorCode.BAD_REQUEST, f"{field} must not be empty or blank")


def _quote(value: object) -> str:
    text = repr(value)
    if len(text) > _QUOTE_CHARS:
        text = text[: _QUOTE_CHARS - 3] + "..."
    return text


def _type_name(value: object) -> str:
    # Name the JSON type the client sent, not the Python one.
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__  # pragma: no cover - orjson yields only the above


class _FrameReader:
    """Validates the fields of one JSON object frame.

    Every failure goes through :meth:`fail`, so every error raised while reading
    a frame echoes the frame's ``requestId``/``clientMsgId``.
    """

    __slots__ = ("_client_msg_id", "_limits", "_obj", "_request_id")

    def __init__(self, obj: dict[str, object], limits: Limits) -> None:
        self._obj = obj
        self._limits = limits
        request_id = obj.get("requestId")
        client_msg_id = obj.get("clientMsgId")
        self._request_id = request_id if isinstance(request_id, str) else None
        self._client_msg_id = client_msg_id if isinstance(client_msg_id, str) else None

    def fail(self, code: ErrorCode, message: str) -> NoReturn:
        raise ProtocolError(
            code,
            message,
            request_id=self._request_id,
            client_msg_id=self._client_msg_id,
        )

    def parse(self) -> ClientEvent:
        frame_type = self._obj.get("type")
        if frame_type is None:
            if "channels" in self._obj:
                return self._connect()
            if "content" in self._obj:
                return self._send()
            self.fail(
                ErrorCode.BAD_REQUEST,
                "frame has no 'type' (and is neither a seed connect nor a seed send)",
            )
        if not isinstance(frame_type, str):
            self.fail(
                ErrorCode.BAD_REQUEST, f"'type' must be a string, not {_type_name(frame_type)}"
            )
        parser = _PARSERS.get(frame_type)
        if parser is None:
            self.fail(ErrorCode.BAD_REQUEST, f"unknown frame type {_quote(frame_type)}")
        return parser(self)

    # --- one method per frame type ------------------------------------------------

    def _connect(self) -> Connect:
        channels = self._channels(required=False)
        user_id = self._optional_str("userId")
        if user_id is not None and not _USER_ID.fullmatch(user_id):
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'userId' {_quote(user_id)} is not valid: 1-64 of A-Z a-z 0-9 _ . @ : -",
            )
        token = self._optional_str("token", max_chars=MAX_TOKEN_CHARS)
        return Connect(channels=channels, user_id=user_id, token=token, resume=self._resume())

    def _send(self) -> Send:
        return Send(
            channel_id=self._optional_channel_id("channelId"),
            content=self._content(),
            client_msg_id=self._read_client_msg_id(),
            metadata=self._metadata(),
            thread_id=self._optional_message_id("threadId"),
            attachments=self._attachments(),
        )

    def _subscribe(self) -> Subscribe:
        return Subscribe(channels=self._channels(required=True))

    def _unsubscribe(self) -> Unsubscribe:
        return Unsubscribe(channels=self._channels(required=True))

    def _history(self) -> History:
        return History(
            request_id=self._request_id_field(),
            channel_id=self._channel_id("channelId"),
            before=self._optional_message_id("before"),
            after=self._optional_message_id("after"),
            limit=self._limit(),
            thread_id=self._optional_message_id("threadId"),
        )

    def _ping(self) -> Ping:
        return Ping()

    def _refresh(self) -> Refresh:
        return Refresh(
            token=self._required_str("token", max_chars=MAX_TOKEN_CHARS),
            request_id=self._request_id_field(),
        )

    def _edit(self) -> Edit:
        return Edit(
            request_id=self._request_id_field(),
            channel_id=self._channel_id("channelId"),
            message_id=self._message_id("messageId"),
            content=self._content(),
        )

    def _delete(self) -> Delete:
        return Delete(
            request_id=self._request_id_field(),
            channel_id=self._channel_id("channelId"),
            message_id=self._message_id("messageId"),
        )

    def _react(self) -> React:
        channel_id = self._channel_id("channelId")
        message_id = self._message_id("messageId")
        emoji = self._required_str("emoji", max_chars=MAX_EMOJI_CHARS)
        if not emoji.strip():
            self.fail(ErrorCode.BAD_REQUEST, "'emoji' must not be blank")
        op = self._required_str("op")
        try:
            reaction_op = ReactionOp(op)
        except ValueError:
            self.fail(ErrorCode.BAD_REQUEST, f"'op' must be 'add' or 'remove', not {_quote(op)}")
        return React(
            channel_id=channel_id,
            message_id=message_id,
            emoji=emoji,
            op=reaction_op,
            request_id=self._request_id_field(),
        )

    def _presence(self) -> PresenceQuery:
        return PresenceQuery(
            request_id=self._request_id_field(), channel_id=self._channel_id("channelId")
        )

    def _typing(self) -> Typing:
        return Typing(channel_id=self._channel_id("channelId"))

    def _read(self) -> Read:
        return Read(
            channel_id=self._channel_id("channelId"), message_id=self._message_id("messageId")
        )

    # --- field readers -------------------------------------------------------------

    def _optional_str(self, field: str, *, max_chars: int | None = None) -> str | None:
        value = self._obj.get(field)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' must be a string, not {_type_name(value)}")
        if max_chars is not None and not 1 <= len(value) <= max_chars:
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' must be 1-{max_chars} characters")
        return value

    def _required_str(self, field: str, *, max_chars: int | None = None) -> str:
        value = self._optional_str(field, max_chars=max_chars)
        if value is None:
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' is required")
        return value

    def _read_client_msg_id(self) -> str | None:
        value = self._optional_str("clientMsgId", max_chars=MAX_CORRELATION_ID_CHARS)
        if value is not None and value.startswith(SERVER_CLIENT_MSG_ID_PREFIX):
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'clientMsgId' may not start with {SERVER_CLIENT_MSG_ID_PREFIX!r} (reserved)",
            )
        return value

    def _request_id_field(self) -> str | None:
        return self._optional_str("requestId", max_chars=MAX_CORRELATION_ID_CHARS)

    def _content(self) -> str:
        content = self._required_str("content")
        _check_content(content, "'content'", self._limits, self.fail)
        return content

    def _check_channel_id(self, field: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' must be a string, not {_type_name(value)}")
        if not _CHANNEL_ID.fullmatch(value):
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'{field}' {_quote(value)} is not a channel id: 1-64 of A-Z a-z 0-9 _ . : -",
            )
        return value

    def _optional_channel_id(self, field: str) -> str | None:
        value = self._obj.get(field)
        return None if value is None else self._check_channel_id(field, value)

    def _channel_id(self, field: str) -> str:
        value = self._optional_channel_id(field)
        if value is None:
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' is required")
        return value

    def _check_message_id(self, field: str, value: object) -> str:
        if not isinstance(value, str):
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' must be a string, not {_type_name(value)}")
        if not is_message_id(value):
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' {_quote(value)} is not a message id")
        return value

    def _optional_message_id(self, field: str) -> str | None:
        value = self._obj.get(field)
        return None if value is None else self._check_message_id(field, value)

    def _message_id(self, field: str) -> str:
        value = self._optional_message_id(field)
        if value is None:
            self.fail(ErrorCode.BAD_REQUEST, f"'{field}' is required")
        return value

    def _channels(self, *, required: bool) -> ChannelList:
        value = self._obj.get("channels")
        if value is None:
            if required:
                self.fail(ErrorCode.BAD_REQUEST, "'channels' is required")
            return ()
        if not isinstance(value, list):
            self.fail(
                ErrorCode.BAD_REQUEST, f"'channels' must be an array, not {_type_name(value)}"
            )
        # dict.fromkeys dedupes while keeping the client's order.
        channels = tuple(dict.fromkeys(self._check_channel_id("channels[]", c) for c in value))
        limit = self._limits.max_channels_per_connection
        if len(channels) > limit:
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'channels' names {len(channels)} channels; a connection holds at most {limit}",
            )
        return channels

    def _resume(self) -> ResumePoints:
        value = self._obj.get("resume")
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(ErrorCode.BAD_REQUEST, f"'resume' must be an object, not {_type_name(value)}")
        limit = self._limits.max_channels_per_connection
        if len(value) > limit:
            self.fail(ErrorCode.BAD_REQUEST, f"'resume' names more than {limit} channels")
        return tuple(
            (
                self._check_channel_id("resume", channel_id),
                self._check_message_id(f"resume.{channel_id}", message_id),
            )
            for channel_id, message_id in value.items()
        )

    def _metadata(self) -> Metadata:
        value = self._obj.get("metadata")
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.fail(
                ErrorCode.BAD_REQUEST, f"'metadata' must be an object, not {_type_name(value)}"
            )
        limits = self._limits
        if len(value) > limits.max_metadata_keys:
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'metadata' has {len(value)} keys; at most {limits.max_metadata_keys} allowed",
            )
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            if not _METADATA_KEY.fullmatch(key):
                # Quoted short: the key itself may be kilobytes of anything.
                self.fail(
                    ErrorCode.BAD_REQUEST,
                    f"metadata key {_quote(key)} must be 1-64 of A-Z a-z 0-9 _ . : -",
                )
            if not isinstance(item, str):
                self.fail(
                    ErrorCode.BAD_REQUEST,
                    f"'metadata.{key}' must be a string, not {_type_name(item)}",
                )
            if len(item) > limits.max_metadata_value_chars:
                self.fail(
                    ErrorCode.BAD_REQUEST,
                    f"'metadata.{key}' is longer than {limits.max_metadata_value_chars} characters",
                )
            pairs.append((key, item))
        return tuple(pairs)

    def _attachments(self) -> tuple[str, ...]:
        value = self._obj.get("attachments")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(
                ErrorCode.BAD_REQUEST, f"'attachments' must be an array, not {_type_name(value)}"
            )
        limit = self._limits.max_attachments
        if len(value) > limit:
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'attachments' lists {len(value)} files; at most {limit} allowed",
            )
        for item in value:
            if not is_attachment_id(item):
                self.fail(
                    ErrorCode.BAD_REQUEST,
                    f"'attachments[]' {_quote(item)} is not an attachment id",
                )
        # dict.fromkeys: a file listed twice is listed once, in the sender's order.
        return tuple(dict.fromkeys(value))

    def _limit(self) -> int:
        limits = self._limits
        value = self._obj.get("limit")
        if value is None:
            return limits.history_default_limit
        # bool is a subclass of int in Python, but ``true`` is not a number in JSON.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= limits.history_max_limit
        ):
            self.fail(
                ErrorCode.BAD_REQUEST,
                f"'limit' must be an integer from 1 to {limits.history_max_limit}, "
                f"not {_quote(value)}",
            )
        return value


_PARSERS: dict[str, Callable[[_FrameReader], ClientEvent]] = {
    "connect": _FrameReader._connect,
    "send": _FrameReader._send,
    "subscribe": _FrameReader._subscribe,
    "unsubscribe": _FrameReader._unsubscribe,
    "history": _FrameReader._history,
    "ping": _FrameReader._ping,
    "refresh": _FrameReader._refresh,
    "edit": _FrameReader._edit,
    "delete": _FrameReader._delete,
    "react": _FrameReader._react,
    "presence": _FrameReader._presence,
    "typing": _FrameReader._typing,
    "read": _FrameReader._read,
}
"""Frame ``type`` -> the reader method that builds its event."""
