"""What ``chime client`` shows and what its commands mean: pure functions, no I/O.

Lines are prompt_toolkit formatted text (``(style, text)`` pairs); the plain
screen joins the texts. Styles are class names (``class:time`` ...) that
:data:`STYLE_RULES` maps to colours, and each user name gets a colour of its own
that stays the same from one run to the next.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from chime_actors.client import ChatMessage, PendingSend

Fragments = list[tuple[str, str]]

STYLE_RULES = {
    "time": "ansibrightblack",
    "id": "ansibrightblack",
    "channel": "ansicyan",
    "notice": "ansibrightblack italic",
    "error": "ansired",
    "acked": "ansigreen",
    "pending": "ansiyellow",
    "failed": "ansired bold",
    "bottom-toolbar": "bg:ansiblack ansiwhite noreverse",
}
USER_COLOURS = (
    "ansired",
    "ansigreen",
    "ansiyellow",
    "ansiblue",
    "ansimagenta",
    "ansicyan",
    "ansibrightred",
    "ansibrightgreen",
    "ansibrightblue",
    "ansibrightmagenta",
)
DEFAULT_HISTORY = 20
MAX_HISTORY = 100  # history's largest page (docs/protocol.md)
ID_WIDTH = 16  # this server's ids; a short "#42" is padded to the width of ids seen

HELP = (
    "commands: /join NAME (join, or switch to, a channel) · /leave [NAME] · "
    "/history [n] · /who · /edit [#ID] TEXT · /react [#ID] EMOJI · /quit. "
    "Anything else is sent to the current channel (start it with // to send a /)."
)


def plain(fragments: Fragments) -> str:
    """The text of formatted text, styles dropped."""
    return "".join(text for _, text in fragments)


def user_style(user_id: str) -> str:
    """A bold colour for ``user_id``, the same in every run (crc32, not ``hash``)."""
    return "bold " + USER_COLOURS[zlib.crc32(user_id.encode()) % len(USER_COLOURS)]


def clock(created_at: str, tz: tzinfo | None = None) -> str:
    """``HH:MM`` of a wire timestamp in local time (``tz``); ``--:--`` if unreadable."""
    try:
        moment = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return "--:--"
    return moment.astimezone(tz).strftime("%H:%M")


def short_id(message_id: str) -> str:
    """``#42`` for ``0000000000000042``; other ids as they are, after a ``#``."""
    if message_id.isdigit():
        return "#" + (message_id.lstrip("0") or "0")
    return "#" + message_id


def expand_id(text: str, like: str | None) -> str:
    """The message id a user typed (``#42``, ``42`` or a full id), zero-padded to the
    width of ``like`` (an id seen in the channel) when it is a short number."""
    raw = text.removeprefix("#")
    width = len(like) if like is not None and like.isdigit() else ID_WIDTH
    if raw.isdigit() and len(raw) < width:
        return raw.zfill(width)
    return raw


def message_line(
    msg: ChatMessage, *, me: str | None, show_channel: bool, tz: tzinfo | None = None
) -> Fragments:
    """One message: time, channel (when several), coloured name, text, id.

    The user's own messages end in a check mark: a ``message`` frame means stored.
    """
    line: Fragments = [("class:time", clock(msg.created_at, tz) + " ")]
    if show_channel:
        line.append(("class:channel", f"#{msg.channel_id} "))
    line += [(user_style(msg.user_id), msg.user_id), ("", ": " + msg.content)]
    if msg.edited_at is not None:
        line.append(("class:id", " (edited)"))
    if msg.user_id == me:
        line.append(("class:acked", " ✓"))
    line.append(("class:id", " " + short_id(msg.message_id)))
    return line


def edited_line(msg: ChatMessage, tz: tzinfo | None = None) -> Fragments:
    when = clock(msg.edited_at or msg.created_at, tz)
    return [
        ("class:time", when + " "),
        (user_style(msg.user_id), msg.user_id),
        ("class:notice", f" edited {short_id(msg.message_id)}: "),
        ("", msg.content),
    ]


def notice(text: str) -> Fragments:
    """A line about the session, not a message: dim, after ``--``."""
    return [("class:notice", "-- " + text)]


def error_line(text: str) -> Fragments:
    return [("class:error", "! " + text)]


def failed_send_line(content: str, code: str, message: str) -> Fragments:
    return [
        ("class:failed", "✗ not sent: "),
        ("", content),
        ("class:error", f" ({code}: {message})"),
    ]


def pending_fragments(pending: Sequence[PendingSend], limit: int = 3) -> Fragments:
    """The unacked sends for the status bar: ``… "hello"`` each."""
    if not pending:
        return []
    parts: Fragments = [("class:pending", f" │ {len(pending)} sending:")]
    for item in pending[:limit]:
        text = item.content if len(item.content) <= 24 else item.content[:23] + "…"
        parts.append(("class:pending", f' "{text}" …'))
    if len(pending) > limit:
        parts.append(("class:pending", " …"))
    return parts


# --- commands -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Say:
    """Send ``text`` to the current channel."""

    text: str


@dataclass(frozen=True, slots=True)
class Join:
    channel: str


@dataclass(frozen=True, slots=True)
class Leave:
    channel: str | None


@dataclass(frozen=True, slots=True)
class ShowHistory:
    count: int


@dataclass(frozen=True, slots=True)
class Who:
    pass


@dataclass(frozen=True, slots=True)
class Edit:
    message_id: str | None  # None: the user's last message in the channel
    text: str


@dataclass(frozen=True, slots=True)
class React:
    message_id: str | None  # None: the channel's last message
    emoji: str


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Usage:
    """A command typed wrong: ``text`` says how it goes."""

    text: str


Command = Say | Join | Leave | ShowHistory | Who | Edit | React | Quit | Help | Usage


def _is_id(word: str) -> bool:
    return word.startswith("#") and len(word) > 1


def parse_command(line: str) -> Command | None:
    """What a typed line asks for; None for a blank line."""
    text = line.strip()
    if not text:
        return None
    if text.startswith("//"):
        return Say(text[1:])
    if not text.startswith("/"):
        return Say(line.rstrip("\r\n"))
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    words = rest.split()
    match name:
        case "/quit" | "/exit":
            return Quit()
        case "/help" | "/?":
            return Help()
        case "/join" if len(words) == 1:
            return Join(words[0].removeprefix("#"))
        case "/join":
            return Usage("/join NAME")
        case "/leave" if len(words) <= 1:
            return Leave(words[0].removeprefix("#") if words else None)
        case "/leave":
            return Usage("/leave [NAME]")
        case "/history" if not words:
            return ShowHistory(DEFAULT_HISTORY)
        case "/history" if len(words) == 1 and words[0].isdigit():
            return ShowHistory(max(1, min(MAX_HISTORY, int(words[0]))))
        case "/history":
            return Usage(f"/history [n]  (n from 1 to {MAX_HISTORY})")
        case "/who":
            return Who()
        case "/edit" if words and _is_id(words[0]) and len(words) > 1:
            return Edit(words[0], rest.partition(" ")[2].strip())
        case "/edit" if words and not _is_id(words[0]):
            return Edit(None, rest)
        case "/edit":
            return Usage("/edit [#ID] NEW TEXT")
        case "/react" if len(words) == 2 and _is_id(words[0]):
            return React(words[0], words[1])
        case "/react" if len(words) == 1:
            return React(None, words[0])
        case "/react":
            return Usage("/react [#ID] EMOJI")
    return Usage(f"unknown command {name}; /help lists them")
