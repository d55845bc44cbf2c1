"""How records travel over Redis: JSON, one publication per channel per batch.

Pure functions, no I/O. A publication is
``{"origin": "<host id>", "messages": [ChimeMessage wire objects, ...]}`` on topic
``channel:<channelId>``; ``origin`` lets a bridge skip what its own host published
(its gateways had those directly from the persister).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from chime_actors.errors import BusError
from chime_actors.ids import is_message_id
from chime_actors.records import ChimeMessage

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


def encode_publication(origin: str, messages: Iterable[ChimeMessage]) -> bytes:
    """One publication carrying ``messages`` (all of one channel)."""
    return orjson.dumps({"origin": origin, "messages": [m.to_wire() for m in messages]})


def decode_publication(payload: bytes | str) -> tuple[str, tuple[ChimeMessage, ...]]:
    """``(origin, messages)`` of a publication; ``BusError`` if it is malformed."""
    try:
        data = orjson.loads(payload)
        origin = data["origin"]
        messages = tuple(_message_from_wire(item) for item in data["messages"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BusError(f"malformed publication: {exc}") from exc
    if not isinstance(origin, str):
        raise BusError("malformed publication: origin is not a string")
    return origin, messages


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
    )
