"""An in-memory ``MessageStore`` for unit tests of the actors.

It keeps the exact semantics of ``SqliteStore`` (the shared contract suite in
``tests/store_contract.py`` runs against both) and adds outage switches, so a
test can make storage fail on demand without mocks:

    store.fail_next(2)          # the next two calls raise StoreUnavailable
    store.set_available(False)  # every call raises until set_available(True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from chime_actors.errors import StoreError, StoreUnavailable
from chime_actors.records import ChimeMessage
from chime_actors.storage.store import (
    ChannelState,
    ClientKey,
    HistoryPage,
    MessageStore,
    ReactionMap,
    check_history_args,
    not_found,
    seq_of,
)


class _Channel:
    """One channel's rows: the mutable insides the store never hands out."""

    __slots__ = ("client_ids", "count", "deleted", "messages", "reactions", "read_markers")

    def __init__(self) -> None:
        self.messages: dict[int, ChimeMessage] = {}
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
    """A ``MessageStore`` that lives in a dict; not shared between processes."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}
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
        return ChannelState(last_seq=max(channel.messages, default=0), client_ids=client_ids)

    async def append(self, messages: Sequence[ChimeMessage]) -> None:
        """See ``MessageStore.append``."""
        self._check("append")
        # Validate the whole batch before touching anything: all or nothing.
        seen: set[tuple[str, int]] = set()
        for message in messages:
            key = (message.channel_id, message.seq)
            if key in seen or message.seq in self._channel(message.channel_id).messages:
                raise StoreError(
                    f"message {message.message_id} already stored in channel "
                    f"{message.channel_id!r}: two sequencers for one channel?"
                )
            seen.add(key)
        for message in messages:
            channel = self._channels.setdefault(message.channel_id, _Channel())
            channel.messages[message.seq] = message
            channel.count += 1
            if message.client_msg_id is not None:
                channel.client_ids[(message.user_id, message.client_msg_id)] = message.seq

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

    async def messages_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChimeMessage, ...]:
        """See ``MessageStore.messages_range``."""
        self._check("messages_range")
        channel = self._channel(channel_id)
        return tuple(
            message
            for seq, message in sorted(channel.messages.items())
            if after_seq < seq <= up_to_seq and seq not in channel.deleted
        )

    async def last_seq(self, channel_id: str) -> int:
        """See ``MessageStore.last_seq``."""
        self._check("last_seq")
        return max(self._channel(channel_id).messages, default=0)

    async def edit(
        self, channel_id: str, message_id: str, content: str, edited_at: str
    ) -> ChimeMessage:
        """See ``MessageStore.edit``."""
        self._check("edit")
        seq = seq_of(channel_id, message_id)
        channel = self._channel(channel_id)
        message = channel.live(seq)
        if message is None:
            raise not_found(channel_id, message_id)
        edited = dataclasses.replace(message, content=content, edited_at=edited_at)
        channel.messages[seq] = edited
        return edited

    async def delete(self, channel_id: str, message_id: str) -> None:
        """See ``MessageStore.delete``."""
        self._check("delete")
        seq = seq_of(channel_id, message_id)
        channel = self._channel(channel_id)
        if channel.live(seq) is None:
            raise not_found(channel_id, message_id)
        channel.deleted.add(seq)
        channel.reactions.pop(message_id, None)

    async def set_reaction(
        self, channel_id: str, message_id: str, emoji: str, user_id: str, present: bool
    ) -> None:
        """See ``MessageStore.set_reaction``."""
        self._check("set_reaction")
        channel = self._channel(channel_id)
        if channel.live(seq_of(channel_id, message_id)) is None:
            raise not_found(channel_id, message_id)
        by_emoji = channel.reactions.setdefault(message_id, {})
        if present:
            by_emoji.setdefault(emoji, set()).add(user_id)
            return
        users = by_emoji.get(emoji)
        if users is not None:
            users.discard(user_id)
            if not users:
                del by_emoji[emoji]

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

    async def set_read_marker(self, channel_id: str, user_id: str, message_id: str) -> None:
        """See ``MessageStore.set_read_marker``."""
        self._check("set_read_marker")
        markers = self._channels.setdefault(channel_id, _Channel()).read_markers
        current = markers.get(user_id)
        # Fixed-width ids: string order is sequence order.
        if current is None or message_id > current:
            markers[user_id] = message_id

    async def read_marker(self, channel_id: str, user_id: str) -> str | None:
        """See ``MessageStore.read_marker``."""
        self._check("read_marker")
        return self._channel(channel_id).read_markers.get(user_id)

    # --- test introspection -----------------------------------------------------

    def message_count(self, channel_id: str) -> int:
        """The channel's appended-message counter (``message_counters`` in SQL)."""
        return self._channel(channel_id).count


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms: MessageStore = MemoryStore()
