"""WAL checkpoints run beside the commits (storage/sqlite_checkpointer.py).

What is observable from outside: where the pages are. A commit appends its
pages to ``chime.db-wal``; a checkpoint copies them into ``chime.db``. So the
main file's size says whether a checkpoint ran, and the WAL's whether the next
write started it again from its start.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

from chime_actors.storage import SqliteStore
from chime_actors.storage.sqlite_checkpointer import WalCheckpointer
from chime_actors.storage.store import MessageStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store_contract import CHANNEL, make_message, run_with_store

# 2,000 messages of 2 KB: about 1,100 pages of 4 KB, past SQLite's default
# wal_autocheckpoint of 1,000 pages, after which a commit checkpointed itself.
MESSAGES = 2000
CONTENT = "x" * 2048
# The main file holds only the schema until a checkpoint has copied pages.
SCHEMA_ONLY_BYTES = 256 * 1024
# Less than those pages take, wherever they are.
WRITTEN_BYTES = 4 * 1024 * 1024
WAITED_S = 10.0


def _checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "chime-sqlite-checkpoint"]


async def _write_pages(store: MessageStore, first_seq: int) -> None:
    """Append ``MESSAGES`` messages from ``first_seq``, 500 per commit."""
    for start in range(first_seq, first_seq + MESSAGES, 500):
        await store.append(
            [make_message(seq, content=CONTENT) for seq in range(start, start + 500)]
        )


def test_no_commit_checkpoints_even_past_the_autocheckpoint_size(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"
    wal = tmp_path / "chime.db-wal"

    async def scenario(store: MessageStore) -> None:
        await _write_pages(store, 1)
        assert wal.stat().st_size > WRITTEN_BYTES  # the pages are all in the WAL ...
        assert path.stat().st_size < SCHEMA_ONLY_BYTES  # ... none was copied by a commit

    # The checkpointer's interval outlasts the test: only a commit could copy.
    run_with_store(lambda: SqliteStore(path, checkpoint_interval_s=3600), scenario)


def test_the_checkpointer_copies_the_wal_after_writes_and_the_next_write_reuses_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chime.db"
    wal = tmp_path / "chime.db-wal"

    async def scenario(store: MessageStore) -> None:
        await _write_pages(store, 1)
        seq = MESSAGES
        deadline = time.monotonic() + WAITED_S
        while True:
            # A write after a whole checkpoint starts the WAL again from
            # its start: the file does not grow. Without one it always does.
            await asyncio.sleep(0.05)
            before = wal.stat().st_size
            seq += 1
            await store.append([make_message(seq)])
            if wal.stat().st_size == before:
                break
            assert time.monotonic() < deadline, f"the WAL still grows after {WAITED_S} s"
        assert path.stat().st_size > WRITTEN_BYTES  # the pages were copied
        assert await store.last_seq(CHANNEL) == seq

    run_with_store(lambda: SqliteStore(path, checkpoint_interval_s=0.05), scenario)


def test_a_store_that_only_reads_never_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"

    async def main() -> int:
        writer = SqliteStore(path, checkpoint_interval_s=3600)
        reader = SqliteStore(path, checkpoint_interval_s=0.01)
        await writer.open()
        await reader.open()
        try:
            await _write_pages(writer, 1)
            for _ in range(5):
                assert await reader.last_seq(CHANNEL) == MESSAGES
                await asyncio.sleep(0.05)
            # Twenty-five of the reader's intervals have passed, and it never wrote.
            return path.stat().st_size
        finally:
            await reader.close()
            await writer.close()

    assert asyncio.run(main()) < SCHEMA_ONLY_BYTES


def test_close_ends_the_checkpointer_and_folds_the_wal_into_the_file(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"
    before = len(_checkpointer_threads())

    async def main() -> None:
        store = SqliteStore(path, checkpoint_interval_s=3600)
        await store.open()
        assert len(_checkpointer_threads()) == before + 1
        await _write_pages(store, 1)
        await store.close()

    asyncio.run(main())
    assert len(_checkpointer_threads()) == before
    # The last connection to close checkpointed everything and removed the WAL.
    assert not (tmp_path / "chime.db-wal").exists()
    assert path.stat().st_size > WRITTEN_BYTES

    async def reopened(store: MessageStore) -> None:
        assert await store.last_seq(CHANNEL) == MESSAGES

    run_with_store(lambda: SqliteStore(path), reopened)


def test_a_checkpoint_a_reader_held_back_is_tried_again_without_another_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chime.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("PRAGMA journal_mode = WAL")
        writer.execute("PRAGMA wal_autocheckpoint = 0")
        writer.execute("CREATE TABLE t (v TEXT)")
        with closing(sqlite3.connect(path, isolation_level=None)) as reader:
            # A read transaction on the frames so far: no checkpoint may copy
            # the frames after them while it lasts.
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM t").fetchone()
            writer.executemany("INSERT INTO t VALUES (?)", [(CONTENT,)] * MESSAGES)
            checkpointer = WalCheckpointer(path, synchronous="FULL", interval_s=0.02)
            try:
                checkpointer.wrote()
                deadline = time.monotonic() + WAITED_S
                while checkpointer.checkpoints == 0:
                    assert time.monotonic() < deadline, "no checkpoint was tried"
                    time.sleep(0.01)
                assert path.stat().st_size < SCHEMA_ONLY_BYTES  # held back
                reader.execute("COMMIT")
                # No write follows: only a retry can copy the pages now.
                while path.stat().st_size < WRITTEN_BYTES:
                    assert time.monotonic() < deadline, "the checkpoint was not tried again"
                    time.sleep(0.01)
            finally:
                assert checkpointer.stop(timeout_s=WAITED_S)


def test_a_file_the_checkpointer_cannot_open_is_logged_not_raised(tmp_path: Path) -> None:
    # A directory is no database: connecting fails on the checkpointer's thread.
    # An exception escaping that thread would fail this test (warnings are errors).
    checkpointer = WalCheckpointer(tmp_path, synchronous="FULL", interval_s=0.01)
    checkpointer.wrote()
    time.sleep(0.2)  # the attempt and its retries, an interval apart
    assert checkpointer.checkpoints == 0  # none could run
    assert checkpointer.stop(timeout_s=WAITED_S)
