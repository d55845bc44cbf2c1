from __future__ import annotations

import pytest

from chime_actors.bus.codec import (
    channel_of,
    decode_publication,
    encode_publication,
    topic_for,
)
from chime_actors.errors import BusError
from chime_actors.records import Attachment, ChangeKind, ChimeMessage, MessageChange


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
        _message(
            3,
            attachments=(
                Attachment("a" * 32, "report é.pdf", "application/pdf", 12345),
                Attachment("b" * 32, "x.txt", "text/plain", 1),
            ),
        ),
    )
    origin, decoded = decode_publication(encode_publication("host-a", messages))
    assert origin == "host-a"
    assert decoded == messages


def test_changes_round_trip_among_messages() -> None:
    edited = _message(1, edited_at="2026-11-27T10:00:05.000Z", thread_id=f"{9:016d}")
    events = (
        _message(1),
        MessageChange(
            "general", f"{2:016d}", ChangeKind.EDIT, f"{1:016d}", "alice", "t", message=edited
        ),
        MessageChange(
            "general", f"{3:016d}", ChangeKind.REACTION_ADD, f"{1:016d}", "bob", "t", emoji="👍"
        ),
        MessageChange(
            "general", f"{4:016d}", ChangeKind.REACTION_REMOVE, f"{1:016d}", "bob", "t", emoji="👍"
        ),
        MessageChange("general", f"{5:016d}", ChangeKind.DELETE, f"{1:016d}", "alice", "t"),
    )
    assert decode_publication(encode_publication("host-a", events)) == ("host-a", events)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"origin": "a", "messages": [{"change": "nope", "channelId": "g", "eventId":'
        b' "0000000000000002", "messageId": "0000000000000001", "userId": "u", "at": "t"}]}',
        b'{"origin": "a", "messages": [{"change": "reaction_add", "channelId": "g", "eventId":'
        b' "0000000000000002", "messageId": "0000000000000001", "userId": "u", "at": "t"}]}',
        b'{"origin": "a", "messages": [{"change": "edit", "channelId": "g", "eventId":'
        b' "0000000000000002", "messageId": "0000000000000001", "userId": "u", "at": "t"}]}',
        b'{"origin": "a", "messages": [{"change": "delete", "channelId": "g", "eventId":'
        b' "2", "messageId": "0000000000000001", "userId": "u", "at": "t"}]}',
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
