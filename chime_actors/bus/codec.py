"""How records travel over Redis: JSON, one publication per channel per batch.

Pure functions, no I/O. A publication is
``{"origin": "<host id>", "messages": [event, ...]}`` on topic
``channel:<channelId>``; ``origin`` lets a bridge skip what its own host published
(its gateways had those directly from the persister). An event is a ChimeMessage
wire object (``attachments`` included), or a change of one (``MessageChange``), told apart by its
``change`` key::

    {"change": "edit", "channelId": ..., "eventId": ..., "messageId": ..., "userId": ...,
     "at": ..., "message": {ChimeMessage}}      (``emoji`` instead of ``message``
                                                 for reactions; neither for deletes)

A bridge of an older version reading a change fails on it as malformed
(counted, logged), so upgrade every host before using edits and reactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from chime_actors.errors import BusError
from chime_actors.ids import is_message_id
from chime_actors.records import Attachment, ChangeKind, ChannelEvent, ChimeMessage, MessageChange

TOPIC_PREFIX = "channel:"


def topic_for(channel_id: str) -> str:
    """The Redis Pub/Sub topic of a channel (the seed's naming)."""
    return TOPIC_PREFIX + channel_id


def channel_of(topic: str | bytes) -> str:
    """The channel id of a topic."""
    text = topic.decode() if isinstance(topic, bytes) else topic
    if not text.startswith(TOPIC_PREFIX):
        raise BusError(f"not a channel topic: {text!r}")
    return text[len(TOPIC_PREFIX) :]


def encode_publication(origin: str, messages: Iterable[ChannelEvent]) -> bytes:
    """One publication carrying ``messages`` (events all of one channel)."""
    return orjson.dumps({"origin": origin, "messages": [_event_to_wire(m) for m in messages]})


def decode_publication(payload: bytes | str) -> tuple[str, tuple[ChannelEvent, ...]]:
    """``(origin, events)`` of a publication; ``BusError`` if it is malformed."""
    try:
        data = orjson.loads(payload)
        origin = data["origin"]
        messages = tuple(_event_from_wire(item) for item in data["messages"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BusError(f"malformed publication: {exc}") from exc
    if not isinstance(origin, str):
        raise BusError("malformed publication: origin is not a string")
    return origin, messages


def _event_to_wire(event: ChannelEvent) -> dict[str, Any]:
    if isinstance(event, ChimeMessage):
        return event.to_wire()
    wire: dict[str, Any] = {
        "change": event.kind.value,
        "channelId": event.channel_id,
        "eventId": event.event_id,
        "messageId": event.message_id,
        "userId": event.user_id,
        "at": event.at,
    }
    if event.emoji is not None:
        wire["emoji"] = event.emoji
    if event.message is not None:
        wire["message"] = event.message.to_wire()
    return wire


def _event_from_wire(item: Mapping[str, Any]) -> ChannelEvent:
    if "change" not in item:
        return _message_from_wire(item)
    for key in ("eventId", "messageId"):
        if not is_message_id(item[key]):
            raise ValueError(f"bad {key} {item[key]!r}")
    kind = ChangeKind(item["change"])
    message = _message_from_wire(item["message"]) if kind is ChangeKind.EDIT else None
    emoji = item.get("emoji")
    if kind in (ChangeKind.REACTION_ADD, ChangeKind.REACTION_REMOVE) and not isinstance(emoji, str):
        raise ValueError("a reaction without an emoji")
    return MessageChange(
        channel_id=str(item["channelId"]),
        event_id=item["eventId"],
        kind=kind,
        message_id=item["messageId"],
        user_id=str(item["userId"]),
        at=str(item["at"]),
        emoji=emoji if isinstance(emoji, str) else None,
        message=message,
    )


def _message_from_wire(item: Mapping[str, Any]) -> ChimeMessage:
    message_id = item["messageId"]
    if not is_message_id(message_id):
        raise ValueError(f"bad messageId {message_id!r}")
    metadata = item.get("metadata") or {}
    return ChimeMessage(
        channel_id=str(item["channelId"]),
        message_id=message_id,
        user_id=str(item["userId"]),
        content=str(item["content"]),
        created_at=str(item["createdAt"]),
        edited_at=item.get("editedAt"),
        metadata=tuple((str(k), str(v)) for k, v in metadata.items()),
        thread_id=item.get("threadId"),
        client_msg_id=item.get("clientMsgId"),
        channel_name=item.get("channelName"),
        attachments=tuple(
            Attachment(
                attachment_id=str(entry["attachmentId"]),
                filename=str(entry["filename"]),
                content_type=str(entry["contentType"]),
                size=int(entry["size"]),
            )
            for entry in item.get("attachments") or ()
        ),
    )
