"""``chime client``: an interactive terminal client on :mod:`chime_actors.client`.

On a terminal the input line stays at the bottom, above a status bar (channel,
user, connection, and each send still waiting for its ack as ``… "text"``),
and messages print above it with their time (HH:MM) and coloured user names;
your own end in ``✓`` and their stored id. It reconnects, resumes and resends
by itself. Commands: ``/join NAME``, ``/leave [NAME]``, ``/history [n]``,
``/who``, ``/edit [#ID] TEXT``, ``/react [#ID] EMOJI``, ``/help``, ``/quit``.

When stdin or stdout is not a terminal it reads lines and prints plain text,
and at end of input waits (bounded) for its sends to be stored: a script can
pipe lines into it.
"""

from __future__ import annotations

import asyncio
import sys

from chime_actors.cli.chat_screen import PlainScreen, PromptScreen, Screen
from chime_actors.cli.chat_session import ChatSession
from chime_actors.client import ChimeClient


def _channels(channel: str | None) -> list[str]:
    """``--channel a,b`` joins both; the first is written to."""
    if not channel:
        return []
    return [c.strip().removeprefix("#") for c in channel.split(",") if c.strip()]


async def _main(url: str, user: str | None, channel: str | None, token: str | None) -> int:
    channels = _channels(channel)
    client = ChimeClient(url, user_id=user, token=token, channels=channels)
    session = ChatSession(client, None, channels[0] if channels else None)
    screen: Screen
    if sys.stdin.isatty() and sys.stdout.isatty():
        screen = PromptScreen(session.prompt, session.status)
    else:
        screen = PlainScreen()
    session.screen = screen
    return await session.run()


def run_client(url: str, *, user: str | None, channel: str | None, token: str | None) -> int:
    """Run the interactive client until ``/quit`` or end of input; the exit status."""
    try:
        return asyncio.run(_main(url, user, channel, token))
    except KeyboardInterrupt:
        return 0
