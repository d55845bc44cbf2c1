"""Tests for chime_actors.protocol.connection: the state machine, with no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chime_actors.errors import ProtocolError
from chime_actors.ids import format_message_id
from chime_actors.protocol.codes import CloseCode, ErrorCode
from chime_actors.protocol.connection import (
    _CONTROL_TYPES,
    _TRANSITIONS,
    Close,
    ConnectionProtocol,
    ConnState,
    Output,
    Reply,
    Request,
)
from chime_actors.protocol.events import (
    CLIENT_EVENT_TYPES,
    Connect,
    Edit,
    History,
    PresenceQuery,
    Read,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from chime_actors.protocol.frames import DEFAULT_LIMITS, Limits

M1 = format_message_id(1)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def replies(outputs: list[Output]) -> list[Any]:
    """The decoded frames of the Reply outputs, asserting nothing else came out."""
    assert all(isinstance(o, Reply) for o in outputs), outputs
    return [json.loads(o.text) for o in outputs if isinstance(o, Reply)]


def single_error(outputs: list[Output]) -> Any:
    [error] = replies(outputs)
    assert error["type"] == "error"
    return error


def open_connection(
    channels: tuple[str, ...] = ("general", "random"), limits: Limits = DEFAULT_LIMITS
) -> ConnectionProtocol:
    proto = ConnectionProtocol(limits=limits, heartbeat_ms=1234)
    [request] = proto.receive_text(frame(type="connect", channels=list(channels)))
    assert isinstance(request, Request)
    proto.accept_connect("alice", channels, "conn-1")
    assert proto.state is ConnState.OPEN
    return proto


# --- the table ---------------------------------------------------------------------------


def test_every_client_event_is_handled_in_every_state() -> None:
    for state in ConnState:
        for event_type in CLIENT_EVENT_TYPES:
            assert (state, event_type) in _TRANSITIONS, (state, event_type)


def test_closed_handles_every_input() -> None:
    for event_type in CLIENT_EVENT_TYPES + _CONTROL_TYPES:
        assert (ConnState.CLOSED, event_type) in _TRANSITIONS


# --- handshake -------------------------------------------------------------------------------


def test_connect_becomes_a_request_then_connected() -> None:
    proto = ConnectionProtocol(heartbeat_ms=1234)
    assert proto.state is ConnState.AWAITING_CONNECT
    outputs = proto.receive_text(frame(type="connect", channels=["general"], userId="alice"))
    assert outputs == [Request(Connect(channels=("general",), user_id="alice"))]
    assert proto.state is ConnState.AWAITING_CONNECT

    outputs = proto.accept_connect("alice", ["general", "general"], "conn-1", unread={"general": 2})
    assert replies(outputs) == [
        {
            "type": "connected",
            "userId": "alice",
            "connectionId": "conn-1",
            "channels": ["general"],
            "heartbeatMs": 1234,
            "unread": {"general": 2},
        }
    ]
    assert proto.state.name == "OPEN"  # .name: mypy narrowed .state to AWAITING_CONNECT above
    assert proto.user_id == "alice"
    assert proto.connection_id == "conn-1"
    assert proto.channels == ("general",)


def test_seed_connect() -> None:
    proto = ConnectionProtocol()
    assert proto.receive_text('{"channels": ["general"]}') == [Request(Connect(("general",)))]


@pytest.mark.parametrize(
    ("text", "echo"),
    [
        ("hello", {}),
        (frame(type="ping"), {}),
        (frame(type="send", channelId="g", content="x", clientMsgId="c-1"), {"clientMsgId": "c-1"}),
        (frame(type="history", requestId="r1", channelId="g"), {"requestId": "r1"}),
        (frame(type="subscribe", channels=["g"]), {}),
        (frame(type="typing", channelId="g"), {}),
    ],
)
def test_frames_before_connect_need_a_handshake(text: str, echo: dict[str, str]) -> None:
    proto = ConnectionProtocol()
    error = single_error(proto.receive_text(text))
    assert error["code"] == "handshake_required"
    assert {k: error[k] for k in echo} == echo
    assert proto.state is ConnState.AWAITING_CONNECT


def test_bad_frame_before_connect_is_bad_request_not_close() -> None:
    proto = ConnectionProtocol()
    assert single_error(proto.receive_text("{]"))["code"] == "bad_request"
    assert proto.state is ConnState.AWAITING_CONNECT


def test_handshake_timeout_closes_with_4008() -> None:
    proto = ConnectionProtocol()
    [close] = proto.handshake_timed_out()
    assert isinstance(close, Close)
    assert close.code == CloseCode.HANDSHAKE_TIMEOUT
    assert int(close.code) == 4008
    assert proto.state is ConnState.CLOSED
    # An auth that completes after the timeout changes nothing.
    assert proto.accept_connect("alice", ["g"], "c") == []
    assert proto.state is ConnState.CLOSED


def test_handshake_timeout_after_connect_is_ignored() -> None:
    proto = open_connection()
    assert proto.handshake_timed_out() == []
    assert proto.state is ConnState.OPEN


def test_refused_connect_sends_error_then_closes() -> None:
    proto = ConnectionProtocol()
    proto.receive_text(frame(type="connect", token="bad"))
    outputs = proto.fail(ProtocolError("unauthorized", "token expired", close_code=4001))
    assert len(outputs) == 2
    assert json.loads(outputs[0].text)["code"] == "unauthorized"  # type: ignore[union-attr]
    assert outputs[1] == Close(4001, "token expired")
    assert proto.state is ConnState.CLOSED


def test_second_connect_is_bad_request() -> None:
    proto = open_connection()
    error = single_error(proto.receive_text(frame(type="connect", channels=["x"])))
    assert error["code"] == "bad_request"
    assert proto.state is ConnState.OPEN


def test_accepting_twice_is_a_caller_bug() -> None:
    proto = open_connection()
    with pytest.raises(RuntimeError, match="not allowed in state OPEN"):
        proto.accept_connect("alice", [], "conn-2")


def test_applying_a_subscribe_before_connect_is_a_caller_bug() -> None:
    with pytest.raises(RuntimeError):
        ConnectionProtocol().apply_subscribe(["x"])
    with pytest.raises(RuntimeError):
        ConnectionProtocol().apply_unsubscribe(["x"])


# --- open ----------------------------------------------------------------------------------


def test_ping_is_answered_without_the_actor() -> None:
    proto = open_connection()
    assert replies(proto.receive_text(frame(type="ping"))) == [{"type": "pong"}]


def test_send_with_channel() -> None:
    proto = open_connection()
    outputs = proto.receive_text(frame(type="send", channelId="random", content="hi"))
    assert outputs == [Request(Send(channel_id="random", content="hi"))]


@pytest.mark.parametrize(
    "text", ["hello", '{"content": "hello"}', '{"type":"send","content":"hello"}']
)
def test_send_without_channel_goes_to_first_connect_channel(text: str) -> None:
    proto = open_connection()
    assert proto.default_channel == "general"
    assert proto.receive_text(text) == [Request(Send(channel_id="general", content="hello"))]


def test_default_channel_is_the_requested_one_even_if_not_granted() -> None:
    proto = ConnectionProtocol()
    proto.receive_text(frame(channels=["secret", "general"]))
    proto.accept_connect("alice", ["general"], "c")
    assert single_error(proto.receive_text("hi"))["code"] == "not_subscribed"


def test_send_without_channel_when_connect_had_none() -> None:
    proto = open_connection(channels=())
    error = single_error(proto.receive_text(frame(content="x", clientMsgId="c-3")))
    assert error["code"] == "bad_request"
    assert error["clientMsgId"] == "c-3"


def test_send_to_unsubscribed_channel() -> None:
    proto = open_connection()
    error = single_error(
        proto.receive_text(frame(type="send", channelId="other", content="x", clientMsgId="c-4"))
    )
    assert error["code"] == "not_subscribed"
    assert error["clientMsgId"] == "c-4"


@pytest.mark.parametrize(
    "text",
    [frame(type="typing", channelId="other"), frame(type="read", channelId="other", messageId=M1)],
)
def test_typing_and_read_need_a_subscription(text: str) -> None:
    proto = open_connection()
    assert single_error(proto.receive_text(text))["code"] == "not_subscribed"


@pytest.mark.parametrize(
    "text",
    [
        frame(type="typing", channelId="secret"),
        frame(type="read", channelId="secret", messageId=M1),
        frame(type="send", channelId="secret", content="x"),
    ],
)
def test_typing_read_and_send_on_a_channel_not_granted_are_forbidden(text: str) -> None:
    """The grant is checked before the subscription: ``forbidden``, not ``not_subscribed``."""
    proto = ConnectionProtocol(may_access=lambda channel: channel != "secret")
    proto.receive_text(frame(type="connect", channels=["general"]))
    proto.accept_connect("alice", ["general"], "conn-1")
    assert single_error(proto.receive_text(text))["code"] == "forbidden"
    # A granted channel the connection is not in is still not_subscribed.
    other = text.replace("secret", "other")
    assert single_error(proto.receive_text(other))["code"] == "not_subscribed"


def test_typing_and_read_on_subscribed_channel() -> None:
    proto = open_connection()
    assert proto.receive_text(frame(type="typing", channelId="general")) == [
        Request(Typing("general"))
    ]
    assert proto.receive_text(frame(type="read", channelId="general", messageId=M1)) == [
        Request(Read("general", M1))
    ]


def test_history_presence_and_edit_may_name_any_channel() -> None:
    proto = open_connection()
    assert proto.receive_text(frame(type="history", requestId="r", channelId="other")) == [
        Request(History(request_id="r", channel_id="other"))
    ]
    assert proto.receive_text(frame(type="presence", channelId="other")) == [
        Request(PresenceQuery(request_id=None, channel_id="other"))
    ]
    edit = frame(type="edit", channelId="other", messageId=M1, content="x")
    assert proto.receive_text(edit) == [Request(Edit(None, "other", M1, "x"))]


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "delete", "requestId": "r", "channelId": "g", "messageId": M1},
        {"type": "react", "channelId": "g", "messageId": M1, "emoji": "👍", "op": "add"},
        {"type": "unsubscribe", "channels": ["g"]},
    ],
)
def test_other_requests_go_to_the_actor(fields: dict[str, Any]) -> None:
    [output] = open_connection().receive_text(json.dumps(fields))
    assert isinstance(output, Request)


def test_bad_frames_when_open_get_errors_and_keep_the_connection() -> None:
    proto = open_connection()
    for text, code in [
        ("{]", "bad_request"),
        (frame(type="nope"), "bad_request"),
        (frame(type="history", channelId="g", limit=True), "bad_request"),
        (frame(type="send", content="x" * 4001, clientMsgId="c-5"), "too_large"),
    ]:
        assert single_error(proto.receive_text(text))["code"] == code
    assert proto.state is ConnState.OPEN


def test_too_large_echoes_client_msg_id() -> None:
    proto = open_connection()
    error = single_error(proto.receive_text(frame(content="x" * 4001, clientMsgId="c-5")))
    assert error == {
        "type": "error",
        "code": "too_large",
        "message": error["message"],
        "clientMsgId": "c-5",
    }


def test_binary_frame_is_bad_request() -> None:
    proto = open_connection()
    assert single_error(proto.receive_binary(b"\x00\x01"))["code"] == "bad_request"
    assert proto.state is ConnState.OPEN
    assert single_error(ConnectionProtocol().receive_binary(b"x"))["code"] == "bad_request"


def test_oversized_frames_close_with_1009() -> None:
    limits = Limits(max_frame_bytes=10)
    proto = ConnectionProtocol(limits=limits)
    assert proto.receive_text("é" * 5) != []  # 10 bytes: fine (handshake_required)
    [close] = proto.receive_text("é" * 6)  # 12 bytes, only 6 characters
    assert isinstance(close, Close)
    assert close.code == CloseCode.MESSAGE_TOO_BIG
    assert int(close.code) == 1009
    assert proto.state is ConnState.CLOSED

    proto = ConnectionProtocol(limits=limits)
    assert proto.receive_binary(b"x" * 11) == [Close(1009, "frame of 11 bytes exceeds 10")]


def test_oversized_frame_when_open_closes() -> None:
    proto = open_connection(limits=Limits(max_frame_bytes=100))
    [close] = proto.receive_text("x" * 101)
    assert isinstance(close, Close)
    assert close.code == 1009
    assert proto.state is ConnState.CLOSED


def test_failure_without_close_code_keeps_the_connection() -> None:
    proto = open_connection()
    error = ProtocolError("unavailable", "store down", client_msg_id="c-6")
    assert replies(proto.fail(error)) == [
        {"type": "error", "code": "unavailable", "message": "store down", "clientMsgId": "c-6"}
    ]
    assert proto.state is ConnState.OPEN


def test_close_reason_is_truncated_to_fit_a_close_frame() -> None:
    proto = open_connection()
    outputs = proto.fail(ProtocolError("unauthorized", "é" * 100, close_code=4001))
    close = outputs[-1]
    assert isinstance(close, Close)
    assert len(close.reason.encode()) <= 123


# --- subscriptions -------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_round_trip() -> None:
    proto = open_connection()
    outputs = proto.receive_text(frame(type="subscribe", channels=["x", "general"]))
    assert outputs == [Request(Subscribe(("x", "general")))]
    assert proto.channels == ("general", "random")  # unchanged until the actor reports

    assert replies(proto.apply_subscribe(["x", "general"])) == [
        {"type": "subscribed", "channels": ["x", "general"]}
    ]
    assert list(proto.channels) == ["general", "random", "x"]
    assert proto.receive_text(frame(type="send", channelId="x", content="hi")) == [
        Request(Send("x", "hi"))
    ]

    outputs = proto.receive_text(frame(type="unsubscribe", channels=["general", "nope"]))
    assert outputs == [Request(Unsubscribe(("general", "nope")))]
    assert replies(proto.apply_unsubscribe(["general", "nope"])) == [
        {"type": "unsubscribed", "channels": ["general", "nope"]}
    ]
    assert proto.channels == ("random", "x")
    assert not proto.is_subscribed("general")
    assert single_error(proto.receive_text("hi"))["code"] == "not_subscribed"


def test_subscribe_beyond_the_cap_is_bad_request() -> None:
    proto = open_connection(channels=("a", "b"), limits=Limits(max_channels_per_connection=3))
    # Re-subscribing to held channels does not count against the cap.
    assert isinstance(proto.receive_text(frame(type="subscribe", channels=["a", "c"]))[0], Request)
    error = single_error(proto.receive_text(frame(type="subscribe", channels=["c", "d"])))
    assert error["code"] == "bad_request"
    assert "at most 3" in error["message"]


def test_apply_subscribe_enforces_the_cap_as_a_last_line() -> None:
    proto = open_connection(channels=("a", "b"), limits=Limits(max_channels_per_connection=3))
    outputs = replies(proto.apply_subscribe(["c", "d"]))
    assert outputs[0] == {"type": "subscribed", "channels": ["c"]}
    assert outputs[1]["code"] == "bad_request"
    assert proto.channels == ("a", "b", "c")
    [only_error] = replies(proto.apply_subscribe(["e"]))
    assert only_error["type"] == "error"


def test_apply_subscribe_with_nothing() -> None:
    proto = open_connection()
    assert replies(proto.apply_subscribe([])) == [{"type": "subscribed", "channels": []}]


# --- closed --------------------------------------------------------------------------------


def test_closed_ignores_everything() -> None:
    proto = open_connection()
    proto.close()
    assert proto.state is ConnState.CLOSED
    for text in ["hello", frame(type="ping"), "{]", frame(type="connect"), "x" * 100_000]:
        assert proto.receive_text(text) == []
    assert proto.receive_binary(b"x") == []
    assert proto.accept_connect("a", [], "c") == []
    assert proto.apply_subscribe(["x"]) == []
    assert proto.apply_unsubscribe(["general"]) == []
    assert proto.fail(ProtocolError("internal", "boom", close_code=1011)) == []
    assert proto.handshake_timed_out() == []
    proto.close()
    assert proto.state is ConnState.CLOSED


def test_close_before_connect() -> None:
    proto = ConnectionProtocol()
    proto.close()
    assert proto.receive_text(frame(type="connect")) == []


def test_error_code_enum_matches_wire_strings() -> None:
    assert ErrorCode("not_subscribed") is ErrorCode.NOT_SUBSCRIBED
    assert str(ErrorCode.HANDSHAKE_REQUIRED) == "handshake_required"
