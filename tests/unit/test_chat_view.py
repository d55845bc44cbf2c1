"""``chime client``'s lines and commands (pure), and how its session shows events."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from datetime import UTC, timedelta, timezone

import pytest

from chime_actors.cli import chat_view as view
from chime_actors.cli.chat_session import ChatSession
from chime_actors.client import (
    ChatMessage,
    ChimeClient,
    Disconnected,
    Error,
    Event,
    Message,
    Reaction,
    Resumed,
    Subscribed,
    UnknownFrame,
)

MSG = ChatMessage("general", "0000000000000042", "bob", "hi", "2026-11-27T10:05:59.000Z")


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", view.Say("hello")),
        ("  spaced out  ", view.Say("  spaced out  ")),
        ("//not a command", view.Say("/not a command")),
        ("/join random", view.Join("random")),
        ("/join #random", view.Join("random")),
        ("/join", view.Usage("/join NAME")),
        ("/leave", view.Leave(None)),
        ("/leave random", view.Leave("random")),
        ("/history", view.ShowHistory(20)),
        ("/history 5", view.ShowHistory(5)),
        ("/history 500", view.ShowHistory(100)),
        ("/history many", view.Usage("/history [n]  (n from 1 to 100)")),
        ("/who", view.Who()),
        ("/edit fixed text", view.Edit(None, "fixed text")),
        ("/edit #42 fixed text", view.Edit("#42", "fixed text")),
        ("/edit", view.Usage("/edit [#ID] NEW TEXT")),
        ("/react 👍", view.React(None, "👍")),
        ("/react #42 👍", view.React("#42", "👍")),
        ("/react", view.Usage("/react [#ID] EMOJI")),
        ("/quit", view.Quit()),
        ("/help", view.Help()),
    ],
)
def test_typed_lines_parse_to_commands(line: str, command: view.Command) -> None:
    assert view.parse_command(line) == command


def test_blank_lines_do_nothing_and_unknown_commands_say_so() -> None:
    assert view.parse_command("   ") is None
    unknown = view.parse_command("/frobnicate")
    assert isinstance(unknown, view.Usage) and "/frobnicate" in unknown.text


def test_times_are_local_hours_and_minutes() -> None:
    assert view.clock("2026-11-27T10:05:59.000Z", UTC) == "10:05"
    assert view.clock("2026-11-27T10:05:59.000Z", timezone(timedelta(hours=2))) == "12:05"
    assert view.clock("yesterday") == "--:--"


def test_short_ids_and_back() -> None:
    assert view.short_id("0000000000000042") == "#42"
    assert view.short_id("0000000000000000") == "#0"
    assert view.short_id("abc") == "#abc"
    assert view.expand_id("#42", "0000000000000007") == "0000000000000042"
    assert view.expand_id("42", None) == "0000000000000042"
    assert view.expand_id("#abc", None) == "abc"


def test_each_user_has_a_colour_of_their_own_every_run() -> None:
    assert view.user_style("alice") == view.user_style("alice")
    assert view.user_style("alice").startswith("bold ansi")
    styles = {view.user_style(f"user{n}") for n in range(50)}
    assert len(styles) > 3


def test_message_lines_show_time_name_text_and_id_own_ones_a_check_mark() -> None:
    theirs = view.message_line(MSG, me="alice", show_channel=False, tz=UTC)
    assert view.plain(theirs) == "10:05 bob: hi #42"
    assert (view.user_style("bob"), "bob") in theirs
    mine = view.message_line(MSG, me="bob", show_channel=True, tz=UTC)
    assert view.plain(mine) == "10:05 #general bob: hi ✓ #42"


# --- the session's rendering, on a screen that records ----------------------------------------


class RecordingScreen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.refreshes = 0

    def show(self, line: view.Fragments) -> None:
        self.lines.append(view.plain(line))

    def refresh(self) -> None:
        self.refreshes += 1

    async def read_line(self) -> str | None:
        return None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        yield


def session() -> tuple[ChatSession, RecordingScreen]:
    # A client that never connects: the session only reads its state here.
    client = ChimeClient("ws://127.0.0.1:1/", user_id="alice", channels=["general"])
    screen = RecordingScreen()
    return ChatSession(client, screen, "general"), screen


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        (Message(MSG), r"^\d\d:\d\d bob: hi #42$"),
        (Error("bad_request", "`react` is not supported by this server yet"), "^! `react` is not"),
        (Error("forbidden", "no"), "^! forbidden: no$"),
        (Disconnected(4001, "unauthorized", None, final=True), "^! connection closed for good"),
        (Subscribed(("x",)), "^-- joined #x$"),
        (Resumed("general", 3), "caught up on 3 missed messages"),
        (Reaction("general", "0000000000000042", "👍", "bob", "add"), "bob reacted 👍 on #42"),
        (UnknownFrame("sparkle", {}), "a sparkle frame"),
    ],
)
def test_events_become_lines(event: Event, shown: str) -> None:
    chat, screen = session()
    chat.render(event)
    (line,) = screen.lines
    assert re.search(shown, line), line
    assert screen.refreshes == 1


def test_quiet_events_print_nothing_but_refresh_the_status() -> None:
    chat, screen = session()
    chat.render(Resumed("general", 0))
    chat.render(Error("bad_request", "x", request_id="r1"))  # its command shows it
    assert screen.lines == [] and screen.refreshes == 2


def test_a_send_is_pending_in_the_status_bar_until_stored() -> None:
    chat, screen = session()
    chat._say("hello there")
    status = view.plain(chat.status())
    assert status.startswith(" #general │ alice │ connecting")
    assert '1 sending: "hello there" …' in status
    (pending,) = chat.client.pending
    chat.render(Error("unavailable", "storage unavailable", client_msg_id=pending.client_msg_id))
    assert screen.lines == ["✗ not sent: hello there (unavailable: storage unavailable)"]


def test_a_lost_connection_is_one_line_and_failed_attempts_only_the_status_bar() -> None:
    chat, screen = session()
    chat._connection = "connected"
    chat.render(Disconnected(1001, "server shutting down", 0.25))
    chat.render(Disconnected(None, "connection refused", 0.9))
    assert screen.lines == ["-- connection lost (server shutting down); reconnecting"]
    assert "reconnecting (next try in 0.9 s)…" in view.plain(chat.status())
