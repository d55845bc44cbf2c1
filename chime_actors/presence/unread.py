"""Read markers and unread counts: the rules the gateway and the REST API share.

A marker is written to the store directly by whichever process serves the
request (a gateway for the ``read`` frame, the API for ``POST .../read``): it is
not part of any channel's sequence, so no sequencer needs to see it. Ordering
stays sane because every store only ever moves a marker forward (SQLite: a
conditional upsert; Cassandra: ``USING TIMESTAMP <seq>``, so the highest id wins
last-write-wins), whatever order two devices' writes land in. A marker past the
channel's newest message is refused (``not_found``): kept, it would swallow the
next messages before anyone read them.
"""

from __future__ import annotations

from collections.abc import Sequence

from chime_actors.ids import parse_message_id
from chime_actors.storage.store import MessageStore, not_found

UNREAD_LIMIT = 1000
"""The most an unread count says: 1000 means "1000 or more" (each count reads at
most this many rows of its channel)."""


async def mark_read(store: MessageStore, channel_id: str, user_id: str, message_id: str) -> None:
    """Move the user's read marker in ``channel_id`` up to ``message_id`` (never back).

    Raises:
        MessageNotFound: ``message_id`` is beyond the channel's newest message.
        StoreUnavailable: storage is down; nothing was written.
    """
    if parse_message_id(message_id) > await store.last_seq(channel_id):
        raise not_found(channel_id, message_id)
    await store.set_read_marker(channel_id, user_id, message_id)


async def unread_counts(
    store: MessageStore, user_id: str, channel_ids: Sequence[str]
) -> dict[str, int]:
    """Unread messages per channel, each at most ``UNREAD_LIMIT``.

    Raises:
        StoreUnavailable: storage is down.
    """
    if not channel_ids:
        return {}
    return await store.unread_counts(user_id, channel_ids, limit=UNREAD_LIMIT)
