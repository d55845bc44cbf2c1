"""The channel sequencer: contiguous ids, idempotent sends. Pure: no I/O, no asyncio.

A channel is owned by exactly one persister (``owner_index``), and that persister's
``Sequencer`` is the channel's only sequencer on the host. It numbers messages
``last_seq + 1, + 2 ...``; ``plan`` hands out numbers for a batch, and the caller
then either ``commit``s (the store wrote the batch) or ``rollback``s (it did not),
which gives the numbers back so ids stay contiguous.

Idempotency: a send whose ``(userId, clientMsgId)`` was stored in the channel in
the last ``dedupe_ttl_s`` seconds is answered with the first message and stores
nothing. The cache is loaded from the store when a channel is first touched, so a
restarted persister still dedupes.
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chime_actors.ids import format_message_id
from chime_actors.records import ChimeMessage, SendRecord, format_timestamp

DEDUPE_TTL_S = 600.0
# Bounded memory: past this many remembered client ids in one channel the oldest are
# forgotten early. 50 messages/10 s per connection x 10 min = 3,000 per sender.
MAX_DEDUPE_PER_CHANNEL = 100_000

DedupeKey = tuple[str, str]  # (user_id, client_msg_id)


def owner_index(channel_id: str, pool_size: int) -> int:
    """Which persister (0-based) sequences ``channel_id``. Stable across restarts."""
    return zlib.crc32(channel_id.encode()) % pool_size


@dataclass(slots=True)
class _ChannelSeq:
    last_seq: int
    dedupe: dict[DedupeKey, ChimeMessage] = field(default_factory=dict)
    expiry: collections.deque[tuple[float, DedupeKey]] = field(default_factory=collections.deque)


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
class Plan:
    """Ids handed out for one write. Pass it back to ``commit`` or ``rollback``."""

    items: tuple[Assigned | Duplicate, ...]
    previous_last_seq: Mapping[str, int]

    @property
    def new_messages(self) -> tuple[ChimeMessage, ...]:
        """The messages to store, in id order per channel."""
        return tuple(item.message for item in self.items if isinstance(item, Assigned))


class Sequencer:
    """Assigns ids for the channels this persister owns."""

    def __init__(self, clock: Callable[[], datetime], dedupe_ttl_s: float = DEDUPE_TTL_S) -> None:
        self._clock = clock
        self._ttl = dedupe_ttl_s
        self._channels: dict[str, _ChannelSeq] = {}

    def is_loaded(self, channel_id: str) -> bool:
        """True when the channel's last id and dedupe cache are known."""
        return channel_id in self._channels

    def dedupe_since(self) -> str:
        """The oldest creation time whose client ids still count (for the store)."""
        return format_timestamp(self._clock() - timedelta(seconds=self._ttl))

    def load(
        self, channel_id: str, last_seq: int, client_ids: Mapping[DedupeKey, ChimeMessage]
    ) -> None:
        """Install a channel's state read from the store."""
        state = _ChannelSeq(last_seq=last_seq)
        now = self._clock().timestamp()
        for key, message in sorted(client_ids.items(), key=lambda kv: kv[1].message_id):
            state.dedupe[key] = message
            state.expiry.append((now + self._ttl, key))
        self._channels[channel_id] = state

    def set_last_seq(self, channel_id: str, last_seq: int) -> None:
        """Continue numbering after ``last_seq`` (a range reserved elsewhere, e.g. Redis)."""
        self._channels[channel_id].last_seq = last_seq

    def last_seq(self, channel_id: str) -> int:
        """The last id handed out in a loaded channel (stored, or a plan in flight)."""
        return self._channels[channel_id].last_seq

    def forget(self, channel_id: str) -> None:
        """Drop a channel's state (it is re-read from the store on next use)."""
        self._channels.pop(channel_id, None)

    def forget_all(self, keep: Collection[str] = ()) -> None:
        """Drop the state of every channel but ``keep`` (each is re-read on next use)."""
        for channel_id in [c for c in self._channels if c not in keep]:
            del self._channels[channel_id]

    def plan(self, records: Sequence[tuple[int, SendRecord]]) -> Plan:
        """Give each ``(origin_gateway, record)`` an id or recognise it as a repeat.

        Every channel of ``records`` must be loaded.
        """
        now = self._clock()
        created_at = format_timestamp(now)
        previous: dict[str, int] = {}
        pending: dict[tuple[str, DedupeKey], ChimeMessage] = {}
        items: list[Assigned | Duplicate] = []
        for origin, record in records:
            state = self._channels[record.channel_id]
            self._expire(state, now.timestamp())
            key: DedupeKey | None = (
                (record.user_id, record.client_msg_id) if record.client_msg_id else None
            )
            if key is not None:
                earlier = state.dedupe.get(key)
                if earlier is not None:
                    items.append(Duplicate(origin, record, earlier, in_plan=False))
                    continue
                in_plan = pending.get((record.channel_id, key))
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
            )
            if key is not None:
                pending[(record.channel_id, key)] = message
            items.append(Assigned(origin, record, message))
        return Plan(items=tuple(items), previous_last_seq=previous)

    def commit(self, plan: Plan) -> None:
        """The plan's messages are stored: remember their client ids."""
        expires = self._clock().timestamp() + self._ttl
        for item in plan.items:
            if not isinstance(item, Assigned) or not item.record.client_msg_id:
                continue
            state = self._channels[item.message.channel_id]
            key = (item.record.user_id, item.record.client_msg_id)
            state.dedupe[key] = item.message
            state.expiry.append((expires, key))
            if len(state.dedupe) > MAX_DEDUPE_PER_CHANNEL:
                _, oldest = state.expiry.popleft()
                state.dedupe.pop(oldest, None)

    def rollback(self, plan: Plan) -> None:
        """The write failed: give the plan's ids back so the sequence stays gapless."""
        for channel_id, last_seq in plan.previous_last_seq.items():
            state = self._channels.get(channel_id)
            if state is not None:
                state.last_seq = last_seq

    @staticmethod
    def _expire(state: _ChannelSeq, now: float) -> None:
        while state.expiry and state.expiry[0][0] <= now:
            _, key = state.expiry.popleft()
            state.dedupe.pop(key, None)
