"""Encode server frames: one function per frame ``type`` of PROTOCOL.md.

Every function returns the frame as JSON text, ready for a WebSocket text frame.
Optional keys the contract marks as correlation data (``requestId``,
``clientMsgId``, ``retryAfterMs``, ``unread``) are omitted when absent rather
than sent as null, so a client can test for the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from chime_actors.errors import ProtocolError
from chime_actors.protocol.events import PresenceStatus, ReactionOp
from chime_actors.records import ChimeMessage, wire_client_msg_id

Reactions = Mapping[str, Sequence[str]]
"""Emoji -> user ids who reacted with it, as history messages carry them."""


def _encode(frame: dict[str, Any]) -> str:
    # orjson returns UTF-8 bytes; the WebSocket layer wants str for a text frame.
    return orjson.dumps(frame).decode()


def connected(
    user_id: str,
    connection_id: str,
    channels: Sequence[str],
    heartbeat_ms: int,
    unread: Mapping[str, int] | None = None,
) -> str:
    """The handshake reply.

    Args:
        user_id: the identity the server settled on.
        connection_id: the server's id for this connection.
        channels: the channels actually subscribed.
        heartbeat_ms: the WebSocket ping interval.
        unread: unread counts per connect channel, when read markers are known.
    """
    frame: dict[str, Any] = {
        "type": "connected",
        "userId": user_id,
        "connectionId": connection_id,
        "channels": list(channels),
        "heartbeatMs": heartbeat_ms,
    }
    if unread is not None:
        frame["unread"] = dict(unread)
    return _encode(frame)


def ack(message: ChimeMessage) -> str:
    """Tell the sender its message is durably stored (``clientMsgId`` may be null)."""
    return _encode(
        {
            "type": "ack",
            "clientMsgId": wire_client_msg_id(message.client_msg_id),
            "channelId": message.channel_id,
            "messageId": message.message_id,
            "createdAt": message.created_at,
        }
    )


def message(msg: ChimeMessage) -> str:
    """A live (or resumed) message for a channel subscriber."""
    return _encode({"type": "message", "message": msg.to_wire()})


def message_edited(msg: ChimeMessage) -> str:
    """A message's new content, with ``editedAt`` set."""
    return _encode({"type": "message_edited", "message": msg.to_wire()})


def message_deleted(channel_id: str, message_id: str) -> str:
    """A message was deleted."""
    return _encode({"type": "message_deleted", "channelId": channel_id, "messageId": message_id})


def reaction(channel_id: str, message_id: str, emoji: str, user_id: str, op: ReactionOp) -> str:
    """A user added or removed a reaction."""
    return _encode(
        {
            "type": "reaction",
            "channelId": channel_id,
            "messageId": message_id,
            "emoji": emoji,
            "userId": user_id,
            "op": op.value,
        }
    )


def subscribed(channels: Sequence[str]) -> str:
    """Reply to ``subscribe``: the channels now subscribed by that request."""
    return _encode({"type": "subscribed", "channels": list(channels)})


def unsubscribed(channels: Sequence[str]) -> str:
    """Reply to ``unsubscribe``."""
    return _encode({"type": "unsubscribed", "channels": list(channels)})


def history(
    request_id: str | None,
    channel_id: str,
    messages: Sequence[ChimeMessage],
    has_more: bool,
    reactions: Mapping[str, Reactions] | None = None,
) -> str:
    """Reply to ``history``: messages oldest first.

    Args:
        request_id: the request's id, echoed; omitted when None.
        channel_id: the channel read.
        messages: the page, oldest first.
        has_more: whether older (or newer, for ``after``) messages remain.
        reactions: reactions per messageId; every message carries a
            ``reactions`` object, empty when it has none.
    """
    reactions = reactions or {}
    wire_messages = []
    for msg in messages:
        wire = msg.to_wire()
        wire["reactions"] = {
            emoji: list(users) for emoji, users in reactions.get(msg.message_id, {}).items()
        }
        wire_messages.append(wire)
    frame: dict[str, Any] = {"type": "history"}
    if request_id is not None:
        frame["requestId"] = request_id
    frame.update({"channelId": channel_id, "messages": wire_messages, "hasMore": has_more})
    return _encode(frame)


def resumed(channel_id: str, count: int) -> str:
    """End of a channel's resume replay: ``count`` messages were sent."""
    return _encode({"type": "resumed", "channelId": channel_id, "count": count})


def resume_failed(channel_id: str, reason: str = "too_many") -> str:
    """The gap was too large to replay; the client should page history instead."""
    return _encode({"type": "resume_failed", "channelId": channel_id, "reason": reason})


def presence_changed(channel_id: str, user_id: str, status: PresenceStatus) -> str:
    """A user's first connection joined, or last connection left, a channel."""
    return _encode(
        {
            "type": "presence_changed",
            "channelId": channel_id,
            "userId": user_id,
            "status": status.value,
        }
    )


def presence(request_id: str | None, channel_id: str, online: Sequence[str]) -> str:
    """Reply to a presence query: the users online in the channel."""
    frame: dict[str, Any] = {"type": "presence"}
    if request_id is not None:
        frame["requestId"] = request_id
    frame.update({"channelId": channel_id, "online": list(online)})
    return _encode(frame)


def typing(channel_id: str, user_id: str) -> str:
    """Someone is typing in a channel."""
    return _encode({"type": "typing", "channelId": channel_id, "userId": user_id})


def refreshed(expires_at: str, request_id: str | None = None) -> str:
    """The answer to a ``refresh``: the new token's ``exp`` as UTC ISO-8601."""
    frame: dict[str, Any] = {"type": "refreshed", "expiresAt": expires_at}
    if request_id is not None:
        frame["requestId"] = request_id
    return _encode(frame)


def pong() -> str:
    """Reply to ``ping``."""
    return _encode({"type": "pong"})


def error(
    code: str,
    message: str,
    *,
    request_id: str | None = None,
    client_msg_id: str | None = None,
    retry_after_ms: int | None = None,
) -> str:
    """An ``error`` frame; optional keys are omitted when None.

    Args:
        code: a PROTOCOL.md error code (an ``ErrorCode`` member or its string).
        message: human-readable text.
        request_id: echoed from the failed request.
        client_msg_id: echoed from the failed send.
        retry_after_ms: with ``rate_limited``, when to try again.
    """
    # str() turns an ErrorCode member into its plain wire value.
    frame: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
    if request_id is not None:
        frame["requestId"] = request_id
    if client_msg_id is not None:
        frame["clientMsgId"] = client_msg_id
    if retry_after_ms is not None:
        frame["retryAfterMs"] = retry_after_ms
    return _encode(frame)


def error_from(exc: ProtocolError) -> str:
    """The ``error`` frame for a :class:`ProtocolError`."""
    return error(
        exc.code,
        exc.message,
        request_id=exc.request_id,
        client_msg_id=exc.client_msg_id,
        retry_after_ms=exc.retry_after_ms,
    )
