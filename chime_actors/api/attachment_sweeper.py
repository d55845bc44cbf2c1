"""Deleting uploads that were never sent (``attachments.unsent_ttl_s``, docs/protocol.md).

An upload exists to be listed in a send. One that no live message lists (never
sent, or its messages were all deleted), and the stub of an upload never
finished (its process died mid-upload), is deleted once it is older than
``unsent_ttl_s`` plus a grace: without this, files nobody can reach but their
uploader pile up for ever, and the upload budget
(``limits.upload_bytes_per_hour``) only bounds how fast.

The API process of every host sweeps: every ``interval_s`` it pages through the
records (``AttachmentStore.scan_attachments``, ``PAGE`` at a time, so memory stays
bounded whatever the number of files) and asks the store to delete each old one
unless a live message lists it (``delete_unlisted_attachment``, which decides
that itself, in one transaction on SQLite). Two hosts sweeping at once delete
each file once; the other finds it gone.

Why a grace: the persister that stores a send checks the send's files in one
call and stores the message (and its listing) in the next, so a file could be
deleted between the two. The persister therefore treats a file older than
``unsent_ttl_s`` that no live message lists as unknown
(``persister.attachments``), and the sweeper deletes only files older than
``unsent_ttl_s + grace_s``: a send that passed the check was stored long before
its file could be swept. Clocks of different hosts may differ by less than the
grace (at most 10 minutes).

The I/O is the store's; the wall clock and the sleep are injected, for tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from chime_actors.errors import StoreError
from chime_actors.logs import get_logger
from chime_actors.records import format_timestamp
from chime_actors.storage.attachments import AttachmentStore

log = get_logger(__name__)

#: Records read per page of a sweep.
PAGE = 500
#: The longest grace beyond ``unsent_ttl_s`` before a file is swept.
MAX_GRACE_S = 600.0
#: The longest pause between two sweeps.
MAX_INTERVAL_S = 3600.0


def grace_s(ttl_s: float) -> float:
    """How long past ``ttl_s`` an unlisted file is kept: ``ttl_s``, at most 10 minutes."""
    return min(MAX_GRACE_S, ttl_s)


def interval_s(ttl_s: float) -> float:
    """How often a host sweeps: a quarter of ``ttl_s``, at most hourly."""
    return min(MAX_INTERVAL_S, ttl_s / 4)


def restamp_s(ttl_s: float) -> float | None:
    """How often an upload in progress rewrites its stub's ``created_at``: every
    half ``ttl_s``, so that a sweep (which takes stubs ``ttl_s + grace_s`` old)
    never takes an upload that is still arriving (None: nothing expires).

    The rewrite comes with the body's next bytes, and the body's reads wait at
    most ``api.http_server.BODY_IDLE_TIMEOUT_S`` (30 s), so for any ``ttl_s`` of
    20 s or more a live upload's stub is always younger than a sweep's cutoff.
    """
    return ttl_s / 2 if ttl_s > 0 else None


def cutoff(now_s: float, age_s: float) -> str:
    """The ``created_at`` before which a record is more than ``age_s`` old, in the
    wire's timestamp format (which sorts as the times do)."""
    return format_timestamp(datetime.fromtimestamp(now_s - age_s, UTC))


class AttachmentSweeper:
    """Deletes the files no live message lists, ``ttl_s + grace_s(ttl_s)`` after upload."""

    def __init__(
        self,
        store: AttachmentStore,
        ttl_s: float,
        *,
        wall_clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        page: int = PAGE,
    ) -> None:
        self._store = store
        self._age_s = ttl_s + grace_s(ttl_s)
        self._interval_s = interval_s(ttl_s)
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._page = page

    async def sweep(self) -> int:
        """One pass over every record; returns how many files were deleted.

        Raises:
            StoreError: storage failed; what was deleted before stays deleted.
        """
        before = cutoff(self._wall_clock(), self._age_s)
        deleted = 0
        cursor: str | None = None
        while True:
            page, cursor = await self._store.scan_attachments(cursor, self._page)
            for attachment in page:
                if attachment.created_at < before and (
                    await self._store.delete_unlisted_attachment(attachment)
                ):
                    deleted += 1
                    log.info(
                        # A stub: an upload cut off by a crash, never finished.
                        "abandoned upload deleted"
                        if attachment.in_progress
                        else "unsent attachment deleted",
                        attachmentId=attachment.attachment_id,
                        userId=attachment.owner,
                        size=attachment.size,
                        createdAt=attachment.created_at,
                    )
            if cursor is None:
                return deleted

    async def run(self) -> None:
        """Sweep every ``interval_s`` until cancelled.

        Failure policy: storage failing is expected (a warning, the next sweep
        tries again); anything else is a bug, logged with its traceback, and the
        sweeps go on all the same: the API's requests must not depend on them.
        """
        while True:
            await self._sleep(self._interval_s)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("attachment sweep failed; trying again later", error=str(exc))
            except Exception:
                log.exception("attachment sweep crashed; trying again later")
