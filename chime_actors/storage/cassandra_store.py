"""``CassandraStore``: the production ``MessageStore`` on Apache Cassandra.

Schema (created by ``init_schema``, every statement ``IF NOT EXISTS``)::

    messages          ((channel_id, bucket), seq DESC)   the channel's messages and changes
    thread_messages   ((channel_id, thread_id), seq DESC) copies of thread replies
    channel_heads     (channel_id)                        highest stored seq
    message_counters  (channel_id)                        counter: messages appended
    client_ids        (channel_id), user_id, client_msg_id   idempotency, TTL 600 s
    reactions         ((channel_id, bucket), seq, emoji, user_id)
    read_markers      ((channel_id, user_id))
    handler_cursors   (handler), channel_id            after_store handlers' cursors (and
                                                      the fence of the lease's holder)
    attachments       (attachment_id)                     uploaded files' records
    attachment_chunks ((attachment_id, idx))              their bytes, <= 1 MiB a chunk
    attachment_refs   (attachment_id), channel_id, message_id   live messages listing one

Attachments (``storage.attachments``): each chunk is a partition of its own, so a
large file is spread over the ring instead of growing one partition, and no
partition holds more than a chunk (1 MiB, far below the commit log's mutation
limit of half a segment). A file's record is written after its last chunk; a
message's ``attachments`` column lists what it carries, and ``append`` writes one
``attachment_refs`` row per file with it (a delete removes them), so who may read
a file is one partition read away.

Why a *sequence* bucket (``bucket = seq // bucket_size``) and not a time bucket:

* every ``messages`` partition holds at most ``bucket_size`` rows (10,000 by
  default, a few MB), however bursty a channel is; a time bucket is bounded in
  time only, and one busy hour can still grow a partition without bound;
* a quiet channel whose messages are weeks apart has no run of empty time
  buckets to scan through when paging back: consecutive ids sit in the same or
  the neighbouring bucket;
* the id tells the partition: ``get_message``, edits, deletes, reactions and a
  cursor's page all compute the bucket from the id, with no lookup table.

The bucket size is part of the on-disk format: every process of a deployment
must use the same one, and it can never change for an existing keyspace.

Numbering: the store never assigns ids. One sequencer per channel (the persister
that owns it) numbers messages 1, 2, 3 ... and ``append`` persists them. Ids are
*not* read from ``message_counters`` (counter increments are not idempotent and
a read after an increment races between servers); that table is a statistic.
``channel_heads`` keeps the highest stored seq, written ``USING TIMESTAMP <seq>``
so that the highest seq wins whatever order the writes arrive in. It is written
after the batch's messages, so it never runs ahead of what is stored; it may lag
behind rows left by an append that failed half-way, which is why ``last_seq``
also probes the buckets above it.

What ``append`` cannot promise here (unlike SQLite): Cassandra writes are
upserts, so a sequence number that is already stored is silently overwritten
instead of refused, and a batch is atomic only per ``(channel, bucket)`` chunk
(an UNLOGGED batch on one partition is atomic and isolated), not as a whole.
Refusing a taken seq would need a lightweight transaction (Paxos, four round
trips) on every message; instead, uniqueness is the sequencer's job, across
hosts too (docs/architecture.md: one sequencer per channel at a time). What the store
does refuse is a seq repeated inside one batch. After a failed append the
persister forgets the channel and reloads ``load_channel_state``; ``last_seq``
then sees rows a half-written batch left behind (and their client ids), so their
numbers are not handed out again.

Tombstones: nothing ever writes a null. Absent optional fields are bound as
``UNSET_VALUE`` (native protocol v4+); with protocol v3 (Cassandra 2.1) the
INSERT is built without those columns instead. Deletes of chat messages are a
``deleted`` flag, not a DELETE. The only tombstones are the ones that mean it:
a removed reaction (one row), the reactions of a deleted message (one range),
and ``client_ids`` rows expiring through their TTL: that table has
``default_time_to_live = 600`` (the 10-minute idempotency window of
docs/protocol.md) and ``gc_grace_seconds = 3600``: its rows are never deleted
explicitly, so there is no delete that repair would need to propagate, and
expired rows can be purged an hour later instead of after ten days (hints for
the table are kept at most that hour).

``thread_messages`` is partitioned by thread, not bucketed: a thread's
partition grows with the thread. Threads are short in practice; a channel
expecting threads of millions of replies would bucket it the same way.

Round trips of a history page: with a ``before`` cursor, one read while the
page lies inside one bucket (a page never reads more partitions than it spans);
the newest page reads the head, then the head's bucket and a probe of the next
bucket together (two); a forward page reads from the cursor's bucket upwards.

Changes (edits, deletes, reactions: ``MessageChange``) have numbers of their
own in the channel's order, so they are rows of ``messages`` too: flagged
``deleted`` (every reader of messages skips them, a server of an older version
included) and marked with their ``kind`` and ``target`` (the message changed);
``events_range`` returns them. Ids thus stay contiguous in ``messages``, which
the bucket probes rely on. ``append`` stores a change's row and applies it: an
edit updates the message row in place (and its copy in ``thread_messages``), a
delete flags it, a reaction is a row of ``reactions``. The changes of one
message are applied one after another, in order (a reaction added and removed
in one batch must end removed); those of different messages concurrently. A
concurrent edit and delete may leave an edited row that is deleted, which
readers never show.

Driver usage: every statement is prepared; those that can be repeated safely are
marked ``is_idempotent`` and only those are retried (``_IdempotentRetryPolicy``);
the counter update is the one that is not, and it is never retried. Load
balancing is ``TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc))``, so a
request goes straight to a replica of its partition in the local data centre.
Connection pooling keeps the driver's defaults: with protocol v3+ it holds one
connection per host and multiplexes up to 32,768 concurrent requests on it,
which is far more than one store sends; the store caps its own requests in
flight (``_MAX_IN_FLIGHT``) so a large append cannot swamp a node.

Asyncio: ``Cluster.connect`` and ``shutdown`` block, so they run in a thread
(``asyncio.to_thread``). Every query goes through ``session.execute_async``; the
driver's callbacks (on its own event-loop thread) hand results to the asyncio
loop with ``call_soon_threadsafe``. Every call is bounded by ``timeout_s``, and
driver failures become ``StoreUnavailable`` (node down, timeout, overloaded) or
``StoreError`` (a rejected statement), chained to the driver's exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from cassandra import ConsistencyLevel, DriverException, OperationTimedOut
from cassandra import RequestExecutionException as ServerExecutionException
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionException
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    RetryPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import ErrorMessage, ServerError
from cassandra.protocol import RequestExecutionException as ProtocolExecutionException
from cassandra.query import UNSET_VALUE, BatchStatement, BatchType, PreparedStatement

from chime_actors.config import CassandraConfig
from chime_actors.errors import FencedOut, StoreError, StoreUnavailable
from chime_actors.ids import format_message_id, parse_message_id
from chime_actors.logs import get_logger
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange
from chime_actors.storage.attachments import (
    AttachmentStore,
    StoredAttachment,
    dump_attachments,
    load_attachments,
)
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

log = get_logger(__name__)

#: Messages per ``messages`` partition (see the module docstring). Fixed per keyspace.
BUCKET_SIZE: Final = 10_000

#: Seconds a ``client_ids`` row lives: the idempotency window of docs/protocol.md.
CLIENT_ID_TTL_S: Final = 600

# Requests one store keeps in flight at most (a 2,000-message append becomes
# dozens of batches; more in flight only queues on the node).
_MAX_IN_FLIGHT = 128

# Appends whose heads and counters may be in flight at once (see ``append``).
_MAX_BACKGROUND = 64

# Upper bound of the estimated size of one single-partition UNLOGGED batch.
# Cassandra does not apply batch_size_warn/fail thresholds to single-partition
# batches (CASSANDRA-10876); this keeps one mutation far below the commit log's
# limit and spreads a big append over several requests.
_MAX_BATCH_BYTES = 64 * 1024
_MAX_BATCH_STATEMENTS = 200
_ROW_OVERHEAD_BYTES = 100

# Rows asked for per query when a scan has no page limit (messages_range).
_SCAN_CHUNK = 1000

# How long appended messages are summed per channel before message_counters is
# updated (one update per channel per flush, not per append).
COUNTER_FLUSH_S = 1.0

# Ids per ``seq IN ?`` query.
_IN_CHUNK = 100

# Below every Murmur3 partition token: the partitioner never yields -2**63 itself
# (it maps it to 2**63 - 1), so ``token > _MIN_TOKEN`` is the whole ring.
_MIN_TOKEN = -(2**63)

# How the driver retries a node it marked down: from 0.25 s doubling to 2 s. The
# driver's default (1 s doubling to 10 minutes) means that after an outage of a
# few minutes, a node that is back is not tried again for minutes: measured in
# tests/integration/test_backend_faults.py, a 5 s outage took ~3 s to recover
# with the default. A down node refuses a reconnect at once; one attempt every 2 s
# per process costs nothing.
_RECONNECT_BASE_S = 0.25
_RECONNECT_MAX_S = 2.0

# Schema statements wait for the cluster to agree on the schema: allow longer.
_SCHEMA_TIMEOUT_S = 60.0

# Columns of a message row, in the order ``_to_message`` reads them. The same
# list is selected from ``messages`` and ``thread_messages``.
_SELECT_COLUMNS = (
    "seq, user_id, content, created_at, edited_at, metadata, thread_id, client_msg_id,"
    " channel_name, deleted, attachments"
)
# ``messages`` also has the columns of a change's row (null on a message).
_MESSAGE_COLUMNS = f"{_SELECT_COLUMNS}, kind, target"

# Optional columns of an INSERT: bound as UNSET_VALUE when absent (protocol v4+),
# left out of the statement with protocol v3.
_OPTIONAL_COLUMNS = (
    "edited_at",
    "metadata",
    "thread_id",
    "client_msg_id",
    "channel_name",
    "deleted",
    "kind",
    "target",
    "attachments",
)
# A row to insert: a message, or a change's row (``change_row``) with its change.
_NewRow = tuple[ChimeMessage, MessageChange | None]

# Columns only ``messages`` has, added to a keyspace made by an older version.
_CHANGE_COLUMNS = (("kind", "text"), ("target", "bigint"))
# The column of a message's attachments, in ``messages`` and ``thread_messages``.
_ATTACHMENT_COLUMNS = (("attachments", "text"),)
# Columns of ``handler_cursors`` for handlers run under a lease (``save_handler_cursors``).
_FENCE_COLUMNS = (("fenced_seq", "bigint"), ("fence", "bigint static"))
# Tries of the fence's compare-and-set before a claim gives up (others keep claiming).
_CLAIM_TRIES = 5
_THREAD_OPTIONAL_COLUMNS = tuple(
    c for c in _OPTIONAL_COLUMNS if c not in ("thread_id", "deleted", "kind", "target")
)


def _schema(keyspace: str, replication_factor: int) -> tuple[tuple[str | None, str], ...]:
    """``(table or None for the keyspace, CQL)`` of every schema object, in order."""
    message_columns = """
        seq           bigint,
        user_id       text,
        content       text,
        created_at    text,
        edited_at     text,
        metadata      text,
        client_msg_id text,
        channel_name  text,
        deleted       boolean,
        attachments   text,"""
    return (
        (
            None,
            f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication ="
            f" {{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}",
        ),
        (
            "messages",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.messages (
                channel_id    text,
                bucket        bigint,{message_columns}
                thread_id     text,
                kind          text,
                target        bigint,
                PRIMARY KEY ((channel_id, bucket), seq)
            ) WITH CLUSTERING ORDER BY (seq DESC)""",
        ),
        (
            # A thread's replies in one partition (denormalized copies, kept in
            # step by edit and delete), so a thread page is one range read.
            "thread_messages",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.thread_messages (
                channel_id    text,
                thread_id     text,{message_columns}
                PRIMARY KEY ((channel_id, thread_id), seq)
            ) WITH CLUSTERING ORDER BY (seq DESC)""",
        ),
        (
            "channel_heads",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.channel_heads (
                channel_id text PRIMARY KEY,
                last_seq   bigint
            )""",
        ),
        (
            "message_counters",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.message_counters (
                channel_id text PRIMARY KEY,
                count      counter
            )""",
        ),
        (
            # One partition per channel holding the last 10 minutes of sends
            # (TTL), read whole by load_channel_state.
            "client_ids",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.client_ids (
                channel_id    text,
                user_id       text,
                client_msg_id text,
                seq           bigint,
                created_at    text,
                PRIMARY KEY ((channel_id), user_id, client_msg_id)
            ) WITH default_time_to_live = {CLIENT_ID_TTL_S} AND gc_grace_seconds = 3600""",
        ),
        (
            # Same buckets as messages: the reactions of a page are one range
            # read per bucket.
            "reactions",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.reactions (
                channel_id text,
                bucket     bigint,
                seq        bigint,
                emoji      text,
                user_id    text,
                PRIMARY KEY ((channel_id, bucket), seq, emoji, user_id)
            )""",
        ),
        (
            "read_markers",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.read_markers (
                channel_id text,
                user_id    text,
                message_id text,
                PRIMARY KEY ((channel_id, user_id))
            )""",
        ),
        (
            # One partition per after_store handler: read whole when it starts.
            # ``last_seq`` is written USING TIMESTAMP <seq> (one host); under a
            # lease ``fenced_seq`` is, by lightweight transactions conditional
            # on the static ``fence`` (their cells carry Paxos timestamps, which
            # must never meet the seq-timestamps of ``last_seq`` in one cell).
            "handler_cursors",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.handler_cursors (
                handler    text,
                channel_id text,
                last_seq   bigint,
                fenced_seq bigint,
                fence      bigint static,
                PRIMARY KEY ((handler), channel_id)
            )""",
        ),
        (
            "attachments",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.attachments (
                attachment_id text PRIMARY KEY,
                owner         text,
                filename      text,
                content_type  text,
                size          bigint,
                sha256        text,
                chunks        int,
                created_at    text
            )""",
        ),
        (
            "attachment_chunks",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.attachment_chunks (
                attachment_id text,
                idx           int,
                data          blob,
                PRIMARY KEY ((attachment_id, idx))
            )""",
        ),
        (
            "attachment_refs",
            f"""CREATE TABLE IF NOT EXISTS {keyspace}.attachment_refs (
                attachment_id text,
                channel_id    text,
                message_id    text,
                PRIMARY KEY ((attachment_id), channel_id, message_id)
            )""",
        ),
    )


class _IdempotentRetryPolicy(RetryPolicy):  # type: ignore[misc]
    """The driver's default retries, for idempotent statements only.

    The stock ``RetryPolicy`` retries an unavailable coordinator or a broken
    connection on the next host whatever the statement; a counter update that
    was applied before the connection broke would then be counted twice.
    """

    def on_read_timeout(self, query: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if not query.is_idempotent:
            return self.RETHROW, None
        result: tuple[int, Any] = super().on_read_timeout(query, *args, **kwargs)
        return result

    def on_write_timeout(self, query: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if not query.is_idempotent:
            return self.RETHROW, None
        result: tuple[int, Any] = super().on_write_timeout(query, *args, **kwargs)
        return result

    def on_unavailable(self, query: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if not query.is_idempotent:
            return self.RETHROW, None
        result: tuple[int, Any] = super().on_unavailable(query, *args, **kwargs)
        return result

    def on_request_error(self, query: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        if not query.is_idempotent:
            return self.RETHROW, None
        result: tuple[int, Any] = super().on_request_error(query, *args, **kwargs)
        return result


# Driver exceptions that mean "storage is down or slow: try again later". The
# rest (InvalidRequest, Unauthorized, SyntaxException ...) mean a bug or a
# misconfiguration and become a plain StoreError.
_UNAVAILABLE_ERRORS: Final = (
    NoHostAvailable,
    OperationTimedOut,
    ConnectionException,
    ServerExecutionException,  # Unavailable, Read/WriteTimeout, Read/WriteFailure ...
    ProtocolExecutionException,  # Overloaded, IsBootstrapping, TruncateError ...
    ServerError,
    OSError,
)


class CassandraStore:
    """A ``MessageStore`` on a Cassandra cluster.

    Args:
        config: contact points, keyspace, credentials and consistency.
        timeout_s: upper bound of every call (and the driver's connect and
            request timeout), after which it raises ``StoreUnavailable``.
        bucket_size: messages per partition; part of the on-disk format (tests
            make it small to cross bucket boundaries).
    """

    def __init__(
        self,
        config: CassandraConfig,
        *,
        timeout_s: float = 5.0,
        bucket_size: int = BUCKET_SIZE,
        create_schema: bool = True,
    ) -> None:
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be at least 1, got {bucket_size}")
        self._config = config
        self._timeout_s = timeout_s
        self._bucket_size = bucket_size
        # Server processes open with False: the schema is created once, by the main
        # process or `chime db init`, because concurrent schema changes from many
        # clients can leave Cassandra's schema versions disagreeing.
        self._create_schema = create_schema
        self._ks = config.keyspace
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._stmts: dict[str, PreparedStatement] = {}
        self._insert_variants: dict[tuple[str, frozenset[str]], PreparedStatement] = {}
        self._in_flight: asyncio.Semaphore | None = None
        # Head and counter updates still running after their append returned.
        self._background: set[asyncio.Task[None]] = set()
        # Messages appended per channel and not yet added to message_counters:
        # flushed once per COUNTER_FLUSH_S, not per append (see _count).
        self._uncounted: dict[str, int] = {}
        self._counter_flush: asyncio.TimerHandle | None = None

    @property
    def config(self) -> CassandraConfig:
        """The connection settings."""
        return self._config

    @property
    def bucket_size(self) -> int:
        """Messages per ``messages`` partition."""
        return self._bucket_size

    # --- lifecycle --------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema if missing and prepare every statement.

        Raises:
            StoreUnavailable: no contact point answers (or the schema could not
                be created in time). The store is closed again and ``open`` may
                be retried.
        """
        if self._session is not None:
            return
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)
        try:
            await self._in_thread("open", self._connect)
            if self._create_schema:
                await self.init_schema()
            await self._in_thread("prepare", self._prepare_all)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Shut the driver down (its connections and threads); safe to call twice."""
        # Heads and counters of the last appends: let them land first. Twice:
        # the heads' tasks count what the counters' flush then writes.
        if self._background:
            await asyncio.wait(self._background, timeout=self._timeout_s)
        if self._counter_flush is not None:
            self._counter_flush.cancel()
        self._flush_counters()
        if self._background:
            await asyncio.wait(self._background, timeout=self._timeout_s)
        cluster = self._cluster
        self._cluster = None
        self._session = None
        self._stmts = {}
        self._insert_variants = {}
        if cluster is not None:
            # Blocks while the driver joins its threads.
            await asyncio.to_thread(cluster.shutdown)

    async def init_schema(self) -> None:
        """Create the keyspace and tables if missing (idempotent).

        Objects the driver's schema metadata already lists are skipped, so
        processes opening an existing keyspace send no DDL at all; that keeps
        concurrent CREATEs (which Cassandra before 5.1 may resolve into
        conflicting table ids) to a cluster's very first start.
        """
        cluster = self._cluster
        if cluster is None:
            raise StoreError("CassandraStore.init_schema: the store is not open")
        for table, cql in _schema(self._ks, self._config.replication_factor):
            keyspace_meta = cluster.metadata.keyspaces.get(self._ks)
            if table is None and keyspace_meta is not None:
                continue
            if table is not None and keyspace_meta is not None and table in keyspace_meta.tables:
                continue
            await self._execute("init_schema", cql, timeout_s=_SCHEMA_TIMEOUT_S)
        await self._add_columns(cluster, "messages", _CHANGE_COLUMNS + _ATTACHMENT_COLUMNS)
        await self._add_columns(cluster, "thread_messages", _ATTACHMENT_COLUMNS)
        await self._add_columns(cluster, "handler_cursors", _FENCE_COLUMNS)

    async def _add_columns(
        self, cluster: Cluster, table: str, columns: Sequence[tuple[str, str]]
    ) -> None:
        """Give ``table``, made by an older version, the ``columns`` it lacks."""
        keyspace_meta = cluster.metadata.keyspaces.get(self._ks)
        table_meta = keyspace_meta.tables.get(table) if keyspace_meta is not None else None
        if table_meta is None:
            return  # just created with them (the driver's metadata may lag)
        missing = [(name, kind) for name, kind in columns if name not in table_meta.columns]
        for name, kind in missing:
            await self._execute(
                "init_schema",
                f"ALTER TABLE {self._ks}.{table} ADD {name} {kind}",
                timeout_s=_SCHEMA_TIMEOUT_S,
            )

    async def ping(self) -> None:
        """Read the coordinator's version; ``StoreUnavailable`` if nobody answers."""
        await self._run("ping", "ping", ())

    # --- sequencing -------------------------------------------------------------

    async def load_channel_state(self, channel_id: str, *, dedupe_since: str) -> ChannelState:
        """See ``MessageStore.load_channel_state``."""
        last_seq, client_rows = await asyncio.gather(
            self.last_seq(channel_id),
            self._run("load_channel_state", "client_ids_of_channel", (channel_id,)),
        )
        wanted: dict[int, list[ClientKey]] = defaultdict(list)
        for row in client_rows:
            if row.created_at >= dedupe_since:
                wanted[row.seq].append((row.user_id, row.client_msg_id))
        rows = await self._rows_by_seq("load_channel_state", channel_id, wanted)
        client_ids: dict[ClientKey, ChimeMessage] = {}
        for seq, keys in wanted.items():
            row = rows.get(seq)
            if row is None:
                continue  # the message row is gone (never written): nothing to dedupe
            message = _to_message(channel_id, row)
            for key in keys:
                client_ids[key] = message
        return ChannelState(last_seq=last_seq, client_ids=client_ids)

    async def append(self, events: Sequence[ChannelEvent]) -> None:
        """See ``MessageStore.append``, and the module docstring for what differs.

        Rows of one ``(channel, bucket)`` partition (messages and changes) go in
        UNLOGGED batches (atomic and isolated within the partition) of bounded
        size; the batches, thread copies, client ids and the changes' effects
        are written concurrently (the effects on one message in order); it
        returns once they are durable, and the channel heads and counters are
        advanced in the background (``close`` waits for them).

        Raises:
            StoreError: a seq appears twice in the batch; nothing was written.
            StoreUnavailable: Cassandra failed; some partitions may be stored.
        """
        if not events:
            return
        by_channel: dict[str, list[ChannelEvent]] = defaultdict(list)
        for event in events:
            by_channel[event.channel_id].append(event)
        for channel_id, channel_events in by_channel.items():
            taken = [e.seq for e in channel_events]
            if len(set(taken)) != len(taken):
                raise StoreError(f"append: a sequence number repeats in channel {channel_id!r}")

        by_message_partition: dict[tuple[str, int], list[_NewRow]] = defaultdict(list)
        by_thread_partition: dict[tuple[str, str], list[_NewRow]] = defaultdict(list)
        changes: list[MessageChange] = []
        for event in events:
            partition = (event.channel_id, self._bucket(event.seq))
            if isinstance(event, MessageChange):
                changes.append(event)
                by_message_partition[partition].append((change_row(event), event))
                continue
            by_message_partition[partition].append((event, None))
            if event.thread_id is not None:
                by_thread_partition[(event.channel_id, event.thread_id)].append((event, None))

        writes: list[Awaitable[object]] = []
        for (_, bucket), group in by_message_partition.items():
            for chunk in _chunks(group):
                writes.append(self._write_chunk("messages", chunk, bucket=bucket))
        for _, group in by_thread_partition.items():
            for chunk in _chunks(group):
                writes.append(self._write_chunk("thread_messages", chunk, bucket=None))
        for channel_id, channel_events in by_channel.items():
            with_client_id = [
                (m, None)
                for m in channel_events
                if isinstance(m, ChimeMessage) and m.client_msg_id is not None
            ]
            for chunk in _chunks(with_client_id):
                writes.append(self._write_client_ids(channel_id, [m for m, _ in chunk]))
        refs = [
            (a.attachment_id, event.channel_id, event.message_id)
            for event in events
            if isinstance(event, ChimeMessage)
            for a in event.attachments
        ]
        for ref in refs:
            writes.append(self._run("append", "attachment_ref_insert", ref))
        if changes:
            writes.append(self._apply_changes(changes))
        await _gather_all(writes)
        # Every row is durable: the append is done, and the sender's ack need
        # not wait for the heads and counters, which follow in the background.
        # A head is a hint (``last_seq`` probes the buckets above it), written
        # only once its rows are stored, so it never promises a missing row;
        # one left behind by a crash or a failed update is what a half-failed
        # append leaves too. The counters are statistics.
        if len(self._background) >= _MAX_BACKGROUND:
            await asyncio.wait(self._background)
        task = asyncio.get_running_loop().create_task(self._after_append(by_channel))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _apply_changes(self, changes: Sequence[MessageChange]) -> None:
        """Apply stored changes: one message's in order, different messages' concurrently."""
        by_target: dict[tuple[str, str], list[MessageChange]] = defaultdict(list)
        for change in changes:
            by_target[(change.channel_id, change.message_id)].append(change)
        await _gather_all(self._apply_in_order(group) for group in by_target.values())

    async def _apply_in_order(self, changes: Sequence[MessageChange]) -> None:
        for change in changes:
            await self._apply(change)

    async def _apply(self, change: MessageChange) -> None:
        """Apply one change to its message, if that is live.

        The row is read first: an UPDATE of a row that is not there would
        create one (Cassandra upserts), a ghost message at a number of its own.
        """
        channel_id, seq = change.channel_id, parse_message_id(change.message_id)
        row = await self._get_row("append", channel_id, seq)
        if row is None or row.deleted:
            return
        bucket = self._bucket(seq)
        updates: list[Awaitable[list[Any]]] = []
        if change.kind is ChangeKind.EDIT:
            assert change.message is not None
            content = change.message.content
            updates.append(
                self._run("append", "messages_edit", (content, change.at, channel_id, bucket, seq))
            )
            if row.thread_id is not None:
                updates.append(
                    self._run(
                        "append",
                        "thread_edit",
                        (content, change.at, channel_id, row.thread_id, seq),
                    )
                )
        elif change.kind is ChangeKind.DELETE:
            updates.append(self._run("append", "messages_delete", (channel_id, bucket, seq)))
            # A deleted message grants its files to nobody any more.
            for attachment in load_attachments(row.attachments):
                updates.append(
                    self._run(
                        "append",
                        "attachment_ref_delete",
                        (attachment.attachment_id, channel_id, change.message_id),
                    )
                )
            # Nobody can read or add them any more.
            updates.append(
                self._run("append", "reactions_of_message_delete", (channel_id, bucket, seq))
            )
            if row.thread_id is not None:
                updates.append(
                    self._run("append", "thread_delete", (channel_id, row.thread_id, seq))
                )
        else:
            key = (channel_id, bucket, seq, change.emoji, change.user_id)
            added = change.kind is ChangeKind.REACTION_ADD
            updates.append(self._run("append", "reaction_add" if added else "reaction_remove", key))
        await _gather_all(updates)

    async def _after_append(self, by_channel: Mapping[str, Sequence[ChannelEvent]]) -> None:
        """Advance the channel heads and counters of a stored append (background)."""
        # One round trip for all channels (one after another, a write over 100
        # channels spent ~0.4 s here).
        heads = _gather_all(
            self._run(
                "append",
                "head_set",
                (max(e.seq for e in group), max(e.seq for e in group), channel_id),
            )
            for channel_id, group in by_channel.items()
        )
        for channel_id, group in by_channel.items():
            self._count(channel_id, sum(1 for e in group if isinstance(e, ChimeMessage)))
        try:
            await heads
        except StoreError as exc:
            log.warning("channel heads not advanced", channels=len(by_channel), error=str(exc))

    def _count(self, channel_id: str, appended: int) -> None:
        """Add ``appended`` to the channel's counter at the next flush.

        A counter update costs the node a read before its write, and an append
        updated one per channel: at 200 msg/s into two channels that was the
        node's busiest statement. Summed over ``COUNTER_FLUSH_S``, a busy
        channel costs one update a second. The counts of the last second are
        lost if the process dies before the flush (a statistic, never retried
        anyway); ``close`` flushes them.
        """
        if not appended:
            return
        self._uncounted[channel_id] = self._uncounted.get(channel_id, 0) + appended
        if self._counter_flush is None:
            self._counter_flush = asyncio.get_running_loop().call_later(
                COUNTER_FLUSH_S, self._flush_counters
            )

    def _flush_counters(self) -> None:
        """Start the counter updates summed since the last flush (in the background)."""
        self._counter_flush = None
        counts, self._uncounted = self._uncounted, {}
        if not counts or self._session is None:
            return
        task = asyncio.get_running_loop().create_task(self._add_to_counters(counts))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _add_to_counters(self, counts: Mapping[str, int]) -> None:
        await _gather_all(self._add_to_counter(c, n) for c, n in counts.items())

    async def _add_to_counter(self, channel_id: str, count: int) -> None:
        try:
            await self._run("append", "counter_add", (count, channel_id))
        except StoreError as exc:
            # A statistic: never retried (not idempotent) and not worth failing a
            # stored batch for.
            log.warning(
                "message counter not updated", channelId=channel_id, count=count, error=str(exc)
            )

    async def last_seq(self, channel_id: str) -> int:
        """See ``MessageStore.last_seq``: the head, then a probe of the buckets above."""
        head = await self._head("last_seq", channel_id)
        _, top = await self._climb("last_seq", channel_id, self._bucket(head))
        return max(head, top)

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
        """See ``MessageStore.history``.

        Reads as few partitions as it can: a backward page starts in the bucket
        of its cursor (or of the channel's head) and walks down, a forward page
        starts in the bucket after its cursor and walks up; either stops as soon
        as ``limit + 1`` live rows are found (the extra one tells ``has_more``).
        A thread page reads the thread's one partition, plus the root by key.
        """
        after_seq, before_seq = check_history_args(before, after, limit)
        forward = after is not None
        want = limit + 1
        if thread_id is not None:
            rows = await self._thread_page(
                channel_id, thread_id, after_seq, before_seq, forward=forward, want=want
            )
        elif forward:
            rows = await self._walk_up("history", channel_id, after_seq, before_seq, want=want)
        else:
            rows = await self._walk_down(channel_id, after_seq, before_seq, want=want)
        page = [_to_message(channel_id, row) for row in rows[:limit]]
        if not forward:
            page.reverse()
        return HistoryPage(tuple(page), has_more=len(rows) > limit)

    async def get_message(self, channel_id: str, message_id: str) -> ChimeMessage:
        """See ``MessageStore.get_message``."""
        seq = seq_of(channel_id, message_id)
        row = await self._get_row("get_message", channel_id, seq)
        if row is None or row.deleted:
            raise not_found(channel_id, message_id)
        return _to_message(channel_id, row)

    async def events_range(
        self, channel_id: str, *, after_seq: int, up_to_seq: int
    ) -> tuple[ChannelEvent, ...]:
        """See ``MessageStore.events_range``."""
        if up_to_seq <= after_seq:
            return ()
        rows = await self._walk_up(
            "events_range", channel_id, after_seq, up_to_seq + 1, want=None, events=True
        )
        return tuple(_to_event(channel_id, row) for row in rows)

    # --- reactions, threads, read markers --------------------------------------

    async def reactions(self, channel_id: str, message_ids: Sequence[str]) -> ReactionMap:
        """See ``MessageStore.reactions``: one range read per bucket of the ids."""
        by_bucket: dict[int, set[int]] = defaultdict(set)
        for message_id in message_ids:
            try:
                seq = parse_message_id(message_id)
            except ValueError:
                continue  # no such message, so no reactions
            by_bucket[self._bucket(seq)].add(seq)
        pages = await asyncio.gather(
            *(
                self._run(
                    "reactions", "reactions_range", (channel_id, bucket, min(seqs), max(seqs))
                )
                for bucket, seqs in by_bucket.items()
            )
        )
        found: dict[str, dict[str, list[str]]] = {}
        for (_, seqs), rows in zip(by_bucket.items(), pages, strict=True):
            for row in rows:
                if row.seq in seqs:
                    by_emoji = found.setdefault(format_message_id(row.seq), {})
                    by_emoji.setdefault(row.emoji, []).append(row.user_id)
        # Sorted by code point, like every implementation.
        return {
            message_id: {emoji: tuple(sorted(found[message_id][emoji])) for emoji in sorted(emojis)}
            for message_id, emojis in sorted(found.items())
        }

    async def reply_counts(self, channel_id: str, message_ids: Sequence[str]) -> ReplyCounts:
        """See ``MessageStore.reply_counts``: the threads' partitions, ``_IN_CHUNK`` at a time.

        Reads every reply of those threads (threads are short in practice, see
        the module docstring); one round trip for a page of history.
        """
        roots = sorted(set(message_ids))
        pages = await asyncio.gather(
            *(
                self._run("reply_counts", "thread_rows_in", (channel_id, roots[i : i + _IN_CHUNK]))
                for i in range(0, len(roots), _IN_CHUNK)
            )
        )
        counts: dict[str, int] = {}
        for rows in pages:
            for row in rows:
                # A root that names itself as its thread is not its own reply.
                if not row.deleted and format_message_id(int(row.seq)) != row.thread_id:
                    counts[row.thread_id] = counts.get(row.thread_id, 0) + 1
        return counts

    async def set_read_marker(self, channel_id: str, user_id: str, message_id: str) -> None:
        """See ``MessageStore.set_read_marker``.

        Written ``USING TIMESTAMP <seq>``: the highest id wins in Cassandra's
        last-write-wins merge, whatever order two devices' writes arrive in,
        with no read before the write.

        Raises:
            ValueError: ``message_id`` is not a message id (callers validate).
        """
        seq = parse_message_id(message_id)
        await self._run("set_read_marker", "marker_set", (seq, message_id, channel_id, user_id))

    # --- channel handlers -------------------------------------------------------

    async def channel_ids(self) -> tuple[str, ...]:
        """See ``MessageStore.channel_ids``: a scan of the partition keys of ``messages``.

        Not ``channel_heads``: a head is written after its append returns (in
        the background) and may be missing after a crash; the message rows are
        what is durable. One row per ``(channel, bucket)`` partition, paged.
        """
        rows = await self._run("channel_ids", "channel_ids", ())
        return tuple(sorted({str(row.channel_id) for row in rows}))

    async def handler_cursors(self, handler: str) -> Mapping[str, int]:
        """See ``MessageStore.handler_cursors``: the higher of the two columns."""
        rows = await self._run("handler_cursors", "cursors_get", (handler,))
        cursors: dict[str, int] = {}
        for row in rows:
            # A partition that has only its fence reads as one row without a key.
            seqs = [int(v) for v in (row.last_seq, row.fenced_seq) if v is not None]
            if row.channel_id is not None and seqs:
                cursors[str(row.channel_id)] = max(seqs)
        return cursors

    async def save_handler_cursors(
        self, handler: str, cursors: Mapping[str, int], *, fence: int | None = None
    ) -> None:
        """See ``MessageStore.save_handler_cursors``.

        Without a fence: written ``USING TIMESTAMP <seq>`` like the read
        markers, so the highest seq wins whatever order writes arrive in, with
        no read before the write. With one: conditional batches on the handler's
        partition (a lightweight transaction, four round trips, per
        ``_MAX_BATCH_STATEMENTS`` cursors) that apply only while ``fence`` is
        stored. The holder's own writes go one after another, each higher than
        the last, so they need no timestamps.
        """
        if fence is None:
            await _gather_all(
                self._run("save_handler_cursors", "cursor_set", (seq, seq, handler, key))
                for key, seq in cursors.items()
            )
            return
        items = list(cursors.items())
        check = self._stmt("save_handler_cursors", "fence_cas")
        row_set = self._stmt("save_handler_cursors", "fenced_cursor_set")
        for start in range(0, len(items), _MAX_BATCH_STATEMENTS - 1):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            batch.add(check, (fence, handler, fence))
            for key, seq in items[start : start + _MAX_BATCH_STATEMENTS - 1]:
                batch.add(row_set, (seq, handler, key))
            batch.is_idempotent = True  # a repeat checks and writes the same
            (outcome, *_) = await self._execute("save_handler_cursors", batch)
            if not outcome.applied:
                raise FencedOut(handler, int(outcome.fence or 0))

    async def claim_handler_fence(self, handler: str, fence: int) -> None:
        """See ``MessageStore.claim_handler_fence``: a compare-and-set of the static fence.

        The lightweight transaction also completes any write of an earlier
        holder still in flight on the partition (Paxos), so what the claimer
        reads next includes it, and nothing of that holder lands after it.
        """
        expected: int | None = None
        for _ in range(_CLAIM_TRIES):
            (outcome,) = await self._run(
                "claim_handler_fence", "fence_cas", (fence, handler, expected)
            )
            if outcome.applied:
                return
            stored = None if outcome.fence is None else int(outcome.fence)
            if stored == fence:
                return  # ours already: a repeat of a claim that landed
            if stored is not None and stored > fence:
                raise FencedOut(handler, stored)
            expected = stored
        raise StoreUnavailable(f"cassandra claim_handler_fence: {handler!r} kept changing")

    async def unread_counts(
        self, user_id: str, channel_ids: Sequence[str], *, limit: int
    ) -> dict[str, int]:
        """See ``MessageStore.unread_counts``: the channels concurrently, and for
        each the marker, then live rows after it (only their ``seq``, ``deleted``
        and ``user_id`` columns), bucket by bucket upwards, until ``limit`` of
        them are someone else's."""

        async def count(channel_id: str) -> int:
            rows = await self._run("unread_counts", "marker_get", (channel_id, user_id))
            after = parse_message_id(str(rows[0].message_id)) if rows else 0
            found = await self._walk_up(
                "unread_counts",
                channel_id,
                after,
                None,
                want=limit,
                statement="messages_flags_asc",
                skip_user=user_id,
            )
            return len(found)

        ids = list(dict.fromkeys(channel_ids))
        counts = await asyncio.gather(*(count(channel_id) for channel_id in ids))
        return dict(zip(ids, counts, strict=True))

    # --- attachments (storage.attachments) -------------------------------------

    async def save_attachment_chunk(self, attachment_id: str, index: int, data: bytes) -> None:
        """See ``AttachmentStore.save_attachment_chunk``: one partition per chunk."""
        await self._run(
            "save_attachment_chunk", "attachment_chunk_insert", (attachment_id, index, data)
        )

    async def begin_attachment(self, stub: StoredAttachment) -> None:
        """See ``AttachmentStore.begin_attachment``: the same upsert as the record's."""
        await self._write_attachment("begin_attachment", stub)

    async def finish_attachment(self, attachment: StoredAttachment) -> None:
        """See ``AttachmentStore.finish_attachment``: replaces the stub (an upsert)."""
        await self._write_attachment("finish_attachment", attachment)

    async def _write_attachment(self, operation: str, attachment: StoredAttachment) -> None:
        await self._run(
            operation,
            "attachment_insert",
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

    async def discard_attachment(self, attachment_id: str, chunks: int) -> None:
        """See ``AttachmentStore.discard_attachment``: one partition delete per chunk,
        then the stub's (only an unfinished upload is ever discarded)."""
        await _gather_all(
            self._run("discard_attachment", "attachment_chunk_delete", (attachment_id, index))
            for index in range(chunks)
        )
        await self._run("discard_attachment", "attachment_delete", (attachment_id,))

    async def get_attachments(
        self, attachment_ids: Sequence[str]
    ) -> Mapping[str, StoredAttachment]:
        """See ``AttachmentStore.get_attachments``: ``IN`` queries of ``_IN_CHUNK`` ids."""
        found = await self._records("get_attachments", attachment_ids)
        return {i: a for i, a in found.items() if not a.in_progress}

    async def _records(
        self, operation: str, attachment_ids: Sequence[str]
    ) -> dict[str, StoredAttachment]:
        """The records of ``attachment_ids``, stubs included."""
        ids = sorted(set(attachment_ids))
        pages = await asyncio.gather(
            *(
                self._run(operation, "attachments_in", (ids[i : i + _IN_CHUNK],))
                for i in range(0, len(ids), _IN_CHUNK)
            )
        )
        return {str(row.attachment_id): _to_attachment(row) for rows in pages for row in rows}

    async def attachment_chunk(self, attachment_id: str, index: int) -> bytes:
        """See ``AttachmentStore.attachment_chunk``."""
        rows = await self._run("attachment_chunk", "attachment_chunk_get", (attachment_id, index))
        if not rows or rows[0].data is None:
            raise StoreError(f"cassandra: attachment {attachment_id} has no chunk {index}")
        return bytes(rows[0].data)

    async def attachment_channels(self, attachment_id: str) -> tuple[str, ...]:
        """See ``AttachmentStore.attachment_channels``: one partition read."""
        rows = await self._run("attachment_channels", "attachment_refs_get", (attachment_id,))
        return tuple(sorted({str(row.channel_id) for row in rows}))

    async def scan_attachments(
        self, after: str | None, limit: int
    ) -> tuple[tuple[StoredAttachment, ...], str | None]:
        """See ``AttachmentStore.scan_attachments``: in token order, a token range a page.

        The cursor is the partition token of the page's last record: each page is
        one bounded range read, never a scan held open between pages.
        """
        start = _MIN_TOKEN if after is None else int(after)
        rows = await self._run("scan_attachments", "attachments_scan", (start, limit))
        page = tuple(_to_attachment(row) for row in rows)
        cursor = str(int(rows[-1].partition_token)) if len(rows) == limit else None
        return page, cursor

    async def delete_unlisted_attachment(self, attachment: StoredAttachment) -> bool:
        """See ``AttachmentStore.delete_unlisted_attachment``: the index read, then the
        record deleted, then each chunk partition."""
        attachment_id = attachment.attachment_id
        if await self._run("delete_unlisted_attachment", "attachment_refs_get", (attachment_id,)):
            return False
        found = await self._records("delete_unlisted_attachment", [attachment_id])
        if attachment_id not in found:
            return False
        await self._run("delete_unlisted_attachment", "attachment_delete", (attachment_id,))
        await _gather_all(
            self._run("delete_unlisted_attachment", "attachment_chunk_delete", (attachment_id, i))
            for i in range(found[attachment_id].chunks)
        )
        return True

    # --- paging ----------------------------------------------------------------

    def _bucket(self, seq: int) -> int:
        return seq // self._bucket_size

    async def _head(self, operation: str, channel_id: str) -> int:
        rows = await self._run(operation, "head_get", (channel_id,))
        return int(rows[0].last_seq) if rows and rows[0].last_seq is not None else 0

    async def _max_seq_in(self, operation: str, channel_id: str, bucket: int) -> int | None:
        """The highest seq stored in one bucket (clustering is DESC: one row)."""
        rows = await self._run(operation, "messages_probe", (channel_id, bucket))
        return int(rows[0].seq) if rows else None

    async def _climb(self, operation: str, channel_id: str, bucket: int) -> tuple[int, int]:
        """From a bucket known to hold rows, probe upwards; ``(bucket, max seq)`` of the top.

        Ids are contiguous, so the first empty bucket ends the channel. Only a
        half-failed append leaves rows above the head, so this loop normally
        runs once.
        """
        top, above = await asyncio.gather(
            self._max_seq_in(operation, channel_id, bucket),
            self._max_seq_in(operation, channel_id, bucket + 1),
        )
        while above is not None:
            bucket, top = bucket + 1, above
            above = await self._max_seq_in(operation, channel_id, bucket + 1)
        return bucket, top or 0

    async def _top_bucket(self, operation: str, channel_id: str) -> int:
        """The highest bucket holding rows (0 for an empty channel)."""
        bucket, _ = await self._climb(
            operation, channel_id, self._bucket(await self._head(operation, channel_id))
        )
        return bucket

    async def _walk_down(
        self, channel_id: str, after_seq: int, before_seq: int | None, *, want: int
    ) -> list[Any]:
        """Live rows with ``after_seq < seq < before_seq``, newest first, at most ``want``.

        With a cursor the walk starts in the cursor's bucket straight away (one
        round trip for a page inside one bucket) and only looks for the
        channel's top when that bucket is empty (a cursor past the end). Without
        one it reads the head, then the head's bucket and a probe of the next
        bucket together (two round trips).
        """
        if before_seq is not None and before_seq - 1 <= after_seq:
            return []
        floor = self._bucket(after_seq + 1)
        if before_seq is not None:
            hi = before_seq
            start = self._bucket(before_seq - 1)
            rows, any_rows = await self._scan_down(channel_id, start, after_seq, hi, want)
            if any_rows or start <= floor:
                return await self._continue_down(
                    channel_id, start - 1, floor, after_seq, hi, want, rows
                )
            top = await self._top_bucket("history", channel_id)
            return await self._continue_down(
                channel_id, min(top, start - 1), floor, after_seq, hi, want, []
            )
        head_bucket = self._bucket(await self._head("history", channel_id))
        hi = (head_bucket + 1) * self._bucket_size
        (rows, _), above = await asyncio.gather(
            self._scan_down(channel_id, head_bucket, after_seq, hi, want),
            self._max_seq_in("history", channel_id, head_bucket + 1),
        )
        if above is None:
            return await self._continue_down(
                channel_id, head_bucket - 1, floor, after_seq, hi, want, rows
            )
        top, _ = await self._climb("history", channel_id, head_bucket + 1)
        hi = (top + 1) * self._bucket_size
        return await self._continue_down(channel_id, top, floor, after_seq, hi, want, [])

    async def _scan_down(
        self, channel_id: str, bucket: int, lo: int, hi: int, want: int
    ) -> tuple[list[Any], bool]:
        return await self._scan(
            "history",
            "messages_desc",
            (channel_id, bucket),
            lo,
            hi,
            forward=False,
            want=want,
        )

    async def _continue_down(
        self,
        channel_id: str,
        bucket: int,
        floor: int,
        lo: int,
        hi: int,
        want: int,
        rows: list[Any],
    ) -> list[Any]:
        """Add rows from ``bucket`` down to ``floor`` until ``want`` are found."""
        while bucket >= floor and len(rows) < want:
            found, _ = await self._scan_down(channel_id, bucket, lo, hi, want - len(rows))
            rows = rows + found
            bucket -= 1
        return rows

    async def _walk_up(
        self,
        operation: str,
        channel_id: str,
        after_seq: int,
        before_seq: int | None,
        *,
        want: int | None,
        events: bool = False,
        statement: str = "messages_asc",
        skip_user: str | None = None,
    ) -> list[Any]:
        """Live rows with ``after_seq < seq < before_seq``, oldest first, at most ``want``.

        With ``events`` the rows of changes too; with ``skip_user`` not that
        user's messages. Stops at the first bucket with no row in range: ids are
        contiguous and deleted rows (and changes) stay, so an empty bucket means
        the channel ends there.
        ``statement`` is an ascending range read of ``messages`` (the whole row,
        or only ``seq`` and ``deleted`` to count).
        """
        last_bucket = None if before_seq is None else self._bucket(before_seq - 1)
        if before_seq is not None and before_seq - 1 <= after_seq:
            return []
        hi = before_seq if before_seq is not None else 2**63 - 1
        rows: list[Any] = []
        bucket = self._bucket(after_seq + 1)
        while (last_bucket is None or bucket <= last_bucket) and (want is None or len(rows) < want):
            found, any_rows = await self._scan(
                operation,
                statement,
                (channel_id, bucket),
                after_seq,
                hi,
                forward=True,
                want=None if want is None else want - len(rows),
                events=events,
                skip_user=skip_user,
            )
            rows += found
            if not any_rows:
                break
            bucket += 1
        return rows

    async def _thread_page(
        self,
        channel_id: str,
        thread_id: str,
        after_seq: int,
        before_seq: int | None,
        *,
        forward: bool,
        want: int,
    ) -> list[Any]:
        """The thread's live replies in range plus its root, in paging order."""
        hi = before_seq if before_seq is not None else 2**63 - 1
        replies = self._scan(
            "history",
            "thread_asc" if forward else "thread_desc",
            (channel_id, thread_id),
            after_seq,
            hi,
            forward=forward,
            want=want,
        )
        try:
            root_seq: int | None = parse_message_id(thread_id)
        except ValueError:
            root_seq = None  # not a message id, so there is no root to add
        if root_seq is None or not after_seq < root_seq < hi:
            rows, _ = await replies
            return rows
        (rows, _), root = await asyncio.gather(
            replies, self._get_row("history", channel_id, root_seq)
        )
        # A root that names itself as its thread is already among the replies.
        if root is not None and not root.deleted and all(r.seq != root_seq for r in rows):
            rows = sorted([*rows, root], key=lambda r: int(r.seq), reverse=not forward)[:want]
        return rows

    async def _scan(
        self,
        operation: str,
        statement: str,
        key: tuple[Any, ...],
        lo: int,
        hi: int,
        *,
        forward: bool,
        want: int | None,
        events: bool = False,
        skip_user: str | None = None,
    ) -> tuple[list[Any], bool]:
        """Rows of one partition with ``lo < seq < hi`` in order, at most ``want``.

        Deleted rows are skipped (those of changes too unless ``events``), and
        so are the messages of ``skip_user``, so a query may come back short and
        be followed by another starting after its last row. Returns the rows
        and whether the partition had any row in range at all.
        """
        rows: list[Any] = []
        any_rows = False
        while want is None or len(rows) < want:
            ask = _SCAN_CHUNK if want is None else want - len(rows)
            got = await self._run(operation, statement, (*key, lo, hi, ask))
            any_rows = any_rows or bool(got)
            rows += [
                row
                for row in got
                if (not row.deleted and (skip_user is None or row.user_id != skip_user))
                or (events and row.kind is not None)
            ]
            if len(got) < ask:
                break
            if forward:
                lo = int(got[-1].seq)
            else:
                hi = int(got[-1].seq)
        return rows, any_rows

    async def _get_row(self, operation: str, channel_id: str, seq: int) -> Any | None:
        rows = await self._run(operation, "messages_get", (channel_id, self._bucket(seq), seq))
        return rows[0] if rows else None

    async def _rows_by_seq(
        self, operation: str, channel_id: str, seqs: Iterable[int]
    ) -> dict[int, Any]:
        """Message rows (deleted ones too) by seq, read with ``seq IN`` per bucket."""
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for seq in sorted(seqs):
            by_bucket[self._bucket(seq)].append(seq)
        queries = [
            self._run(operation, "messages_in", (channel_id, bucket, group[i : i + _IN_CHUNK]))
            for bucket, group in by_bucket.items()
            for i in range(0, len(group), _IN_CHUNK)
        ]
        return {int(row.seq): row for rows in await asyncio.gather(*queries) for row in rows}

    # --- writes ----------------------------------------------------------------

    async def _write_chunk(
        self, table: str, chunk: Sequence[_NewRow], *, bucket: int | None
    ) -> None:
        """Insert rows of one partition: one statement, or one UNLOGGED batch."""
        bound = [await self._bind_insert(table, row, change, bucket) for row, change in chunk]
        if len(bound) == 1:
            await self._execute("append", bound[0])
            return
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for statement in bound:
            batch.add(statement)
        # Replaying the same rows writes the same values.
        batch.is_idempotent = True
        await self._execute("append", batch)

    async def _write_client_ids(self, channel_id: str, chunk: Sequence[ChimeMessage]) -> None:
        statement = self._stmt("append", "client_id_insert")
        bound = [
            statement.bind((channel_id, m.user_id, m.client_msg_id, m.seq, m.created_at))
            for m in chunk
        ]
        if len(bound) == 1:
            await self._execute("append", bound[0])
            return
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for item in bound:
            batch.add(item)
        batch.is_idempotent = True
        await self._execute("append", batch)

    async def _bind_insert(
        self, table: str, message: ChimeMessage, change: MessageChange | None, bucket: int | None
    ) -> Any:
        """A bound INSERT of ``message`` into ``messages`` or ``thread_messages``.

        With ``change``, ``message`` is the change's row (``change_row``): it is
        flagged deleted and marked with the change's kind and target.
        """
        key: tuple[Any, ...]
        if table == "messages":
            key = (message.channel_id, bucket)
        else:
            key = (message.channel_id, message.thread_id)
        required = (message.seq, message.user_id, message.content, message.created_at)
        optional = {
            "edited_at": message.edited_at,
            "metadata": _dump_metadata(message),
            "thread_id": message.thread_id if table == "messages" else None,
            "client_msg_id": message.client_msg_id,
            "channel_name": message.channel_name,
            "deleted": None if change is None else True,
            "kind": None if change is None else change.kind.value,
            "target": None if change is None else parse_message_id(change.message_id),
            "attachments": dump_attachments(message.attachments),
        }
        if table == "thread_messages":
            # The partition key there, and columns only ``messages`` has.
            for name in ("thread_id", "deleted", "kind", "target"):
                del optional[name]
        version = self._protocol_version()
        if version is None or version >= 4:
            statement = self._stmt("append", f"{table}_insert")
            values = [UNSET_VALUE if value is None else value for value in optional.values()]
            return statement.bind((*key, *required, *values))
        present = frozenset(name for name, value in optional.items() if value is not None)
        statement = await self._insert_variant(table, present)
        values = [value for value in optional.values() if value is not None]
        return statement.bind((*key, *required, *values))

    def _protocol_version(self) -> int | None:
        cluster = self._cluster
        return None if cluster is None else int(cluster.protocol_version)

    async def _insert_variant(self, table: str, present: frozenset[str]) -> PreparedStatement:
        """Protocol v3 has no UNSET: an INSERT naming only the present columns."""
        cached = self._insert_variants.get((table, present))
        if cached is not None:
            return cached
        session = self._require_session("append")
        columns = [name for name in _OPTIONAL_COLUMNS if name in present]
        cql = _insert_cql(self._ks, table, columns)
        statement = await self._in_thread("append", lambda: session.prepare(cql))
        statement.is_idempotent = True
        self._insert_variants[(table, present)] = statement
        return statement

    # --- the driver bridge -----------------------------------------------------

    def _connect(self) -> None:
        """Worker thread: build the cluster and connect (both block)."""
        config = self._config
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(
                DCAwareRoundRobinPolicy(local_dc=config.local_dc or "")
            ),
            retry_policy=_IdempotentRetryPolicy(),
            consistency_level=ConsistencyLevel.name_to_value[config.consistency],
            request_timeout=self._timeout_s,
        )
        kwargs: dict[str, Any] = {
            "contact_points": list(config.hosts),
            "port": config.port,
            "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
            "connect_timeout": self._timeout_s,
            "control_connection_timeout": self._timeout_s,
            # max_attempts=None: never give up on a node (the default stops
            # after 64 attempts, i.e. two minutes at our pace).
            "reconnection_policy": ExponentialReconnectionPolicy(
                _RECONNECT_BASE_S, _RECONNECT_MAX_S, max_attempts=None
            ),
            # The driver leaves Nagle on. A request it writes in more than one
            # piece (a batch of more than ~20 inserts) then waits for the
            # node's delayed ACK: measured 4.4 ms for 20 inserts, 47 ms for 30.
            "sockopts": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        }
        if config.protocol_version is not None:
            kwargs["protocol_version"] = config.protocol_version
        if config.username is not None:
            kwargs["auth_provider"] = PlainTextAuthProvider(
                username=config.username, password=config.password or ""
            )
        cluster = Cluster(**kwargs)
        try:
            session = cluster.connect()
        except BaseException:
            cluster.shutdown()
            raise
        self._cluster = cluster
        self._session = session

    def _prepare_all(self) -> None:
        """Worker thread: prepare every statement (each prepare blocks)."""
        session = self._require_session("prepare")
        ks = self._ks
        select = f"SELECT {_SELECT_COLUMNS} FROM {ks}"
        select_messages = f"SELECT {_MESSAGE_COLUMNS} FROM {ks}"
        range_where = "seq > ? AND seq < ?"
        texts = {
            "ping": "SELECT release_version FROM system.local",
            "messages_insert": _insert_cql(ks, "messages", _OPTIONAL_COLUMNS),
            "thread_messages_insert": _insert_cql(ks, "thread_messages", _THREAD_OPTIONAL_COLUMNS),
            "messages_desc": f"{select_messages}.messages WHERE channel_id = ? AND bucket = ?"
            f" AND {range_where} LIMIT ?",
            "messages_asc": f"{select_messages}.messages WHERE channel_id = ? AND bucket = ?"
            f" AND {range_where} ORDER BY seq ASC LIMIT ?",
            "thread_desc": f"{select}.thread_messages WHERE channel_id = ? AND thread_id = ?"
            f" AND {range_where} LIMIT ?",
            "thread_asc": f"{select}.thread_messages WHERE channel_id = ? AND thread_id = ?"
            f" AND {range_where} ORDER BY seq ASC LIMIT ?",
            "messages_flags_asc": f"SELECT seq, deleted, user_id FROM {ks}.messages"
            f" WHERE channel_id = ? AND bucket = ? AND {range_where} ORDER BY seq ASC LIMIT ?",
            "messages_get": f"{select_messages}.messages"
            " WHERE channel_id = ? AND bucket = ? AND seq = ?",
            "messages_in": f"{select_messages}.messages"
            " WHERE channel_id = ? AND bucket = ? AND seq IN ?",
            "thread_rows_in": f"SELECT thread_id, seq, deleted FROM {ks}.thread_messages"
            " WHERE channel_id = ? AND thread_id IN ?",
            "messages_probe": f"SELECT seq FROM {ks}.messages"
            " WHERE channel_id = ? AND bucket = ? LIMIT 1",
            "messages_edit": f"UPDATE {ks}.messages SET content = ?, edited_at = ?"
            " WHERE channel_id = ? AND bucket = ? AND seq = ?",
            "thread_edit": f"UPDATE {ks}.thread_messages SET content = ?, edited_at = ?"
            " WHERE channel_id = ? AND thread_id = ? AND seq = ?",
            "messages_delete": f"UPDATE {ks}.messages SET deleted = true"
            " WHERE channel_id = ? AND bucket = ? AND seq = ?",
            "thread_delete": f"UPDATE {ks}.thread_messages SET deleted = true"
            " WHERE channel_id = ? AND thread_id = ? AND seq = ?",
            "head_get": f"SELECT last_seq FROM {ks}.channel_heads WHERE channel_id = ?",
            "head_set": f"UPDATE {ks}.channel_heads USING TIMESTAMP ? SET last_seq = ?"
            " WHERE channel_id = ?",
            "counter_add": f"UPDATE {ks}.message_counters SET count = count + ?"
            " WHERE channel_id = ?",
            "client_id_insert": f"INSERT INTO {ks}.client_ids"
            " (channel_id, user_id, client_msg_id, seq, created_at) VALUES (?, ?, ?, ?, ?)",
            "client_ids_of_channel": "SELECT user_id, client_msg_id, seq, created_at"
            f" FROM {ks}.client_ids WHERE channel_id = ?",
            "reaction_add": f"INSERT INTO {ks}.reactions (channel_id, bucket, seq, emoji, user_id)"
            " VALUES (?, ?, ?, ?, ?)",
            "reaction_remove": f"DELETE FROM {ks}.reactions"
            " WHERE channel_id = ? AND bucket = ? AND seq = ? AND emoji = ? AND user_id = ?",
            "reactions_of_message_delete": f"DELETE FROM {ks}.reactions"
            " WHERE channel_id = ? AND bucket = ? AND seq = ?",
            "reactions_range": f"SELECT seq, emoji, user_id FROM {ks}.reactions"
            " WHERE channel_id = ? AND bucket = ? AND seq >= ? AND seq <= ?",
            "marker_set": f"UPDATE {ks}.read_markers USING TIMESTAMP ? SET message_id = ?"
            " WHERE channel_id = ? AND user_id = ?",
            "marker_get": f"SELECT message_id FROM {ks}.read_markers"
            " WHERE channel_id = ? AND user_id = ?",
            "channel_ids": f"SELECT DISTINCT channel_id, bucket FROM {ks}.messages",
            "cursors_get": f"SELECT channel_id, last_seq, fenced_seq FROM {ks}.handler_cursors"
            " WHERE handler = ?",
            "fence_cas": f"UPDATE {ks}.handler_cursors SET fence = ? WHERE handler = ?"
            " IF fence = ?",
            "fenced_cursor_set": f"UPDATE {ks}.handler_cursors SET fenced_seq = ?"
            " WHERE handler = ? AND channel_id = ?",
            "cursor_set": f"UPDATE {ks}.handler_cursors USING TIMESTAMP ? SET last_seq = ?"
            " WHERE handler = ? AND channel_id = ?",
            "attachment_chunk_insert": f"INSERT INTO {ks}.attachment_chunks"
            " (attachment_id, idx, data) VALUES (?, ?, ?)",
            "attachment_chunk_get": f"SELECT data FROM {ks}.attachment_chunks"
            " WHERE attachment_id = ? AND idx = ?",
            "attachment_chunk_delete": f"DELETE FROM {ks}.attachment_chunks"
            " WHERE attachment_id = ? AND idx = ?",
            "attachment_insert": f"INSERT INTO {ks}.attachments (attachment_id, owner, filename,"
            " content_type, size, sha256, chunks, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            "attachments_in": "SELECT attachment_id, owner, filename, content_type, size, sha256,"
            f" chunks, created_at FROM {ks}.attachments WHERE attachment_id IN ?",
            "attachment_ref_insert": f"INSERT INTO {ks}.attachment_refs"
            " (attachment_id, channel_id, message_id) VALUES (?, ?, ?)",
            "attachment_ref_delete": f"DELETE FROM {ks}.attachment_refs"
            " WHERE attachment_id = ? AND channel_id = ? AND message_id = ?",
            "attachment_refs_get": f"SELECT channel_id FROM {ks}.attachment_refs"
            " WHERE attachment_id = ?",
            "attachments_scan": "SELECT token(attachment_id) AS partition_token, attachment_id,"
            " owner, filename, content_type, size, sha256, chunks, created_at"
            f" FROM {ks}.attachments WHERE token(attachment_id) > ? LIMIT ?",
            "attachment_delete": f"DELETE FROM {ks}.attachments WHERE attachment_id = ?",
        }
        statements: dict[str, PreparedStatement] = {}
        for name, cql in texts.items():
            statement = session.prepare(cql)
            # Everything but the counter can be repeated with the same result.
            statement.is_idempotent = name != "counter_add"
            statements[name] = statement
        self._stmts = statements

    def _require_session(self, operation: str) -> Session:
        session = self._session
        if session is None:
            raise StoreError(f"CassandraStore.{operation}: the store is not open")
        return session

    def _stmt(self, operation: str, name: str) -> PreparedStatement:
        self._require_session(operation)
        return self._stmts[name]

    async def _run(self, operation: str, name: str, params: Sequence[Any]) -> list[Any]:
        """Execute the prepared statement ``name`` with ``params``; return its rows."""
        return await self._execute(operation, self._stmt(operation, name), params)

    async def _execute(
        self,
        operation: str,
        statement: Any,
        params: Sequence[Any] | None = None,
        *,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Run one statement on the driver, awaiting it without blocking the loop.

        Every page of a paged result is fetched (the driver asks for the next
        page from its callback), then the rows are handed to the loop.
        """
        session = self._require_session(operation)
        semaphore = self._in_flight
        assert semaphore is not None  # set by open() before any session exists
        timeout = self._timeout_s if timeout_s is None else timeout_s
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []

        def settle(outcome: Callable[[], None]) -> None:
            # Driver thread. The loop may be gone if its caller gave up long ago.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outcome)

        def resolve() -> None:
            if not done.done():
                done.set_result(rows)

        def fail(exc: BaseException) -> Callable[[], None]:
            def apply() -> None:
                if not done.done():
                    done.set_exception(exc)

            return apply

        async with semaphore:
            try:
                response: ResponseFuture = session.execute_async(statement, params, timeout=timeout)

                def on_page(page: Any) -> None:
                    try:
                        if page:
                            rows.extend(page)
                        if response.has_more_pages:
                            response.start_fetching_next_page()
                        else:
                            settle(resolve)
                    except Exception as exc:  # never let an error die on the driver's thread
                        settle(fail(exc))

                def on_error(exc: BaseException) -> None:
                    settle(fail(exc))

                response.add_callbacks(on_page, on_error)
                return await asyncio.wait_for(done, timeout)
            except TimeoutError as exc:
                raise StoreUnavailable(
                    f"cassandra {operation} timed out after {timeout:g} s"
                ) from exc
            except _UNAVAILABLE_ERRORS as exc:
                raise StoreUnavailable(f"cassandra {operation}: {_describe(exc)}") from exc
            except (DriverException, ErrorMessage) as exc:
                raise StoreError(f"cassandra {operation}: {_describe(exc)}") from exc

    async def _in_thread(self, operation: str, work: Callable[[], Any]) -> Any:
        """Run blocking driver work (connect, prepare) in a thread, errors translated."""
        # No asyncio timeout here: an abandoned connect would finish later and
        # leak a cluster. The driver bounds each step itself (connect_timeout,
        # control_connection_timeout, request timeouts).
        try:
            return await asyncio.to_thread(work)
        except _UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"cassandra {operation}: {_describe(exc)}") from exc
        except (DriverException, ErrorMessage) as exc:
            raise StoreError(f"cassandra {operation}: {_describe(exc)}") from exc


# --- helpers -------------------------------------------------------------------------


def _insert_cql(keyspace: str, table: str, optional: Sequence[str]) -> str:
    key = "channel_id, bucket" if table == "messages" else "channel_id, thread_id"
    columns = [key, "seq, user_id, content, created_at", *optional]
    count = 6 + len(optional)
    return (
        f"INSERT INTO {keyspace}.{table} ({', '.join(columns)}) VALUES ({', '.join('?' * count)})"
    )


def _dump_metadata(message: ChimeMessage) -> str | None:
    if not message.metadata:
        return None  # absent, not '{}': nothing stored for the common case
    return json.dumps(dict(message.metadata), ensure_ascii=False, separators=(",", ":"))


def _to_message(channel_id: str, row: Any) -> ChimeMessage:
    metadata: dict[str, str] = json.loads(row.metadata) if row.metadata else {}
    return ChimeMessage(
        channel_id=channel_id,
        message_id=format_message_id(int(row.seq)),
        user_id=row.user_id,
        content=row.content,
        created_at=row.created_at,
        edited_at=row.edited_at,
        metadata=tuple(metadata.items()),
        thread_id=row.thread_id,
        client_msg_id=row.client_msg_id,
        channel_name=row.channel_name,
        attachments=load_attachments(row.attachments),
    )


def _to_event(channel_id: str, row: Any) -> ChannelEvent:
    """A row of ``messages``: a message, or a change (``kind`` set)."""
    message = _to_message(channel_id, row)
    if row.kind is None:
        return message
    return change_from_row(message, row.kind, int(row.target))


def _estimated_bytes(message: ChimeMessage) -> int:
    size = _ROW_OVERHEAD_BYTES + len(message.content.encode("utf-8"))
    size += sum(_ROW_OVERHEAD_BYTES + len(a.filename.encode("utf-8")) for a in message.attachments)
    return size + sum(len(k) + len(v) for k, v in message.metadata)


def _chunks(rows: Sequence[_NewRow]) -> list[list[_NewRow]]:
    """Split one partition's rows into batches of bounded size and count."""
    chunks: list[list[_NewRow]] = []
    current: list[_NewRow] = []
    size = 0
    for row in rows:
        cost = _estimated_bytes(row[0])
        if current and (size + cost > _MAX_BATCH_BYTES or len(current) >= _MAX_BATCH_STATEMENTS):
            chunks.append(current)
            current, size = [], 0
        current.append(row)
        size += cost
    if current:
        chunks.append(current)
    return chunks


async def _gather_all(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Await every call, even when one fails, then raise the first failure.

    Returning only once all are finished means no write is still running when
    the caller is told the outcome (or closes the store).
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 500 else text[:500] + "..."


def _to_attachment(row: Any) -> StoredAttachment:
    """An ``attachments`` row (``attachments_in``, ``attachments_scan``) as its record."""
    return StoredAttachment(
        attachment_id=str(row.attachment_id),
        owner=str(row.owner),
        filename=str(row.filename),
        content_type=str(row.content_type),
        size=int(row.size),
        sha256=str(row.sha256),
        chunks=int(row.chunks),
        created_at=str(row.created_at),
    )


if TYPE_CHECKING:
    # mypy proves the class satisfies the interface.
    _conforms_too: AttachmentStore = CassandraStore(
        CassandraConfig(
            hosts=("127.0.0.1",),
            port=9042,
            keyspace="chime",
            local_dc=None,
            username=None,
            password=None,
            replication_factor=1,
        )
    )
    _conforms: MessageStore = CassandraStore(
        CassandraConfig(
            hosts=("127.0.0.1",),
            port=9042,
            keyspace="chime",
            local_dc=None,
            username=None,
            password=None,
            replication_factor=1,
        )
    )
