"""Presence and typing on the Redis bus: topics and JSON events. Pure, no I/O.

One topic per channel, ``presence:<channelId>``, beside the channel's message
topic (``channel:<channelId>``, ``bus/codec.py``): a bridge subscribes to both for
exactly the channels its host has subscribers in. Events, each from one host
(``origin``, its bridge's id):

=====================================================================  ==========================
``{"origin", "seq", "kind": "presence", "userId", "online": bool}``    the host's first
                                                                       connection of the user
                                                                       joined, or its last left
``{"origin", "seq", "kind": "state", "users": [...]}``                 the host holds exactly
                                                                       these users here (after
                                                                       the host resynced)
``{"origin", "kind": "typing", "userId"}``                             the user typed
=====================================================================  ==========================

``seq`` counts one host's presence events (all channels); a bridge that has just
read a channel's state from Redis skips the events it already saw in that read.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from chime_actors.errors import BusError

TOPIC_PREFIX = "presence:"


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A host's user came online or went offline in a channel."""

    origin: str
    seq: int
    user_id: str
    online: bool


@dataclass(frozen=True, slots=True)
class StateEvent:
    """A host holds exactly ``users`` in a channel."""

    origin: str
    seq: int
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TypingPublication:
    """A host's user typed in a channel."""

    origin: str
    user_id: str


BusEvent = PresenceEvent | StateEvent | TypingPublication


def presence_topic(channel_id: str) -> str:
    """The presence topic of a channel."""
    return TOPIC_PREFIX + channel_id


def is_presence_topic(topic: str | bytes) -> bool:
    """True for a ``presence:`` topic."""
    prefix = TOPIC_PREFIX.encode() if isinstance(topic, bytes) else TOPIC_PREFIX
    return topic.startswith(prefix)  # type: ignore[arg-type]


def channel_of_presence_topic(topic: str | bytes) -> str:
    """The channel id of a presence topic."""
    text = topic.decode() if isinstance(topic, bytes) else topic
    if not text.startswith(TOPIC_PREFIX):
        raise BusError(f"not a presence topic: {text!r}")
    return text[len(TOPIC_PREFIX) :]


def encode_event(event: BusEvent) -> bytes:
    """The JSON of one event."""
    if isinstance(event, PresenceEvent):
        return orjson.dumps(
            {
                "origin": event.origin,
                "seq": event.seq,
                "kind": "presence",
                "userId": event.user_id,
                "online": event.online,
            }
        )
    if isinstance(event, StateEvent):
        return orjson.dumps(
            {"origin": event.origin, "seq": event.seq, "kind": "state", "users": list(event.users)}
        )
    return orjson.dumps({"origin": event.origin, "kind": "typing", "userId": event.user_id})


def decode_event(payload: bytes | str) -> BusEvent:
    """The event of a publication; ``BusError`` if it is malformed."""
    try:
        data = orjson.loads(payload)
        origin = data["origin"]
        kind = data["kind"]
        if not isinstance(origin, str):
            raise TypeError("origin is not a string")
        if kind == "typing":
            return TypingPublication(origin, _text(data["userId"]))
        seq = data["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError("seq is not an integer")
        if kind == "presence":
            online = data["online"]
            if not isinstance(online, bool):
                raise TypeError("online is not a boolean")
            return PresenceEvent(origin, seq, _text(data["userId"]), online)
        if kind == "state":
            return StateEvent(origin, seq, tuple(_text(u) for u in data["users"]))
        raise ValueError(f"unknown kind {kind!r}")
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BusError(f"malformed presence event: {exc}") from exc


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value
