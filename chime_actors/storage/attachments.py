"""The ``AttachmentStore`` interface: uploaded files, in chunks, next to the messages.

docs/protocol.md "Attachments": a file is uploaded once (``POST /v1/attachments``), then
listed by id in sends. Where it lives:

* its bytes, as chunks of at most ``CHUNK_BYTES`` (1 MiB) numbered from 0: SQLite
  blobs, one row per chunk; Cassandra, one partition per chunk (a 1 MiB cell is
  far below every Cassandra limit, and a large file is spread over the ring);
* its record (:class:`StoredAttachment`): uploader, name, type, size, SHA-256 and
  chunk count. It is written after the last chunk, replacing the stub the upload
  wrote before its first, so an attachment exists only once all of its bytes
  do; an upload that fails half-way leaves nothing (its chunks and stub are
  discarded), and one cut off by a crash leaves a stub the sweeper finds;
* which channels have a live message listing it: written by
  ``MessageStore.append`` with the message, in the same write (so the index
  never lags a stored message), and dropped when the message is deleted. That is
  what the download route asks to decide who may read a file.

The store is opened in each process that uses it, like the ``MessageStore`` (the
same object implements both, see ``storage.factory.Storage``): the API process
streams uploads and downloads straight to and from it, never through the actor
lanes, and the persister that owns a channel looks up the attachments of a send
before numbering it (``persister.attachments``). With Cassandra every host sees
every upload, so a file uploaded on one host may be sent and read on another.

Everything here is storage-neutral: the interface, the record, and
:func:`read_attachment`, which streams a file chunk by chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from chime_actors.errors import StoreError
from chime_actors.records import Attachment

#: The largest chunk stored (docs/protocol.md: Cassandra in chunks of at most 1 MiB).
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An uploaded file's record.

    Attributes:
        attachment_id: its id (``ids.new_attachment_id``).
        owner: the user who uploaded it; only they may list it in a send.
        filename: the name the uploader gave (checked: no path, no control characters).
        content_type: the upload's ``Content-Type``, served back as is.
        size: bytes.
        sha256: hex digest of the bytes.
        chunks: how many chunks hold the bytes (numbered 0 .. chunks - 1).
        created_at: when the upload finished, in the wire's timestamp format.

    While an upload is in progress its record is a stub (:func:`upload_stub`):
    ``sha256`` is :data:`IN_PROGRESS`, ``chunks`` the most it may store, and
    ``created_at`` when it began. ``get_attachments`` never returns a stub; the
    sweeper (api/attachment_sweeper.py) deletes one that is never finished,
    with its chunks, as it deletes an unsent file: that is what becomes of an
    upload cut off by a crash of the process taking it.
    """

    attachment_id: str
    owner: str
    filename: str
    content_type: str
    size: int
    sha256: str
    chunks: int
    created_at: str

    @property
    def ref(self) -> Attachment:
        """What a message lists of it."""
        return Attachment(self.attachment_id, self.filename, self.content_type, self.size)

    @property
    def in_progress(self) -> bool:
        """True for the stub of an upload not finished (yet, or ever)."""
        return self.sha256 == IN_PROGRESS


#: The ``sha256`` of a stub: no digest is ever empty.
IN_PROGRESS = ""


def upload_stub(
    attachment_id: str,
    *,
    owner: str,
    filename: str,
    content_type: str,
    max_bytes: int,
    created_at: str,
) -> StoredAttachment:
    """The record of an upload about to begin (see ``StoredAttachment``)."""
    return StoredAttachment(
        attachment_id=attachment_id,
        owner=owner,
        filename=filename,
        content_type=content_type,
        size=0,
        sha256=IN_PROGRESS,
        chunks=-(-max_bytes // CHUNK_BYTES),
        created_at=created_at,
    )


class AttachmentStore(Protocol):
    """Durable storage of uploaded files (see the module docstring).

    Failures are ``StoreError`` (``StoreUnavailable`` when storage is down or a
    call timed out), as for ``MessageStore``.
    """

    async def begin_attachment(self, stub: StoredAttachment) -> None:
        """Store the stub of an upload (``upload_stub``) before its first chunk."""

    async def save_attachment_chunk(self, attachment_id: str, index: int, data: bytes) -> None:
        """Store chunk ``index`` (from 0) of an upload in progress; at most ``CHUNK_BYTES``."""

    async def finish_attachment(self, attachment: StoredAttachment) -> None:
        """Store the record of an upload whose ``attachment.chunks`` chunks are all stored.

        It replaces the upload's stub. From then on the attachment exists:
        ``get_attachments`` finds it.
        """

    async def discard_attachment(self, attachment_id: str, chunks: int) -> None:
        """Drop the first ``chunks`` chunks of an upload that will not be finished,
        then its stub."""

    async def get_attachments(
        self, attachment_ids: Sequence[str]
    ) -> Mapping[str, StoredAttachment]:
        """The records of those of ``attachment_ids`` that exist (finished uploads: no stub)."""

    async def attachment_chunk(self, attachment_id: str, index: int) -> bytes:
        """Chunk ``index`` of a finished upload.

        Raises:
            StoreError: the chunk is missing (storage lost it).
        """

    async def attachment_channels(self, attachment_id: str) -> tuple[str, ...]:
        """The channels holding a live (not deleted) message that lists the file, sorted."""

    async def scan_attachments(
        self, after: str | None, limit: int
    ) -> tuple[tuple[StoredAttachment, ...], str | None]:
        """A page of at most ``limit`` records, stubs included, in the store's own order.

        ``after`` is the cursor a previous page returned (None: from the
        start). Returns the page and the cursor of the next one, None after the
        last. Records added or removed meanwhile may or may not be seen; each
        one there throughout is seen exactly once.
        """

    async def delete_unlisted_attachment(self, attachment: StoredAttachment) -> bool:
        """Delete the file, record first, then chunks, unless a live message lists it.

        Returns True when it was deleted, False when a live message lists it (or
        it was gone already). SQLite decides in one transaction; Cassandra reads
        the index and then deletes, so a send listing the file that is stored
        in between keeps a listing whose download is 404.
        """


async def read_attachment(
    store: AttachmentStore, attachment: StoredAttachment
) -> AsyncGenerator[bytes, None]:
    """The file's bytes, one chunk at a time: never more than a chunk in memory.

    Raises:
        StoreError: a chunk could not be read, or the chunks do not add up to
            ``attachment.size`` (the reader has then had part of the file).
    """
    sent = 0
    for index in range(attachment.chunks):
        data = await store.attachment_chunk(attachment.attachment_id, index)
        sent += len(data)
        yield data
    if sent != attachment.size:
        raise StoreError(
            f"attachment {attachment.attachment_id}: {sent} bytes stored,"
            f" {attachment.size} expected"
        )


# --- a message's attachments in a text column (SQLite, Cassandra) --------------------


def dump_attachments(attachments: Sequence[Attachment]) -> str | None:
    """The column value of a message's attachments; None (nothing stored) without any."""
    if not attachments:
        return None
    return json.dumps(
        [[a.attachment_id, a.filename, a.content_type, a.size] for a in attachments],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def load_attachments(text: str | None) -> tuple[Attachment, ...]:
    """The attachments a column value made by :func:`dump_attachments` holds."""
    if not text:
        return ()
    return tuple(
        Attachment(str(aid), str(name), str(kind), int(size))
        for aid, name, kind, size in json.loads(text)
    )
