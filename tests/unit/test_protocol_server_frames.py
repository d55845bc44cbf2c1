"""Tests for chime_actors.protocol.server_frames: each encoder's exact JSON."""

from __future__ import annotations

import json
from typing import Any

from chime_actors.errors import ProtocolError
from chime_actors.ids import format_message_id
from chime_actors.protocol import server_frames
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.events import PresenceStatus, ReactionOp
from chime_actors.records import ChangeKind, ChimeMessage, MessageChange

M1 = format_message_id(1)
M2 = format_message_id(2)

MSG = ChimeMessage(
    channel_id="general",
    message_id=M1,
    user_id="alice",
    content="hi 👋",
    created_at="2026-11-27T10:00:00.000Z",
    metadata=(("k", "v"),),
    client_msg_id="c-1",
)


def decode(text: str) -> Any:
    assert isinstance(text, str)
    return json.loads(text)


def test_connected() -> None:
    frame = decode(server_frames.connected("alice", "conn-1", ["general", "x"], 25000))
    assert frame == {
        "type": "connected",
        "userId": "alice",
        "connectionId": "conn-1",
        "channels": ["general", "x"],
        "heartbeatMs": 25000,
    }


def test_connected_with_unread() -> None:
    frame = decode(server_frames.connected("a", "c", ("general",), 1000, {"general": 3}))
    assert frame["unread"] == {"general": 3}


def test_ack() -> None:
    assert decode(server_frames.ack(MSG)) == {
        "type": "ack",
        "clientMsgId": "c-1",
        "channelId": "general",
        "messageId": M1,
        "createdAt": "2026-11-27T10:00:00.000Z",
    }


def test_ack_without_client_msg_id_is_null() -> None:
    msg = ChimeMessage("g", M1, "a", "x", "2026-11-27T10:00:00.000Z")
    assert decode(server_frames.ack(msg))["clientMsgId"] is None


def test_message_carries_the_wire_record() -> None:
    frame = decode(server_frames.message(MSG))
    assert frame == {"type": "message", "message": MSG.to_wire()}
    assert frame["message"]["content"] == "hi 👋"
    assert frame["message"]["metadata"] == {"k": "v"}


def test_unicode_is_sent_as_utf8_not_escaped() -> None:
    assert "👋" in server_frames.message(MSG)


def test_message_edited() -> None:
    edited = ChimeMessage(
        "general", M1, "alice", "new", "2026-11-27T10:00:00.000Z", "2026-11-27T10:01:00.000Z"
    )
    frame = decode(server_frames.message_edited(edited))
    assert frame["type"] == "message_edited"
    assert frame["message"]["editedAt"] == "2026-11-27T10:01:00.000Z"


def test_message_deleted() -> None:
    assert decode(server_frames.message_deleted("general", M1)) == {
        "type": "message_deleted",
        "channelId": "general",
        "messageId": M1,
    }


def test_reaction() -> None:
    assert decode(server_frames.reaction("g", M1, "👍", "bob", ReactionOp.REMOVE)) == {
        "type": "reaction",
        "channelId": "g",
        "messageId": M1,
        "emoji": "👍",
        "userId": "bob",
        "op": "remove",
    }


def test_changes_carry_their_event_id_and_the_requesters_request_id() -> None:
    edited = ChimeMessage("g", M1, "alice", "new", "2026-11-27T10:00:00.000Z", "t2")
    edit = MessageChange("g", M2, ChangeKind.EDIT, M1, "alice", "t2", message=edited)
    assert decode(server_frames.change(edit)) == {
        "type": "message_edited",
        "message": edited.to_wire(),
        "eventId": M2,
    }
    assert decode(server_frames.change(edit, "r1")) == {
        "type": "message_edited",
        "requestId": "r1",
        "message": edited.to_wire(),
        "eventId": M2,
    }
    delete = MessageChange("g", M2, ChangeKind.DELETE, M1, "alice", "t2")
    assert decode(server_frames.channel_event(delete)) == {
        "type": "message_deleted",
        "channelId": "g",
        "messageId": M1,
        "eventId": M2,
    }
    removed = MessageChange("g", M2, ChangeKind.REACTION_REMOVE, M1, "bob", "t2", emoji="👍")
    assert decode(server_frames.channel_event(removed)) == {
        "type": "reaction",
        "channelId": "g",
        "messageId": M1,
        "emoji": "👍",
        "userId": "bob",
        "op": "remove",
        "eventId": M2,
    }
    assert decode(server_frames.channel_event(MSG)) == {"type": "message", "message": MSG.to_wire()}


def test_subscribed_and_unsubscribed() -> None:
    assert decode(server_frames.subscribed(("x",))) == {"type": "subscribed", "channels": ["x"]}
    assert decode(server_frames.unsubscribed(["x", "y"])) == {
        "type": "unsubscribed",
        "channels": ["x", "y"],
    }


def test_history() -> None:
    second = ChimeMessage("general", M2, "bob", "yo", "2026-11-27T10:00:01.000Z")
    frame = decode(
        server_frames.history(
            "r1", "general", [MSG, second], True, reactions={M1: {"👍": ("alice", "bob")}}
        )
    )
    assert frame["type"] == "history"
    assert frame["requestId"] == "r1"
    assert frame["channelId"] == "general"
    assert frame["hasMore"] is True
    assert [m["messageId"] for m in frame["messages"]] == [M1, M2]
    assert frame["messages"][0]["reactions"] == {"👍": ["alice", "bob"]}
    assert frame["messages"][1]["reactions"] == {}
    assert [m["replyCount"] for m in frame["messages"]] == [0, 0]
    counted = decode(server_frames.history(None, "general", [MSG, second], False, {}, {M1: 3}))
    assert [m["replyCount"] for m in counted["messages"]] == [3, 0]


def test_history_without_request_id_omits_it() -> None:
    frame = decode(server_frames.history(None, "general", [], False))
    assert frame == {"type": "history", "channelId": "general", "messages": [], "hasMore": False}


def test_resumed_and_resume_failed() -> None:
    assert decode(server_frames.resumed("g", 3)) == {
        "type": "resumed",
        "channelId": "g",
        "count": 3,
    }
    assert decode(server_frames.resume_failed("g")) == {
        "type": "resume_failed",
        "channelId": "g",
        "reason": "too_many",
    }


def test_presence_changed() -> None:
    assert decode(server_frames.presence_changed("g", "alice", PresenceStatus.ONLINE)) == {
        "type": "presence_changed",
        "channelId": "g",
        "userId": "alice",
        "status": "online",
    }
    frame = decode(server_frames.presence_changed("g", "alice", PresenceStatus.OFFLINE))
    assert frame["status"] == "offline"


def test_presence() -> None:
    assert decode(server_frames.presence("r", "g", ["alice", "bob"])) == {
        "type": "presence",
        "requestId": "r",
        "channelId": "g",
        "online": ["alice", "bob"],
    }
    assert "requestId" not in decode(server_frames.presence(None, "g", []))


def test_typing() -> None:
    assert decode(server_frames.typing("g", "alice")) == {
        "type": "typing",
        "channelId": "g",
        "userId": "alice",
    }


def test_pong() -> None:
    assert decode(server_frames.pong()) == {"type": "pong"}


def test_error_omits_absent_optional_keys() -> None:
    assert decode(server_frames.error(ErrorCode.BAD_REQUEST, "nope")) == {
        "type": "error",
        "code": "bad_request",
        "message": "nope",
    }


def test_error_with_every_optional_key() -> None:
    frame = decode(
        server_frames.error(
            "rate_limited", "slow down", request_id="r", client_msg_id="c", retry_after_ms=1500
        )
    )
    assert frame == {
        "type": "error",
        "code": "rate_limited",
        "message": "slow down",
        "requestId": "r",
        "clientMsgId": "c",
        "retryAfterMs": 1500,
    }


def test_error_from_protocol_error() -> None:
    exc = ProtocolError(ErrorCode.TOO_LARGE, "too big", client_msg_id="c-9", close_code=4001)
    assert decode(server_frames.error_from(exc)) == {
        "type": "error",
        "code": "too_large",
        "message": "too big",
        "clientMsgId": "c-9",
    }
