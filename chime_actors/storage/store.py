"""The ``MessageStore`` interface: what the actors need from durable storage.

The store persists and reads; it never numbers messages. Each channel has one
sequencer (its persister actor) that assigns contiguous ids 1, 2, 3 ... (see
``chime_actors.ids``) and hands finished ``ChimeMessage`` records to ``append``.
A duplicate sequence number would mean two sequencers for one channel, so the
store refuses it loudly instead of overwriting.

Every method is a coroutine because its callers run on asyncio loops; an
implementation must never block the loop. Failures are ``StoreError`` (see
``chime_actors.errors``): ``StoreUnavailable`` when storage is down or a call
timed out, ``MessageNotFound`` for an unknown or deleted message.

Shared conventions of every implementation:

* A channel's order holds messages and *changes* of them (``MessageChange``:
  edits, deletes, reactions added or removed), numbered by the same sequencer:
  every number is one or the other. ``append`` stores both; a change is stored
  at its own number (a row like a message's, flagged deleted and marked with its
  kind, so no reader of messages ever returns it) and applied to the message it
  names in the same call.
* Deleted messages keep their sequence number (ids stay contiguous) but are never
  returned by ``history``, ``get_message`` or ``events_range``.
* Edits overwrite ``content`` and ``edited_at``; readers always see the last edit.
* ``message_counters`` counts appended messages per channel (for stats); deletes
  and changes do not change it.
* A message's ``attachments`` are stored with it, and each of them indexed under
  the message's channel in the same write; a delete drops that index entry. The
  index is what ``AttachmentStore.attachment_channels`` reads
  (``storage.attachments``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from chime_actors.errors import MessageNotFound
from chime_actors.ids import format_message_id, parse_message_id
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange

#: Key of a send in the idempotency window: ``(user_id, client_msg_id)``.
ClientKey = tuple[str, str]

#: ``reactions()`` result: message id -> emoji -> user ids (sorted).
ReactionMap = Mapping[str, Mapping[str, tuple[str, ...]]]

#: ``reply_counts()`` result: message id -> live replies in its thread (> 0).
ReplyCounts = Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a channel's sequencer needs to resume numbering after a restart.

    Attributes:
        last_seq: the highest sequence number stored for the channel, 0 if none
            (deleted messages count: their numbers stay taken).
        client_ids: stored sends that carried a ``client_msg_id`` and were created
            at or after the ``dedupe_since`` cutoff, keyed by
            ``(user_id, client_msg_id)``. Deleted messages are included: a retried
            send of a since-deleted message must still not be stored twice.
    """

    last_seq: int
    client_ids: Mapping[ClientKey, ChimeMessage]


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a channel's history.

    Attributes:
        messages: oldest first.
        has_more: True when more matching messages exist in the paging direction
            (older ones for a newest-first page, newer ones for an ``after`` page).
        reactions: the page's reactions (``MessageStore.reactions``); empty as a
            store returns the page, filled by :func:`annotated_history`.
        reply_counts: the replies of the page's thread roots
            (``MessageStore.reply_counts``); likewise.
    """

    messages: tuple[ChimeMessage, ...]
    has_more: bool
    reactions: ReactionMap = field(default_factory=dict)
    reply_counts: ReplyCounts = field(default_factory=dict)


class MessageStore(Protocol):
    """Durable storage for chat messages and their annotations.

    Implementations: ``SqliteStore`` (embedded default), ``CassandraStore``
    (production, docs/operations.md) and ``MemoryStore`` (the fake for unit
    tests). All share the contract tested by ``tests/store_contract.py``.

    Every method has a caller in the server (none is kept for tests alone).
    """

    async def open(self) -> None:
        """Connect and create the schema if missing (idempotent across processes).

        Raises:
            StoreUnavailable: storage cannot be reached or opened.
        """

    async def close(self) -> None:
        """Release every connection and thread; safe to call twice."""

    async def ping(self) -> None:
        """Check storage answers.

        Raises:
            StoreUnavailable: it does not.
        """

    async def load_channel_state(self, channel_id: str, *, dedupe_since: str) -> ChannelState:
        """Return the channel's last sequence number and its recent client ids.

        Args:
            channel_id: the channel.
            dedupe_since: ISO-8601 timestamp in the wire format; sends created at
                or after it are returned (the fixed width makes string order time
                order).
        """

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        """Store a batch of messages and changes atomically: all of them or none.

        Each message's ``client_msg_id`` is then found by
        ``load_channel_state`` (a newer send with the same key counts over an
        older one), and the channel's message counter is added to. The batch
        may span channels.

        Each ``MessageChange`` is stored at its ``event_id`` and applied, in batch
        order, to the message it names: an edit replaces ``content`` and
        ``edited_at``, a delete flags the message and drops its reactions, a
        reaction is added or removed (idempotently). Whether the change is
        allowed is the caller's (the persister's) business; a change of a
        message that is not live is stored and changes nothing.

        Raises:
            StoreError: a sequence number is already taken (two sequencers for
                one channel: never silently overwritten). Nothing was stored.
            StoreUnavailable: storage is down; nothing was stored.
        """

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
        thread_id: str | None = None,
    ) -> HistoryPage:
        """Return one page of non-deleted messages, oldest first.

        * neither cursor: the newest ``limit``; ``has_more`` when older exist.
        * ``before`` only: the newest ``limit`` with id < ``before``; ``has_more``
          when older exist.
        * ``after`` only (also what resume uses): the oldest ``limit`` with
          id > ``after``; ``has_more`` when newer exist.
        * both: ids strictly between, the oldest ``limit`` of them; ``has_more``
          when more exist between the last one returned and ``before``.

        Args:
            channel_id: the channel.
            before: exclusive upper bound (a message id), or None.
            after: exclusive lower bound (a message id), or None.
            limit: page size, at least 1 (the protocol layer enforces 1..100).
            thread_id: when set, only the thread: messages whose ``thread_id`` is
                this id plus the root message itself (``message_id == thread_id``),
                so a client renders the thread with its root from one page.

        Raises:
            ValueError: ``limit`` < 1 or a cursor is not a message id (callers
                validate both before asking).
        """

    async def get_message(self, channel_id: str, message_id: str) -> ChimeMessage:
        """Return one message as last edited.

        Raises:
            MessageNotFound: unknown, malformed or deleted id.
        """

    async def events_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChannelEvent, ...]:
        """Return the events with ``after_seq < seq <= up_to_seq``, ascending.

        Events are the live messages and every change. Gateways use it to fill
        a gap in a live stream, to catch a subscriber up and to replay a
        resume. Deleted messages are left out, so a sequence number missing
        from the result means "deleted".
        """

    async def last_seq(self, channel_id: str) -> int:
        """Return the highest stored sequence number of the channel, 0 if none.

        Changes count: their numbers are the channel's too.
        """

    async def reactions(self, channel_id: str, message_ids: Sequence[str]) -> ReactionMap:
        """Return the reactions of the given messages.

        ``ChimeMessage`` has no reactions field (records stay lean on the hot
        path), so history callers fetch them with this call for the page's ids.
        Messages without reactions are absent from the result; emojis and user
        ids are sorted by code point so every implementation answers the same.
        """

    async def reply_counts(self, channel_id: str, message_ids: Sequence[str]) -> ReplyCounts:
        """Return how many live replies the threads rooted at ``message_ids`` have.

        A reply is a live message whose ``thread_id`` is the root's id (a root
        that names itself is not its own reply). Ids without replies are absent.
        """

    async def set_read_marker(self, channel_id: str, user_id: str, message_id: str) -> None:
        """Record that the user has read the channel up to ``message_id``.

        The marker only moves forward: two devices of one user racing cannot
        make read messages unread again. Nothing reads a marker back but
        ``unread_counts``: no frame or route hands it out.
        """

    # --- channel handlers (chime_actors.handlers.after_store) -------------------

    async def channel_ids(self) -> tuple[str, ...]:
        """Return every channel that has stored messages, sorted.

        A scan of every channel: ``after_store`` handlers call it when their
        process starts, to find what was stored while they were down.
        """

    async def handler_cursors(self, handler: str) -> Mapping[str, int]:
        """Return the handler's durable cursors: key (a channel id) -> last seq confirmed."""

    async def save_handler_cursors(
        self, handler: str, cursors: Mapping[str, int], *, fence: int | None = None
    ) -> None:
        """Record the handler's cursors; each only moves forward (a lower value is ignored).

        Keys are channel ids, or any other text the handler uses (its
        registration marker is ``*``, which no channel id can be).

        With ``fence`` (a host holding the handler's lease, ``handlers/lease.py``)
        the write is applied only while ``fence`` is the handler's stored fence
        (``claim_handler_fence``), atomically with that check: a holder that
        lost its lease cannot write over the progress of the next one. A holder
        only ever writes a cursor higher than it read or wrote before; the
        Cassandra store relies on that and stores a lower one as it is.

        Raises:
            FencedOut: with ``fence``, another fence is stored; nothing was written.
        """

    async def claim_handler_fence(self, handler: str, fence: int) -> None:
        """Make ``fence`` the handler's stored fence unless a higher one is stored.

        Claiming the fence already stored succeeds again (a retried claim). From
        then on only writes that carry ``fence`` (or a later claimer's) apply.

        Raises:
            FencedOut: a higher fence is stored (its value is in the exception).
        """

    async def unread_counts(
        self, user_id: str, channel_ids: Sequence[str], *, limit: int
    ) -> dict[str, int]:
        """Count what the user has not read yet in each channel.

        The count of a channel is the number of its non-deleted messages after
        the user's read marker (every message when the user never set one) that
        other users sent: one's own messages are never unread. It stops at
        ``limit``: ``limit`` means "at least that many", and no store reads more
        rows of a channel than ``limit`` and the user's own messages among them.

        Args:
            user_id: whose read markers.
            channel_ids: the channels to count (each appears once in the result).
            limit: the most a count can be, at least 1.
        """


# --- helpers shared by the implementations ----------------------------------


async def annotated_history(
    store: MessageStore,
    channel_id: str,
    *,
    before: str | None,
    after: str | None,
    limit: int,
    thread_id: str | None,
) -> HistoryPage:
    """A page of history with its messages' reactions and reply counts.

    What history answers (WebSocket and REST): three reads, the last two
    together once the page's ids are known.
    """
    page = await store.history(
        channel_id, before=before, after=after, limit=limit, thread_id=thread_id
    )
    if not page.messages:
        return page
    ids = [message.message_id for message in page.messages]
    reactions, reply_counts = await asyncio.gather(
        store.reactions(channel_id, ids), store.reply_counts(channel_id, ids)
    )
    return replace(page, reactions=reactions, reply_counts=reply_counts)


def check_history_args(before: str | None, after: str | None, limit: int) -> tuple[int, int | None]:
    """Validate ``history`` arguments; return ``(after_seq, before_seq)``.

    ``after_seq`` is 0 without an ``after`` cursor (sequence numbers start at 1).

    Raises:
        ValueError: ``limit`` < 1 or a cursor is not a message id.
    """
    if limit < 1:
        raise ValueError(f"history limit must be at least 1, got {limit}")
    after_seq = parse_message_id(after) if after is not None else 0
    before_seq = parse_message_id(before) if before is not None else None
    return after_seq, before_seq


def seq_of(channel_id: str, message_id: str) -> int:
    """Return the sequence number of ``message_id``.

    Raises:
        MessageNotFound: the id is malformed, so no such message can exist.
    """
    try:
        return parse_message_id(message_id)
    except ValueError as exc:
        raise MessageNotFound(f"no message {message_id!r} in channel {channel_id!r}") from exc


def not_found(channel_id: str, message_id: str) -> MessageNotFound:
    """The ``MessageNotFound`` every implementation raises, with one wording."""
    return MessageNotFound(f"no message {message_id!r} in channel {channel_id!r}")


def change_row(change: MessageChange) -> ChimeMessage:
    """The stored row of a change, in a message's columns, at the change's number.

    An edit's row is the message as edited (so a replay carries the whole of
    it); a delete's or a reaction's holds who and when, and a reaction's
    ``content`` is its emoji. ``edited_at`` is always the change's time.
    """
    if change.kind is ChangeKind.EDIT:
        assert change.message is not None  # every edit carries the edited message
        return ChimeMessage(
            channel_id=change.channel_id,
            message_id=change.event_id,
            user_id=change.message.user_id,
            content=change.message.content,
            created_at=change.message.created_at,
            edited_at=change.at,
            metadata=change.message.metadata,
            thread_id=change.message.thread_id,
            client_msg_id=change.message.client_msg_id,
            channel_name=change.message.channel_name,
            attachments=change.message.attachments,
        )
    return ChimeMessage(
        channel_id=change.channel_id,
        message_id=change.event_id,
        user_id=change.user_id,
        content=change.emoji or "",
        created_at=change.at,
        edited_at=change.at,
    )


def change_from_row(row: ChimeMessage, kind: str, target_seq: int) -> MessageChange:
    """The ``MessageChange`` a row made by ``change_row`` holds.

    Raises:
        ValueError: ``kind`` is not a ``ChangeKind`` value.
    """
    change_kind = ChangeKind(kind)
    target = format_message_id(target_seq)
    at = row.edited_at or row.created_at
    if change_kind is ChangeKind.EDIT:
        edited = ChimeMessage(
            channel_id=row.channel_id,
            message_id=target,
            user_id=row.user_id,
            content=row.content,
            created_at=row.created_at,
            edited_at=at,
            metadata=row.metadata,
            thread_id=row.thread_id,
            client_msg_id=row.client_msg_id,
            channel_name=row.channel_name,
            attachments=row.attachments,
        )
        return MessageChange(
            row.channel_id, row.message_id, change_kind, target, row.user_id, at, message=edited
        )
    emoji = (
        row.content
        if change_kind in (ChangeKind.REACTION_ADD, ChangeKind.REACTION_REMOVE)
        else None
    )
    return MessageChange(
        row.channel_id, row.message_id, change_kind, target, row.user_id, at, emoji=emoji
    )
