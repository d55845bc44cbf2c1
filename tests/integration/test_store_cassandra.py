"""``CassandraStore`` against the real Cassandra that ``bin/services up`` starts.

The whole ``StoreContract`` runs here (except what ``atomic_append = False``
names), plus what only Cassandra has: bucket boundaries, the channel head,
tombstone-free writes, the counter table and an unreachable cluster.

All tests of a session share one keyspace with a unique name, dropped at the
end; before each test its tables are truncated, which is much faster than
creating a keyspace per test.

Skipped when CHIME_SERVICES_JSON is unset.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec.structs
import orjson
import pytest
from msgspec.structs import replace

from chime_actors.api import attachment_routes
from chime_actors.api.http_server import HttpRequest
from chime_actors.config import CassandraConfig, StorageBackend, load_config
from chime_actors.errors import StoreError, StoreUnavailable
from chime_actors.records import Attachment
from chime_actors.storage.attachments import CHUNK_BYTES, read_attachment
from chime_actors.storage.cassandra_store import CassandraStore
from chime_actors.storage.factory import make_store as make_configured_store
from tests.attachment_contract import AttachmentContract, StorageFactory, UploadBackend, pieces
from tests.integration.services import load_services
from tests.store_contract import (
    CHANNEL,
    StoreContract,
    StoreFactory,
    batch,
    created_at,
    delete,
    edit,
    make_message,
    mid,
    react,
    seqs,
)

pytestmark = pytest.mark.integration

_TABLES = (
    "messages",
    "thread_messages",
    "channel_heads",
    "message_counters",
    "client_ids",
    "reactions",
    "read_markers",
    "handler_cursors",
    "attachments",
    "attachment_chunks",
    "attachment_refs",
)

# Generous: the node shares two cores with the test run.
_TIMEOUT_S = 20.0


@pytest.fixture(scope="session")
def cassandra_config() -> Iterator[CassandraConfig]:
    """A config for a fresh keyspace with the schema created; dropped at the end."""
    service = load_services("cassandra")["cassandra"]
    protocol_version = service.get("protocol_version")
    config = CassandraConfig(
        hosts=(str(service["host"]),),
        port=int(service["port"]),
        keyspace=f"chime_test_{uuid.uuid4().hex[:12]}",
        local_dc=None,
        username=None,
        password=None,
        replication_factor=1,
        protocol_version=None if protocol_version is None else int(protocol_version),
    )
    store = CassandraStore(config, timeout_s=_TIMEOUT_S)
    asyncio.run(store.open())  # creates the keyspace and tables
    asyncio.run(store.close())
    try:
        yield config
    finally:
        with cql_session(config) as session:
            session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=60)


class cql_session:  # noqa: N801 - used as a context manager, like open()
    """A plain driver session for looking behind the store's back."""

    def __init__(self, config: CassandraConfig) -> None:
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import RoundRobinPolicy

        kwargs: dict[str, Any] = {
            "contact_points": list(config.hosts),
            "port": config.port,
            "execution_profiles": {
                EXEC_PROFILE_DEFAULT: ExecutionProfile(
                    load_balancing_policy=RoundRobinPolicy(), request_timeout=60
                )
            },
        }
        if config.protocol_version is not None:
            kwargs["protocol_version"] = config.protocol_version
        self._cluster = Cluster(**kwargs)

    def __enter__(self) -> Any:
        return self._cluster.connect()

    def __exit__(self, *exc: object) -> None:
        self._cluster.shutdown()


@pytest.fixture(scope="session")
def raw_session(cassandra_config: CassandraConfig) -> Iterator[Any]:
    with cql_session(cassandra_config) as session:
        yield session


@pytest.fixture
def clean_keyspace(cassandra_config: CassandraConfig, raw_session: Any) -> CassandraConfig:
    """The session's keyspace with every table emptied."""
    # All at once: each TRUNCATE waits for a flush, and they do not depend on
    # each other.
    futures = [
        raw_session.execute_async(f"TRUNCATE {cassandra_config.keyspace}.{table}", timeout=60)
        for table in _TABLES
    ]
    for future in futures:
        future.result()
    return cassandra_config


class TestCassandraStoreContract(StoreContract):
    atomic_append = False

    @pytest.fixture
    def make_store(self, clean_keyspace: CassandraConfig) -> StoreFactory:
        return lambda: CassandraStore(clean_keyspace, timeout_s=_TIMEOUT_S)


class TestCassandraAttachmentContract(AttachmentContract):
    @pytest.fixture
    def make_store(self, clean_keyspace: CassandraConfig) -> StorageFactory:
        return lambda: CassandraStore(clean_keyspace, timeout_s=_TIMEOUT_S)


def test_an_upload_is_one_partition_per_chunk_of_at_most_1_mib(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    data = os.urandom(2 * CHUNK_BYTES + 777)
    uploaded: dict[str, Any] = {}

    async def scenario(store: CassandraStore) -> None:
        backend = UploadBackend(store, "alice", max_bytes=10 * CHUNK_BYTES)
        request = HttpRequest(
            "POST", "/v1/attachments", query={"filename": "big.bin"}, body_stream=pieces(data)
        )
        response = await attachment_routes.upload(backend, request)
        assert response.status == 201
        uploaded.update(orjson.loads(response.body))
        stored = (await store.get_attachments([uploaded["attachmentId"]]))[uploaded["attachmentId"]]
        back = b"".join([chunk async for chunk in read_attachment(store, stored)])
        assert hashlib.sha256(back).hexdigest() == uploaded["sha256"]

    run(clean_keyspace, scenario)
    assert uploaded["sha256"] == hashlib.sha256(data).hexdigest()
    ks = clean_keyspace.keyspace
    rows = [
        raw_session.execute(
            f"SELECT idx, data FROM {ks}.attachment_chunks WHERE attachment_id = %s AND idx = %s",
            (uploaded["attachmentId"], index),
        ).one()
        for index in range(3)
    ]
    assert [len(row.data) for row in rows] == [CHUNK_BYTES, CHUNK_BYTES, 777]
    assert b"".join(row.data for row in rows) == data
    record = raw_session.execute(
        f"SELECT owner, size, chunks, sha256 FROM {ks}.attachments WHERE attachment_id = %s",
        (uploaded["attachmentId"],),
    ).one()
    assert (record.owner, record.size, record.chunks) == ("alice", len(data), 3)


def test_a_keyspace_of_an_older_version_gets_the_attachments_columns(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    ks = clean_keyspace.keyspace
    for table in ("messages", "thread_messages"):
        raw_session.execute(f"ALTER TABLE {ks}.{table} DROP attachments", timeout=60)
    listed = (Attachment("c" * 32, "f.txt", "text/plain", 3),)
    message = replace(make_message(1, thread_id=mid(1)), attachments=listed)

    async def scenario(store: CassandraStore) -> None:
        await store.append([message])
        assert await store.get_message(CHANNEL, mid(1)) == message
        assert (await store.history(CHANNEL, thread_id=mid(1))).messages == (message,)

    # Opening with create_schema (as `chime db init` does) adds the columns back.
    run(clean_keyspace, scenario)


def run(config: CassandraConfig, scenario: Any, *, bucket_size: int = 10) -> None:
    """Open a store with small buckets, run ``scenario(store)``, close it."""

    async def main() -> None:
        store = CassandraStore(config, timeout_s=_TIMEOUT_S, bucket_size=bucket_size)
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_paging_across_bucket_boundaries(clean_keyspace: CassandraConfig, raw_session: Any) -> None:
    # Buckets of 10: seqs 1..35 fill buckets 0 (1-9), 1, 2 and part of 3.
    async def scenario(store: CassandraStore) -> None:
        await store.append(batch(1, 35))
        assert await store.last_seq(CHANNEL) == 35
        # Deleted rows right at the boundaries must not end a walk early.
        await store.append([delete(36 + i, seq) for i, seq in enumerate((19, 20, 21))])
        live = [s for s in range(1, 36) if s not in (19, 20, 21)]

        page = await store.history(CHANNEL, limit=8)
        assert (seqs(page.messages), page.has_more) == (live[-8:], True)
        page = await store.history(CHANNEL, before=mid(23), limit=3)
        assert (seqs(page.messages), page.has_more) == ([17, 18, 22], True)
        page = await store.history(CHANNEL, after=mid(17), limit=3)
        assert (seqs(page.messages), page.has_more) == ([18, 22, 23], True)
        page = await store.history(CHANNEL, after=mid(8), before=mid(12), limit=10)
        assert (seqs(page.messages), page.has_more) == ([9, 10, 11], False)
        page = await store.history(CHANNEL, after=mid(30), limit=10)
        assert (seqs(page.messages), page.has_more) == ([31, 32, 33, 34, 35], False)
        page = await store.history(CHANNEL, before=mid(10**12), limit=2)
        assert (seqs(page.messages), page.has_more) == ([34, 35], True)

        backward: list[int] = []
        page = await store.history(CHANNEL, limit=4)
        backward[:0] = seqs(page.messages)
        while page.has_more:
            page = await store.history(CHANNEL, before=mid(backward[0]), limit=4)
            backward[:0] = seqs(page.messages)
        assert backward == live

        forward: list[int] = []
        cursor = mid(0)
        while True:
            page = await store.history(CHANNEL, after=cursor, limit=4)
            forward += seqs(page.messages)
            if not page.has_more:
                break
            cursor = page.messages[-1].message_id
        assert forward == live

        got = await store.events_range(CHANNEL, after_seq=5, up_to_seq=32)
        assert seqs(got) == [s for s in live if 5 < s <= 32]

        await store.append([react(39 + i, seq, "👍", "alice") for i, seq in enumerate((9, 10, 30))])
        reactions = await store.reactions(CHANNEL, [mid(s) for s in range(1, 36)])
        assert sorted(reactions) == [mid(9), mid(10), mid(30)]
        assert await store.last_seq(CHANNEL) == 41

    run(clean_keyspace, scenario)
    rows = raw_session.execute(
        f"SELECT DISTINCT channel_id, bucket FROM {clean_keyspace.keyspace}.messages"
    )
    assert sorted(row.bucket for row in rows if row.channel_id == CHANNEL) == [0, 1, 2, 3, 4]


def test_buckets_holding_only_changes_do_not_end_the_channel(
    clean_keyspace: CassandraConfig,
) -> None:
    # Buckets of 10: messages 1-5, then reactions 6-25 (buckets 1 and most of 2
    # hold no message), then messages 26-28.
    async def scenario(store: CassandraStore) -> None:
        await store.append(batch(1, 5))
        await store.append([react(seq, 1, f"e{seq}", "bob") for seq in range(6, 26)])
        await store.append(batch(26, 28))
        assert await store.last_seq(CHANNEL) == 28
        page = await store.history(CHANNEL, limit=5)
        assert (seqs(page.messages), page.has_more) == ([4, 5, 26, 27, 28], True)
        page = await store.history(CHANNEL, after=mid(3), limit=3)
        assert (seqs(page.messages), page.has_more) == ([4, 5, 26], True)
        page = await store.history(CHANNEL, before=mid(26), limit=3)
        assert (seqs(page.messages), page.has_more) == ([3, 4, 5], True)
        assert seqs(await store.events_range(CHANNEL, after_seq=4, up_to_seq=28)) == list(
            range(5, 29)
        )

    run(clean_keyspace, scenario)


def test_thread_spanning_buckets(clean_keyspace: CassandraConfig) -> None:
    root = mid(5)

    async def scenario(store: CassandraStore) -> None:
        messages = [make_message(1), make_message(5)]
        messages += [make_message(s, thread_id=root) for s in (8, 12, 27, 41)]
        await store.append(messages)
        page = await store.history(CHANNEL, thread_id=root)
        assert (seqs(page.messages), page.has_more) == ([5, 8, 12, 27, 41], False)
        page = await store.history(CHANNEL, thread_id=root, limit=2)
        assert (seqs(page.messages), page.has_more) == ([27, 41], True)
        page = await store.history(CHANNEL, thread_id=root, before=mid(27), limit=2)
        assert (seqs(page.messages), page.has_more) == ([8, 12], True)
        await store.append([edit(50, make_message(12, thread_id=root), "edited"), delete(51, 27)])
        page = await store.history(CHANNEL, thread_id=root, after=mid(5))
        assert [m.content for m in page.messages] == ["message 8", "edited", "message 41"]

    run(clean_keyspace, scenario)


def test_the_head_keeps_the_highest_seq_whatever_the_order(clean_keyspace: CassandraConfig) -> None:
    async def scenario(store: CassandraStore) -> None:
        # A later write of an older batch (a retry arriving late) must not
        # move the head back: it is written USING TIMESTAMP <seq>.
        await store.append(batch(5, 6))
        await store.append(batch(1, 4))
        assert await store.last_seq(CHANNEL) == 6
        assert (await store.load_channel_state(CHANNEL, dedupe_since="")).last_seq == 6

    run(clean_keyspace, scenario)


def test_last_seq_sees_rows_the_head_does_not(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    # An append that failed after writing its messages but before the head
    # leaves rows above the head, even in later buckets: a reloading sequencer
    # must not hand those numbers out again.
    async def scenario(store: CassandraStore) -> None:
        await store.append(batch(1, 8))

    run(clean_keyspace, scenario)
    insert = raw_session.prepare(
        f"INSERT INTO {clean_keyspace.keyspace}.messages"
        " (channel_id, bucket, seq, user_id, content, created_at) VALUES (?, ?, ?, ?, ?, ?)"
    )
    for seq in range(9, 24):
        raw_session.execute(insert, (CHANNEL, seq // 10, seq, "alice", "orphan", created_at(seq)))

    async def check(store: CassandraStore) -> None:
        assert await store.last_seq(CHANNEL) == 23
        assert seqs((await store.history(CHANNEL, limit=2)).messages) == [22, 23]

    run(clean_keyspace, check)


def test_writes_leave_no_tombstones(clean_keyspace: CassandraConfig, raw_session: Any) -> None:
    # A message without the optional fields must leave them unset, not null:
    # a null is a tombstone. Tracing the read of the row counts tombstone cells.
    async def scenario(store: CassandraStore) -> None:
        await store.append([make_message(1), make_message(2, thread_id=mid(1))])
        await store.append([edit(3, make_message(2, thread_id=mid(1)), "edited"), delete(4, 1)])
        await store.append([react(5, 2, "👍", "bob"), react(6, 2, "👍", "bob", add=False)])

    run(clean_keyspace, scenario, bucket_size=10_000)
    ks = clean_keyspace.keyspace
    row = raw_session.execute(
        f"SELECT edited_at, metadata, thread_id, client_msg_id, channel_name, deleted, kind,"
        f" target FROM {ks}.messages WHERE channel_id = %s AND bucket = 0 AND seq = 1",
        (CHANNEL,),
    ).one()
    assert (row.edited_at, row.metadata, row.thread_id, row.client_msg_id) == (None,) * 4
    assert (row.channel_name, row.deleted, row.kind, row.target) == (None, True, None, None)
    # The check can see a tombstone: a null written on purpose, elsewhere.
    raw_session.execute(
        f"INSERT INTO {ks}.messages (channel_id, bucket, seq, user_id, thread_id)"
        " VALUES ('control', 0, 1, 'alice', null)"
    )
    assert (
        _tombstones_read(raw_session, f"{ks}.messages", "channel_id = 'control' AND bucket = 0")
        == 1
    )
    assert (
        _tombstones_read(raw_session, f"{ks}.messages", f"channel_id = '{CHANNEL}' AND bucket = 0")
        == 0
    )
    where = f"channel_id = '{CHANNEL}' AND thread_id = '{mid(1)}'"
    assert _tombstones_read(raw_session, f"{ks}.thread_messages", where) == 0


def _tombstones_read(session: Any, table: str, where: str) -> int:
    """Tombstone cells the node reports (tracing) for reading ``table`` at ``where``."""
    result = session.execute(f"SELECT * FROM {table} WHERE {where}", trace=True)
    assert list(result), f"no rows in {table} at {where}"
    events = [str(e.description) for e in result.get_query_trace(max_wait_sec=10).events]
    counts = [re.search(r"live rows and (\d+) tombstone cells", e) for e in events]
    found = [int(match.group(1)) for match in counts if match]
    assert found, events
    return sum(found)


def test_counts_appended_messages_per_channel(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    async def scenario(store: CassandraStore) -> None:
        await store.append(batch(1, 3) + batch(1, 2, channel="random"))
        await store.append(batch(4, 5))
        await store.append([delete(6, 1)])  # changes neither count nor uncount

    run(clean_keyspace, scenario)
    rows = raw_session.execute(
        f"SELECT channel_id, count FROM {clean_keyspace.keyspace}.message_counters"
    )
    assert {row.channel_id: row.count for row in rows} == {CHANNEL: 5, "random": 2}


def test_counters_are_summed_and_land_about_a_second_later_without_a_close(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    query = f"SELECT count FROM {clean_keyspace.keyspace}.message_counters WHERE channel_id = %s"

    def counted() -> int | None:
        row = raw_session.execute(query, (CHANNEL,)).one()
        return None if row is None else int(row.count)

    async def scenario(store: CassandraStore) -> None:
        for seq in range(1, 21):  # twenty appends, one message each
            await store.append(batch(seq, seq))
        # Summed, not written per append: nothing yet, then all twenty at once.
        assert counted() is None
        deadline = time.monotonic() + 10
        while counted() is None:
            assert time.monotonic() < deadline, "the counters were never flushed"
            await asyncio.sleep(0.05)
        assert counted() == 20
        await store.append(batch(21, 22))

    run(clean_keyspace, scenario)
    assert counted() == 22  # the close flushed the last two


def test_a_large_append_is_split_and_fully_stored(clean_keyspace: CassandraConfig) -> None:
    big = "x" * 3000

    async def scenario(store: CassandraStore) -> None:
        messages = [make_message(s, content=big, client_msg_id=f"c-{s}") for s in range(1, 501)]
        await store.append(messages)
        assert await store.last_seq(CHANNEL) == 500
        got = await store.events_range(CHANNEL, after_seq=0, up_to_seq=500)
        assert seqs(got) == list(range(1, 501))
        state = await store.load_channel_state(CHANNEL, dedupe_since="")
        assert len(state.client_ids) == 500

    run(clean_keyspace, scenario, bucket_size=10_000)


def test_a_repeated_seq_in_one_batch_is_refused_before_writing(
    clean_keyspace: CassandraConfig,
) -> None:
    async def scenario(store: CassandraStore) -> None:
        with pytest.raises(StoreError) as raised:
            await store.append([make_message(1), make_message(1, content="again")])
        assert not isinstance(raised.value, StoreUnavailable)
        assert await store.last_seq(CHANNEL) == 0

    run(clean_keyspace, scenario)


def test_reopening_keeps_data_and_schema_creation_is_idempotent(
    clean_keyspace: CassandraConfig,
) -> None:
    async def main() -> None:
        first = CassandraStore(clean_keyspace, timeout_s=_TIMEOUT_S)
        await first.open()
        await first.append(batch(1, 3))
        await first.init_schema()  # again, on an existing keyspace
        await first.close()
        await first.close()  # twice is fine

        second = CassandraStore(clean_keyspace, timeout_s=_TIMEOUT_S)
        await second.open()
        try:
            assert seqs((await second.history(CHANNEL)).messages) == [1, 2, 3]
        finally:
            await second.close()
        with pytest.raises(StoreError) as raised:
            await second.ping()
        assert not isinstance(raised.value, StoreUnavailable)

    asyncio.run(main())


def test_a_closed_port_is_unavailable_quickly(cassandra_config: CassandraConfig) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nobody listens here once it is closed
    config = msgspec.structs.replace(cassandra_config, port=port)
    threads_before = set(threading.enumerate())

    async def main() -> None:
        store = CassandraStore(config, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        assert time.monotonic() - started < 5
        from cassandra.cluster import NoHostAvailable

        assert isinstance(raised.value.__cause__, NoHostAvailable)
        with pytest.raises(StoreError):
            await store.ping()
        await store.close()

    asyncio.run(main())
    _wait_for_threads(threads_before)


def test_close_leaves_no_driver_thread(clean_keyspace: CassandraConfig) -> None:
    threads_before = set(threading.enumerate())

    async def scenario(store: CassandraStore) -> None:
        await store.ping()

    run(clean_keyspace, scenario)
    _wait_for_threads(threads_before)


def test_the_factory_builds_a_cassandra_store() -> None:
    config = load_config(env={}, overrides={"storage.backend": "cassandra"})
    assert config.storage.backend is StorageBackend.CASSANDRA
    store = make_configured_store(config)
    assert isinstance(store, CassandraStore)
    assert store.config == config.storage.cassandra


def _wait_for_threads(allowed: set[threading.Thread]) -> None:
    """Wait (bounded) until only ``allowed`` threads are left, plus the driver's
    process-wide libev loop thread, which it starts once and keeps (daemon)."""
    deadline = time.monotonic() + 10
    while True:
        extra = [t for t in threading.enumerate() if t not in allowed and t.name != "event_loop"]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert extra == [], extra


def test_protocol_v3_leaves_absent_columns_out(
    clean_keyspace: CassandraConfig, raw_session: Any
) -> None:
    # Protocol v3 (Cassandra 2.1) has no UNSET_VALUE: the store builds INSERTs
    # naming only the present columns. Cassandra 5 still speaks v3.
    config = msgspec.structs.replace(clean_keyspace, protocol_version=3)
    full = make_message(
        2,
        thread_id=mid(1),
        client_msg_id="c-2",
        metadata=(("k", "v"),),
        channel_name="General",
    )

    changes = [edit(4, full, "edited"), react(5, 1, "👍", "bob"), delete(6, 3)]

    async def scenario(store: CassandraStore) -> None:
        await store.append([make_message(1), full, make_message(3, client_msg_id="c-3")])
        await store.append(changes)
        assert await store.events_range(CHANNEL, after_seq=3, up_to_seq=6) == tuple(changes)
        full_edited = replace(full, content="edited", edited_at=created_at(4))
        assert await store.get_message(CHANNEL, mid(2)) == full_edited
        await store.append([edit(7, full, "message 2")])
        assert await store.get_message(CHANNEL, mid(1)) == make_message(1)
        assert (await store.get_message(CHANNEL, mid(2))).content == full.content
        assert seqs((await store.history(CHANNEL, thread_id=mid(1))).messages) == [1, 2]
        state = await store.load_channel_state(CHANNEL, dedupe_since="")
        assert set(state.client_ids) == {("alice", "c-2"), ("alice", "c-3")}

    run(config, scenario)
    ks = clean_keyspace.keyspace
    assert (
        _tombstones_read(raw_session, f"{ks}.messages", f"channel_id = '{CHANNEL}' AND bucket = 0")
        == 0
    )


def test_a_keyspace_of_an_older_version_gets_the_columns_of_changes_and_fences(
    cassandra_config: CassandraConfig, raw_session: Any
) -> None:
    # A keyspace made before changes had positions: messages lacks kind and target;
    # and before leases: handler_cursors lacks fenced_seq and fence.
    # Last in this module: the schema changes reach every driver session's control
    # connection, whose executor may start a thread while a later test counts them
    # (test_close_leaves_no_driver_thread).
    config = msgspec.structs.replace(
        cassandra_config, keyspace=f"chime_old_{uuid.uuid4().hex[:10]}"
    )
    ks = config.keyspace
    raw_session.execute(
        f"CREATE KEYSPACE {ks} WITH replication ="
        " {'class': 'SimpleStrategy', 'replication_factor': 1}",
        timeout=60,
    )
    try:
        raw_session.execute(
            f"CREATE TABLE {ks}.messages (channel_id text, bucket bigint, seq bigint,"
            " user_id text, content text, created_at text, edited_at text, metadata text,"
            " client_msg_id text, channel_name text, deleted boolean, thread_id text,"
            " PRIMARY KEY ((channel_id, bucket), seq)) WITH CLUSTERING ORDER BY (seq DESC)",
            timeout=60,
        )
        raw_session.execute(
            f"INSERT INTO {ks}.messages (channel_id, bucket, seq, user_id, content, created_at)"
            " VALUES (%s, 0, 1, 'alice', 'old', %s)",
            (CHANNEL, created_at(1)),
        )
        raw_session.execute(
            f"CREATE TABLE {ks}.handler_cursors (handler text, channel_id text,"
            " last_seq bigint, PRIMARY KEY ((handler), channel_id))",
            timeout=60,
        )
        raw_session.execute(
            f"UPDATE {ks}.handler_cursors USING TIMESTAMP 3 SET last_seq = 3"
            " WHERE handler = 'hook' AND channel_id = %s",
            (CHANNEL,),
        )

        async def scenario(store: CassandraStore) -> None:
            old = await store.get_message(CHANNEL, mid(1))
            await store.append([edit(2, old, "new")])
            assert (await store.get_message(CHANNEL, mid(1))).content == "new"
            assert seqs(await store.events_range(CHANNEL, after_seq=0, up_to_seq=2)) == [1, 2]
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 3}
            await store.claim_handler_fence("hook", 1)
            await store.save_handler_cursors("hook", {CHANNEL: 4, "other": 1}, fence=1)
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 4, "other": 1}

        run(config, scenario)
    finally:
        raw_session.execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=60)
