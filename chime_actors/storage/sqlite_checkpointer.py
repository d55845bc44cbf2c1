"""WAL checkpoints on a thread of their own, so that no commit waits for one.

SQLite checkpoints a WAL file from inside a commit by default: the commit that
takes the WAL past ``wal_autocheckpoint`` pages (1,000) copies every page the
WAL holds into the database file and fsyncs that file before it returns. A
persister's group commit, and every ack and delivery behind it, then waited for
the whole checkpoint. In chatty (200 ten-member rooms, 200 msg/s) a commit
touches about ten pages, so that happened every half second; in a file of
20,000 channels it doubled the commits' p99 (docs/performance.md, "WAL
checkpoints beside the commits").

A ``SqliteStore`` therefore turns ``wal_autocheckpoint`` off on its connection
and gives the work to a ``WalCheckpointer``. It has a connection of its own
and runs ``PRAGMA wal_checkpoint(PASSIVE)`` at most every ``interval_s``, and
only after a write. SQLite lets a checkpoint run beside a writer in WAL mode:
the checkpointer copies the frames committed so far while the writer appends
new ones. PASSIVE never waits for a lock. A checkpoint that finds another
process's under way, or a reader still on old frames, copies what it can and
is tried again an interval later, up to ``INCOMPLETE_RETRIES`` times, and
after the next write in any case. The next write transaction after a complete
checkpoint starts the WAL again from its start (SQLite's own rule), so the
file stays bounded as it did before.

The thread waits on an event and nothing else: a process that never writes
(a gateway that only reads history) never wakes it. Checkpointing an interval's
worth of commits at once also copies a page rewritten by many of them only
once.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from chime_actors.logs import get_logger

log = get_logger(__name__)

#: Seconds between the checkpoints of a store that keeps writing.
CHECKPOINT_INTERVAL_S = 1.0
#: Checkpoints tried again, an interval apart, while one after the last write
#: could not copy every frame (another process's checkpoint was running, or a
#: reader was still on old frames); past that the next write tries again.
INCOMPLETE_RETRIES = 5


class WalCheckpointer:
    """A daemon thread that checkpoints one database's WAL after writes to it.

    Args:
        path: the database file (in WAL mode; the store created it).
        synchronous: the store's ``synchronous`` (``FULL`` or ``NORMAL``). A
            checkpoint fsyncs the WAL before it copies and the database after,
            under either.
        interval_s: the least time between two checkpoints.
    """

    def __init__(
        self, path: Path, *, synchronous: str, interval_s: float = CHECKPOINT_INTERVAL_S
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._interval_s = interval_s
        self._due = threading.Event()
        self._stopping = threading.Event()
        # Written by the thread only; an int read elsewhere needs no lock.
        self._checkpoints = 0
        self._retries_left = INCOMPLETE_RETRIES
        self._thread = threading.Thread(
            target=self._serve, name="chime-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    @property
    def checkpoints(self) -> int:
        """Checkpoints run so far (complete or not)."""
        return self._checkpoints

    def wrote(self) -> None:
        """A write was committed: checkpoint within ``interval_s`` (any thread)."""
        self._retries_left = INCOMPLETE_RETRIES
        self._due.set()

    def stop(self, timeout_s: float | None = None) -> bool:
        """End the thread without a last checkpoint; False if it is still running one.

        The last connection to close checkpoints the whole WAL itself.
        """
        self._stopping.set()
        self._due.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._due.wait()
                # Let the interval's commits gather; a stop ends the wait early.
                if self._stopping.wait(self._interval_s):
                    return
                self._due.clear()
                if conn is None:
                    conn = self._connect()
                done = conn is not None and self._checkpoint(conn)
                if not done and self._retries_left > 0:
                    self._retries_left -= 1
                    self._due.set()
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            log.warning("wal checkpointer cannot open", path=str(self._path), error=str(exc))
            return None
        return conn

    def _checkpoint(self, conn: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint; True if it copied every frame of the WAL."""
        try:
            # (busy, frames in the WAL, frames copied); busy when another
            # connection's checkpoint held the lock (PASSIVE never waits).
            busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            # Not a commit's problem: its frames are durable in the WAL.
            log.warning("wal checkpoint failed", path=str(self._path), error=str(exc))
            return False
        finally:
            self._checkpoints += 1
        return not busy and logged == copied
