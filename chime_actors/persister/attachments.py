"""Checking the attachments of sends before they are numbered.

docs/protocol.md: a send may list up to 10 attachment ids, "each uploaded by the same
user; else ``bad_request``". The protocol core checked the list's shape; whether
each file exists and is the sender's needs storage, so the persister that owns
the channel looks them up here, in the write that stores the send, before its
sequencer numbers anything (a refused send takes no id, like a refused change):

=====================================  ==============================================
an id no finished upload has           ``bad_request``
a file another user uploaded           ``bad_request``, in the same words: a sender
                                       learns nothing of other users' files
storage fails reading the records      ``unavailable``: nothing was stored
=====================================  ==============================================

Why here and not in the gateway: the send is refused or stored in one place, with
the records read in the same write (ack = durable, and no second round trip for
the gateway), for WebSocket sends, REST sends and handler replies alike. A write
whose sends list no attachment does not touch this (one pass over its records).
A file that no live message lists is deleted some time after
``attachments.unsent_ttl_s`` (api/attachment_sweeper.py). So that a file found
here is still there when the send is stored, a file older than ``unsent_ttl_s``
is accepted only if a live message lists it already (one more read, for such
files only); otherwise it is refused as unknown, in the same words. The sweeper
waits a grace beyond ``unsent_ttl_s``, far longer than a check and its write.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chime_actors.errors import StoreError
from chime_actors.logs import get_logger
from chime_actors.persister.changes import ChangeDraft
from chime_actors.protocol.codes import ErrorCode
from chime_actors.records import Attachment, SendOutcome, SendRecord
from chime_actors.storage.attachments import AttachmentStore, StoredAttachment

log = get_logger(__name__)

# (origin, token): which sender's which record.
RecordKey = tuple[int, int]
# What a write plans: ``(origin, send or checked change)``.
Entry = tuple[int, SendRecord | ChangeDraft]


def lists_attachments(entries: Sequence[Entry]) -> bool:
    """True when a send among ``entries`` lists attachments."""
    return any(isinstance(r, SendRecord) and r.attachments for _, r in entries)


async def check_attachments(
    store: AttachmentStore | None, entries: Sequence[Entry], *, expired_before: str | None = None
) -> tuple[list[Entry], dict[RecordKey, SendOutcome], Mapping[str, Attachment]]:
    """Split a write's entries into those to plan and the refused sends.

    Args:
        store: where the uploads are; None (a persister without one, in unit
            tests) finds none.
        entries: the write's sends and checked changes, in order.
        expired_before: a file uploaded before this (a wire timestamp) is
            sendable only while a live message lists it; None: any age.

    Returns:
        ``(entries to plan, outcomes of refused sends, attachment id -> what the
        stored message lists)``.
    """
    wanted = sorted({aid for _, r in entries if isinstance(r, SendRecord) for aid in r.attachments})
    found: Mapping[str, StoredAttachment] | None
    try:
        found = await store.get_attachments(wanted) if store is not None else {}
        if store is not None and expired_before is not None:
            found = await _drop_expired(store, found, expired_before)
    except StoreError as exc:
        log.warning("storage unavailable while checking attachments", error=str(exc))
        found = None
    kept: list[Entry] = []
    refused: dict[RecordKey, SendOutcome] = {}
    for origin, record in entries:
        if isinstance(record, SendRecord) and record.attachments:
            outcome = _judge(record, found)
            if outcome is not None:
                refused[(origin, record.token)] = outcome
                continue
        kept.append((origin, record))
    listed = {aid: stored.ref for aid, stored in (found or {}).items()}
    return kept, refused, listed


async def _drop_expired(
    store: AttachmentStore, found: Mapping[str, StoredAttachment], expired_before: str
) -> Mapping[str, StoredAttachment]:
    """``found`` without the files past ``unsent_ttl_s`` that no live message lists."""
    kept = dict(found)
    for attachment_id, stored in found.items():
        if stored.created_at < expired_before and not await store.attachment_channels(
            attachment_id
        ):
            del kept[attachment_id]
    return kept


def _judge(record: SendRecord, found: Mapping[str, StoredAttachment] | None) -> SendOutcome | None:
    """Why the send may not list its attachments, or None when it may."""
    if found is None:
        return SendOutcome(
            record.token, error_code=ErrorCode.UNAVAILABLE, error_message="storage unavailable"
        )
    for attachment_id in record.attachments:
        stored = found.get(attachment_id)
        if stored is None or stored.owner != record.user_id:
            return SendOutcome(
                record.token,
                error_code=ErrorCode.BAD_REQUEST,
                error_message=f"no attachment {attachment_id} uploaded by {record.user_id}",
            )
    return None
