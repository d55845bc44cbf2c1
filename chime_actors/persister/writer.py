"""The persister's core: takes ``PersistBatch``es, sequences, writes, answers.

Runs on the persister process's asyncio loop (``PersisterActor`` feeds it). Batches
queue in a bounded inbox; the writer drains everything queued into one store write
(group commit), so the write rate adapts to load without delaying a lone message.
After the write:

* each origin gateway gets one ``PersistResult`` (its acks, or ``unavailable``), and
* every gateway gets one ``Deliveries`` with all new messages, in id order.

Only durable messages are ever delivered or acked (PROTOCOL.md: ack = durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from chime_actors.errors import StoreError
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics
from chime_actors.persister.sequencer import Assigned, Duplicate, Plan, Sequencer
from chime_actors.records import Deliveries, PersistBatch, PersistResult, SendOutcome
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

INBOX_BATCHES = 1024
MAX_RECORDS_PER_WRITE = 2000

Post = Callable[[Any, Any], None]


class PersistWriter:
    """Sequences and stores batches for the channels this persister owns."""

    def __init__(
        self,
        store: MessageStore,
        post: Post,
        metrics: ChimeMetrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._post = post
        self._metrics = metrics
        self._sequencer = Sequencer(clock)
        self._inbox: asyncio.Queue[tuple[PersistBatch, Any]] = asyncio.Queue(INBOX_BATCHES)
        self._gateways: tuple[Any, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the write loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="persist-writer")

    async def stop(self) -> None:
        """Finish what is queued (bounded by the inbox), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._inbox.join(), timeout=10)
        except TimeoutError:
            log.warning("persister stopped with batches still queued", queued=self._inbox.qsize())
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def set_gateways(self, gateways: tuple[Any, ...]) -> None:
        """The current gateway addresses (from ``Wiring``)."""
        self._gateways = gateways

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
            first = await self._inbox.get()
            taken = [first]
            count = len(first[0].records)
            while count < MAX_RECORDS_PER_WRITE and not self._inbox.empty():
                item = self._inbox.get_nowait()
                taken.append(item)
                count += len(item[0].records)
            try:
                await self._write(taken)
            except Exception:
                # The failure policy of the writer: a bug here must not stall the
                # persister; the batches are answered ``unavailable`` (nothing acked
                # was lost: nothing of them was acked) and the loop goes on.
                log.exception("persist write crashed")
                for batch, reply_to in taken:
                    self._post(reply_to, _fail_all(batch, "internal error while storing"))
            finally:
                for _ in taken:
                    self._inbox.task_done()

    async def _write(self, taken: Sequence[tuple[PersistBatch, Any]]) -> None:
        started = time.perf_counter()
        records = [(batch.gateway_index, rec) for batch, _ in taken for rec in batch.records]
        unloaded = {r.channel_id for _, r in records if not self._sequencer.is_loaded(r.channel_id)}
        try:
            for channel_id in sorted(unloaded):
                state = await self._store.load_channel_state(
                    channel_id, dedupe_since=self._sequencer.dedupe_since()
                )
                self._sequencer.load(channel_id, state.last_seq, state.client_ids)
        except StoreError as exc:
            log.warning("storage unavailable while loading channels", error=str(exc))
            for batch, reply_to in taken:
                self._post(reply_to, _fail_all(batch, "storage unavailable"))
            return
        plan = self._sequencer.plan(records)
        stored = True
        if plan.new_messages:
            try:
                await self._store.append(plan.new_messages)
            except StoreError as exc:
                stored = False
                self._sequencer.rollback(plan)
                # The store may have been half-way: forget what we know so the next
                # write re-reads the truth instead of trusting our counters.
                for channel_id in plan.previous_last_seq:
                    self._sequencer.forget(channel_id)
                log.warning("storage write failed", error=str(exc), records=len(records))
            except Exception:
                # A bug in the store: give the ids back all the same (nothing of the
                # plan is acked), or the next message would open a gap; ``_run``
                # answers the batches.
                self._sequencer.rollback(plan)
                for channel_id in plan.previous_last_seq:
                    self._sequencer.forget(channel_id)
                raise
        if stored:
            self._sequencer.commit(plan)
        self._answer(taken, plan, stored)
        if stored and plan.new_messages:
            deliveries = Deliveries(plan.new_messages)
            for gateway in self._gateways:
                self._post(gateway, deliveries)
        self._metrics.persist_latency.observe(time.perf_counter() - started)
        self._metrics.persist_batches.inc()

    def _answer(self, taken: Sequence[tuple[PersistBatch, Any]], plan: Plan, stored: bool) -> None:
        by_token = {(item.origin, item.record.token): item for item in plan.items}
        for batch, reply_to in taken:
            outcomes = []
            for record in batch.records:
                item = by_token[(batch.gateway_index, record.token)]
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
