"""The channel sequencer: contiguous ids, idempotent sends. Pure: no I/O, no asyncio.

A channel is owned by exactly one persister (``owner_index``), and that persister's
``Sequencer`` is the channel's only sequencer on the host. It numbers messages
``last_seq + 1, + 2 ...``; ``plan`` hands out numbers for a batch, and the caller
then either ``commit``s (the store wrote the batch) or ``rollback``s (it did not),
which gives the numbers back so ids stay contiguous. A writer that plans the next
batch while earlier ones are still being written ``hold``s each plan until it
commits it (or, after a failed write, forgets its channels). Changes of messages
(edits, deletes, reactions), once checked (``persister.changes``), are numbered
in the same sequence: a channel's order is its messages and their changes.

Idempotency: a send whose ``(userId, clientMsgId)`` was stored in the channel in
the last ``dedupe_ttl_s`` seconds is answered with the first message and stores
nothing. The cache is loaded from the store when a channel is first touched, so a
restarted persister still dedupes.

Memory is bounded whatever senders do, across all channels:

- the cache keeps a *slim* copy of each message (ids, user, time: what an ``ack``
  needs), never its content or metadata, so a 4,000-character message costs the
  same as a short one;
- keys the gateway made for sends without a ``clientMsgId`` (``~chime:``) are
  stored with the message (so a persister restarted mid-write dedupes the
  gateway's retry, having loaded them from the store) but not remembered after
  commit: only a restarted persister ever looks them up;
- the channels' states are kept least recently used first, and past
  ``max_bytes`` (estimated, :func:`entry_bytes`) or ``max_channels`` the least
  recently used channel is forgotten whole. Nothing is lost by that: its last id
  and client ids are read from the store again on its next send;
- one channel alone keeps at most ``MAX_DEDUPE_PER_CHANNEL`` client ids (the
  oldest are forgotten early).
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from msgspec.structs import replace

from chime_actors.ids import format_message_id
from chime_actors.persister.changes import ChangeDraft
from chime_actors.records import (
    SERVER_CLIENT_MSG_ID_PREFIX,
    Attachment,
    ChangeKind,
    ChangeRecord,
    ChannelEvent,
    ChimeMessage,
    MessageChange,
    SendRecord,
    format_timestamp,
)

DEDUPE_TTL_S = 600.0
# Bounded memory: past this many remembered client ids in one channel the oldest are
# forgotten early. 50 messages/10 s per connection x 10 min = 3,000 per sender.
MAX_DEDUPE_PER_CHANNEL = 100_000
# All channels' states together (estimated bytes), and how many channels.
MAX_BYTES = 128 * 1024 * 1024
MAX_CHANNELS = 100_000
# Estimated CPython cost of one remembered client id beyond its strings: the key
# tuple, the slim ChimeMessage, dict and deque slots (measured with tracemalloc in
# tests/unit/test_sequencer.py, which keeps the estimate honest).
ENTRY_OVERHEAD_BYTES = 450
CHANNEL_OVERHEAD_BYTES = 1200

DedupeKey = tuple[str, str]  # (user_id, client_msg_id)


def owner_index(channel_id: str, pool_size: int) -> int:
    """Which persister (0-based) sequences ``channel_id``. Stable across restarts."""
    return zlib.crc32(channel_id.encode()) % pool_size


def entry_bytes(key: DedupeKey, message: ChimeMessage) -> int:
    """Estimated memory of one remembered client id (see ``ENTRY_OVERHEAD_BYTES``)."""
    return (
        ENTRY_OVERHEAD_BYTES
        + len(key[0])
        + len(key[1])
        + len(message.message_id)
        + len(message.created_at)
    )


def _numbered(draft: ChangeDraft, event_id: str, at: str) -> MessageChange:
    """The change ``draft`` asks for, at ``event_id``, made at ``at``."""
    record = draft.record
    edited = None
    if record.kind is ChangeKind.EDIT:
        assert record.content is not None  # the gateway sends it with every edit
        edited = replace(draft.target, content=record.content, edited_at=at)
    return MessageChange(
        channel_id=record.channel_id,
        event_id=event_id,
        kind=record.kind,
        message_id=record.message_id,
        user_id=record.user_id,
        at=at,
        emoji=record.emoji,
        message=edited,
    )


def _slim(message: ChimeMessage) -> ChimeMessage:
    """What a duplicate's ``ack`` needs of the first message, and nothing more."""
    if (
        not message.content
        and not message.metadata
        and message.thread_id is None
        and not message.attachments
    ):
        return message
    return replace(
        message, content="", metadata=(), thread_id=None, channel_name=None, attachments=()
    )


@dataclass(slots=True)
class _ChannelSeq:
    last_seq: int
    dedupe: dict[DedupeKey, ChimeMessage] = field(default_factory=dict)
    expiry: collections.deque[tuple[float, DedupeKey]] = field(default_factory=collections.deque)
    bytes: int = CHANNEL_OVERHEAD_BYTES
    # Client ids of held plans (written, not yet committed): a repeat shares their
    # fate. Bounded by the writes in flight (``hold``).
    in_flight: dict[DedupeKey, ChimeMessage] = field(default_factory=dict)
    # Held plans numbering this channel: while any is, the channel is never
    # forgotten (reloading it from storage before their rows land would hand
    # out their ids again).
    holds: int = 0


@dataclass(frozen=True, slots=True)
class Assigned:
    """A record that got a new id; stored by the caller."""

    origin: int
    record: SendRecord
    message: ChimeMessage


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A record that repeats an earlier send; answered with ``message``, not stored."""

    origin: int
    record: SendRecord
    message: ChimeMessage
    # True when the original is in this same plan (so it shares the plan's fate).
    in_plan: bool


@dataclass(frozen=True, slots=True)
class Changed:
    """A checked change that got an id of its own; stored by the caller."""

    origin: int
    record: ChangeRecord
    change: MessageChange


PlanItem = Assigned | Duplicate | Changed


@dataclass(frozen=True, slots=True)
class Plan:
    """Ids handed out for one write. Pass it back to ``commit`` or ``rollback``."""

    items: tuple[PlanItem, ...]
    previous_last_seq: Mapping[str, int]

    @property
    def new_messages(self) -> tuple[ChimeMessage, ...]:
        """The messages to store, in id order per channel."""
        return tuple(item.message for item in self.items if isinstance(item, Assigned))

    @property
    def new_events(self) -> tuple[ChannelEvent, ...]:
        """The messages and changes to store (and deliver), in id order per channel."""
        events: list[ChannelEvent] = []
        for item in self.items:
            if isinstance(item, Assigned):
                events.append(item.message)
            elif isinstance(item, Changed):
                events.append(item.change)
        return tuple(events)


class Sequencer:
    """Assigns ids for the channels this persister owns."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        dedupe_ttl_s: float = DEDUPE_TTL_S,
        *,
        max_bytes: int = MAX_BYTES,
        max_channels: int = MAX_CHANNELS,
        max_dedupe_per_channel: int = MAX_DEDUPE_PER_CHANNEL,
    ) -> None:
        self._clock = clock
        self._ttl = dedupe_ttl_s
        self._max_bytes = max_bytes
        self._max_channels = max_channels
        self._max_per_channel = max_dedupe_per_channel
        # Least recently used first (see the module docstring).
        self._channels: collections.OrderedDict[str, _ChannelSeq] = collections.OrderedDict()
        self._bytes = 0

    @property
    def memory_bytes(self) -> int:
        """Estimated memory of every channel's state (bounded by ``max_bytes``)."""
        return self._bytes

    @property
    def loaded_channels(self) -> int:
        """How many channels' states are held (bounded by ``max_channels``)."""
        return len(self._channels)

    def is_loaded(self, channel_id: str) -> bool:
        """True when the channel's last id and dedupe cache are known."""
        return channel_id in self._channels

    def dedupe_since(self) -> str:
        """The oldest creation time whose client ids still count (for the store)."""
        return format_timestamp(self._clock() - timedelta(seconds=self._ttl))

    def load(
        self, channel_id: str, last_seq: int, client_ids: Mapping[DedupeKey, ChimeMessage]
    ) -> None:
        """Install a channel's state read from the store (the newest client ids)."""
        self.forget(channel_id)
        state = _ChannelSeq(last_seq=last_seq)
        now = self._clock().timestamp()
        newest = sorted(client_ids.items(), key=lambda kv: kv[1].message_id)
        for key, message in newest[-self._max_per_channel :]:
            self._remember(state, key, message, now + self._ttl)
        self._channels[channel_id] = state
        self._bytes += state.bytes

    def set_last_seq(self, channel_id: str, last_seq: int) -> None:
        """Continue numbering after ``last_seq`` (a range reserved elsewhere, e.g. Redis)."""
        self._channels[channel_id].last_seq = last_seq

    def last_seq(self, channel_id: str) -> int:
        """The last id handed out in a loaded channel (stored, or a plan in flight)."""
        return self._channels[channel_id].last_seq

    def forget(self, channel_id: str) -> None:
        """Drop a channel's state (it is re-read from the store on next use)."""
        state = self._channels.pop(channel_id, None)
        if state is not None:
            self._bytes -= state.bytes

    def forget_all(self, keep: Collection[str] = ()) -> None:
        """Drop the state of every channel but ``keep`` (each is re-read on next use)."""
        for channel_id in [c for c in self._channels if c not in keep]:
            self.forget(channel_id)

    def plan(
        self,
        records: Sequence[tuple[int, SendRecord | ChangeDraft]],
        attachments: Mapping[str, Attachment] | None = None,
    ) -> Plan:
        """Give each ``(origin_gateway, record)`` an id or recognise it as a repeat.

        A send gets a message id (or is a repeat); a checked change
        (``ChangeDraft``) gets an id of its own in the same sequence. Every
        channel of ``records`` must be loaded, and every attachment id a send
        lists must be in ``attachments`` (checked: ``persister.attachments``).
        """
        now = self._clock()
        created_at = format_timestamp(now)
        previous: dict[str, int] = {}
        pending: dict[tuple[str, DedupeKey], ChimeMessage] = {}
        items: list[PlanItem] = []
        for origin, entry in records:
            state = self._channels[entry.channel_id]
            self._channels.move_to_end(entry.channel_id)
            if isinstance(entry, ChangeDraft):
                previous.setdefault(entry.channel_id, state.last_seq)
                state.last_seq += 1
                change = _numbered(entry, format_message_id(state.last_seq), created_at)
                items.append(Changed(origin, entry.record, change))
                continue
            record = entry
            self._expire(state, now.timestamp())
            key: DedupeKey | None = (
                (record.user_id, record.client_msg_id) if record.client_msg_id else None
            )
            if key is not None:
                earlier = state.dedupe.get(key)
                if earlier is not None:
                    items.append(Duplicate(origin, record, earlier, in_plan=False))
                    continue
                # Its first send is being written: the repeat shares that write's
                # fate, which a writer releasing plans in order gives it
                # (``hold``): this plan is answered as stored only if that was.
                in_plan = state.in_flight.get(key) or pending.get((record.channel_id, key))
                if in_plan is not None:
                    items.append(Duplicate(origin, record, in_plan, in_plan=True))
                    continue
            previous.setdefault(record.channel_id, state.last_seq)
            state.last_seq += 1
            message = ChimeMessage(
                channel_id=record.channel_id,
                message_id=format_message_id(state.last_seq),
                user_id=record.user_id,
                content=record.content,
                created_at=created_at,
                metadata=record.metadata,
                thread_id=record.thread_id,
                client_msg_id=record.client_msg_id,
                attachments=(
                    tuple((attachments or {})[i] for i in record.attachments)
                    if record.attachments
                    else ()
                ),
            )
            if key is not None:
                pending[(record.channel_id, key)] = message
            items.append(Assigned(origin, record, message))
        return Plan(items=tuple(items), previous_last_seq=previous)

    def hold(self, plan: Plan) -> None:
        """The plan is being written while later ones are planned (overlapped writes).

        Until it is committed (or its channels forgotten), a repeat of one of its
        client ids is a ``Duplicate`` with ``in_plan`` (it shares the plan's fate:
        the caller must answer a later plan as stored only if this one was), and
        its channels are never forgotten to make room. Give every held plan to
        ``commit``, or forget its channels (``forget``) once no write is in flight.
        """
        for channel_id in plan.previous_last_seq:
            self._channels[channel_id].holds += 1
        for item in plan.items:
            if isinstance(item, Assigned) and item.record.client_msg_id:
                state = self._channels[item.message.channel_id]
                state.in_flight[(item.record.user_id, item.record.client_msg_id)] = item.message

    def commit(self, plan: Plan, *, held: bool = False) -> None:
        """The plan's messages are stored: remember their client ids.

        ``held``: the plan was given to ``hold``; its hold ends here. A channel
        forgotten meanwhile is skipped (it is read from the store again).
        """
        expires = self._clock().timestamp() + self._ttl
        if held:
            for channel_id in plan.previous_last_seq:
                held_state = self._channels.get(channel_id)
                if held_state is not None:
                    held_state.holds -= 1
        for item in plan.items:
            if not isinstance(item, Assigned) or not item.record.client_msg_id:
                continue
            cmid = item.record.client_msg_id
            state = self._channels.get(item.message.channel_id)
            if state is None:
                continue
            if held:
                state.in_flight.pop((item.record.user_id, cmid), None)
            if cmid.startswith(SERVER_CLIENT_MSG_ID_PREFIX):
                continue  # looked up only by a restarted persister, from the store
            before = state.bytes
            self._remember(state, (item.record.user_id, cmid), item.message, expires)
            self._bytes += state.bytes - before
        self._shrink(protect={item.record.channel_id for item in plan.items})

    def rollback(self, plan: Plan) -> None:
        """The write failed: give the plan's ids back so the sequence stays gapless."""
        for channel_id, last_seq in plan.previous_last_seq.items():
            state = self._channels.get(channel_id)
            if state is not None:
                state.last_seq = last_seq

    def _remember(
        self, state: _ChannelSeq, key: DedupeKey, message: ChimeMessage, expires: float
    ) -> None:
        slim = _slim(message)
        if key in state.dedupe:
            state.bytes -= entry_bytes(key, state.dedupe[key])
        state.dedupe[key] = slim
        state.bytes += entry_bytes(key, slim)
        state.expiry.append((expires, key))
        while len(state.dedupe) > self._max_per_channel:
            self._drop_oldest(state)

    @staticmethod
    def _drop_oldest(state: _ChannelSeq) -> None:
        _, key = state.expiry.popleft()
        message = state.dedupe.pop(key, None)
        if message is not None:
            state.bytes -= entry_bytes(key, message)

    def _expire(self, state: _ChannelSeq, now: float) -> None:
        before = state.bytes
        while state.expiry and state.expiry[0][0] <= now:
            self._drop_oldest(state)
        self._bytes += state.bytes - before

    def _shrink(self, protect: set[str]) -> None:
        """Forget least recently used channels until within both bounds."""
        if self._bytes <= self._max_bytes and len(self._channels) <= self._max_channels:
            return  # the usual case, checked before copying the keys (every commit)
        for channel_id in list(self._channels):
            if self._bytes <= self._max_bytes and len(self._channels) <= self._max_channels:
                return
            if channel_id not in protect and not self._channels[channel_id].holds:
                self.forget(channel_id)
