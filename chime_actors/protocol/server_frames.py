"""Encode server frames: one function per frame ``type`` of docs/protocol.md.

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
from chime_actors.records import (
    ChangeKind,
    ChannelEvent,
    ChimeMessage,
    MessageChange,
    wire_client_msg_id,
)

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


def message_edited(
    msg: ChimeMessage, *, event_id: str | None = None, request_id: str | None = None
) -> str:
    """A message's new content, with ``editedAt`` set.

    Args:
        msg: the message as edited.
        event_id: the edit's own position in the channel (a resume point).
        request_id: echoed to the editor, whose confirmation this is.
    """
    return _encode(
        _change_frame("message_edited", request_id, event_id, {"message": msg.to_wire()})
    )


def message_deleted(
    channel_id: str,
    message_id: str,
    *,
    event_id: str | None = None,
    request_id: str | None = None,
) -> str:
    """A message was deleted (``event_id`` and ``request_id`` as in ``message_edited``)."""
    fields = {"channelId": channel_id, "messageId": message_id}
    return _encode(_change_frame("message_deleted", request_id, event_id, fields))


def reaction(
    channel_id: str,
    message_id: str,
    emoji: str,
    user_id: str,
    op: ReactionOp,
    *,
    event_id: str | None = None,
    request_id: str | None = None,
) -> str:
    """A user added or removed a reaction (``event_id``, ``request_id`` as above)."""
    fields = {
        "channelId": channel_id,
        "messageId": message_id,
        "emoji": emoji,
        "userId": user_id,
        "op": op.value,
    }
    return _encode(_change_frame("reaction", request_id, event_id, fields))


def change(event: MessageChange, request_id: str | None = None) -> str:
    """The frame of a stored change: ``message_edited``, ``message_deleted`` or ``reaction``."""
    event_id = event.event_id
    if event.kind is ChangeKind.EDIT:
        assert event.message is not None  # every edit carries the edited message
        return message_edited(event.message, event_id=event_id, request_id=request_id)
    if event.kind is ChangeKind.DELETE:
        return message_deleted(
            event.channel_id, event.message_id, event_id=event_id, request_id=request_id
        )
    assert event.emoji is not None  # every reaction names its emoji
    op = ReactionOp.ADD if event.kind is ChangeKind.REACTION_ADD else ReactionOp.REMOVE
    return reaction(
        event.channel_id,
        event.message_id,
        event.emoji,
        event.user_id,
        op,
        event_id=event_id,
        request_id=request_id,
    )


def channel_event(event: ChannelEvent) -> str:
    """What a subscriber gets for an event of its channel: ``message`` or a change's frame."""
    if isinstance(event, MessageChange):
        return change(event)
    return message(event)


def _change_frame(
    kind: str, request_id: str | None, event_id: str | None, fields: dict[str, Any]
) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": kind}
    if request_id is not None:
        frame["requestId"] = request_id
    frame.update(fields)
    if event_id is not None:
        frame["eventId"] = event_id
    return frame


def subscribed(channels: Sequence[str]) -> str:
    """Reply to ``subscribe``: the channels now subscribed by that request."""
    return _encode({"type": "subscribed", "channels": list(channels)})


def unsubscribed(channels: Sequence[str]) -> str:
    """Reply to ``unsubscribe``."""
    return _encode({"type": "unsubscribed", "channels": list(channels)})


def history_message(
    msg: ChimeMessage,
    reactions: Mapping[str, Reactions] | None = None,
    reply_counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """A ChimeMessage as history returns it (WebSocket and REST alike).

    It adds ``reactions`` (emoji -> user ids, ``{}`` without any) and
    ``replyCount`` (the live replies of the thread it roots, 0 without any).
    """
    wire = msg.to_wire()
    by_emoji = (reactions or {}).get(msg.message_id, {})
    wire["reactions"] = {emoji: list(users) for emoji, users in by_emoji.items()}
    wire["replyCount"] = (reply_counts or {}).get(msg.message_id, 0)
    return wire


def history(
    request_id: str | None,
    channel_id: str,
    messages: Sequence[ChimeMessage],
    has_more: bool,
    reactions: Mapping[str, Reactions] | None = None,
    reply_counts: Mapping[str, int] | None = None,
) -> str:
    """Reply to ``history``: messages oldest first.

    Args:
        request_id: the request's id, echoed; omitted when None.
        channel_id: the channel read.
        messages: the page, oldest first.
        has_more: whether older (or newer, for ``after``) messages remain.
        reactions: reactions per messageId (see ``history_message``).
        reply_counts: replies per messageId of a thread root (see ``history_message``).
    """
    wire_messages = [history_message(msg, reactions, reply_counts) for msg in messages]
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
        code: a docs/protocol.md error code (an ``ErrorCode`` member or its string).
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
