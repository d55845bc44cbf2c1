"""Tests for the presence events on the Redis bus (pure JSON)."""

from __future__ import annotations

import pytest

from chime_actors.errors import BusError
from chime_actors.presence.codec import (
    PresenceEvent,
    StateEvent,
    TypingPublication,
    channel_of_presence_topic,
    decode_event,
    encode_event,
    is_presence_topic,
    presence_topic,
)


@pytest.mark.parametrize(
    "event",
    [
        PresenceEvent("h1", 7, "alice", True),
        PresenceEvent("h1", 8, "a:b", False),
        StateEvent("h2", 9, ("bob", "carol")),
        StateEvent("h2", 10, ()),
        TypingPublication("h3", "dave"),
    ],
)
def test_events_round_trip(event: object) -> None:
    assert decode_event(encode_event(event)) == event  # type: ignore[arg-type]


def test_topics_are_per_channel_and_apart_from_the_message_topics() -> None:
    assert presence_topic("a:b") == "presence:a:b"
    assert channel_of_presence_topic(b"presence:a:b") == "a:b"
    assert is_presence_topic(b"presence:x") and is_presence_topic("presence:x")
    assert not is_presence_topic(b"channel:x")
    with pytest.raises(BusError):
        channel_of_presence_topic("channel:x")


@pytest.mark.parametrize(
    "payload",
    [
        b"{",
        b"[]",
        b'{"origin": 1, "kind": "typing", "userId": "a"}',
        b'{"origin": "h", "kind": "presence", "seq": "1", "userId": "a", "online": true}',
        b'{"origin": "h", "kind": "presence", "seq": true, "userId": "a", "online": true}',
        b'{"origin": "h", "kind": "presence", "seq": 1, "userId": "a", "online": 1}',
        b'{"origin": "h", "kind": "state", "seq": 1, "users": [1]}',
        b'{"origin": "h", "kind": "gossip", "seq": 1}',
        b'{"origin": "h", "kind": "typing"}',
    ],
)
def test_malformed_events_are_bus_errors(payload: bytes) -> None:
    with pytest.raises(BusError):
        decode_event(payload)
