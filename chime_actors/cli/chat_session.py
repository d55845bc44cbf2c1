"""``chime client``'s session: commands typed in, events shown, on one ChimeClient.

The client library does the reliability (reconnects, resume, resends); this
module turns its events into lines (:mod:`chime_actors.cli.chat_view`) on a
:class:`~chime_actors.cli.chat_screen.Screen` and keeps the status bar: current
channel, user, connection, and each of the user's sends still waiting for its
ack (``… "hello"``). A send's line is printed when its ``message`` comes back
(stored: ``✓`` and its id), in the channel's order.
"""

from __future__ import annotations

import asyncio
import contextlib

from chime_actors.cli import chat_view as view
from chime_actors.cli.chat_screen import Screen
from chime_actors.client import (
    ChimeClient,
    ClientError,
    Connected,
    ConnectFailed,
    Disconnected,
    Error,
    Event,
    GapFilled,
    Message,
    MessageDeleted,
    MessageEdited,
    NotConnected,
    PresenceChanged,
    Reaction,
    RequestFailed,
    Resumed,
    ResumeFailed,
    Subscribed,
    TooManyPending,
    UnknownFrame,
    Unsubscribed,
)

# At end of input (a script's pipe), unacked sends get this long to be stored.
DRAIN_TIMEOUT_S = 10.0


class ChatSession:
    """One user's chat in the terminal.

    Args:
        client: a ChimeClient, not connected yet.
        screen: where lines go and where input comes from.
        channel: the channel written to first.
    """

    def __init__(self, client: ChimeClient, screen: Screen | None, channel: str | None) -> None:
        self.client = client
        self.screen: Screen | None = screen
        self.current = channel
        self._connection = "connecting"
        self._contents: dict[str, str] = {}  # clientMsgId -> text, to name a failed send
        self._last: dict[str, str] = {}  # channel -> its last messageId shown
        self._mine: dict[str, str] = {}  # channel -> the user's last messageId there

    # --- what the screen asks -----------------------------------------------------------

    def prompt(self) -> str:
        return f"#{self.current}> " if self.current else "(no channel)> "

    def status(self) -> view.Fragments:
        """The status bar: channel, user, connection, sends awaiting their ack."""
        me = self.client.user_id or "?"
        parts: view.Fragments = [
            ("", f" #{self.current or '-'} │ {me} │ {self._connection}"),
        ]
        return parts + view.pending_fragments(self.client.pending)

    # --- running ------------------------------------------------------------------------

    async def run(self) -> int:
        """Connect, then read commands until ``/quit`` or end of input; the exit status."""
        screen = self._screen()
        try:
            connected = await self.client.connect()
        except ConnectFailed as exc:
            screen.show(view.error_line(f"cannot connect: {exc}"))
            return 1
        self._on_connected(connected)
        pump = asyncio.get_running_loop().create_task(self._pump())
        try:
            with screen.running():
                await self._read_commands(screen)
                await self._drain(screen)
        finally:
            await self.client.close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return 0

    def _screen(self) -> Screen:
        assert self.screen is not None, "ChatSession needs a screen to run"
        return self.screen

    async def _read_commands(self, screen: Screen) -> None:
        while True:
            line = await screen.read_line()
            if line is None:
                return
            command = view.parse_command(line)
            if command is None:
                continue
            if isinstance(command, view.Quit):
                return
            await self.execute(command)
            screen.refresh()

    async def _drain(self, screen: Screen) -> None:
        """Give unacked sends a bounded time to be stored before leaving."""
        if not self.client.pending or self.client.closed:
            return
        screen.show(view.notice(f"waiting for {len(self.client.pending)} sends to be stored"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT_S
        while self.client.pending and loop.time() < deadline and not self.client.closed:
            await asyncio.sleep(0.05)
        if self.client.pending:
            screen.show(view.error_line(f"{len(self.client.pending)} sends were not stored"))

    async def _pump(self) -> None:
        async for event in self.client.events():
            self.render(event)

    # --- commands -----------------------------------------------------------------------

    async def execute(self, command: view.Command) -> None:
        """Carry out one typed command (everything but ``/quit``)."""
        show = self._screen().show
        try:
            match command:
                case view.Say(text):
                    self._say(text)
                case view.Join(channel):
                    await self._join(channel)
                case view.Leave(channel):
                    await self._leave(channel or self.current)
                case view.ShowHistory(count):
                    await self._history(count)
                case view.Who():
                    await self._who()
                case view.Edit(message_id, text):
                    await self._edit(message_id, text)
                case view.React(message_id, emoji):
                    self._react(message_id, emoji)
                case view.Help():
                    show(view.notice(view.HELP))
                case view.Usage(text):
                    show(view.error_line(f"usage: {text}"))
        except NotConnected:
            show(view.error_line("not connected right now; try again in a moment"))
        except RequestFailed as exc:
            show(view.error_line(f"{exc.code}: {exc.message}"))
        except ClientError as exc:
            show(view.error_line(str(exc)))

    def _say(self, text: str) -> None:
        if self.current is None:
            self._screen().show(view.error_line("join a channel first: /join NAME"))
            return
        try:
            pending = self.client.send_nowait(self.current, text)
        except TooManyPending as exc:
            self._screen().show(view.error_line(str(exc)))
            return
        self._contents[pending.client_msg_id] = text

    async def _join(self, channel: str) -> None:
        if channel not in self.client.channels:
            await self.client.subscribe([channel])
        self.current = channel
        self._screen().show(view.notice(f"writing to #{channel}"))

    async def _leave(self, channel: str | None) -> None:
        if channel is None or channel not in self.client.channels:
            self._screen().show(view.error_line(f"not in #{channel}"))
            return
        await self.client.unsubscribe([channel])
        if self.current == channel:
            remaining = self.client.channels
            self.current = remaining[0] if remaining else None

    async def _history(self, count: int) -> None:
        channel = self._need_channel()
        if channel is None:
            return
        page = await self.client.history(channel, limit=count)
        show = self._screen().show
        show(view.notice(f"history of #{channel}: {len(page.messages)} messages"))
        for msg in page.messages:
            show(view.message_line(msg, me=self.client.user_id, show_channel=False))
        show(view.notice("end of history"))

    async def _who(self) -> None:
        channel = self._need_channel()
        if channel is None:
            return
        try:
            presence = await self.client.presence(channel)
        except RequestFailed as exc:
            if exc.code == "bad_request" and "not supported" in exc.message:
                self._screen().show(view.notice("/who: this server does not support presence yet"))
                return
            raise
        names = ", ".join(presence.online) or "nobody"
        self._screen().show(view.notice(f"online in #{channel}: {names}"))

    async def _edit(self, typed_id: str | None, text: str) -> None:
        channel = self._need_channel()
        if channel is None:
            return
        if typed_id is None:
            message_id = self._mine.get(channel)
            if message_id is None:
                self._screen().show(view.error_line("/edit: you have no message here yet"))
                return
        else:
            message_id = view.expand_id(typed_id, self._last.get(channel))
        try:
            await self.client.edit(channel, message_id, text)
        except RequestFailed as exc:
            what = "not supported by this server yet" if "not supported" in exc.message else None
            self._screen().show(view.error_line(f"/edit: {what or f'{exc.code}: {exc.message}'}"))

    def _react(self, typed_id: str | None, emoji: str) -> None:
        channel = self._need_channel()
        if channel is None:
            return
        last = self._last.get(channel)
        message_id = last if typed_id is None else view.expand_id(typed_id, last)
        if message_id is None:
            self._screen().show(view.error_line("/react: no message here yet"))
            return
        # No reply to wait for: a reaction (or an error) comes back as an event.
        self.client.react(channel, message_id, emoji)

    def _need_channel(self) -> str | None:
        if self.current is None:
            self._screen().show(view.error_line("join a channel first: /join NAME"))
        return self.current

    # --- events -------------------------------------------------------------------------

    def render(self, event: Event) -> None:
        """Show one event from the client (and refresh the status bar)."""
        screen = self._screen()
        line = self._line_for(event)
        if line is not None:
            screen.show(line)
        screen.refresh()

    def _line_for(self, event: Event) -> view.Fragments | None:
        match event:
            case Message(msg):
                self._last[msg.channel_id] = msg.message_id
                if msg.user_id == self.client.user_id:
                    self._mine[msg.channel_id] = msg.message_id
                if msg.client_msg_id is not None:
                    self._contents.pop(msg.client_msg_id, None)
                several = len(self.client.channels) > 1 or msg.channel_id != self.current
                return view.message_line(msg, me=self.client.user_id, show_channel=several)
            case Error() if event.client_msg_id is not None:
                content = self._contents.pop(event.client_msg_id, "")
                return view.failed_send_line(content, event.code, event.message)
            case Error() if event.request_id is not None:
                return None  # the command that asked shows it
            case Error():
                if event.not_supported:
                    return view.error_line(event.message)
                return view.error_line(f"{event.code}: {event.message}")
            case Connected():
                self._on_connected(event)
                return view.notice("reconnected") if event.reconnect else None
            case Disconnected(code=_, reason=reason, retry_in_s=retry, final=final):
                was_connected = self._connection == "connected"
                if final:
                    self._connection = "disconnected"
                    return view.error_line(f"connection closed for good: {reason}")
                # One line when the connection goes; failed attempts after it only
                # update the status bar.
                self._connection = f"reconnecting (next try in {retry or 0:.1f} s)…"
                if was_connected:
                    return view.notice(f"connection lost ({reason}); reconnecting")
                return None
            case Subscribed(channels):
                return view.notice("joined " + ", ".join(f"#{c}" for c in channels))
            case Unsubscribed(channels):
                return view.notice("left " + ", ".join(f"#{c}" for c in channels))
            case Resumed(channel, count) if count:
                return view.notice(f"#{channel}: caught up on {count} missed messages")
            case ResumeFailed(channel, reason):
                return view.notice(f"#{channel}: missed too much to replay ({reason}); paging it")
            case GapFilled(channel, count, complete):
                state = "" if complete else " (incomplete: resumes on the next reconnect)"
                return view.notice(f"#{channel}: read {count} missed messages{state}")
            case MessageEdited(msg):
                return view.edited_line(msg)
            case MessageDeleted(channel, message_id):
                return view.notice(f"{view.short_id(message_id)} in #{channel} was deleted")
            case Reaction(channel, message_id, emoji, user_id, op):
                verb = "reacted" if op == "add" else "took back"
                return view.notice(f"{user_id} {verb} {emoji} on {view.short_id(message_id)}")
            case PresenceChanged(channel, user_id, status):
                return view.notice(f"{user_id} is {status} in #{channel}")
            case UnknownFrame(kind, _):
                return view.notice(f"(a {kind or 'malformed'} frame this client does not know)")
        return None

    def _on_connected(self, event: Connected) -> None:
        first = self._connection == "connecting"
        self._connection = "connected"
        if self.current is not None and self.current not in event.channels:
            self.current = event.channels[0] if event.channels else None
        if first:
            channels = ", ".join(f"#{c}" for c in event.channels) or "none"
            self._screen().show(
                view.notice(f"connected as {event.user_id} to {channels}; /help lists commands")
            )
