"""The client's bookkeeping, sans I/O: frames in, events and frames out.

:class:`ClientState` knows, across connections, what a client must remember to
reconnect without gaps, duplicates or lost sends:

* the last ``messageId`` seen per channel: the ``resume`` of the next connect,
  and the dedupe line (a message at or below it is dropped: it was delivered);
* the sends not acked yet, each with its ``clientMsgId``: after a reconnect
  they are sent again, unchanged (the server's idempotency acks a stored one
  with its first id and stores nothing twice);
* the channels subscribed, which the next connect asks for again;
* after ``resume_failed``, the gap being paged from history while the channel's
  live messages wait in a bounded buffer behind it.

It does no I/O and keeps no time: ``receive(frame)`` returns the events to
deliver, ``take_outgoing()`` the frames to write. ``ChimeClient`` drives it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from chime_actors.client.events import (
    Ack,
    Connected,
    Error,
    Event,
    GapFilled,
    History,
    Message,
    Resumed,
    ResumeFailed,
    Subscribed,
    Unsubscribed,
    parse_event,
)
from chime_actors.errors import NotConnected, TooManyPending

MAX_PENDING_SENDS = 1000
MAX_GAP_BUFFER = 10_000
MAX_OUTGOING = 10_000  # frames queued for one connection's writer
GAP_PAGE = 100  # history's largest page (docs/protocol.md: limit 1..100)

Frame = dict[str, Any]


def new_client_msg_id() -> str:
    """A fresh idempotency key for a send."""
    return f"c-{uuid.uuid4().hex}"


def is_newer(message_id: str, than: str) -> bool:
    """Whether ``message_id`` comes after ``than`` in its channel.

    docs/protocol.md: all ids of a channel have one length and compare as strings;
    comparing the length first also orders ids of different widths numerically.
    """
    return (len(message_id), message_id) > (len(than), than)


@dataclass(frozen=True, slots=True)
class PendingSend:
    """A send not acked yet; ``frame`` is written again, as it is, after a reconnect."""

    client_msg_id: str
    channel_id: str
    content: str
    frame: Mapping[str, Any]


@dataclass(slots=True)
class _GapFill:
    """A channel whose missed messages are being paged from history."""

    request_id: str
    delivered: int = 0
    live: list[Message] = field(default_factory=list)


class ClientState:
    """What a Chime client remembers across connections (see the module docstring).

    Args:
        channels: the channels to join on the first connect.
        user_id: insecure mode's ``userId`` (None: the token's, or one the server makes).
        token: a JWT, sent in every connect.
        max_pending: bound on unacked sends; past it ``send`` raises ``TooManyPending``.
        max_gap_buffer: bound on live messages held behind a gap being paged.
        new_id: makes ``clientMsgId`` values (injectable for tests).
    """

    def __init__(
        self,
        channels: Iterable[str] = (),
        *,
        user_id: str | None = None,
        token: str | None = None,
        max_pending: int = MAX_PENDING_SENDS,
        max_gap_buffer: int = MAX_GAP_BUFFER,
        new_id: Callable[[], str] = new_client_msg_id,
    ) -> None:
        # dicts as ordered sets: the connect names channels in the order joined.
        self._channels: dict[str, None] = dict.fromkeys(channels)
        self._requested_user = user_id
        self.token = token
        self._max_pending = max_pending
        self._max_gap_buffer = max_gap_buffer
        self._new_id = new_id
        self._last_seen: dict[str, str] = {}
        self._pending: dict[str, PendingSend] = {}
        self._outgoing: list[Frame] = []
        self._replaying: set[str] = set()
        self._gaps: dict[str, _GapFill] = {}
        self._gap_requests: dict[str, str] = {}  # requestId -> channel
        self._request_seq = 0
        self._connections = 0
        self._open = False
        self.user_id: str | None = user_id

    # --- what it knows ------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether a connection is open (its ``connected`` received, not lost since)."""
        return self._open

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels subscribed (or to subscribe on the next connect)."""
        return tuple(self._channels)

    @property
    def last_seen(self) -> dict[str, str]:
        """The last messageId delivered per channel (a copy)."""
        return dict(self._last_seen)

    @property
    def pending(self) -> tuple[PendingSend, ...]:
        """Sends not acked yet, oldest first."""
        return tuple(self._pending.values())

    # --- connection lifecycle -----------------------------------------------------------

    def connect_frame(self) -> Frame:
        """The ``connect`` for a new connection: channels, identity, resume points."""
        frame: Frame = {"type": "connect", "channels": list(self._channels)}
        if self._requested_user is not None:
            frame["userId"] = self._requested_user
        if self.token is not None:
            frame["token"] = self.token
        resume = {c: self._last_seen[c] for c in self._channels if c in self._last_seen}
        if resume:
            frame["resume"] = resume
        # Only channels with a resume point replay; messages that arrive before
        # their ``resumed`` are marked ``replayed``.
        self._replaying = set(resume)
        self._outgoing.clear()
        return frame

    def connection_lost(self) -> list[Event]:
        """The connection is gone: per-connection state is dropped.

        A gap being paged is abandoned, and the live messages held behind it are
        dropped undelivered: ``last_seen`` stays at the gap's start, so the next
        connect's resume asks for all of them again.
        """
        self._open = False
        self._outgoing.clear()
        self._replaying.clear()
        self._gap_requests.clear()
        events: list[Event] = [
            GapFilled(channel, gap.delivered, complete=False) for channel, gap in self._gaps.items()
        ]
        self._gaps.clear()
        return events

    def take_outgoing(self) -> list[Frame]:
        """Frames to write now, in order (emptied by the call)."""
        frames, self._outgoing = self._outgoing, []
        return frames

    # --- what the application asks for ----------------------------------------------------

    def send(
        self,
        channel_id: str,
        content: str,
        *,
        client_msg_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        thread_id: str | None = None,
        attachments: Iterable[str] | None = None,
    ) -> PendingSend:
        """Record a send (written now if open, else after the next ``connected``).

        Raises:
            TooManyPending: ``max_pending`` sends are unacked already.
            ValueError: ``client_msg_id`` is the id of a send still pending.
        """
        if len(self._pending) >= self._max_pending:
            raise TooManyPending(f"{len(self._pending)} sends are waiting for their ack")
        client_msg_id = client_msg_id or self._new_id()
        if client_msg_id in self._pending:
            raise ValueError(f"a send with clientMsgId {client_msg_id!r} is still pending")
        frame: Frame = {
            "type": "send",
            "channelId": channel_id,
            "content": content,
            "clientMsgId": client_msg_id,
        }
        if metadata:
            frame["metadata"] = dict(metadata)
        if thread_id is not None:
            frame["threadId"] = thread_id
        if attachments is not None:
            frame["attachments"] = list(attachments)
        pending = PendingSend(client_msg_id, channel_id, content, frame)
        self._pending[client_msg_id] = pending
        if self._open:
            self._outgoing.append(dict(frame))
        return pending

    def new_request_id(self) -> str:
        """A ``requestId`` unique within this client."""
        self._request_seq += 1
        return f"r{self._request_seq}"

    def request(self, frame: Frame) -> None:
        """Queue a request frame (history, presence, edit ...) on the open connection.

        Raises:
            NotConnected: no connection is open; requests are not kept for later.
            TooManyPending: ``MAX_OUTGOING`` frames wait to be written already.
        """
        if not self._open:
            raise NotConnected("not connected: the request was not sent")
        if len(self._outgoing) >= MAX_OUTGOING:
            raise TooManyPending(f"{len(self._outgoing)} frames are waiting to be written")
        self._outgoing.append(frame)

    def subscribe(self, channels: Iterable[str]) -> bool:
        """Join ``channels`` now (if open) and on every later connect.

        Returns whether a ``subscribe`` frame was queued (False: not connected;
        the next connect asks for them).
        """
        wanted = list(dict.fromkeys(channels))
        self._channels.update(dict.fromkeys(wanted))
        if self._open and wanted:
            self._outgoing.append({"type": "subscribe", "channels": wanted})
            return True
        return False

    def unsubscribe(self, channels: Iterable[str]) -> bool:
        """Leave ``channels``: forget their resume points; queue ``unsubscribe`` if open."""
        leaving = list(dict.fromkeys(channels))
        for channel in leaving:
            self._forget(channel)
        if self._open and leaving:
            self._outgoing.append({"type": "unsubscribe", "channels": leaving})
            return True
        return False

    # --- what the server says -----------------------------------------------------------

    def receive(self, frame: Mapping[str, Any]) -> list[Event]:
        """Take one server frame; return the events to deliver (maybe none)."""
        event = parse_event(frame)
        match event:
            case Connected():
                return [self._on_connected(event)]
            case Message():
                return self._on_message(event)
            case Ack():
                if event.client_msg_id is not None:
                    self._pending.pop(event.client_msg_id, None)
                return [event]
            case Error():
                return self._on_error(event)
            case Resumed():
                self._replaying.discard(event.channel_id)
                return [event]
            case ResumeFailed():
                return self._on_resume_failed(event)
            case History() if event.request_id in self._gap_requests:
                return self._on_gap_page(event)
            case Subscribed():
                self._channels.update(dict.fromkeys(event.channels))
                return [event]
            case Unsubscribed():
                for channel in event.channels:
                    self._forget(channel)
                return [event]
        return [event]

    def _on_connected(self, event: Connected) -> Connected:
        self._open = True
        reconnect = self._connections > 0
        self._connections += 1
        self.user_id = event.user_id
        # The server's list is the truth: a channel it refused is not asked again.
        for channel in [c for c in self._channels if c not in event.channels]:
            self._forget(channel)
        self._channels = dict.fromkeys(event.channels)
        self._replaying &= set(event.channels)
        # Every unacked send goes again, unchanged: one stored before the drop is
        # acked with its first id and not stored twice (docs/protocol.md idempotency).
        self._outgoing.extend(dict(p.frame) for p in self._pending.values())
        return replace(event, reconnect=reconnect)

    def _on_message(self, event: Message) -> list[Event]:
        msg = event.message
        channel = msg.channel_id
        last = self._last_seen.get(channel)
        if last is not None and not is_newer(msg.message_id, last):
            return []  # delivered already (a replay overlapping what we had)
        gap = self._gaps.get(channel)
        if gap is not None:
            if len(gap.live) < self._max_gap_buffer:
                gap.live.append(event)
                return []
            # Too much live traffic behind the gap: give up paging, deliver what waits.
            return self._end_gap(channel, complete=False) + self._on_message(event)
        if channel in self._channels:
            self._last_seen[channel] = msg.message_id
        return [Message(msg, replayed=channel in self._replaying)]

    def _on_error(self, event: Error) -> list[Event]:
        if event.client_msg_id is not None:
            # Settled: an error on a send means it was not stored (docs/protocol.md).
            self._pending.pop(event.client_msg_id, None)
        channel = self._gap_requests.pop(event.request_id or "", None)
        if channel is not None and channel in self._gaps:
            # History failed (storage unavailable): deliver what waits, say it is partial.
            return [event, *self._end_gap(channel, complete=False)]
        return [event]

    def _on_resume_failed(self, event: ResumeFailed) -> list[Event]:
        channel = event.channel_id
        self._replaying.discard(channel)
        after = self._last_seen.get(channel)
        if after is None or channel not in self._channels or channel in self._gaps:
            return [event]
        gap = _GapFill(self._gap_request(channel, after))
        self._gaps[channel] = gap
        return [event]

    def _gap_request(self, channel: str, after: str) -> str:
        request_id = f"gap-{self.new_request_id()}"
        self._gap_requests[request_id] = channel
        self._outgoing.append(
            {
                "type": "history",
                "requestId": request_id,
                "channelId": channel,
                "after": after,
                "limit": GAP_PAGE,
            }
        )
        return request_id

    def _on_gap_page(self, page: History) -> list[Event]:
        assert page.request_id is not None
        self._gap_requests.pop(page.request_id, None)
        channel = page.channel_id
        gap = self._gaps.get(channel)
        if gap is None or gap.request_id != page.request_id:
            return []  # the channel was left meanwhile
        events: list[Event] = []
        first_live = gap.live[0].message.message_id if gap.live else None
        reached_live = False
        for msg in page.messages:
            if first_live is not None and not is_newer(first_live, msg.message_id):
                reached_live = True  # from here on the live copies are delivered
                break
            last = self._last_seen.get(channel)
            if last is None or is_newer(msg.message_id, last):
                self._last_seen[channel] = msg.message_id
                gap.delivered += 1
                events.append(Message(msg, replayed=True))
        if page.has_more and page.messages and not reached_live:
            gap.request_id = self._gap_request(channel, self._last_seen[channel])
            return events
        return events + self._end_gap(channel, complete=True)

    def _end_gap(self, channel: str, *, complete: bool) -> list[Event]:
        gap = self._gaps.pop(channel)
        self._gap_requests.pop(gap.request_id, None)
        events: list[Event] = [GapFilled(channel, gap.delivered, complete)]
        for live in gap.live:
            events.extend(self._on_message(live))
        return events

    def _forget(self, channel: str) -> None:
        self._channels.pop(channel, None)
        self._last_seen.pop(channel, None)
        self._replaying.discard(channel)
        gap = self._gaps.pop(channel, None)
        if gap is not None:
            self._gap_requests.pop(gap.request_id, None)
