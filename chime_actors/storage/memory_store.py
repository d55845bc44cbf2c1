"""An in-memory ``MessageStore`` for unit tests of the actors.

It keeps the exact semantics of ``SqliteStore`` (the shared contract suite in
``tests/store_contract.py`` runs against both) and adds outage switches, so a
test can make storage fail on demand without mocks:

    store.fail_next(2)          # the next two calls raise StoreUnavailable
    store.set_available(False)  # every call raises until set_available(True)
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec

from chime_actors.errors import FencedOut, StoreError, StoreUnavailable
from chime_actors.ids import parse_message_id
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange
from chime_actors.storage.attachments import AttachmentStore, StoredAttachment
from chime_actors.storage.store import (
    ChannelState,
    ClientKey,
    HistoryPage,
    MessageStore,
    ReactionMap,
    ReplyCounts,
    check_history_args,
    not_found,
    seq_of,
)


class _Channel:
    """One channel's rows: the mutable insides the store never hands out."""

    __slots__ = (
        "changes",
        "client_ids",
        "count",
        "deleted",
        "messages",
        "reactions",
        "read_markers",
    )

    def __init__(self) -> None:
        self.messages: dict[int, ChimeMessage] = {}
        # Changes at their own numbers (never messages: every seq is in one dict).
        self.changes: dict[int, MessageChange] = {}
        self.deleted: set[int] = set()
        # (user, client_msg_id) -> seq of the send that holds the key.
        self.client_ids: dict[ClientKey, int] = {}
        self.count = 0
        # message_id -> emoji -> user ids
        self.reactions: dict[str, dict[str, set[str]]] = {}
        self.read_markers: dict[str, str] = {}

    def live(self, seq: int) -> ChimeMessage | None:
        """The message at ``seq`` unless it is unknown or deleted."""
        if seq in self.deleted:
            return None
        return self.messages.get(seq)


class MemoryStore:
    """A ``MessageStore`` and ``AttachmentStore`` that lives in dicts; not shared
    between processes."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
        self._cursors: dict[str, dict[str, int]] = {}
        self._fences: dict[str, int] = {}
        self._attachments: dict[str, StoredAttachment] = {}
        self._chunks: dict[tuple[str, int], bytes] = {}
        # attachment id -> (channel id, message id) of the live messages listing it
        self._attachment_refs: dict[str, set[tuple[str, str]]] = {}
        self._available = True
        self._failures_left = 0
        self._open = False

    # --- outage simulation ------------------------------------------------------

    def fail_next(self, count: int = 1) -> None:
        """Make the next ``count`` store calls raise ``StoreUnavailable``."""
        self._failures_left = count

    def set_available(self, available: bool) -> None:
        """Switch the simulated outage on (False) or off (True)."""
        self._available = available

    def _check(self, operation: str) -> None:
        if not self._open:
            raise StoreError(f"MemoryStore.{operation}: store is not open")
        if not self._available:
            raise StoreUnavailable(f"MemoryStore.{operation}: simulated outage")
        if self._failures_left > 0:
            self._failures_left -= 1
            raise StoreUnavailable(f"MemoryStore.{operation}: simulated failure")

    def _channel(self, channel_id: str) -> _Channel:
        # Reads of unknown channels create nothing visible: an empty _Channel
        # answers exactly like an absent one.
        return self._channels.get(channel_id) or _Channel()

    # --- MessageStore -----------------------------------------------------------

    async def open(self) -> None:
        """Mark the store open (fails during a simulated outage)."""
        self._open = True
        try:
            self._check("open")
        except StoreUnavailable:
            self._open = False
            raise

    async def close(self) -> None:
        """Mark the store closed; the data survives for a later ``open``."""
        self._open = False

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` during a simulated outage."""
        self._check("ping")

    async def load_channel_state(self, channel_id: str, *, dedupe_since: str) -> ChannelState:
        """See ``MessageStore.load_channel_state``."""
        self._check("load_channel_state")
        channel = self._channel(channel_id)
        client_ids = {
            key: channel.messages[seq]
            for key, seq in channel.client_ids.items()
            if channel.messages[seq].created_at >= dedupe_since
        }
        return ChannelState(last_seq=_last(channel), client_ids=client_ids)

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        """See ``MessageStore.append``."""
        self._check("append")
        # Validate the whole batch before touching anything: all or nothing.
        seen: set[tuple[str, int]] = set()
        for event in events:
            key = (event.channel_id, event.seq)
            stored = self._channel(event.channel_id)
            if key in seen or event.seq in stored.messages or event.seq in stored.changes:
                raise StoreError(
                    f"id {event.seq} already stored in channel "
                    f"{event.channel_id!r}: two sequencers for one channel?"
                )
            seen.add(key)
        for event in events:
            channel = self._channels.setdefault(event.channel_id, _Channel())
            if isinstance(event, MessageChange):
                channel.changes[event.seq] = event
                if event.kind is ChangeKind.DELETE:
                    self._drop_attachment_refs(channel, event)
                _apply(channel, event)
                continue
            channel.messages[event.seq] = event
            channel.count += 1
            if event.client_msg_id is not None:
                channel.client_ids[(event.user_id, event.client_msg_id)] = event.seq
            for attachment in event.attachments:
                refs = self._attachment_refs.setdefault(attachment.attachment_id, set())
                refs.add((event.channel_id, event.message_id))

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
        thread_id: str | None = None,
    ) -> HistoryPage:
        """See ``MessageStore.history``."""
        self._check("history")
        after_seq, before_seq = check_history_args(before, after, limit)
        channel = self._channel(channel_id)
        matching = [
            message
            for seq, message in sorted(channel.messages.items())
            if seq not in channel.deleted
            and seq > after_seq
            and (before_seq is None or seq < before_seq)
            and (
                thread_id is None
                or message.thread_id == thread_id
                or message.message_id == thread_id
            )
        ]
        if after is not None:
            # Paging forward (resume, or a bounded window): oldest first.
            return HistoryPage(tuple(matching[:limit]), has_more=len(matching) > limit)
        return HistoryPage(tuple(matching[-limit:]), has_more=len(matching) > limit)

    async def get_message(self, channel_id: str, message_id: str) -> ChimeMessage:
        """See ``MessageStore.get_message``."""
        self._check("get_message")
        message = self._channel(channel_id).live(seq_of(channel_id, message_id))
        if message is None:
            raise not_found(channel_id, message_id)
        return message

    async def events_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChannelEvent, ...]:
        """See ``MessageStore.events_range``."""
        self._check("events_range")
        channel = self._channel(channel_id)
        events: list[ChannelEvent] = [
            message
            for seq, message in channel.messages.items()
            if after_seq < seq <= up_to_seq and seq not in channel.deleted
        ]
        events += [c for seq, c in channel.changes.items() if after_seq < seq <= up_to_seq]
        return tuple(sorted(events, key=lambda event: event.seq))

    async def last_seq(self, channel_id: str) -> int:
        """See ``MessageStore.last_seq``."""
        self._check("last_seq")
        return _last(self._channel(channel_id))

    async def reactions(self, channel_id: str, message_ids: Sequence[str]) -> ReactionMap:
        """See ``MessageStore.reactions``."""
        self._check("reactions")
        channel = self._channel(channel_id)
        result: dict[str, dict[str, tuple[str, ...]]] = {}
        for message_id in sorted(set(message_ids)):
            by_emoji = channel.reactions.get(message_id)
            if by_emoji:
                result[message_id] = {
                    emoji: tuple(sorted(users)) for emoji, users in sorted(by_emoji.items())
                }
        return result

    async def reply_counts(self, channel_id: str, message_ids: Sequence[str]) -> ReplyCounts:
        """See ``MessageStore.reply_counts``."""
        self._check("reply_counts")
        channel = self._channel(channel_id)
        roots = set(message_ids)
        counts: dict[str, int] = {}
        for seq, message in channel.messages.items():
            root = message.thread_id
            if root in roots and root != message.message_id and seq not in channel.deleted:
                counts[root] = counts.get(root, 0) + 1
        return counts

    async def set_read_marker(self, channel_id: str, user_id: str, message_id: str) -> None:
        """See ``MessageStore.set_read_marker``."""
        self._check("set_read_marker")
        markers = self._channels.setdefault(channel_id, _Channel()).read_markers
        current = markers.get(user_id)
        # Fixed-width ids: string order is sequence order.
        if current is None or message_id > current:
            markers[user_id] = message_id

    async def channel_ids(self) -> tuple[str, ...]:
        """See ``MessageStore.channel_ids``."""
        self._check("channel_ids")
        return tuple(sorted(c for c, channel in self._channels.items() if channel.messages))

    async def handler_cursors(self, handler: str) -> Mapping[str, int]:
        """See ``MessageStore.handler_cursors``."""
        self._check("handler_cursors")
        return dict(self._cursors.get(handler, {}))

    async def save_handler_cursors(
        self, handler: str, cursors: Mapping[str, int], *, fence: int | None = None
    ) -> None:
        """See ``MessageStore.save_handler_cursors``."""
        self._check("save_handler_cursors")
        stored = self._fences.get(handler, 0)
        if cursors and fence is not None and fence != stored:
            raise FencedOut(handler, stored)
        saved = self._cursors.setdefault(handler, {})
        for key, seq in cursors.items():
            saved[key] = max(seq, saved.get(key, seq))

    async def claim_handler_fence(self, handler: str, fence: int) -> None:
        """See ``MessageStore.claim_handler_fence``."""
        self._check("claim_handler_fence")
        stored = self._fences.get(handler, 0)
        if stored > fence:
            raise FencedOut(handler, stored)
        self._fences[handler] = fence

    async def unread_counts(
        self, user_id: str, channel_ids: Sequence[str], *, limit: int
    ) -> dict[str, int]:
        """See ``MessageStore.unread_counts``."""
        self._check("unread_counts")
        counts: dict[str, int] = {}
        for channel_id in channel_ids:
            channel = self._channel(channel_id)
            marker = channel.read_markers.get(user_id)
            after = parse_message_id(marker) if marker is not None else 0
            live = (
                seq
                for seq, message in channel.messages.items()
                if seq > after and seq not in channel.deleted and message.user_id != user_id
            )
            counts[channel_id] = sum(1 for _ in itertools.islice(live, limit))
        return counts

    def _drop_attachment_refs(self, channel: _Channel, delete: MessageChange) -> None:
        message = channel.live(seq_of(delete.channel_id, delete.message_id))
        for attachment in message.attachments if message is not None else ():
            refs = self._attachment_refs.get(attachment.attachment_id, set())
            refs.discard((delete.channel_id, delete.message_id))

    # --- AttachmentStore --------------------------------------------------------

    async def save_attachment_chunk(self, attachment_id: str, index: int, data: bytes) -> None:
        """See ``AttachmentStore.save_attachment_chunk``."""
        self._check("save_attachment_chunk")
        self._chunks[(attachment_id, index)] = bytes(data)

    async def begin_attachment(self, stub: StoredAttachment) -> None:
        """See ``AttachmentStore.begin_attachment``."""
        self._check("begin_attachment")
        self._attachments[stub.attachment_id] = stub

    async def finish_attachment(self, attachment: StoredAttachment) -> None:
        """See ``AttachmentStore.finish_attachment``."""
        self._check("finish_attachment")
        self._attachments[attachment.attachment_id] = attachment

    async def discard_attachment(self, attachment_id: str, chunks: int) -> None:
        """See ``AttachmentStore.discard_attachment``."""
        self._check("discard_attachment")
        for index in range(chunks):
            self._chunks.pop((attachment_id, index), None)
        stub = self._attachments.get(attachment_id)
        if stub is not None and stub.in_progress:
            del self._attachments[attachment_id]

    async def get_attachments(
        self, attachment_ids: Sequence[str]
    ) -> Mapping[str, StoredAttachment]:
        """See ``AttachmentStore.get_attachments``."""
        self._check("get_attachments")
        found = (self._attachments.get(i) for i in attachment_ids)
        return {a.attachment_id: a for a in found if a is not None and not a.in_progress}

    async def attachment_chunk(self, attachment_id: str, index: int) -> bytes:
        """See ``AttachmentStore.attachment_chunk``."""
        self._check("attachment_chunk")
        data = self._chunks.get((attachment_id, index))
        if data is None:
            raise StoreError(f"attachment {attachment_id}: chunk {index} is missing")
        return data

    async def attachment_channels(self, attachment_id: str) -> tuple[str, ...]:
        """See ``AttachmentStore.attachment_channels``."""
        self._check("attachment_channels")
        return tuple(sorted({c for c, _ in self._attachment_refs.get(attachment_id, ())}))

    async def scan_attachments(
        self, after: str | None, limit: int
    ) -> tuple[tuple[StoredAttachment, ...], str | None]:
        """See ``AttachmentStore.scan_attachments``: in id order, the last id the cursor."""
        self._check("scan_attachments")
        ids = sorted(i for i in self._attachments if after is None or i > after)[:limit]
        page = tuple(self._attachments[i] for i in ids)
        return page, (ids[-1] if len(ids) == limit else None)

    async def delete_unlisted_attachment(self, attachment: StoredAttachment) -> bool:
        """See ``AttachmentStore.delete_unlisted_attachment``."""
        self._check("delete_unlisted_attachment")
        attachment_id = attachment.attachment_id
        if self._attachment_refs.get(attachment_id) or attachment_id not in self._attachments:
            return False
        del self._attachments[attachment_id]
        for index in range(attachment.chunks):
            self._chunks.pop((attachment_id, index), None)
        return True

    # --- test introspection -----------------------------------------------------

    def chunk_count(self) -> int:
        """How many attachment chunks are stored (finished or not)."""
        return len(self._chunks)

    def message_count(self, channel_id: str) -> int:
        """The channel's appended-message counter (``message_counters`` in SQL)."""
        return self._channel(channel_id).count


def _last(channel: _Channel) -> int:
    return max(max(channel.messages, default=0), max(channel.changes, default=0))


def _apply(channel: _Channel, change: MessageChange) -> None:
    """Apply a stored change to its message (nothing if that is not live)."""
    seq = seq_of(change.channel_id, change.message_id)
    message = channel.live(seq)
    if message is None:
        return
    if change.kind is ChangeKind.EDIT:
        assert change.message is not None
        channel.messages[seq] = msgspec.structs.replace(
            message, content=change.message.content, edited_at=change.at
        )
        return
    if change.kind is ChangeKind.DELETE:
        channel.deleted.add(seq)
        channel.reactions.pop(change.message_id, None)
        return
    assert change.emoji is not None
    by_emoji = channel.reactions.setdefault(change.message_id, {})
    if change.kind is ChangeKind.REACTION_ADD:
        by_emoji.setdefault(change.emoji, set()).add(change.user_id)
        return
    users = by_emoji.get(change.emoji)
    if users is not None:
        users.discard(change.user_id)
        if not users:
            del by_emoji[change.emoji]


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms: MessageStore = MemoryStore()
    _conforms_too: AttachmentStore = MemoryStore()
