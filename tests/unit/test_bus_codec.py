from __future__ import annotations

import pytest

from chime_actors.bus.codec import (
    channel_of,
    decode_publication,
    encode_publication,
    topic_for,
)
from chime_actors.errors import BusError
from chime_actors.records import ChimeMessage


def _message(seq: int, **extra: object) -> ChimeMessage:
    return ChimeMessage(
        channel_id="general",
        message_id=f"{seq:016d}",
        user_id="alice",
        content=f"hello {seq} ✓",
        created_at="2026-11-27T10:00:00.000Z",
        **extra,  # type: ignore[arg-type]
    )


def test_topic_is_the_seeds_naming() -> None:
    assert topic_for("general") == "channel:general"
    assert channel_of(b"channel:a.b:c") == "a.b:c"
    with pytest.raises(BusError):
        channel_of("other:general")


def test_publication_round_trip_keeps_every_field() -> None:
    messages = (
        _message(1),
        _message(2, metadata=(("k", "v"),), thread_id=f"{1:016d}", client_msg_id="c-2"),
    )
    origin, decoded = decode_publication(encode_publication("host-a", messages))
    assert origin == "host-a"
    assert decoded == messages


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"origin": "a"}',
        b'{"origin": 1, "messages": []}',
        b'{"origin": "a", "messages": [{"channelId": "g"}]}',
        b'{"origin": "a", "messages": [{"channelId": "g", "messageId": "12", "userId": "u",'
        b' "content": "x", "createdAt": "t"}]}',
    ],
)
def test_malformed_publications_raise_bus_error(payload: bytes) -> None:
    with pytest.raises(BusError):
        decode_publication(payload)
