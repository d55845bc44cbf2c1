"""Tests for chime_actors.protocol.frames: every frame type and every parse error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chime_actors.errors import ProtocolError
from chime_actors.ids import format_message_id
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.events import (
    Connect,
    Delete,
    Edit,
    History,
    Ping,
    PresenceQuery,
    React,
    ReactionOp,
    Read,
    Send,
    Subscribe,
    Typing,
    Unsubscribe,
)
from chime_actors.protocol.frames import Limits, parse_binary, parse_frame

M1 = format_message_id(1)
M2 = format_message_id(2)
LIMITS = Limits()


def parse(frame: dict[str, Any] | str, limits: Limits = LIMITS) -> object:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    return parse_frame(text, limits=limits)


def parse_error(frame: dict[str, Any] | str, limits: Limits = LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(frame, limits)
    return info.value


# --- seed forms --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["hello", "[1,2]", "42", "  hi there ", "null", '"quoted"', "}{"])
def test_plain_text_is_a_send_of_the_whole_text(text: str) -> None:
    assert parse(text) == Send(channel_id=None, content=text)


def test_plain_text_keeps_unicode() -> None:
    text = "héllo 👋 世界"
    assert parse(text) == Send(channel_id=None, content=text)


def test_seed_send_object() -> None:
    assert parse({"content": "x"}) == Send(channel_id=None, content="x")


def test_seed_connect_object() -> None:
    assert parse({"channels": ["general", "random"]}) == Connect(channels=("general", "random"))


def test_seed_with_channels_and_content_is_a_connect() -> None:
    assert isinstance(parse({"channels": ["a"], "content": "x"}), Connect)


def test_leading_json_whitespace_before_brace_means_json() -> None:
    assert parse(' \n\t{"type": "ping"}') == Ping()


def test_object_without_type_channels_or_content() -> None:
    error = parse_error({"foo": 1})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "type" in error.message


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_blank_plain_text_is_bad_request(text: str) -> None:
    assert parse_error(text).code == ErrorCode.BAD_REQUEST


def test_plain_text_over_the_limit_is_too_large() -> None:
    limits = Limits(max_content_chars=5)
    assert parse("a" * 5, limits) == Send(None, "a" * 5)
    assert parse_error("a" * 6, limits).code == ErrorCode.TOO_LARGE


def test_content_limit_counts_characters_not_bytes() -> None:
    limits = Limits(max_content_chars=3)
    assert parse("👋👋👋", limits) == Send(None, "👋👋👋")


def test_plain_text_with_lone_surrogate_is_bad_request() -> None:
    assert parse_error("abc\ud800").code == ErrorCode.BAD_REQUEST


# --- malformed JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["{", "{]", "{'type': 'ping'}", '{"type": "ping"', '{"type": "ping"} x', "{}{}", '{"a": NaN}'],
)
def test_brace_prefixed_non_json_is_bad_request(text: str) -> None:
    error = parse_error(text)
    assert error.code == ErrorCode.BAD_REQUEST
    assert "JSON" in error.message


def test_deeply_nested_json_is_bad_request() -> None:
    text = '{"a":' + "[" * 2000 + "]" * 2000 + "}"
    assert parse_error(text).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("value", [None, 1, True, [], {}])
def test_non_string_type(value: object) -> None:
    if value is None:
        # null is "absent": with neither channels nor content it is unidentifiable.
        assert parse_error({"type": None}).code == ErrorCode.BAD_REQUEST
        return
    error = parse_error({"type": value})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "'type'" in error.message


@pytest.mark.parametrize("frame_type", ["nope", "Send", "PING", ""])
def test_unknown_type(frame_type: str) -> None:
    error = parse_error({"type": frame_type, "requestId": "r9"})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "unknown frame type" in error.message
    assert error.request_id == "r9"


def test_binary_is_bad_request() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_binary()
    assert info.value.code == ErrorCode.BAD_REQUEST


# --- connect -------------------------------------------------------------------------------


def test_full_connect() -> None:
    frame = {
        "type": "connect",
        "channels": ["general", "dev.ops", "a:b-c_d"],
        "userId": "alice@example.com",
        "token": "t.o.k",
        "resume": {"general": M1, "dev.ops": M2},
    }
    assert parse(frame) == Connect(
        channels=("general", "dev.ops", "a:b-c_d"),
        user_id="alice@example.com",
        token="t.o.k",
        resume=(("general", M1), ("dev.ops", M2)),
    )


def test_connect_optional_fields_may_be_null_or_absent() -> None:
    expected = Connect(channels=())
    assert parse({"type": "connect"}) == expected
    nulls = {"type": "connect", "channels": None, "userId": None, "token": None, "resume": None}
    assert parse(nulls) == expected


def test_connect_dedupes_channels_in_order() -> None:
    event = parse({"type": "connect", "channels": ["b", "a", "b", "c", "a"]})
    assert event == Connect(channels=("b", "a", "c"))


def test_connect_channel_cap_counts_after_dedupe() -> None:
    limits = Limits(max_channels_per_connection=2)
    assert parse({"channels": ["a", "b", "a"]}, limits) == Connect(channels=("a", "b"))
    assert parse_error({"channels": ["a", "b", "c"]}, limits).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "channel", ["", "a" * 65, "has space", "slash/no", "é", "tab\t", "new\n", 5, None, ["a"]]
)
def test_connect_rejects_bad_channel_ids(channel: object) -> None:
    error = parse_error({"type": "connect", "channels": [channel]})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "channels" in error.message


def test_channel_id_of_64_chars_is_fine() -> None:
    assert parse({"channels": ["a" * 64]}) == Connect(channels=("a" * 64,))


@pytest.mark.parametrize("channels", ["general", {"general": 1}, 3])
def test_connect_channels_must_be_array(channels: object) -> None:
    error = parse_error({"type": "connect", "channels": channels})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "'channels' must be an array" in error.message


@pytest.mark.parametrize("user_id", ["", "a" * 65, "bad user", "ü", "a/b", 7])
def test_connect_rejects_bad_user_ids(user_id: object) -> None:
    error = parse_error({"type": "connect", "userId": user_id})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "userId" in error.message


def test_connect_token_must_be_string() -> None:
    assert "token" in parse_error({"type": "connect", "token": 1}).message


@pytest.mark.parametrize(
    "resume",
    [["general"], "x", {"general": "1"}, {"general": 1}, {"bad channel": M1}, {"g": M1 + "0"}],
)
def test_connect_rejects_bad_resume(resume: object) -> None:
    error = parse_error({"type": "connect", "channels": ["general"], "resume": resume})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "resume" in error.message


def test_connect_resume_is_capped() -> None:
    limits = Limits(max_channels_per_connection=1)
    error = parse_error({"type": "connect", "resume": {"a": M1, "b": M1}}, limits)
    assert error.code == ErrorCode.BAD_REQUEST


# --- send ----------------------------------------------------------------------------------


def test_full_send() -> None:
    frame = {
        "type": "send",
        "channelId": "general",
        "content": "hello",
        "clientMsgId": "c-1",
        "metadata": {"b": "2", "a": "1"},
        "threadId": M1,
    }
    assert parse(frame) == Send(
        channel_id="general",
        content="hello",
        client_msg_id="c-1",
        metadata=(("b", "2"), ("a", "1")),
        thread_id=M1,
    )


def test_send_optional_fields_null() -> None:
    frame = {
        "type": "send",
        "channelId": None,
        "content": "x",
        "clientMsgId": None,
        "metadata": None,
        "threadId": None,
    }
    assert parse(frame) == Send(channel_id=None, content="x")


def test_send_ignores_unknown_fields() -> None:
    assert parse({"type": "send", "content": "x", "future": [1]}) == Send(None, "x")


def test_send_unicode_content_survives() -> None:
    content = "Grüße 🎉 — \u0000 nul and \u2028 separators"
    assert parse({"type": "send", "content": content}) == Send(None, content)


@pytest.mark.parametrize("content", [None, 1, ["x"], {"x": 1}, True])
def test_send_content_required_string(content: object) -> None:
    error = parse_error({"type": "send", "content": content, "clientMsgId": "c-7"})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "'content'" in error.message
    assert error.client_msg_id == "c-7"


@pytest.mark.parametrize("content", ["", "   ", "\n"])
def test_send_blank_content(content: str) -> None:
    assert parse_error({"type": "send", "content": content}).code == ErrorCode.BAD_REQUEST


def test_send_oversize_content_is_too_large_and_echoes_client_msg_id() -> None:
    error = parse_error({"type": "send", "content": "x" * 4001, "clientMsgId": "c-2"})
    assert error.code == ErrorCode.TOO_LARGE
    assert error.client_msg_id == "c-2"
    assert parse({"type": "send", "content": "x" * 4000}) == Send(None, "x" * 4000)


A1 = "0123456789abcdef" * 2
A2 = "f" * 32


def test_send_lists_attachment_ids_in_order_once_each() -> None:
    frame = {"type": "send", "content": "x", "attachments": [A2, A1, A2]}
    assert parse(frame) == Send(None, "x", attachments=(A2, A1))
    assert parse({"type": "send", "content": "x", "attachments": []}) == Send(None, "x")
    assert parse({"type": "send", "content": "x", "attachments": None}) == Send(None, "x")


def test_send_with_ten_attachments_passes_and_eleven_is_bad_request() -> None:
    ids = [f"{i:032x}" for i in range(11)]
    assert parse({"type": "send", "content": "x", "attachments": ids[:10]}) == Send(
        None, "x", attachments=tuple(ids[:10])
    )
    error = parse_error({"type": "send", "content": "x", "clientMsgId": "c-11", "attachments": ids})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "at most 10" in error.message
    assert error.client_msg_id == "c-11"


@pytest.mark.parametrize(
    "attachments",
    [A1, {"id": A1}, [1], [None], [A1.upper()], [A1 + "0"], ["../../etc/passwd"], [[A1]]],
    ids=["string", "object", "number", "null", "upper", "long", "path", "nested"],
)
def test_send_bad_attachments_are_bad_request(attachments: object) -> None:
    error = parse_error(
        {"type": "send", "content": "x", "clientMsgId": "c-a", "attachments": attachments}
    )
    assert error.code == ErrorCode.BAD_REQUEST
    assert "attachments" in error.message
    assert error.client_msg_id == "c-a"


def test_send_bad_channel_id() -> None:
    error = parse_error({"type": "send", "channelId": "no spaces", "content": "x"})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "channelId" in error.message


@pytest.mark.parametrize("client_msg_id", [1, "", "c" * 129])
def test_send_bad_client_msg_id(client_msg_id: object) -> None:
    error = parse_error({"type": "send", "content": "x", "clientMsgId": client_msg_id})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "clientMsgId" in error.message


def test_error_echoes_only_string_ids() -> None:
    error = parse_error({"type": "send", "content": "x", "clientMsgId": 5, "requestId": [1]})
    assert error.client_msg_id is None
    assert error.request_id is None


@pytest.mark.parametrize(
    "metadata",
    [
        ["a"],
        "a=b",
        {"a": 1},
        {"a": None},
        {"a": {"b": "c"}},
        {str(i): "v" for i in range(17)},
        {"a": "v" * 257},
        {"k" * 3000: "v"},
        {"k" * 65: "v"},
        {"": "v"},
        {"a b": "v"},
        {"ключ": "v"},
        {"a\n": "v"},
    ],
)
def test_send_bad_metadata(metadata: object) -> None:
    error = parse_error({"type": "send", "content": "x", "metadata": metadata})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "metadata" in error.message


def test_send_metadata_at_the_limits() -> None:
    metadata = {str(i): "v" * 256 for i in range(15)} | {"A-z_0.9:" + "k" * 56: "v"}
    event = parse({"type": "send", "content": "x", "metadata": metadata})
    assert isinstance(event, Send)
    assert dict(event.metadata) == metadata


@pytest.mark.parametrize("thread_id", ["1", 1, "x" * 16, "-" + M1[1:]])
def test_send_bad_thread_id(thread_id: object) -> None:
    error = parse_error({"type": "send", "content": "x", "threadId": thread_id})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "threadId" in error.message


# --- subscribe / unsubscribe -------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_type", "cls"), [("subscribe", Subscribe), ("unsubscribe", Unsubscribe)]
)
def test_subscribe_and_unsubscribe(frame_type: str, cls: type[Subscribe | Unsubscribe]) -> None:
    assert parse({"type": frame_type, "channels": ["x", "y", "x"]}) == cls(channels=("x", "y"))
    assert parse({"type": frame_type, "channels": []}) == cls(channels=())
    assert parse_error({"type": frame_type}).code == ErrorCode.BAD_REQUEST
    assert parse_error({"type": frame_type, "channels": "x"}).code == ErrorCode.BAD_REQUEST
    assert parse_error({"type": frame_type, "channels": ["x y"]}).code == ErrorCode.BAD_REQUEST


# --- history -------------------------------------------------------------------------------


def test_full_history() -> None:
    frame = {
        "type": "history",
        "requestId": "r1",
        "channelId": "general",
        "before": M2,
        "after": M1,
        "limit": 10,
        "threadId": M1,
    }
    assert parse(frame) == History(
        request_id="r1", channel_id="general", before=M2, after=M1, limit=10, thread_id=M1
    )


def test_history_defaults() -> None:
    assert parse({"type": "history", "channelId": "general"}) == History(
        request_id=None, channel_id="general", before=None, after=None, limit=50, thread_id=None
    )
    assert parse({"type": "history", "channelId": "g", "limit": None}) == History(None, "g")


def test_history_default_limit_is_configurable() -> None:
    event = parse({"type": "history", "channelId": "g"}, Limits(history_default_limit=7))
    assert isinstance(event, History)
    assert event.limit == 7


@pytest.mark.parametrize("limit", [1, 100])
def test_history_limit_bounds_accepted(limit: int) -> None:
    event = parse({"type": "history", "channelId": "g", "limit": limit})
    assert isinstance(event, History)
    assert event.limit == limit


@pytest.mark.parametrize("limit", [0, 101, -1, True, False, 10.0, 10.5, "10", [10], 2**70])
def test_history_bad_limit(limit: object) -> None:
    error = parse_error({"type": "history", "requestId": "r2", "channelId": "g", "limit": limit})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "'limit'" in error.message
    assert error.request_id == "r2"


@pytest.mark.parametrize("field", ["before", "after", "threadId"])
def test_history_bad_message_ids(field: str) -> None:
    error = parse_error({"type": "history", "channelId": "g", field: "abc"})
    assert error.code == ErrorCode.BAD_REQUEST
    assert field in error.message


def test_history_requires_channel() -> None:
    error = parse_error({"type": "history", "requestId": "r3"})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "channelId" in error.message
    assert error.request_id == "r3"


@pytest.mark.parametrize("request_id", [1, "", "r" * 129])
def test_history_bad_request_id(request_id: object) -> None:
    error = parse_error({"type": "history", "channelId": "g", "requestId": request_id})
    assert error.code == ErrorCode.BAD_REQUEST
    assert "requestId" in error.message


# --- the rest ------------------------------------------------------------------------------


def test_ping() -> None:
    assert parse({"type": "ping"}) == Ping()


def test_edit() -> None:
    frame = {"type": "edit", "requestId": "r", "channelId": "g", "messageId": M1, "content": "new"}
    assert parse(frame) == Edit(request_id="r", channel_id="g", message_id=M1, content="new")


def test_edit_content_rules() -> None:
    base = {"type": "edit", "requestId": "r", "channelId": "g", "messageId": M1}
    too_large = parse_error({**base, "content": "x" * 4001})
    assert too_large.code == ErrorCode.TOO_LARGE
    assert too_large.request_id == "r"
    assert parse_error({**base, "content": ""}).code == ErrorCode.BAD_REQUEST
    assert parse_error(base).code == ErrorCode.BAD_REQUEST
    assert parse_error({**base, "content": "x", "messageId": "1"}).code == ErrorCode.BAD_REQUEST


def test_delete() -> None:
    frame = {"type": "delete", "requestId": "r", "channelId": "g", "messageId": M1}
    assert parse(frame) == Delete(request_id="r", channel_id="g", message_id=M1)
    assert parse_error({**frame, "messageId": None}).code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("op", "expected"), [("add", ReactionOp.ADD), ("remove", ReactionOp.REMOVE)]
)
def test_react(op: str, expected: ReactionOp) -> None:
    frame = {"type": "react", "channelId": "g", "messageId": M1, "emoji": "👍", "op": op}
    assert parse(frame) == React(channel_id="g", message_id=M1, emoji="👍", op=expected)
    with_id = parse({**frame, "requestId": "r9"})
    assert with_id == React("g", M1, "👍", expected, request_id="r9")


@pytest.mark.parametrize(
    "changes",
    [{"op": "toggle"}, {"op": None}, {"op": 1}, {"emoji": ""}, {"emoji": " "}, {"emoji": None}],
)
def test_react_bad_fields(changes: dict[str, object]) -> None:
    frame = {"type": "react", "channelId": "g", "messageId": M1, "emoji": "👍", "op": "add"}
    assert parse_error({**frame, **changes}).code == ErrorCode.BAD_REQUEST


def test_presence_query() -> None:
    frame = {"type": "presence", "requestId": "r", "channelId": "g"}
    assert parse(frame) == PresenceQuery(request_id="r", channel_id="g")


def test_typing() -> None:
    assert parse({"type": "typing", "channelId": "g"}) == Typing(channel_id="g")
    assert parse_error({"type": "typing"}).code == ErrorCode.BAD_REQUEST


def test_read() -> None:
    assert parse({"type": "read", "channelId": "g", "messageId": M2}) == Read("g", M2)
    assert parse_error({"type": "read", "channelId": "g"}).code == ErrorCode.BAD_REQUEST


def test_error_messages_quote_long_values_briefly() -> None:
    error = parse_error({"type": "x" * 1000})
    assert len(error.message) < 100


# --- properties ------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
_frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["connect", "send", "history", "react", "edit", "x"])
        | _json_values,
        "channels": _json_values | st.lists(st.sampled_from(["g", "a b", ""])),
        "channelId": _json_values | st.sampled_from(["g", "a b"]),
        "content": _json_values,
        "messageId": _json_values | st.just(M1),
        "limit": _json_values,
        "metadata": _json_values,
        "resume": _json_values,
        "requestId": _json_values,
        "clientMsgId": _json_values,
        "op": _json_values | st.sampled_from(["add", "remove"]),
        "emoji": _json_values,
    },
)


def _parse_or_protocol_error(text: str) -> None:
    try:
        parse_frame(text, limits=LIMITS)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE)


@settings(deadline=None)  # timing varies on loaded CI machines; we test behaviour
@given(st.text())
def test_arbitrary_text_only_raises_protocol_error(text: str) -> None:
    _parse_or_protocol_error(text)


@settings(deadline=None)  # timing varies on loaded CI machines; we test behaviour
@given(st.text().map(lambda t: "{" + t))
def test_arbitrary_brace_text_only_raises_protocol_error(text: str) -> None:
    _parse_or_protocol_error(text)


@settings(deadline=None)  # timing varies on loaded CI machines; we test behaviour
@given(_frame_objects)
def test_arbitrary_frame_objects_only_raise_protocol_error(obj: dict[str, Any]) -> None:
    _parse_or_protocol_error(json.dumps(obj))
