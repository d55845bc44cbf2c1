"""Server frames parse into typed, frozen client events; the core stays sans I/O."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

import chime_actors.client
from chime_actors.client.events import (
    Ack,
    Attachment,
    ChatMessage,
    Connected,
    Error,
    History,
    Message,
    MessageDeleted,
    MessageEdited,
    Pong,
    Presence,
    PresenceChanged,
    Reaction,
    Refreshed,
    Resumed,
    ResumeFailed,
    Subscribed,
    Typing,
    UnknownFrame,
    Unsubscribed,
    parse_event,
)

WIRE = {
    "channelId": "general",
    "channelName": None,
    "messageId": "0000000000000042",
    "userId": "alice",
    "content": "hi",
    "createdAt": "2026-11-27T10:00:00.000Z",
    "editedAt": None,
    "metadata": {"k": "v"},
    "threadId": None,
    "clientMsgId": "c-1",
}
MSG = ChatMessage(
    "general", "0000000000000042", "alice", "hi", "2026-11-27T10:00:00.000Z",
    metadata=(("k", "v"),), client_msg_id="c-1",
)  # fmt: skip


@pytest.mark.parametrize(
    ("frame", "event"),
    [
        (
            {"type": "connected", "userId": "a", "connectionId": "x", "channels": ["g"],
             "heartbeatMs": 25000, "unread": {"g": 3}},
            Connected("a", "x", ("g",), 25000, (("g", 3),)),
        ),
        ({"type": "message", "message": WIRE}, Message(MSG)),
        (
            {"type": "ack", "clientMsgId": None, "channelId": "g", "messageId": "1",
             "createdAt": "t"},
            Ack(None, "g", "1", "t"),
        ),
        (
            {"type": "error", "code": "rate_limited", "message": "slow", "clientMsgId": "c",
             "retryAfterMs": 300},
            Error("rate_limited", "slow", client_msg_id="c", retry_after_ms=300),
        ),
        ({"type": "subscribed", "channels": ["x"]}, Subscribed(("x",))),
        ({"type": "unsubscribed", "channels": ["x"]}, Unsubscribed(("x",))),
        ({"type": "resumed", "channelId": "g", "count": 3}, Resumed("g", 3)),
        ({"type": "resume_failed", "channelId": "g", "reason": "too_many"},
         ResumeFailed("g", "too_many")),
        ({"type": "message_edited", "message": WIRE}, MessageEdited(MSG)),
        ({"type": "message_deleted", "channelId": "g", "messageId": "1"},
         MessageDeleted("g", "1")),
        (
            {"type": "reaction", "channelId": "g", "messageId": "1", "emoji": "👍",
             "userId": "b", "op": "add"},
            Reaction("g", "1", "👍", "b", "add"),
        ),
        ({"type": "presence_changed", "channelId": "g", "userId": "b", "status": "online"},
         PresenceChanged("g", "b", "online")),
        ({"type": "presence", "requestId": "r", "channelId": "g", "online": ["a"]},
         Presence("r", "g", ("a",))),
        ({"type": "typing", "channelId": "g", "userId": "b"}, Typing("g", "b")),
        ({"type": "refreshed", "expiresAt": "t"}, Refreshed("t")),
        ({"type": "pong"}, Pong()),
    ],
)  # fmt: skip
def test_each_server_frame_parses_to_its_event(frame: dict[str, Any], event: object) -> None:
    assert parse_event(frame) == event


def test_history_messages_carry_reactions_and_attachments() -> None:
    wire = {
        **WIRE,
        "reactions": {"👍": ["bob", "carol"]},
        "attachments": [
            {"attachmentId": "a1", "filename": "f.txt", "contentType": "text/plain", "size": 3}
        ],
    }
    event = parse_event(
        {"type": "history", "requestId": "r1", "channelId": "general", "messages": [wire],
         "hasMore": True}
    )  # fmt: skip
    assert isinstance(event, History) and event.has_more and event.request_id == "r1"
    (msg,) = event.messages
    assert msg.reactions == (("👍", ("bob", "carol")),)
    assert msg.attachments == (Attachment("a1", "f.txt", "text/plain", 3),)
    assert msg.metadata_dict == {"k": "v"}


def test_an_uploads_answer_parses_with_its_sha256() -> None:
    answer = {
        "attachmentId": "a2",
        "filename": "f.png",
        "contentType": "image/png",
        "size": 9,
        "sha256": "ab" * 32,
    }
    assert Attachment.from_wire(answer) == Attachment("a2", "f.png", "image/png", 9, "ab" * 32)
    with pytest.raises(ValueError):
        Attachment.from_wire({**answer, "filename": None})


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "sparkle"},
        {"type": "ack", "channelId": "g"},
        {"type": "connected", "userId": "a", "connectionId": "x", "heartbeatMs": True},
        {"type": "message", "message": {**WIRE, "metadata": {"k": 1}}},
        {"type": 7},
        {},
    ],
)
def test_what_does_not_parse_is_an_unknown_frame(frame: dict[str, Any]) -> None:
    event = parse_event(frame)
    assert isinstance(event, UnknownFrame)
    assert dict(event.frame) == frame


def test_events_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MSG.content = "changed"  # type: ignore[misc]


def test_error_knows_a_not_supported_answer() -> None:
    assert Error("bad_request", "`presence` is not supported by this server yet").not_supported
    assert not Error("bad_request", "'channelId' is required").not_supported


SANS_IO = ("events", "state", "backoff")
FORBIDDEN = ("asyncio", "socket", "websockets", "orjson", "chime_actors.client.websocket_client")


def test_the_client_core_has_no_io_imports() -> None:
    package = Path(chime_actors.client.__file__).parent
    for stem in SANS_IO:
        path = package / f"{stem}.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert not any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN), (
                    f"{path.name} imports {name}"
                )
