"""``SqliteStore``: the embedded default ``MessageStore``, one SQLite file in WAL mode.

Threading: sqlite3 calls block, and the callers run on asyncio loops, so each
store owns ONE worker thread (``sqlite_worker.SqliteWorker``) that creates the
connection and runs every statement. One thread means one connection and no
locking inside the process; the loop only awaits a future, woken once per call
(a persister's group commit is one call: one hand-off, one wake-up per batch).

Several processes open the same file: the persister pool writes (each persister
owns distinct channels, so writers never contend on rows, only on SQLite's single
write lock), gateways and the API only read. WAL lets readers run while a writer
commits; ``busy_timeout`` makes a reader wait out the rare lock it needs.
Writes take the lock up front (``BEGIN IMMEDIATE``): a deferred transaction that
reads first and then upgrades can fail with SQLITE_BUSY without waiting at all.
A write waiting for another process's write lock tries again every
``_LOCK_RETRY_S`` (``_begin_immediate``) instead of in SQLite's busy handler,
whose sleeps grow to 25-100 ms: with two persisters committing back to back
the one waiting slept long past the other's commit (docs/performance.md,
"Fan-out in slices and many small rooms").

Checkpoints: no commit checkpoints the WAL (``wal_autocheckpoint = 0``); a
``sqlite_checkpointer.WalCheckpointer`` thread does, beside the writes, after
them (see there why).

Timeouts: every call is bounded by ``timeout_s``; past it the caller gets
``StoreUnavailable`` and the operation is called off. A running statement is
interrupted (``sqlite3_interrupt`` is the one connection call that is safe from
another thread), and a write waiting for another process's lock (which an
interrupt does not end) finds itself abandoned and rolls back instead of
committing. Only a commit that had already finished when the timeout fired is
stored although its caller was told otherwise; the sequencer then reuses a
number, its next ``append`` fails loudly with ``StoreError`` (duplicate seq)
and it reloads ``load_channel_state``, which holds the stored batch and its
client ids, so no message is lost or doubled.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from chime_actors.errors import FencedOut, StoreError, StoreUnavailable
from chime_actors.ids import parse_message_id
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange
from chime_actors.storage.attachments import (
    IN_PROGRESS,
    AttachmentStore,
    StoredAttachment,
    dump_attachments,
    load_attachments,
)
from chime_actors.storage.sqlite_checkpointer import CHECKPOINT_INTERVAL_S, WalCheckpointer
from chime_actors.storage.sqlite_worker import Abandoned, Job, SqliteWorker
from chime_actors.storage.store import (
    ChannelState,
    ClientKey,
    HistoryPage,
    MessageStore,
    ReactionMap,
    ReplyCounts,
    change_from_row,
    change_row,
    check_history_args,
    not_found,
    seq_of,
)

_T = TypeVar("_T")

# Milliseconds a statement waits for another process's write lock.
_BUSY_TIMEOUT_MS = 5000
# How often a write waiting for another process's write lock tries again.
# SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50 and
# then 100 ms between tries: most of a waiting persister's time went to
# sleeping after the lock was free again (py-spy: 143 of 175 samples of its
# SQLite thread in that sleep, 12 in fdatasync).
_LOCK_RETRY_S = 0.0005

# SQLite's default bound on host parameters was 999 before 3.32; stay below it.
_MAX_PARAMS = 500

_SCHEMA = (
    # WITHOUT ROWID: rows are clustered by (channel_id, seq), so a history page
    # is one contiguous range scan.
    """CREATE TABLE IF NOT EXISTS messages (
        channel_id    TEXT    NOT NULL,
        seq           INTEGER NOT NULL,
        message_id    TEXT    NOT NULL,
        user_id       TEXT    NOT NULL,
        content       TEXT    NOT NULL,
        created_at    TEXT    NOT NULL,
        edited_at     TEXT,
        metadata      TEXT    NOT NULL DEFAULT '{}',
        thread_id     TEXT,
        client_msg_id TEXT,
        channel_name  TEXT,
        deleted       INTEGER NOT NULL DEFAULT 0,
        kind          TEXT,
        target_seq    INTEGER,
        attachments   TEXT,
        PRIMARY KEY (channel_id, seq)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS messages_by_thread
        ON messages (channel_id, thread_id, seq)""",
    """CREATE TABLE IF NOT EXISTS message_counters (
        channel_id TEXT    NOT NULL PRIMARY KEY,
        count      INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS reactions (
        channel_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        emoji      TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        PRIMARY KEY (channel_id, message_id, emoji, user_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS read_markers (
        channel_id TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        message_id TEXT NOT NULL,
        PRIMARY KEY (channel_id, user_id)
    ) WITHOUT ROWID""",
    # One row per after_store handler and channel: the last seq it confirmed.
    """CREATE TABLE IF NOT EXISTS handler_cursors (
        handler    TEXT    NOT NULL,
        channel_id TEXT    NOT NULL,
        last_seq   INTEGER NOT NULL,
        PRIMARY KEY (handler, channel_id)
    ) WITHOUT ROWID""",
    # One row per after_store handler run under a lease: the fence of its holder.
    """CREATE TABLE IF NOT EXISTS handler_fences (
        handler TEXT    NOT NULL PRIMARY KEY,
        fence   INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # Uploaded files (storage.attachments). A record exists once every chunk does.
    """CREATE TABLE IF NOT EXISTS attachments (
        attachment_id TEXT    NOT NULL PRIMARY KEY,
        owner         TEXT    NOT NULL,
        filename      TEXT    NOT NULL,
        content_type  TEXT    NOT NULL,
        size          INTEGER NOT NULL,
        sha256        TEXT    NOT NULL,
        chunks        INTEGER NOT NULL,
        created_at    TEXT    NOT NULL
    ) WITHOUT ROWID""",
    # A rowid table: WITHOUT ROWID suits small rows only, and these are 1 MiB
    # blobs (SQLite keeps them in overflow pages of the rowid b-tree).
    """CREATE TABLE IF NOT EXISTS attachment_chunks (
        attachment_id TEXT    NOT NULL,
        idx           INTEGER NOT NULL,
        data          BLOB    NOT NULL,
        UNIQUE (attachment_id, idx)
    )""",
    # Which live messages list a file: who may download it.
    """CREATE TABLE IF NOT EXISTS attachment_refs (
        attachment_id TEXT NOT NULL,
        channel_id    TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        PRIMARY KEY (attachment_id, channel_id, message_id)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS attachment_refs_by_message
        ON attachment_refs (channel_id, message_id)""",
)

# Columns a file made before changes had positions lacks (``_migrate`` adds them).
# ``kind`` is NULL on a message; on a change (always ``deleted = 1``, so no
# reader of messages returns it) it is the ``ChangeKind`` and ``target_seq``
# the message it changes.
# ``attachments`` (a JSON array, ``storage.attachments.dump_attachments``) is NULL
# on a message without any.
_ADDED_COLUMNS = (("kind", "TEXT"), ("target_seq", "INTEGER"), ("attachments", "TEXT"))

_COLUMNS = (
    "channel_id, message_id, user_id, content, created_at, edited_at, "
    "metadata, thread_id, client_msg_id, channel_name, attachments"
)
# What events_range reads: a message's columns, then kind and target_seq.
_EVENT_COLUMNS = f"{_COLUMNS}, kind, target_seq"
# A row events_range returns: a live message or any change.
_IS_EVENT = "(deleted = 0 OR kind IS NOT NULL)"

_Row = tuple[
    str, str, str, str, str, str | None, str, str | None, str | None, str | None, str | None
]
# How many columns of a row ``_to_message`` reads (``_COLUMNS``).
_ROW_WIDTH = 11


class SqliteStore:
    """A ``MessageStore`` on one SQLite file, safe to share between processes.

    Args:
        path: the database file; missing parent directories are created.
        timeout_s: upper bound of every call, after which it raises
            ``StoreUnavailable``.
        synchronous: ``full`` fsyncs the WAL at every commit (an ack survives
            power loss); ``normal`` survives a crash of the process only.
        checkpoint_interval_s: the least time between two WAL checkpoints,
            which a thread of their own runs after writes
            (``sqlite_checkpointer``), never a commit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        timeout_s: float = 5.0,
        synchronous: str = "full",
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
        self._synchronous = synchronous.upper()
        self._path = Path(path)
        self._timeout_s = timeout_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._worker: SqliteWorker | None = None
        # Started by _connect, once the file is in WAL mode; told of every commit.
        self._checkpointer: WalCheckpointer | None = None
        # Created, used and closed on the worker thread only; the loop thread
        # merely calls interrupt() on it.
        self._conn: sqlite3.Connection | None = None

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # --- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        """Open the file in WAL mode and create the schema if missing.

        Raises:
            StoreUnavailable: the file cannot be created or opened (for example
                the path is a directory or not writable). The store is then
                closed again and ``open`` may be retried.
        """
        if self._worker is not None:
            return
        self._worker = SqliteWorker("chime-sqlite")
        try:
            await self._submit("open", self._connect, Abandoned())
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection and stop the worker thread; safe to call twice.

        Never raises: if the worker is stuck past the timeout, the running
        statement is interrupted and the close runs as soon as it returns.
        """
        worker = self._worker
        if worker is None:
            return
        self._worker = None
        # Not through _call: a timeout must not abandon the queued close.
        job = Job(self._disconnect, asyncio.get_running_loop(), Abandoned())
        worker.submit(job)
        done, _ = await asyncio.wait([job.future], timeout=self._timeout_s)
        if done:
            worker.stop()  # the queue is empty: returns at once
        else:
            self._interrupt()
            worker.stop(timeout_s=0)  # it ends once the statement returns

    async def ping(self) -> None:
        """Run a trivial query; ``StoreUnavailable`` if the file does not answer."""
        await self._call("ping", _ping)

    # --- sequencing -------------------------------------------------------------

    async def load_channel_state(self, channel_id: str, *, dedupe_since: str) -> ChannelState:
        """See ``MessageStore.load_channel_state``."""
        return await self._call(
            "load_channel_state",
            partial(_load_channel_state, channel_id=channel_id, dedupe_since=dedupe_since),
        )

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        """See ``MessageStore.append``."""
        if not events:
            return
        batch = tuple(events)
        await self._call("append", partial(_append, events=batch), write=True)

    async def last_seq(self, channel_id: str) -> int:
        """See ``MessageStore.last_seq``."""
        return await self._call("last_seq", partial(_last_seq, channel_id=channel_id))

    # --- reads ------------------------------------------------------------------

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
        after_seq, before_seq = check_history_args(before, after, limit)
        return await self._call(
            "history",
            partial(
                _history,
                channel_id=channel_id,
                after_seq=after_seq,
                before_seq=before_seq,
                forward=after is not None,
                limit=limit,
                thread_id=thread_id,
            ),
        )

    async def get_message(self, channel_id: str, message_id: str) -> ChimeMessage:
        """See ``MessageStore.get_message``."""
        seq = seq_of(channel_id, message_id)
        message = await self._call(
            "get_message", partial(_get_live, channel_id=channel_id, seq=seq)
        )
        if message is None:
            raise not_found(channel_id, message_id)
        return message

    async def events_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChannelEvent, ...]:
        """See ``MessageStore.events_range``."""
        return await self._call(
            "events_range",
            partial(_events_range, channel_id=channel_id, after_seq=after_seq, up_to=up_to_seq),
        )

    # --- reactions, threads, read markers ---------------------------------------

    async def reactions(self, channel_id: str, message_ids: Sequence[str]) -> ReactionMap:
        """See ``MessageStore.reactions``."""
        ids = tuple(sorted(set(message_ids)))
        if not ids:
            return {}
        return await self._call(
            "reactions", partial(_reactions, channel_id=channel_id, message_ids=ids)
        )

    async def reply_counts(self, channel_id: str, message_ids: Sequence[str]) -> ReplyCounts:
        """See ``MessageStore.reply_counts``."""
        ids = tuple(sorted(set(message_ids)))
        if not ids:
            return {}
        return await self._call(
            "reply_counts", partial(_reply_counts, channel_id=channel_id, message_ids=ids)
        )

    async def set_read_marker(self, channel_id: str, user_id: str, message_id: str) -> None:
        """See ``MessageStore.set_read_marker``."""
        await self._call(
            "set_read_marker",
            partial(
                _set_read_marker, channel_id=channel_id, user_id=user_id, message_id=message_id
            ),
            write=True,
        )

    # --- channel handlers -------------------------------------------------------

    async def channel_ids(self) -> tuple[str, ...]:
        """See ``MessageStore.channel_ids``."""
        return await self._call("channel_ids", _channel_ids)

    async def handler_cursors(self, handler: str) -> Mapping[str, int]:
        """See ``MessageStore.handler_cursors``."""
        return await self._call("handler_cursors", partial(_handler_cursors, handler=handler))

    async def save_handler_cursors(
        self, handler: str, cursors: Mapping[str, int], *, fence: int | None = None
    ) -> None:
        """See ``MessageStore.save_handler_cursors``: the fence check in the same transaction."""
        if not cursors:
            return
        rows = tuple((handler, key, seq) for key, seq in cursors.items())
        await self._call(
            "save_handler_cursors",
            partial(_save_handler_cursors, handler=handler, rows=rows, fence=fence),
            write=True,
        )

    async def claim_handler_fence(self, handler: str, fence: int) -> None:
        """See ``MessageStore.claim_handler_fence``."""
        await self._call(
            "claim_handler_fence",
            partial(_claim_handler_fence, handler=handler, fence=fence),
            write=True,
        )

    async def unread_counts(
        self, user_id: str, channel_ids: Sequence[str], *, limit: int
    ) -> dict[str, int]:
        """See ``MessageStore.unread_counts``: every channel in one worker call."""
        return await self._call(
            "unread_counts",
            partial(_unread_counts, user_id=user_id, channel_ids=tuple(channel_ids), limit=limit),
        )

    # --- attachments (storage.attachments) -------------------------------------

    async def save_attachment_chunk(self, attachment_id: str, index: int, data: bytes) -> None:
        """See ``AttachmentStore.save_attachment_chunk``: one row, one transaction.

        One transaction per chunk: the store's single connection serves other
        callers between chunks, and no transaction stays open while the upload
        waits for the client's next bytes.
        """
        await self._call(
            "save_attachment_chunk",
            partial(_save_chunk, attachment_id=attachment_id, index=index, data=bytes(data)),
            write=True,
        )

    async def begin_attachment(self, stub: StoredAttachment) -> None:
        """See ``AttachmentStore.begin_attachment``."""
        await self._call(
            "begin_attachment", partial(_finish_attachment, attachment=stub), write=True
        )

    async def finish_attachment(self, attachment: StoredAttachment) -> None:
        """See ``AttachmentStore.finish_attachment``."""
        await self._call(
            "finish_attachment", partial(_finish_attachment, attachment=attachment), write=True
        )

    async def discard_attachment(self, attachment_id: str, chunks: int) -> None:
        """See ``AttachmentStore.discard_attachment``."""
        await self._call(
            "discard_attachment",
            partial(_discard_attachment, attachment_id=attachment_id),
            write=True,
        )

    async def get_attachments(
        self, attachment_ids: Sequence[str]
    ) -> Mapping[str, StoredAttachment]:
        """See ``AttachmentStore.get_attachments``."""
        ids = tuple(sorted(set(attachment_ids)))
        if not ids:
            return {}
        return await self._call("get_attachments", partial(_get_attachments, ids=ids))

    async def attachment_chunk(self, attachment_id: str, index: int) -> bytes:
        """See ``AttachmentStore.attachment_chunk``."""
        data = await self._call(
            "attachment_chunk", partial(_attachment_chunk, attachment_id=attachment_id, index=index)
        )
        if data is None:
            raise StoreError(f"sqlite: attachment {attachment_id} has no chunk {index}")
        return data

    async def scan_attachments(
        self, after: str | None, limit: int
    ) -> tuple[tuple[StoredAttachment, ...], str | None]:
        """See ``AttachmentStore.scan_attachments``: in id order, the last id the cursor."""
        page = await self._call(
            "scan_attachments", partial(_scan_attachments, after=after or "", limit=limit)
        )
        return page, (page[-1].attachment_id if len(page) == limit else None)

    async def delete_unlisted_attachment(self, attachment: StoredAttachment) -> bool:
        """See ``AttachmentStore.delete_unlisted_attachment``: one write transaction."""
        return await self._call(
            "delete_unlisted_attachment",
            partial(_delete_unlisted_attachment, attachment_id=attachment.attachment_id),
            write=True,
        )

    async def attachment_channels(self, attachment_id: str) -> tuple[str, ...]:
        """See ``AttachmentStore.attachment_channels``."""
        return await self._call(
            "attachment_channels", partial(_attachment_channels, attachment_id=attachment_id)
        )

    # --- the worker thread ------------------------------------------------------

    async def _call(
        self,
        operation: str,
        work: Callable[[sqlite3.Connection], _T],
        *,
        write: bool = False,
    ) -> _T:
        """Run ``work(connection)`` on the worker thread within the timeout.

        With ``write`` the work runs in one write transaction (see ``_write``).
        """
        abandoned = Abandoned()
        return await self._submit(
            operation,
            partial(self._with_connection, operation, work, write, abandoned),
            abandoned,
        )

    async def _submit(self, operation: str, work: Callable[[], _T], abandoned: Abandoned) -> _T:
        """Run ``work()`` on the worker thread within the timeout, errors translated.

        On timeout (or cancellation of the caller) ``abandoned`` is set: a job
        that had not started is skipped, and a write that is still running rolls
        back instead of committing after its caller was told it failed.
        """
        worker = self._worker
        if worker is None:
            raise StoreError(f"SqliteStore.{operation}: the store is not open")
        loop = asyncio.get_running_loop()
        job = Job(partial(self._translate_errors, operation, work), loop, abandoned)
        worker.submit(job)  # refused at once (StoreUnavailable) when its queue is full
        timer = loop.call_later(self._timeout_s, self._expire, operation, job)
        try:
            return await job.future
        except asyncio.CancelledError:
            abandoned.set()
            raise
        finally:
            timer.cancel()

    def _expire(self, operation: str, job: Job[_T]) -> None:
        """Loop thread, ``timeout_s`` after a call was queued: give up on it."""
        if job.future.done():
            return
        job.abandoned.set()
        # A job that had not started is skipped. A running statement is
        # interrupted; a wait for another process's lock is not (SQLite's busy
        # handler ignores interrupts), which is what the abandoned flag is for.
        if job.started:
            self._interrupt()
        exc = StoreUnavailable(
            f"sqlite {operation} on {self._path} timed out after {self._timeout_s:g} s"
        )
        exc.__cause__ = TimeoutError()  # as ``raise ... from`` the timeout
        job.future.set_exception(exc)

    def _with_connection(
        self,
        operation: str,
        work: Callable[[sqlite3.Connection], _T],
        write: bool,
        abandoned: Abandoned,
    ) -> _T:
        conn = self._conn
        if conn is None:  # open() failed, or close() overtook this call
            raise StoreError(f"SqliteStore.{operation}: the store is not open")
        if not write:
            return work(conn)
        with _write(conn, abandoned):
            result = work(conn)
        if self._checkpointer is not None:
            self._checkpointer.wrote()
        return result

    def _translate_errors(self, operation: str, work: Callable[[], _T]) -> _T:
        """Worker thread: run ``work`` and translate library exceptions."""
        try:
            return work()
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"sqlite {operation} on {self._path}: {exc}") from exc
        except sqlite3.OperationalError as exc:
            # Locked past busy_timeout, interrupted, disk full, I/O error, file
            # not openable: all mean "try again later" to the caller.
            raise StoreUnavailable(f"sqlite {operation} on {self._path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {operation} on {self._path}: {exc}") from exc
        except OSError as exc:  # creating the parent directories
            raise StoreUnavailable(f"sqlite {operation} on {self._path}: {exc}") from exc

    def _connect(self) -> None:
        """Worker thread: open the file, set the pragmas, create the schema."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit BEGINs; _write() spells out each
        # transaction. check_same_thread=False only so the loop thread may call
        # interrupt(); everything else happens on this thread.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # Another process may be creating the same new file right now: its
            # write lock makes this answer SQLITE_BUSY at once, busy_timeout or not.
            (mode,) = _when_unlocked(conn, Abandoned(), "PRAGMA journal_mode = WAL").fetchone()
            if str(mode).lower() != "wal":
                raise StoreUnavailable(f"sqlite could not enable WAL on {self._path}: {mode}")
            # FULL: every commit's WAL frames are fsynced before it returns, so an
            # ack survives power loss. NORMAL survives a crash of the process only.
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            # The checkpointer thread checkpoints instead: a commit that
            # checkpoints waits for the whole copy and its fsync.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            with _write(conn, Abandoned()):
                for statement in _SCHEMA:
                    conn.execute(statement)
                _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._checkpointer = WalCheckpointer(
            self._path, synchronous=self._synchronous, interval_s=self._checkpoint_interval_s
        )

    def _disconnect(self) -> None:
        """Worker thread: stop the checkpointer, then close the connection if open.

        The last connection to the file to close checkpoints the whole WAL
        (SQLite does, whatever ``wal_autocheckpoint`` says): stopping the
        checkpointer first leaves that to this connection, after its last write.
        """
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.stop(timeout_s=self._timeout_s)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _interrupt(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.interrupt()


# --- SQL, run on the worker thread ----------------------------------------------


@contextmanager
def _write(conn: sqlite3.Connection, abandoned: Abandoned) -> Iterator[None]:
    """One write transaction holding the database lock from its first statement.

    It commits only if its caller is still waiting (``abandoned`` not set).
    """
    _begin_immediate(conn, abandoned)
    try:
        yield
        if abandoned.is_set():
            raise StoreUnavailable("sqlite write abandoned: its caller timed out")
        conn.execute("COMMIT")
    except BaseException:
        # An interrupt may already have rolled the transaction back.
        if conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _begin_immediate(conn: sqlite3.Connection, abandoned: Abandoned) -> None:
    """``BEGIN IMMEDIATE``, waiting while another process holds the write lock."""
    _when_unlocked(conn, abandoned, "BEGIN IMMEDIATE")


def _when_unlocked(conn: sqlite3.Connection, abandoned: Abandoned, sql: str) -> sqlite3.Cursor:
    """Run ``sql``, trying again every ``_LOCK_RETRY_S`` while the database is
    busy (``is_busy``), for at most ``_BUSY_TIMEOUT_MS``; a caller that stopped
    waiting (``abandoned``) ends the wait at once.

    SQLite's own busy handler sleeps 1, 2, 5 ... 100 ms between tries, so a
    waiter slept on long after the other's commit (docs/performance.md).
    """
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return conn.execute(sql)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or abandoned.is_set() or time.monotonic() >= deadline:
                    raise
            time.sleep(_LOCK_RETRY_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True if ``exc`` says another connection holds a lock for now: SQLITE_BUSY
    or one of its extended codes, which ``sqlite_errorcode`` carries. The one seen
    here is SQLITE_BUSY_RECOVERY, while another process rebuilds a new or crashed
    WAL's index: a store that opens at that moment must wait, not fail."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction: several SELECTs see one consistent state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a file made by an older version lacks (in the schema's transaction)."""
    present = {str(row[1]) for row in conn.execute("PRAGMA table_info(messages)")}
    for name, kind in _ADDED_COLUMNS:
        if name not in present:
            # Fixed names from _ADDED_COLUMNS, never client data.
            conn.execute(f"ALTER TABLE messages ADD COLUMN {name} {kind}")


def _to_message(row: _Row) -> ChimeMessage:
    metadata: dict[str, str] = json.loads(row[6])
    return ChimeMessage(
        channel_id=row[0],
        message_id=row[1],
        user_id=row[2],
        content=row[3],
        created_at=row[4],
        edited_at=row[5],
        metadata=tuple(metadata.items()),
        thread_id=row[7],
        client_msg_id=row[8],
        channel_name=row[9],
        attachments=load_attachments(row[10]),
    )


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute("SELECT 1").fetchone()


def _last_seq(conn: sqlite3.Connection, *, channel_id: str) -> int:
    (last,) = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE channel_id = ?", (channel_id,)
    ).fetchone()
    return int(last)


def _load_channel_state(
    conn: sqlite3.Connection, *, channel_id: str, dedupe_since: str
) -> ChannelState:
    with _snapshot(conn):
        last = _last_seq(conn, channel_id=channel_id)
        # Every send's key is in its row (a send without one has the gateway's),
        # so the dedupe window is the channel's newest sends, read backwards
        # along the primary key until one is older than the window. The
        # sequencer stamps created_at as it numbers, so time follows seq (a
        # wall clock stepped back can only end the scan early: those keys stop
        # deduping, nothing is lost). A key sent twice counts its newest send.
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE channel_id = ? AND kind IS NULL"
            " ORDER BY seq DESC",
            (channel_id,),
        )
        client_ids: dict[ClientKey, ChimeMessage] = {}
        try:
            for row in rows:
                if row[4] < dedupe_since:
                    break
                key = (row[2], row[8])
                if row[8] is not None and key not in client_ids:
                    client_ids[key] = _to_message(row)
        finally:
            rows.close()  # the scan may stop early: end it inside the snapshot
    return ChannelState(last_seq=last, client_ids=client_ids)


def _append(conn: sqlite3.Connection, *, events: tuple[ChannelEvent, ...]) -> None:
    messages = [e for e in events if isinstance(e, ChimeMessage)]
    changes = [e for e in events if isinstance(e, MessageChange)]
    counts: dict[str, int] = {}
    for message in messages:
        counts[message.channel_id] = counts.get(message.channel_id, 0) + 1
    # Plain INSERT: a taken (channel_id, seq) raises IntegrityError and the
    # whole batch rolls back. Overwriting would hide two live sequencers.
    conn.executemany(
        "INSERT INTO messages (channel_id, seq, message_id, user_id, content, created_at,"
        " edited_at, metadata, thread_id, client_msg_id, channel_name, attachments, deleted,"
        " kind, target_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*_row_values(m), 0, None, None) for m in messages]
        + [
            (*_row_values(change_row(c)), 1, c.kind.value, parse_message_id(c.message_id))
            for c in changes
        ],
    )
    refs = [(m.channel_id, m.message_id, a.attachment_id) for m in messages for a in m.attachments]
    if refs:  # rare: most messages list no file
        conn.executemany(
            "INSERT INTO attachment_refs (channel_id, message_id, attachment_id)"
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            refs,
        )
    conn.executemany(
        "INSERT INTO message_counters (channel_id, count) VALUES (?, ?)"
        " ON CONFLICT (channel_id) DO UPDATE SET count = count + excluded.count",
        list(counts.items()),
    )
    # In batch order: an edit and then a delete of one message end deleted.
    for change in changes:
        _apply(conn, change)


def _row_values(m: ChimeMessage) -> tuple[object, ...]:
    return (
        m.channel_id,
        m.seq,
        m.message_id,
        m.user_id,
        m.content,
        m.created_at,
        m.edited_at,
        # Most messages carry none: skip the encoder (7 % of the persister's
        # Python in many small rooms).
        json.dumps(dict(m.metadata), ensure_ascii=False, separators=(",", ":"))
        if m.metadata
        else "{}",
        m.thread_id,
        m.client_msg_id,
        m.channel_name,
        dump_attachments(m.attachments),
    )


def _apply(conn: sqlite3.Connection, change: MessageChange) -> None:
    """Apply a stored change to its message (nothing if that is not live)."""
    channel_id, seq = change.channel_id, parse_message_id(change.message_id)
    if change.kind is ChangeKind.EDIT:
        assert change.message is not None
        conn.execute(
            "UPDATE messages SET content = ?, edited_at = ?"
            " WHERE channel_id = ? AND seq = ? AND deleted = 0",
            (change.message.content, change.at, channel_id, seq),
        )
    elif change.kind is ChangeKind.DELETE:
        conn.execute(
            "UPDATE messages SET deleted = 1 WHERE channel_id = ? AND seq = ? AND deleted = 0",
            (channel_id, seq),
        )
        # Nobody can read or add them any more; nor does it grant its files.
        conn.execute(
            "DELETE FROM reactions WHERE channel_id = ? AND message_id = ?",
            (channel_id, change.message_id),
        )
        conn.execute(
            "DELETE FROM attachment_refs WHERE channel_id = ? AND message_id = ?",
            (channel_id, change.message_id),
        )
    else:
        live = conn.execute(
            "SELECT 1 FROM messages WHERE channel_id = ? AND seq = ? AND deleted = 0",
            (channel_id, seq),
        ).fetchone()
        if live is None:
            return
        params = (channel_id, change.message_id, change.emoji, change.user_id)
        if change.kind is ChangeKind.REACTION_ADD:
            conn.execute(
                "INSERT INTO reactions (channel_id, message_id, emoji, user_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                params,
            )
        else:
            conn.execute(
                "DELETE FROM reactions"
                " WHERE channel_id = ? AND message_id = ? AND emoji = ? AND user_id = ?",
                params,
            )


def _history(
    conn: sqlite3.Connection,
    *,
    channel_id: str,
    after_seq: int,
    before_seq: int | None,
    forward: bool,
    limit: int,
    thread_id: str | None,
) -> HistoryPage:
    # The SQL text is assembled from fixed fragments only; every value is a
    # parameter.
    where = "channel_id = ? AND deleted = 0 AND seq > ?"
    bounds: list[object] = [channel_id, after_seq]
    if before_seq is not None:
        where += " AND seq < ?"
        bounds.append(before_seq)
    order = "ASC" if forward else "DESC"
    if thread_id is None:
        sql = f"SELECT {_COLUMNS}, seq FROM messages WHERE {where}"
        params = bounds
    else:
        # The replies come from the thread index. The root is added by a second
        # SELECT on the primary key rather than by an OR, with which SQLite
        # would walk the whole channel instead of the index. INDEXED BY: without
        # statistics (no ANALYZE) the planner guesses from the declared columns,
        # and with a table as wide as this one it guessed the channel's primary
        # key range, which reads every message of the channel to find a thread.
        sql = (
            f"SELECT {_COLUMNS}, seq FROM messages INDEXED BY messages_by_thread"
            f" WHERE {where} AND thread_id = ?"
        )
        params = [*bounds, thread_id]
        try:
            root_seq = parse_message_id(thread_id)
        except ValueError:
            pass  # not a message id, so there is no root to add
        else:
            sql += (
                f" UNION ALL SELECT {_COLUMNS}, seq FROM messages WHERE {where}"
                # IS NOT: a root that names itself as its thread is listed once.
                " AND seq = ? AND thread_id IS NOT ?"
            )
            params += [*bounds, root_seq, thread_id]
    # seq is selected too: a compound SELECT can only ORDER BY result columns.
    # One row past the page tells whether more exist.
    rows = conn.execute(f"{sql} ORDER BY seq {order} LIMIT ?", [*params, limit + 1]).fetchall()
    has_more = len(rows) > limit
    page = [_to_message(row[:-1]) for row in rows[:limit]]
    if not forward:
        page.reverse()
    return HistoryPage(tuple(page), has_more=has_more)


def _get_live(conn: sqlite3.Connection, *, channel_id: str, seq: int) -> ChimeMessage | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE channel_id = ? AND seq = ? AND deleted = 0",
        (channel_id, seq),
    ).fetchone()
    return None if row is None else _to_message(row)


def _events_range(
    conn: sqlite3.Connection, *, channel_id: str, after_seq: int, up_to: int
) -> tuple[ChannelEvent, ...]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM messages"
        f" WHERE channel_id = ? AND seq > ? AND seq <= ? AND {_IS_EVENT} ORDER BY seq",
        (channel_id, after_seq, up_to),
    ).fetchall()
    events: list[ChannelEvent] = []
    for row in rows:
        message = _to_message(row[:_ROW_WIDTH])
        kind, target_seq = row[_ROW_WIDTH], row[_ROW_WIDTH + 1]
        events.append(message if kind is None else change_from_row(message, kind, target_seq))
    return tuple(events)


def _reactions(
    conn: sqlite3.Connection, *, channel_id: str, message_ids: tuple[str, ...]
) -> ReactionMap:
    result: dict[str, dict[str, list[str]]] = {}
    for start in range(0, len(message_ids), _MAX_PARAMS):
        chunk = message_ids[start : start + _MAX_PARAMS]
        placeholders = ", ".join("?" * len(chunk))
        # BINARY collation compares UTF-8 bytes, which is code point order:
        # the same order as sorting the Python strings.
        rows = conn.execute(
            "SELECT message_id, emoji, user_id FROM reactions"
            f" WHERE channel_id = ? AND message_id IN ({placeholders})"
            " ORDER BY message_id, emoji, user_id",
            (channel_id, *chunk),
        ).fetchall()
        for message_id, emoji, user_id in rows:
            result.setdefault(message_id, {}).setdefault(emoji, []).append(user_id)
    return {
        message_id: {emoji: tuple(users) for emoji, users in by_emoji.items()}
        for message_id, by_emoji in result.items()
    }


def _reply_counts(
    conn: sqlite3.Connection, *, channel_id: str, message_ids: tuple[str, ...]
) -> ReplyCounts:
    counts: dict[str, int] = {}
    for start in range(0, len(message_ids), _MAX_PARAMS):
        chunk = message_ids[start : start + _MAX_PARAMS]
        placeholders = ", ".join("?" * len(chunk))
        # The thread index answers this; a root naming itself is not its reply.
        rows = conn.execute(
            "SELECT thread_id, COUNT(*) FROM messages"
            f" WHERE channel_id = ? AND thread_id IN ({placeholders}) AND deleted = 0"
            " AND message_id != thread_id GROUP BY thread_id",
            (channel_id, *chunk),
        ).fetchall()
        counts.update((str(thread_id), int(count)) for thread_id, count in rows)
    return counts


def _set_read_marker(
    conn: sqlite3.Connection, *, channel_id: str, user_id: str, message_id: str
) -> None:
    # Fixed-width ids compare as strings in sequence order: the marker only
    # moves forward.
    conn.execute(
        "INSERT INTO read_markers (channel_id, user_id, message_id) VALUES (?, ?, ?)"
        " ON CONFLICT (channel_id, user_id) DO UPDATE SET message_id = excluded.message_id"
        " WHERE excluded.message_id > read_markers.message_id",
        (channel_id, user_id, message_id),
    )


def _read_marker(conn: sqlite3.Connection, *, channel_id: str, user_id: str) -> str | None:
    row = conn.execute(
        "SELECT message_id FROM read_markers WHERE channel_id = ? AND user_id = ?",
        (channel_id, user_id),
    ).fetchone()
    return None if row is None else str(row[0])


def _channel_ids(conn: sqlite3.Connection) -> tuple[str, ...]:
    # message_counters has a row per channel, written in the append's transaction.
    rows = conn.execute("SELECT channel_id FROM message_counters ORDER BY channel_id").fetchall()
    return tuple(str(row[0]) for row in rows)


def _handler_cursors(conn: sqlite3.Connection, *, handler: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT channel_id, last_seq FROM handler_cursors WHERE handler = ?", (handler,)
    ).fetchall()
    return {str(key): int(seq) for key, seq in rows}


def _stored_fence(conn: sqlite3.Connection, handler: str) -> int:
    row = conn.execute("SELECT fence FROM handler_fences WHERE handler = ?", (handler,)).fetchone()
    return 0 if row is None else int(row[0])


def _claim_handler_fence(conn: sqlite3.Connection, *, handler: str, fence: int) -> None:
    stored = _stored_fence(conn, handler)
    if stored > fence:
        raise FencedOut(handler, stored)
    conn.execute(
        "INSERT INTO handler_fences (handler, fence) VALUES (?, ?)"
        " ON CONFLICT (handler) DO UPDATE SET fence = excluded.fence",
        (handler, fence),
    )


def _save_handler_cursors(
    conn: sqlite3.Connection,
    *,
    handler: str,
    rows: tuple[tuple[str, str, int], ...],
    fence: int | None,
) -> None:
    if fence is not None and (stored := _stored_fence(conn, handler)) != fence:
        raise FencedOut(handler, stored)
    conn.executemany(
        "INSERT INTO handler_cursors (handler, channel_id, last_seq) VALUES (?, ?, ?)"
        " ON CONFLICT (handler, channel_id) DO UPDATE SET last_seq = excluded.last_seq"
        " WHERE excluded.last_seq > handler_cursors.last_seq",
        rows,
    )


def _unread_counts(
    conn: sqlite3.Connection, *, user_id: str, channel_ids: tuple[str, ...], limit: int
) -> dict[str, int]:
    counts: dict[str, int] = {}
    for channel_id in channel_ids:
        marker = _read_marker(conn, channel_id=channel_id, user_id=user_id)
        after = parse_message_id(marker) if marker is not None else 0
        # The inner LIMIT stops the primary-key range scan at the ``limit``-th
        # message of someone else.
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages"
            " WHERE channel_id = ? AND seq > ? AND deleted = 0 AND user_id != ? LIMIT ?)",
            (channel_id, after, user_id, limit),
        ).fetchone()
        counts[channel_id] = int(count)
    return counts


def _save_chunk(conn: sqlite3.Connection, *, attachment_id: str, index: int, data: bytes) -> None:
    # REPLACE: a chunk written again (a retried call) holds the same bytes.
    conn.execute(
        "INSERT OR REPLACE INTO attachment_chunks (attachment_id, idx, data) VALUES (?, ?, ?)",
        (attachment_id, index, data),
    )


def _finish_attachment(conn: sqlite3.Connection, *, attachment: StoredAttachment) -> None:
    # REPLACE: a finished record replaces its upload's stub.
    conn.execute(
        "INSERT OR REPLACE INTO attachments (attachment_id, owner, filename, content_type,"
        " size, sha256,"
        " chunks, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            attachment.attachment_id,
            attachment.owner,
            attachment.filename,
            attachment.content_type,
            attachment.size,
            attachment.sha256,
            attachment.chunks,
            attachment.created_at,
        ),
    )


def _discard_attachment(conn: sqlite3.Connection, *, attachment_id: str) -> None:
    conn.execute("DELETE FROM attachment_chunks WHERE attachment_id = ?", (attachment_id,))
    conn.execute(
        "DELETE FROM attachments WHERE attachment_id = ? AND sha256 = ?",
        (attachment_id, IN_PROGRESS),
    )


def _get_attachments(
    conn: sqlite3.Connection, *, ids: tuple[str, ...]
) -> dict[str, StoredAttachment]:
    found: dict[str, StoredAttachment] = {}
    for start in range(0, len(ids), _MAX_PARAMS):
        chunk = ids[start : start + _MAX_PARAMS]
        placeholders = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments"
            f" WHERE attachment_id IN ({placeholders}) AND sha256 != ?",
            (*chunk, IN_PROGRESS),
        ).fetchall()
        for row in rows:
            found[str(row[0])] = _to_attachment(row)
    return found


_ATTACHMENT_COLUMNS = (
    "attachment_id, owner, filename, content_type, size, sha256, chunks, created_at"
)


def _to_attachment(row: Sequence[Any]) -> StoredAttachment:
    return StoredAttachment(
        attachment_id=str(row[0]),
        owner=str(row[1]),
        filename=str(row[2]),
        content_type=str(row[3]),
        size=int(row[4]),
        sha256=str(row[5]),
        chunks=int(row[6]),
        created_at=str(row[7]),
    )


def _attachment_chunk(conn: sqlite3.Connection, *, attachment_id: str, index: int) -> bytes | None:
    row = conn.execute(
        "SELECT data FROM attachment_chunks WHERE attachment_id = ? AND idx = ?",
        (attachment_id, index),
    ).fetchone()
    return None if row is None else bytes(row[0])


def _scan_attachments(
    conn: sqlite3.Connection, *, after: str, limit: int
) -> tuple[StoredAttachment, ...]:
    rows = conn.execute(
        f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE attachment_id > ?"
        " ORDER BY attachment_id LIMIT ?",
        (after, limit),
    ).fetchall()
    return tuple(_to_attachment(row) for row in rows)


def _delete_unlisted_attachment(conn: sqlite3.Connection, *, attachment_id: str) -> bool:
    # In the write transaction: a send storing a listing of the file either
    # committed before (the row below exists: kept) or finds no record after.
    deleted = conn.execute(
        "DELETE FROM attachments WHERE attachment_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM attachment_refs WHERE attachment_id = ?)",
        (attachment_id, attachment_id),
    ).rowcount
    if deleted:
        conn.execute("DELETE FROM attachment_chunks WHERE attachment_id = ?", (attachment_id,))
    return bool(deleted)


def _attachment_channels(conn: sqlite3.Connection, *, attachment_id: str) -> tuple[str, ...]:
    rows = conn.execute(
        "SELECT DISTINCT channel_id FROM attachment_refs WHERE attachment_id = ?"
        " ORDER BY channel_id",
        (attachment_id,),
    ).fetchall()
    return tuple(str(row[0]) for row in rows)


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms: MessageStore = SqliteStore(":memory:")
    _conforms_too: AttachmentStore = SqliteStore(":memory:")
