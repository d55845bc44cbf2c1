"""The client's sans-I/O bookkeeping: resume points, dedupe, resends, gap paging."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from chime_actors.client.events import (
    Ack,
    Connected,
    Error,
    Event,
    GapFilled,
    History,
    Message,
    ResumeFailed,
    Subscribed,
    UnknownFrame,
)
from chime_actors.client.state import MAX_OUTGOING, ClientState, is_newer
from chime_actors.errors import NotConnected, TooManyPending


def mid(n: int) -> str:
    return f"{n:016d}"


def wire(channel: str, n: int, user: str = "bob") -> dict[str, Any]:
    return {
        "channelId": channel,
        "messageId": mid(n),
        "userId": user,
        "content": f"m{n}",
        "createdAt": "2026-11-27T10:00:00.000Z",
        "editedAt": None,
        "metadata": {},
        "threadId": None,
        "clientMsgId": None,
        "channelName": None,
    }


def message(channel: str, n: int) -> dict[str, Any]:
    return {"type": "message", "message": wire(channel, n)}


def connected(*channels: str) -> dict[str, Any]:
    return {
        "type": "connected",
        "userId": "alice",
        "connectionId": "c0ffee",
        "channels": list(channels),
        "heartbeatMs": 25000,
    }


def ack(client_msg_id: str, n: int) -> dict[str, Any]:
    return {
        "type": "ack",
        "clientMsgId": client_msg_id,
        "channelId": "a",
        "messageId": mid(n),
        "createdAt": "t",
    }


def ids(events: list[Event]) -> list[int]:
    return [int(e.message.message_id) for e in events if isinstance(e, Message)]


def make_state(*channels: str, **kwargs: Any) -> ClientState:
    counter = itertools.count(1)
    return ClientState(channels, user_id="alice", new_id=lambda: f"c{next(counter)}", **kwargs)


def open_state(*channels: str, **kwargs: Any) -> ClientState:
    state = make_state(*channels, **kwargs)
    state.connect_frame()
    state.receive(connected(*channels))
    return state


def feed(state: ClientState, *frames: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    for frame in frames:
        events.extend(state.receive(frame))
    return events


def reconnect(state: ClientState, *channels: str) -> dict[str, Any]:
    """Lose the connection and connect again; returns the new connect frame."""
    state.connection_lost()
    frame = state.connect_frame()
    state.receive(connected(*channels))
    return frame


# --- resume points and dedupe -------------------------------------------------------------


def test_first_connect_names_channels_and_user_and_no_resume() -> None:
    state = ClientState(["general", "random"], user_id="alice", token="tok")
    assert state.connect_frame() == {
        "type": "connect",
        "channels": ["general", "random"],
        "userId": "alice",
        "token": "tok",
    }


def test_reconnect_resumes_each_channel_from_its_last_message() -> None:
    state = open_state("a", "b", "c")
    feed(state, message("a", 1), message("a", 2), message("b", 7))
    frame = reconnect(state, "a", "b", "c")
    # "c" delivered nothing: no resume point for it.
    assert frame["resume"] == {"a": mid(2), "b": mid(7)}


def test_messages_at_or_below_the_last_seen_id_are_dropped() -> None:
    state = open_state("a")
    assert ids(feed(state, message("a", 1), message("a", 2))) == [1, 2]
    reconnect(state, "a")
    # A replay that overlaps what was delivered, then live messages.
    events = feed(state, message("a", 2), message("a", 3), message("a", 3), message("a", 4))
    assert ids(events) == [3, 4]
    assert state.last_seen == {"a": mid(4)}


def test_messages_before_resumed_are_marked_replayed() -> None:
    state = open_state("a")
    feed(state, message("a", 1))
    reconnect(state, "a")
    events = feed(
        state,
        message("a", 2),
        {"type": "resumed", "channelId": "a", "count": 1},
        message("a", 3),
    )
    flags = [e.replayed for e in events if isinstance(e, Message)]
    assert flags == [True, False]


def test_the_first_connected_is_not_a_reconnect_the_next_is() -> None:
    state = make_state("a")
    state.connect_frame()
    (first,) = state.receive(connected("a"))
    state.connection_lost()
    state.connect_frame()
    (second,) = state.receive(connected("a"))
    assert isinstance(first, Connected) and isinstance(second, Connected)
    assert (first.reconnect, second.reconnect) == (False, True)
    assert state.user_id == "alice"


def test_ids_compare_by_length_then_text() -> None:
    assert is_newer(mid(10), mid(9))
    assert not is_newer(mid(9), mid(9))
    assert is_newer("10", "9")  # ids of another width still order numerically


# --- pending sends --------------------------------------------------------------------------


def test_a_send_while_disconnected_is_written_once_connected() -> None:
    state = make_state("a")
    pending = state.send("a", "hello")
    assert state.take_outgoing() == []
    state.connect_frame()
    state.receive(connected("a"))
    assert state.take_outgoing() == [
        {"type": "send", "channelId": "a", "content": "hello", "clientMsgId": pending.client_msg_id}
    ]


def test_unacked_sends_are_resent_unchanged_after_a_reconnect_acked_ones_are_not() -> None:
    state = open_state("a")
    first = state.send("a", "one", metadata={"k": "v"}, thread_id=mid(1))
    second = state.send("a", "two")
    written = state.take_outgoing()
    assert [f["clientMsgId"] for f in written] == ["c1", "c2"]
    feed(state, ack("c1", 5))
    assert [p.client_msg_id for p in state.pending] == [second.client_msg_id]
    reconnect(state, "a")
    assert state.take_outgoing() == [written[1]]
    assert first.frame == written[0]


def test_an_error_settles_a_send_it_is_not_resent() -> None:
    state = open_state("a")
    state.send("a", "one")
    events = feed(
        state, {"type": "error", "code": "unavailable", "message": "x", "clientMsgId": "c1"}
    )
    assert events == [Error("unavailable", "x", client_msg_id="c1")]
    assert state.pending == ()
    reconnect(state, "a")
    assert state.take_outgoing() == []


def test_each_connect_resends_the_pending_sends_exactly_once() -> None:
    state = open_state("a")
    state.send("a", "one")
    state.take_outgoing()
    for _ in range(3):
        reconnect(state, "a")
        assert [f["clientMsgId"] for f in state.take_outgoing()] == ["c1"]


def test_pending_sends_are_bounded_and_ids_unique() -> None:
    state = open_state("a", max_pending=2)
    state.send("a", "one", client_msg_id="x")
    with pytest.raises(ValueError, match="still pending"):
        state.send("a", "again", client_msg_id="x")
    state.send("a", "two")
    with pytest.raises(TooManyPending):
        state.send("a", "three")


def test_requests_need_an_open_connection() -> None:
    state = make_state("a")
    with pytest.raises(NotConnected):
        state.request({"type": "ping"})
    state.connect_frame()
    state.receive(connected("a"))
    state.request({"type": "ping"})
    assert state.take_outgoing() == [{"type": "ping"}]
    state.connection_lost()
    with pytest.raises(NotConnected):
        state.request({"type": "ping"})


# --- subscriptions --------------------------------------------------------------------------


def test_joined_channels_are_asked_for_again_and_left_ones_forgotten() -> None:
    state = open_state("a")
    assert state.subscribe(["b"])
    assert state.take_outgoing() == [{"type": "subscribe", "channels": ["b"]}]
    feed(state, {"type": "subscribed", "channels": ["b"]}, message("a", 3), message("b", 4))
    assert state.unsubscribe(["a"])
    feed(state, {"type": "unsubscribed", "channels": ["a"]})
    frame = reconnect(state, "b")
    assert frame["channels"] == ["b"]
    assert frame["resume"] == {"b": mid(4)}


def test_a_subscribe_while_disconnected_waits_for_the_next_connect() -> None:
    state = make_state("a")
    assert not state.subscribe(["b"])
    assert state.connect_frame()["channels"] == ["a", "b"]


def test_channels_the_server_refused_are_not_asked_for_again() -> None:
    state = make_state("a", "secret")
    state.connect_frame()
    state.receive(connected("a"))
    assert state.channels == ("a",)


def test_unknown_and_malformed_frames_become_unknown_events() -> None:
    state = open_state("a")
    (unknown,) = state.receive({"type": "sparkle", "x": 1})
    assert isinstance(unknown, UnknownFrame) and unknown.type == "sparkle"
    (broken,) = state.receive({"type": "message", "message": {"channelId": "a"}})
    assert isinstance(broken, UnknownFrame) and broken.type == "message"
    assert state.last_seen == {}


# --- paging a gap after resume_failed -------------------------------------------------------


def page(channel: str, request_id: str, numbers: range, has_more: bool) -> dict[str, Any]:
    return {
        "type": "history",
        "requestId": request_id,
        "channelId": channel,
        "messages": [wire(channel, n) for n in numbers],
        "hasMore": has_more,
    }


def gap_state() -> ClientState:
    """Delivered 1..3 of "a", then reconnected; the server refused the replay."""
    state = open_state("a")
    feed(state, *(message("a", n) for n in (1, 2, 3)))
    reconnect(state, "a")
    state.take_outgoing()
    return state


def test_resume_failed_pages_the_gap_up_to_the_live_messages() -> None:
    state = gap_state()
    events = feed(state, {"type": "resume_failed", "channelId": "a", "reason": "too_many"})
    assert isinstance(events[0], ResumeFailed)
    (request,) = state.take_outgoing()
    assert request["after"] == mid(3) and request["limit"] == 100
    # Live messages arrive while the gap is paged: held back.
    assert feed(state, message("a", 250), message("a", 251)) == []
    events = feed(state, page("a", request["requestId"], range(4, 104), has_more=True))
    assert ids(events) == list(range(4, 104))
    (second,) = state.take_outgoing()
    assert second["after"] == mid(103)
    # The next page runs into the live messages: the live copies follow, no duplicate.
    events = feed(state, page("a", second["requestId"], range(104, 204), has_more=True))
    (third,) = state.take_outgoing()
    events += feed(state, page("a", third["requestId"], range(204, 254), has_more=True))
    assert ids(events) == list(range(104, 252))
    assert GapFilled("a", 246, complete=True) in events
    assert all(not isinstance(e, History) for e in events)
    assert ids(feed(state, message("a", 251), message("a", 252))) == [252]


def test_a_gap_with_no_live_message_ends_when_history_has_no_more() -> None:
    state = gap_state()
    feed(state, {"type": "resume_failed", "channelId": "a", "reason": "too_many"})
    (request,) = state.take_outgoing()
    events = feed(state, page("a", request["requestId"], range(4, 10), has_more=False))
    assert ids(events) == list(range(4, 10))
    assert events[-1] == GapFilled("a", 6, complete=True)
    assert ids(feed(state, message("a", 10))) == [10]


def test_a_failed_gap_page_delivers_what_waits_and_says_it_is_partial() -> None:
    state = gap_state()
    feed(state, {"type": "resume_failed", "channelId": "a", "reason": "too_many"})
    (request,) = state.take_outgoing()
    feed(state, message("a", 500))
    rid = request["requestId"]
    events = feed(state, {"type": "error", "code": "unavailable", "message": "x", "requestId": rid})
    assert isinstance(events[0], Error)
    assert GapFilled("a", 0, complete=False) in events
    assert ids(events) == [500]


def test_a_connection_lost_while_paging_resumes_from_the_last_delivered() -> None:
    state = gap_state()
    feed(state, {"type": "resume_failed", "channelId": "a", "reason": "too_many"})
    (request,) = state.take_outgoing()
    feed(state, message("a", 900))
    feed(state, page("a", request["requestId"], range(4, 104), has_more=True))
    assert state.connection_lost() == [GapFilled("a", 100, complete=False)]
    # The held live message was not delivered: the next resume asks for it again.
    assert state.connect_frame()["resume"] == {"a": mid(103)}


def test_the_gap_buffer_is_bounded() -> None:
    state = open_state("a", max_gap_buffer=2)
    feed(state, message("a", 1))
    reconnect(state, "a")
    feed(state, {"type": "resume_failed", "channelId": "a", "reason": "too_many"})
    assert feed(state, message("a", 50), message("a", 51)) == []
    events = feed(state, message("a", 52))
    assert events[0] == GapFilled("a", 0, complete=False)
    assert ids(events) == [50, 51, 52]


def test_an_ordinary_history_reply_is_delivered_and_moves_no_resume_point() -> None:
    state = open_state("a")
    feed(state, message("a", 9))
    (event,) = feed(state, page("a", "r1", range(1, 4), has_more=False))
    assert isinstance(event, History) and len(event.messages) == 3
    assert state.last_seen == {"a": mid(9)}


def test_subscribed_adds_channels() -> None:
    state = open_state("a")
    (event,) = feed(state, {"type": "subscribed", "channels": ["z"]})
    assert event == Subscribed(("z",))
    assert state.channels == ("a", "z")


def test_ack_event_carries_the_stored_id() -> None:
    state = open_state("a")
    state.send("a", "hi")
    (event,) = feed(state, ack("c1", 1))
    assert event == Ack("c1", "a", mid(1), "t")


def test_frames_waiting_to_be_written_are_bounded() -> None:
    state = open_state("a")
    for _ in range(MAX_OUTGOING):
        state.request({"type": "typing", "channelId": "a"})
    with pytest.raises(TooManyPending):
        state.request({"type": "typing", "channelId": "a"})
    state.take_outgoing()
    state.request({"type": "typing", "channelId": "a"})
