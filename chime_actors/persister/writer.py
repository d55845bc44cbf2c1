"""The persister's core: takes ``PersistBatch``es, sequences, writes, answers.

Runs on the persister process's asyncio loop (``PersisterActor`` feeds it). Batches
queue in a bounded inbox; the writer drains everything queued into one store write
(group commit), so the write rate adapts to load without delaying a lone message.
After the write:

* each origin gateway gets one ``PersistResult`` (its acks, or ``unavailable``), and
* every gateway gets one ``Deliveries`` with all new messages, in id order.

Changes of messages (``ChangeRecord``: edits, deletes, reactions) come in the same
batches and go the same way: checked against storage (``persister.changes``),
numbered in the channel's sequence, stored in the same group commit, answered
in the ``PersistResult`` and delivered in the ``Deliveries``.

Only durable messages are ever delivered or acked (docs/protocol.md: ack = durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from msgspec.structs import replace

from chime_actors.config import StorageConfig
from chime_actors.errors import BusUnavailable, MessageNotFound, StoreError
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics
from chime_actors.persister.attachments import check_attachments, lists_attachments
from chime_actors.persister.changes import ChangeDraft, check_changes
from chime_actors.persister.redis_ids import Claim, RedisIds, Reservation
from chime_actors.persister.sequencer import Assigned, Changed, Duplicate, Plan, Sequencer
from chime_actors.records import (
    Attachment,
    ChangeRecord,
    Deliveries,
    PersistBatch,
    PersistRecord,
    PersistResult,
    SendOutcome,
    SendRecord,
    format_timestamp,
)
from chime_actors.storage.attachments import AttachmentStore
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

INBOX_BATCHES = 1024
MAX_RECORDS_PER_WRITE = 2000
# Group commits written at once (``storage.writes_in_flight``; its default is the
# schema's): the next group is planned and sent while earlier ones are still
# being written; answers and deliveries are released strictly in plan order.
WRITES_IN_FLIGHT = StorageConfig().writes_in_flight
# Client-id settles (Redis) in flight at once, and how long a stop waits for them.
MAX_SETTLING = 16
SETTLE_WAIT_S = 5.0
# After Redis is seen to have lost data, every channel is re-read from storage
# once. Signs of loss within this long after are taken for the same loss: the
# channels re-read since then know storage as it is after it, and re-reading
# them at every sign would read storage on nearly every write until every counter
# is repaired (after a restart without data, each channel with stored messages
# is such a sign once). The channels of the write that shows a sign are always
# checked against storage (``RedisIds.reserve``).
REDIS_LOSS_WINDOW_S = 60.0

Post = Callable[[Any, Any], None]


@dataclass(slots=True)
class _Flight:
    """One planned group commit, from its write until it is answered."""

    taken: Sequence[tuple[PersistBatch, Any]]
    started: float  # perf_counter at planning
    plan: Plan | None = None
    settled: dict[tuple[int, int], SendOutcome] = field(default_factory=dict)
    write: asyncio.Task[None] | None = None
    # Set when it failed before anything was numbered: every batch gets this.
    failure: str | None = None

    @property
    def size(self) -> int:
        """Records of the flight."""
        return sum(len(batch.records) for batch, _ in self.taken)


class PersistWriter:
    """Sequences and stores batches for the channels this persister owns."""

    def __init__(
        self,
        store: MessageStore,
        post: Post,
        metrics: ChimeMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ids: RedisIds | None = None,
        wait_writable: Callable[[], Awaitable[None]] | None = None,
        attachments: AttachmentStore | None = None,
        unsent_ttl_s: float = 0.0,
        max_records_per_write: int = MAX_RECORDS_PER_WRITE,
        writes_in_flight: int = WRITES_IN_FLIGHT,
    ) -> None:
        self._store = store
        # Where sends' attachments are looked up (persister.attachments); without
        # one a send that lists any is refused as listing unknown files.
        self._attachments = attachments
        # attachments.unsent_ttl_s (0: files never expire), see persister.attachments.
        self._unsent_ttl = timedelta(seconds=unsent_ttl_s) if unsent_ttl_s > 0 else None
        self._clock = clock
        # A group commit takes queued batches up to this many records.
        self._max_records = max_records_per_write
        # Backpressure from the lanes: a write waits while a gateway's lane is
        # congested, so deliveries never pile up faster than gateways read them.
        self._wait_writable = wait_writable
        self._post = post
        self._metrics = metrics
        self._sequencer = Sequencer(clock)
        self._inbox: asyncio.Queue[tuple[PersistBatch, Any]] = asyncio.Queue(INBOX_BATCHES)
        self._gateways: tuple[Any, ...] = ()
        self._redis_bridge: Any = None
        self._ids = ids
        self._task: asyncio.Task[None] | None = None
        # Claim settles still running (``_track_settle``).
        self._settling: set[asyncio.Task[None]] = set()
        # Set when Redis was seen to have lost data: the channels whose floors the
        # reservation checked against storage; every other channel is re-read
        # from storage (its floor may be stale) once the write is done.
        self._floors_checked: frozenset[str] | None = None
        self._redis_loss_at: float | None = None  # monotonic; see REDIS_LOSS_WINDOW_S
        # Overlapped writes: at most this many planned groups written or waiting
        # to be answered at once; each is answered after the one before it.
        self._window = asyncio.Semaphore(max(1, writes_in_flight))
        # The release of the newest flight (each awaits the one before).
        self._tail: asyncio.Task[bool] | None = None
        # Plans released as stored / as failed, for the write loop to commit or
        # forget (``_catch_up``).
        self._stored: list[Plan] = []
        self._broken: list[Plan] = []

    def start(self) -> None:
        """Start the write loop (once: a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="persist-writer")

    async def stop(self) -> None:
        """Finish what is queued (bounded by the inbox), then stop.

        Never started, it answers what is queued ``unavailable``: nothing of it
        was stored.
        """
        if self._task is None:
            while not self._inbox.empty():
                batch, reply_to = self._inbox.get_nowait()
                self._post(reply_to, _fail_all(batch, "persister stopped before it was wired"))
            return
        try:
            await asyncio.wait_for(self._inbox.join(), timeout=10)
        except TimeoutError:
            log.warning("persister stopped with batches still queued", queued=self._inbox.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._settling:
            await asyncio.wait(self._settling, timeout=SETTLE_WAIT_S)

    def set_gateways(self, gateways: tuple[Any, ...], redis_bridge: Any = None) -> None:
        """The current gateway (and Redis bridge) addresses (from ``Wiring``)."""
        self._gateways = tuple(g for g in gateways if g is not None)
        self._redis_bridge = redis_bridge

    @property
    def queue_depth(self) -> int:
        """Batches waiting to be written."""
        return self._inbox.qsize()

    def submit(self, batch: PersistBatch, reply_to: Any) -> None:
        """Queue a batch; when the inbox is full, refuse it at once (backpressure)."""
        try:
            self._inbox.put_nowait((batch, reply_to))
        except asyncio.QueueFull:
            self._post(reply_to, _fail_all(batch, "persister overloaded"))

    async def _run(self) -> None:
        while True:
            if self._wait_writable is not None:
                await self._wait_writable()
            # A place in the window first: while it is full, batches gather in
            # the inbox and the next group commit takes them all.
            await self._window.acquire()
            first = await self._inbox.get()
            taken = [first]
            count = len(first[0].records)
            while count < self._max_records and not self._inbox.empty():
                item = self._inbox.get_nowait()
                taken.append(item)
                count += len(item[0].records)
            try:
                flight = await self._plan(taken)
            except Exception:
                # The failure policy of the writer: a bug here must not stall the
                # persister; the batches are answered ``unavailable`` (nothing acked
                # was lost: nothing of them was acked) and the loop goes on.
                log.exception("persist write crashed")
                for batch, reply_to in taken:
                    self._post(reply_to, _fail_all(batch, "internal error while storing"))
                for _ in taken:
                    self._inbox.task_done()
                self._window.release()
                continue
            # From here the flight answers every batch and marks them done.
            self._fly(flight)
            if self._floors_checked is not None:
                # Redis lost data: every other channel's floor may be stale.
                # Re-read them once nothing is in flight (a write still landing
                # would make that storage read stale too).
                await self._drain()
                self._sequencer.forget_all(keep=self._floors_checked)
                self._floors_checked = None

    async def _plan(self, taken: Sequence[tuple[PersistBatch, Any]]) -> _Flight:
        """Number ``taken`` and start its write (``_finish`` answers it, in order)."""
        started = time.perf_counter()
        await self._catch_up()
        records = [(batch.gateway_index, rec) for batch, _ in taken for rec in batch.records]
        if any(isinstance(r, ChangeRecord) for _, r in records):
            # A change is checked against storage and applied by reading its
            # message's row: every earlier write must have landed first, or it
            # would check (and apply over) what is about to change.
            await self._drain()
        unloaded = {r.channel_id for _, r in records if not self._sequencer.is_loaded(r.channel_id)}
        try:
            if unloaded:  # rare once warm: no timestamp formatted, no gather per write
                channels = sorted(unloaded)
                since = self._sequencer.dedupe_since()
                # Concurrently: a first write touching many channels loads them all.
                states = await asyncio.gather(
                    *(self._store.load_channel_state(c, dedupe_since=since) for c in channels)
                )
                for channel_id, state in zip(channels, states, strict=True):
                    self._sequencer.load(channel_id, state.last_seq, state.client_ids)
        except StoreError as exc:
            log.warning("storage unavailable while loading channels", error=str(exc))
            return _Flight(taken, started, failure="storage unavailable")
        # Changes are checked against storage before anything is numbered, so a
        # refused one takes no id (persister/changes.py).
        entries, settled = await self._check_changes(records)
        listed: Mapping[str, Attachment] = {}
        if lists_attachments(entries):
            # Only a write with such sends reads the uploads' records.
            expired_before = (
                None
                if self._unsent_ttl is None
                else format_timestamp(self._clock() - self._unsent_ttl)
            )
            entries, refused, listed = await check_attachments(
                self._attachments, entries, expired_before=expired_before
            )
            settled.update(refused)
        if self._ids is None:
            plan = self._sequencer.plan(entries, listed)
        else:
            try:
                plan, shared = await self._plan_shared(entries, listed)
                settled.update(shared)
            except (BusUnavailable, StoreError) as exc:
                log.warning("redis or storage unavailable while sequencing", error=str(exc))
                return _Flight(taken, started, failure="bus unavailable")
        self._sequencer.hold(plan)
        flight = _Flight(taken, started, plan=plan, settled=settled)
        if plan.new_events:
            flight.write = asyncio.get_running_loop().create_task(
                self._store.append(plan.new_events), name="persist-append"
            )
        return flight

    def _fly(self, flight: _Flight) -> None:
        """Chain ``flight`` after the last one (it holds a place in the window)."""
        previous = self._tail
        self._tail = asyncio.get_running_loop().create_task(
            self._finish(previous, flight), name="persist-release"
        )

    async def _finish(self, previous: asyncio.Task[bool] | None, flight: _Flight) -> bool:
        """Release ``flight`` once its own write and every earlier flight are done.

        Returns True when it (and so everything before it) was answered as
        stored: ack = durable, in order. When an earlier write failed, this one
        is answered ``unavailable`` even if its own rows landed: it was numbered
        after ids that are not stored, and its repeats may share their fate.
        """
        try:
            return await self._settle_flight(previous, flight)
        except Exception:
            # A bug while answering: the flight's ids count as lost (its
            # channels are re-read), and what it did not answer times out at
            # the gateways' links as "outcome unknown".
            log.exception("persist release crashed")
            if flight.plan is not None:
                self._broken.append(flight.plan)
            return False
        finally:
            for _ in flight.taken:
                self._inbox.task_done()
            self._window.release()

    async def _settle_flight(self, previous: asyncio.Task[bool] | None, flight: _Flight) -> bool:
        in_order = previous is None or await previous
        failed = crashed = False
        if flight.write is not None:
            try:
                await flight.write
            except StoreError as exc:
                failed = True
                log.warning("storage write failed", error=str(exc), records=flight.size)
            except Exception:
                # A bug in the store: answered like a crash of the write loop.
                log.exception("persist write crashed")
                failed = crashed = True
        if flight.failure is not None:
            # Nothing was numbered: it neither breaks nor needs the order.
            for batch, reply_to in flight.taken:
                self._post(reply_to, _fail_all(batch, flight.failure))
            return in_order
        assert flight.plan is not None
        stored = in_order and not failed
        if stored:
            self._stored.append(flight.plan)
        else:
            self._broken.append(flight.plan)
            if not failed:
                log.warning(
                    "write answered unavailable: an earlier write failed", records=flight.size
                )
        await self._release(flight, flight.plan, stored, crashed)
        return stored

    async def _release(self, flight: _Flight, plan: Plan, stored: bool, crashed: bool) -> None:
        """Answer a flight and deliver what it stored (called in flight order)."""
        if self._ids is not None and not stored:
            await self._settle_claims(plan, stored)
        if crashed:
            for batch, reply_to in flight.taken:
                self._post(reply_to, _fail_all(batch, "internal error while storing"))
        else:
            self._answer(flight.taken, plan, stored, flight.settled)
        if stored and plan.new_events:
            deliveries = Deliveries(plan.new_events)
            for gateway in self._gateways:
                self._post(gateway, deliveries)
            if self._redis_bridge is not None:
                self._post(self._redis_bridge, deliveries)
        if self._ids is not None and stored:
            # After the acks, not before: a Redis round trip less on every send's
            # path. Until it lands a repeat of one of these client ids finds its
            # claim pending and is answered ``unavailable`` (retry), never stored
            # twice; the same holds if the settle fails.
            await self._track_settle(self._settle_claims(plan, stored))
        self._metrics.persist_latency.observe(time.perf_counter() - flight.started)
        self._metrics.persist_batches.inc()

    async def _drain(self) -> None:
        """Wait until every flight is released, then bring the sequencer up to date."""
        if self._tail is not None:
            await asyncio.wait((self._tail,))
            self._tail = None
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Commit the plans released as stored; after a failure, forget what it touched.

        Only the write loop changes the sequencer (a release never does, so a
        plan being made never sees a channel vanish under it). After a failed
        write every flight is waited for, and only then is each channel of a
        failed plan forgotten (re-read from storage on next use): read earlier,
        storage could miss rows still landing, whose ids would be handed out
        again.
        """
        if self._broken and self._tail is not None:
            await asyncio.wait((self._tail,))
            self._tail = None
        for plan in self._stored:
            self._sequencer.commit(plan, held=True)
        self._stored.clear()
        for plan in self._broken:
            for channel_id in plan.previous_last_seq:
                self._sequencer.forget(channel_id)
            for item in plan.items:
                # Channels that gave no ids but hold repeats of a failed send.
                if isinstance(item, Duplicate) and item.in_plan:
                    self._sequencer.forget(item.record.channel_id)
        self._broken.clear()

    async def _check_changes(
        self, records: Sequence[tuple[int, PersistRecord]]
    ) -> tuple[list[tuple[int, SendRecord | ChangeDraft]], dict[tuple[int, int], SendOutcome]]:
        """The records to plan (changes that passed their checks as drafts), and the
        outcomes of those that did not (or had nothing to change)."""
        changes = [(o, r) for o, r in records if isinstance(r, ChangeRecord)]
        if not changes:
            # The usual write: sends only, planned as they came.
            return cast(list[tuple[int, SendRecord | ChangeDraft]], list(records)), {}
        checked = await check_changes(self._store, changes)
        entries: list[tuple[int, SendRecord | ChangeDraft]] = []
        settled: dict[tuple[int, int], SendOutcome] = {}
        for origin, record in records:
            if isinstance(record, SendRecord):
                entries.append((origin, record))
                continue
            answer = checked[(origin, record.token)]
            if isinstance(answer, ChangeDraft):
                entries.append((origin, answer))
            else:
                settled[(origin, record.token)] = answer
        return entries, settled

    async def _plan_shared(
        self,
        records: Sequence[tuple[int, SendRecord | ChangeDraft]],
        attachments: Mapping[str, Attachment],
    ) -> tuple[Plan, dict[tuple[int, int], SendOutcome]]:
        """Plan with ids and idempotency shared by every host (``bus.backend: redis``).

        A dry run of the local sequencer finds local repeats; the rest claim their
        client ids in Redis (a repeat stored by another host is answered with its
        original) and every channel reserves a contiguous id range for what won,
        in one round trip (``RedisIds.claim_and_reserve``). Returns the plan and
        the outcomes already settled outside it.
        """
        assert self._ids is not None
        dry = self._sequencer.plan(records, attachments)
        self._sequencer.rollback(dry)
        fresh = [item for item in dry.items if isinstance(item, Assigned)]
        claimable = [item for item in fresh if item.record.client_msg_id]
        # Ids needed besides the claims: changes (and sends without a client id).
        counts: dict[str, int] = {}
        for planned in dry.items:
            if isinstance(planned, Duplicate) or (
                isinstance(planned, Assigned) and planned.record.client_msg_id
            ):
                continue
            channel_id = planned.record.channel_id
            counts[channel_id] = counts.get(channel_id, 0) + 1
        # The floors: what this persister knows storage holds (read when it loaded
        # the channel, advanced by its own writes and those in flight), so a
        # counter Redis set back never hands out a stored id. No storage read on
        # this path.
        channels = {*counts, *(i.record.channel_id for i in claimable)}
        floors = {channel_id: self._sequencer.last_seq(channel_id) for channel_id in channels}
        # One round trip: the claims, and for what they won the id ranges.
        claims, reserved = await self._ids.claim_and_reserve(
            [
                (i.record.channel_id, i.record.user_id, i.record.client_msg_id or "")
                for i in claimable
            ],
            counts,
            floors,
        )
        resolved = await self._resolve_unknown_claims(claimable, claims)
        taken_over = {
            item.record.channel_id
            for item, before, after in zip(claimable, claims, resolved, strict=True)
            if after.won and not before.won
        }
        if taken_over:
            # A claim of a failed write, taken over once storage showed it was not
            # stored, needs an id its channel did not reserve: the channel takes a
            # fresh range for everything (the first one is left as a hole).
            needed = {channel_id: counts.get(channel_id, 0) for channel_id in taken_over}
            for item, claim in zip(claimable, resolved, strict=True):
                if claim.won and item.record.channel_id in taken_over:
                    needed[item.record.channel_id] += 1
            again = await self._ids.reserve(needed, floors)
            reserved = Reservation(
                {**reserved.firsts, **again.firsts},
                reserved.redis_lost_data or again.redis_lost_data,
            )
        claims = resolved
        settled: dict[tuple[int, int], SendOutcome] = {}
        for item, claim in zip(claimable, claims, strict=True):
            if claim.won:
                continue
            key = (item.origin, item.record.token)
            if claim.message_id is None or claim.created_at is None:
                settled[key] = SendOutcome(
                    item.record.token,
                    error_code="unavailable",
                    error_message="the same clientMsgId is being stored by another server",
                )
            else:
                original = replace(
                    item.message, message_id=claim.message_id, created_at=claim.created_at
                )
                settled[key] = SendOutcome(item.record.token, message=original, duplicate=True)
        # A repeat of a settled send inside this same batch shares its outcome;
        # left in the plan it would take an id nobody reserved.
        by_client_id = {
            (i.record.channel_id, i.record.user_id, i.record.client_msg_id): settled[
                (i.origin, i.record.token)
            ]
            for i in claimable
            if (i.origin, i.record.token) in settled
        }
        for origin, record in records:
            if not isinstance(record, SendRecord):
                continue
            shared = by_client_id.get((record.channel_id, record.user_id, record.client_msg_id))
            if shared is not None and (origin, record.token) not in settled:
                settled[(origin, record.token)] = replace(shared, token=record.token)
        for channel_id, first in reserved.firsts.items():
            self._sequencer.set_last_seq(channel_id, first - 1)
        if reserved.redis_lost_data:
            now = time.monotonic()
            if self._redis_loss_at is None or now - self._redis_loss_at > REDIS_LOSS_WINDOW_S:
                self._redis_loss_at = now
                log.warning(
                    "redis id counters were behind storage; re-reading every channel's last id",
                    checked=len(reserved.firsts),
                )
                self._floors_checked = frozenset(reserved.firsts)
        remaining = [(o, r) for o, r in records if (o, r.token) not in settled]
        return self._sequencer.plan(remaining, attachments), settled

    async def _resolve_unknown_claims(
        self, items: Sequence[Assigned], claims: list[Claim]
    ) -> list[Claim]:
        """Claims of sends whose earlier write failed: storage says what happened.

        The failed write's message id is looked up: if that message is stored (the
        write landed although its answer was lost) the send is a repeat of it;
        if not, the claim is taken over and the send is stored now.
        """
        assert self._ids is not None
        resolved = list(claims)
        free: list[tuple[int, tuple[str, str, str, str]]] = []
        for index, (item, claim) in enumerate(zip(items, claims, strict=True)):
            if not claim.unknown or claim.message_id is None:
                continue
            record = item.record
            try:
                landed = await self._store.get_message(record.channel_id, claim.message_id)
            except MessageNotFound:
                landed = None
            if (
                landed is not None
                and landed.user_id == record.user_id
                and landed.client_msg_id == record.client_msg_id
            ):
                resolved[index] = Claim(False, landed.message_id, landed.created_at)
            else:
                key = (record.channel_id, record.user_id, record.client_msg_id or "")
                free.append((index, (*key, claim.message_id)))
        taken = await self._ids.take_over([claim for _, claim in free])
        for (index, _), ours in zip(free, taken, strict=True):
            resolved[index] = Claim(won=True) if ours else Claim(won=False)
        return resolved

    async def _track_settle(self, settle: Coroutine[Any, Any, None]) -> None:
        """Run ``settle`` in the background, at most ``MAX_SETTLING`` at a time."""
        if len(self._settling) >= MAX_SETTLING:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(settle)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_claims(self, plan: Plan, stored: bool) -> None:
        assert self._ids is not None
        done = [
            (
                i.record.channel_id,
                i.record.user_id,
                i.record.client_msg_id or "",
                i.message.message_id,
                i.message.created_at,
            )
            for i in plan.items
            if isinstance(i, Assigned) and i.record.client_msg_id
        ]
        try:
            if stored:
                await self._ids.settle(done, [])
            else:
                await self._ids.settle([], [d[:4] for d in done])
        except BusUnavailable as exc:
            # Stored claims then stay "pending" until they expire: a retry in that
            # window is answered unavailable, never stored twice.
            log.warning("could not settle client id claims", error=str(exc))

    def _answer(
        self,
        taken: Sequence[tuple[PersistBatch, Any]],
        plan: Plan,
        stored: bool,
        settled: dict[tuple[int, int], SendOutcome],
    ) -> None:
        by_token = {(item.origin, item.record.token): item for item in plan.items}
        for batch, reply_to in taken:
            outcomes = []
            for record in batch.records:
                early = settled.get((batch.gateway_index, record.token))
                if early is not None:
                    outcomes.append(early)
                    continue
                item = by_token[(batch.gateway_index, record.token)]
                if isinstance(item, Changed):
                    outcomes.append(
                        SendOutcome(record.token, change=item.change)
                        if stored
                        else SendOutcome(
                            record.token,
                            error_code="unavailable",
                            error_message="storage unavailable",
                        )
                    )
                    continue
                ok = stored or (isinstance(item, Duplicate) and not item.in_plan)
                if not ok:
                    outcomes.append(
                        SendOutcome(
                            record.token,
                            error_code="unavailable",
                            error_message="storage unavailable",
                        )
                    )
                else:
                    outcomes.append(
                        SendOutcome(
                            record.token,
                            message=item.message,
                            duplicate=not isinstance(item, Assigned),
                        )
                    )
            self._post(reply_to, PersistResult(batch.batch_id, tuple(outcomes)))


def _fail_all(batch: PersistBatch, why: str) -> PersistResult:
    return PersistResult(
        batch.batch_id,
        tuple(
            SendOutcome(r.token, error_code="unavailable", error_message=why) for r in batch.records
        ),
    )
