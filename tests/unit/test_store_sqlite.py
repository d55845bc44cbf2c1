"""SqliteStore: the shared store contract plus what only a real file can show."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from chime_actors.errors import StoreError, StoreUnavailable
from chime_actors.records import Attachment
from chime_actors.storage import SqliteStore, sqlite_store

# tests/ is not a package; the contract suite lives there so that the Cassandra
# integration tests can share it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store_contract import (
    CHANNEL,
    StoreContract,
    StoreFactory,
    batch,
    delete,
    edit,
    make_message,
    mid,
    seqs,
)

from tests.attachment_contract import AttachmentContract, StorageFactory


class TestSqliteStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "chime.db")


class TestSqliteAttachmentContract(AttachmentContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StorageFactory:
        return lambda: SqliteStore(tmp_path / "chime.db")


@contextmanager
def raw_connection(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection for looking behind the store's back."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def test_creates_parent_directories_and_enables_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "chime.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(main())
    assert path.is_file()
    with raw_connection(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"messages", "message_counters", "reactions", "read_markers"} <= tables


def test_data_survives_reopening_and_schema_creation_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"

    async def main() -> None:
        first = SqliteStore(path)
        await first.open()
        await first.append(batch(1, 3, user="carol"))
        await first.set_read_marker(CHANNEL, "alice", mid(2))
        await first.close()
        await first.close()  # twice is fine

        second = SqliteStore(path)
        await second.open()
        assert await second.last_seq(CHANNEL) == 3
        assert seqs((await second.history(CHANNEL)).messages) == [1, 2, 3]
        assert await second.unread_counts("alice", [CHANNEL], limit=10) == {CHANNEL: 1}
        await second.close()

    asyncio.run(main())


def test_two_stores_on_one_file_see_each_other(tmp_path: Path) -> None:
    # The persister writes while gateways and the API read the same file.
    path = tmp_path / "chime.db"

    async def main() -> None:
        writer, reader = SqliteStore(path), SqliteStore(path)
        await writer.open()
        await reader.open()
        try:
            assert await reader.last_seq(CHANNEL) == 0
            await writer.append(batch(1, 2))
            assert seqs((await reader.history(CHANNEL)).messages) == [1, 2]
            await writer.append([edit(3, make_message(1), "edited")])
            assert (await reader.get_message(CHANNEL, mid(1))).content == "edited"
            # A second sequencer for the same channel is refused, not merged.
            with pytest.raises(StoreError) as raised:
                await reader.append([make_message(2, content="from a second sequencer")])
            assert not isinstance(raised.value, StoreUnavailable)
            assert (await writer.get_message(CHANNEL, mid(2))).content == "message 2"
        finally:
            await reader.close()
            await writer.close()

    asyncio.run(main())


def test_two_writers_on_one_file_both_get_through(tmp_path: Path) -> None:
    # Two persisters own distinct channels but share SQLite's one write lock:
    # each waits for the other (_begin_immediate) instead of failing.
    path = tmp_path / "chime.db"

    async def write_channel(store: SqliteStore, channel: str) -> None:
        for seq in range(1, 41):
            await store.append(batch(seq, seq, channel=channel))

    async def main() -> None:
        first, second = SqliteStore(path), SqliteStore(path)
        await first.open()
        await second.open()
        try:
            await asyncio.gather(write_channel(first, "one"), write_channel(second, "two"))
            assert await first.last_seq("two") == 40
            assert await second.last_seq("one") == 40
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_a_write_waiting_for_another_writers_lock_commits_once_it_is_free(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chime.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            with raw_connection(path) as other_process:
                other_process.execute("BEGIN IMMEDIATE")
                # SQLITE_BUSY while the other holds the lock: tried again, not raised.
                waiting = asyncio.ensure_future(store.append(batch(1, 2)))
                for _ in range(20):
                    await asyncio.sleep(0)
                assert not waiting.done()
                other_process.execute("ROLLBACK")
                await asyncio.wait_for(waiting, 10)
            assert await store.last_seq(CHANNEL) == 2
        finally:
            await store.close()

    asyncio.run(main())


def test_opening_a_new_file_another_process_is_writing_waits_for_its_lock(
    tmp_path: Path,
) -> None:
    # Two processes starting at once on a new file: the other one's first write
    # (its schema) holds the lock while this one turns WAL on. SQLite answers
    # that PRAGMA with SQLITE_BUSY at once, busy_timeout or not.
    path = tmp_path / "chime.db"

    async def main() -> None:
        with raw_connection(path) as other_process:
            other_process.execute("CREATE TABLE other (a)")
            other_process.execute("BEGIN IMMEDIATE")
            store = SqliteStore(path)
            opening = asyncio.ensure_future(store.open())
            await asyncio.sleep(0.2)
            assert not opening.done()
            other_process.execute("COMMIT")
            await asyncio.wait_for(opening, 10)
        try:
            await store.append(batch(1, 1))
            assert await store.last_seq(CHANNEL) == 1
        finally:
            await store.close()

    asyncio.run(main())


def _open_once(path: Path, start: Any, outcomes: Any) -> None:
    """A forked process: open ``path`` when every other one is ready, report how it went."""

    async def main() -> str:
        store = SqliteStore(path)
        try:
            await store.open()
            return "ok"
        except StoreError as exc:
            return str(exc)
        finally:
            await store.close()

    start.wait()
    outcomes.put(asyncio.run(main()))


def test_processes_opening_one_new_file_at_once_all_get_it(tmp_path: Path) -> None:
    # The server's processes on a first start. Before the fix about one round in
    # thirty failed: SQLITE_BUSY on the WAL pragma, SQLITE_BUSY_RECOVERY on BEGIN.
    processes, rounds = 4, 50
    forked = multiprocessing.get_context("fork")
    outcomes = forked.Queue()
    for number in range(rounds):
        start = forked.Barrier(processes)
        path = tmp_path / f"round-{number}" / "chime.db"
        openers = [
            forked.Process(target=_open_once, args=(path, start, outcomes))
            for _ in range(processes)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(30)
    got = [outcomes.get(timeout=10) for _ in range(processes * rounds)]
    assert [outcome for outcome in got if outcome != "ok"] == []


@pytest.mark.parametrize(
    ("name", "code", "busy"),
    [
        ("SQLITE_BUSY", 5, True),
        ("SQLITE_BUSY_RECOVERY", 5 | 1 << 8, True),  # another connection recovers the WAL
        ("SQLITE_BUSY_SNAPSHOT", 5 | 2 << 8, True),
        ("SQLITE_LOCKED", 6, False),
        ("SQLITE_IOERR", 10, False),
    ],
)
def test_every_kind_of_busy_is_tried_again_other_errors_are_not(
    name: str, code: int, busy: bool
) -> None:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = code
    error.sqlite_errorname = name
    assert sqlite_store.is_busy(error) is busy


def test_counts_appended_messages_per_channel(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.append(batch(1, 3) + batch(1, 2, channel="random"))
        await store.append(batch(4, 5))
        await store.append([delete(6, 1)])  # changes neither count nor uncount
        with pytest.raises(StoreError):
            await store.append(batch(6, 7))  # a failed batch counts nothing
        await store.close()

    asyncio.run(main())
    with raw_connection(path) as conn:
        counts = dict(conn.execute("SELECT channel_id, count FROM message_counters"))
    assert counts == {CHANNEL: 5, "random": 2}


def test_a_directory_path_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path)  # a directory, not a file
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        # A failed open leaves nothing running, and the store stays closed.
        with pytest.raises(StoreError):
            await store.ping()
        await store.close()

    asyncio.run(main())


def test_a_path_below_a_file_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def main() -> None:
        store = SqliteStore(blocker / "chime.db")
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        assert isinstance(raised.value.__cause__, OSError)

    asyncio.run(main())


def test_calls_before_open_or_after_close_fail(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(tmp_path / "chime.db")
        with pytest.raises(StoreError):
            await store.last_seq(CHANNEL)
        await store.open()
        await store.close()
        with pytest.raises(StoreError) as raised:
            await store.history(CHANNEL)
        assert not isinstance(raised.value, StoreUnavailable)

    asyncio.run(main())


def test_a_locked_database_times_out_and_the_write_is_not_stored(tmp_path: Path) -> None:
    path = tmp_path / "chime.db"

    async def main() -> None:
        store = SqliteStore(path, timeout_s=0.2)
        await store.open()
        try:
            await store.append(batch(1, 1))
            with raw_connection(path) as other_process:
                # Hold the write lock, as a stuck writer in another process would.
                other_process.execute("BEGIN IMMEDIATE")
                started = time.monotonic()
                with pytest.raises(StoreUnavailable) as raised:
                    await store.append(batch(2, 2))
                assert time.monotonic() - started < 2
                assert isinstance(raised.value.__cause__, TimeoutError)
                other_process.execute("ROLLBACK")
            # The abandoned write rolled back once the lock came free; the store
            # works again as soon as its worker is done waiting.
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert await store.last_seq(CHANNEL) == 1
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline
            await store.append(batch(2, 2))
            assert await store.last_seq(CHANNEL) == 2
        finally:
            await store.close()

    asyncio.run(main())


def test_thread_history_reads_the_thread_index(tmp_path: Path) -> None:
    # A thread of a long channel must not walk the whole channel: check the
    # query plan of the statement the store really runs.
    path = tmp_path / "chime.db"

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(main())
    with raw_connection(path) as conn:
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        sqlite_store._history(
            conn,
            channel_id=CHANNEL,
            after_seq=0,
            before_seq=None,
            forward=False,
            limit=10,
            thread_id=mid(2),
        )
        conn.set_trace_callback(None)
        (query,) = statements
        plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}")]
    assert any("USING INDEX messages_by_thread" in step for step in plan), plan
    assert any("USING PRIMARY KEY (channel_id=? AND seq=?)" in step for step in plan), plan
    assert not any(step.startswith("SCAN") for step in plan), plan


@pytest.mark.parametrize(("setting", "pragma"), [("full", 2), ("normal", 1)])
def test_synchronous_is_what_the_config_says(tmp_path: Path, setting: str, pragma: int) -> None:
    """``full`` (the default) fsyncs each commit, so an ack survives power loss."""

    async def main() -> int:
        store = SqliteStore(tmp_path / "chime.db", synchronous=setting)
        await store.open()
        try:
            # PRAGMA synchronous is per connection: ask the store's own, on its thread.
            row = await store._call(
                "pragma", lambda conn: conn.execute("PRAGMA synchronous").fetchone(), write=False
            )
            return int(row[0])
        finally:
            await store.close()

    assert asyncio.run(main()) == pragma


def test_the_default_config_asks_for_full_sync() -> None:
    from chime_actors.config import SqliteSynchronous, load_config

    assert load_config(None, env={}).storage.sqlite.synchronous is SqliteSynchronous.FULL


def test_a_file_of_an_older_version_gets_the_columns_of_changes_and_attachments(
    tmp_path: Path,
) -> None:
    # A file made before changes had positions: messages lacks kind and target_seq.
    path = tmp_path / "chime.db"
    with raw_connection(path) as conn:
        conn.execute(
            "CREATE TABLE messages (channel_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " message_id TEXT NOT NULL, user_id TEXT NOT NULL, content TEXT NOT NULL,"
            " created_at TEXT NOT NULL, edited_at TEXT, metadata TEXT NOT NULL DEFAULT '{}',"
            " thread_id TEXT, client_msg_id TEXT, channel_name TEXT,"
            " deleted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (channel_id, seq)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO messages (channel_id, seq, message_id, user_id, content, created_at)"
            " VALUES (?, 1, ?, 'alice', 'old', ?)",
            (CHANNEL, mid(1), "2026-11-27T10:00:01.000Z"),
        )
        conn.commit()

    async def main() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            old = await store.get_message(CHANNEL, mid(1))
            await store.append([edit(2, old, "new")])
            assert (await store.get_message(CHANNEL, mid(1))).content == "new"
            assert seqs(await store.events_range(CHANNEL, after_seq=0, up_to_seq=2)) == [1, 2]
            # ... and of attachments.
            listed = (Attachment("a" * 32, "f.txt", "text/plain", 1),)
            await store.append([replace(make_message(3), attachments=listed)])
            assert (await store.get_message(CHANNEL, mid(3))).attachments == listed
            assert await store.attachment_channels("a" * 32) == (CHANNEL,)
        finally:
            await store.close()

    asyncio.run(main())


def test_the_dedupe_window_of_an_older_file_is_read_from_its_messages(tmp_path: Path) -> None:
    # Older versions also kept each key in a client_ids table; the rows of
    # messages hold the same keys, so a file they wrote dedupes as before and
    # its client_ids table is left alone.
    path = tmp_path / "chime.db"

    async def write() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            await store.append(
                [
                    make_message(1, client_msg_id="k-1"),
                    make_message(2, user="bob", client_msg_id="k-1"),
                    make_message(3, client_msg_id="k-1", content="again"),
                ]
            )
        finally:
            await store.close()

    asyncio.run(write())
    with raw_connection(path) as conn:
        conn.execute(
            "CREATE TABLE client_ids (channel_id TEXT NOT NULL, user_id TEXT NOT NULL,"
            " client_msg_id TEXT NOT NULL, message_id TEXT NOT NULL, created_at TEXT NOT NULL,"
            " PRIMARY KEY (channel_id, user_id, client_msg_id)) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO client_ids VALUES (?, 'alice', 'k-1', ?, '2026-01-01T00:00:00.000Z')",
            (CHANNEL, mid(1)),
        )

    async def read() -> None:
        store = SqliteStore(path)
        await store.open()
        try:
            state = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert state.last_seq == 3
            assert {key: m.message_id for key, m in state.client_ids.items()} == {
                ("alice", "k-1"): mid(3),  # the newest send with the key
                ("bob", "k-1"): mid(2),
            }
            await store.append([make_message(4, client_msg_id="k-2")])
            state = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert state.client_ids[("alice", "k-2")].message_id == mid(4)
        finally:
            await store.close()

    asyncio.run(read())
