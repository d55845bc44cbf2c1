"""The core of a ``HandlerActor``: one ``after_store`` handler in a process of its own.

``handler n`` runs the n-th ``after_store`` handler of ``config.handlers``. It is
supervised like the other process actors (restarted with backoff, see
``actors/supervisor.py``) and, like a gateway, it is wired to the persisters:

* ``Deliveries`` (every write of every persister, on its lane) feed the
  ``AfterStoreWorker``, which keeps the handler's backlog and cursor;
* replies (``echo_bot``) go to the channel's persister through a ``PersistLink``
  of the handler's own, so they are sequenced and stored like any send;
  ``PersistResult``s come back here;
* the handler's code runs on its own thread (``HandlerRunner``): this loop only
  reads lanes, keeps books and talks to storage, so it never stops reading the
  persisters' deliveries, however slow or stuck the handler is.

With several hosts (``bus.backend: redis``) every host runs this process, and it
hands messages over only while it holds the handler's lease (``LeaseKeeper``,
``handlers/lease.py``): each hold makes a worker of its own, under the hold's
fence, fed by the local persisters and by every host's publications
(``RedisFeed``); a standby keeps nothing but its lease attempts. With one host
the single hold starts with the process, without a fence.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from chime_actors.config import Config
from chime_actors.handlers.after_store import AfterStoreWorker
from chime_actors.handlers.api import Reply
from chime_actors.handlers.lease import ClosableLease, LeaseKeeper
from chime_actors.handlers.metrics import HandlerMetrics
from chime_actors.handlers.registry import after_store_indexes, build_handler
from chime_actors.handlers.runner import HandlerRunner
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.link import PersistLink
from chime_actors.persister.redis_ids import MULTI_HOST_HOLD_MAX_S
from chime_actors.persister.sequencer import owner_index
from chime_actors.records import (
    ChannelEvent,
    Deliveries,
    MessageChange,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.messages import ActorId, Wiring
from chime_actors.runtime.metrics_reporter import MetricsReporter
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

# A handler's sends are keyed by (origin, token) at the persister, like a
# gateway's: origins of handlers never meet a gateway's index.
HANDLER_ORIGIN_BASE = 1_000_000
# After new persisters are wired: time for them to learn our address too, then
# look in storage for what they stored before they did.
SCAN_DELAY_S = 1.0
MAINTENANCE_INTERVAL_S = 0.5
CLOSE_TIMEOUT_S = 5.0
IDLE_WAIT_S = 2.0
STOP_FLUSH_TIMEOUT_S = 5.0


class Feed(Protocol):
    """Every host's publications of a hold's channels (``RedisFeed``)."""

    async def run(self) -> None:
        """Hand the channels' events over, reconnecting alone, until cancelled."""
        ...


# (channel globs, offer events, on (re)subscribed) -> a feed, made at each hold.
FeedFactory = Callable[
    [Sequence[str], Callable[[Sequence[ChannelEvent]], None], Callable[[], None]], Feed
]


class HandlerCore:
    """Runs one ``after_store`` handler (``ActorCore``)."""

    def __init__(
        self,
        actor_id: ActorId,
        config: Config,
        post: Any,
        *,
        store: MessageStore,
        lease: ClosableLease | None,
        feed: FeedFactory | None,
    ) -> None:
        """A handler process's core; nothing runs until :meth:`start`.

        Args:
            actor_id: who we are (``handler n``: the n-th ``after_store`` handler).
            config: the server's configuration.
            post: how to send to other actors.
            store: cursors, fences and scans (unopened: :meth:`start` opens it).
            lease: the handler's lease shared by every host, or None with one
                host (the process holds from its start, without a fence).
            feed: makes each hold's subscription to every host's publications;
                needed with a ``lease``.
        """
        self.actor_id = actor_id
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._handler_metrics = HandlerMetrics.register(self.registry)
        self._loaded = build_handler(config, after_store_indexes(config)[actor_id.index - 1])
        spec = self._loaded.spec
        self.name = spec.name
        self._timeout_s = spec.timeout_ms / 1000
        self._store = store
        self._links = [
            PersistLink(
                HANDLER_ORIGIN_BASE + actor_id.index,
                post,
                ack_timeout_s=config.chat.ack_timeout_ms / 1000,
            )
            for _ in range(config.persisters)
        ]
        self._config = config
        self._runner = HandlerRunner(f"chime-handler-{spec.name}")
        self._counters = self._handler_metrics.of(spec.name)
        self._reporter = MetricsReporter(actor_id, self.registry, post, self._refresh_gauges)
        self._tasks: list[asyncio.Task[None]] = []
        # The worker of the current hold and its tasks; None while standing by.
        self._worker: AfterStoreWorker | None = None
        self._hold_tasks: list[asyncio.Task[None]] = []
        self._handing_over = False  # begun and not ended: what the lease gauge shows
        self._scan_timer: asyncio.TimerHandle | None = None
        self._keeper: LeaseKeeper | None = None
        self._lease = lease
        self._feed = feed
        if lease is not None:
            self._keeper = LeaseKeeper(spec.name, lease, self, ttl_ms=spec.lease_ttl_ms)

    # --- ActorCore -------------------------------------------------------------------

    async def start(self) -> int:
        """Open storage, start the handler's thread, then hold (one host) or try the lease.

        Raises:
            StoreError: one host: storage did not answer the cursors' load.
        """
        await self._store.open()
        self._runner.start()
        if self._keeper is None:
            try:
                await self.begin(None)
            except BaseException:
                await self.end()
                self._runner.stop()
                raise
        else:
            self._keeper.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reporter.run(), name="handler-metrics"),
            loop.create_task(self._maintain(), name="handler-maintenance"),
        ]
        log.info("handler started", handler=self.name, use=self._loaded.spec.use)
        return 0

    def handle(self, message: Any, sender: Any) -> None:
        """Messages from the persisters and the supervisor, on the loop thread."""
        if isinstance(message, Deliveries):
            if self._worker is not None:  # a standby drops them: the holder has them
                self._worker.offer(message.messages)
        elif isinstance(message, PersistResult):
            for link in self._links:
                if link.owns(message.batch_id):
                    link.on_result(message)
                    break
        elif isinstance(message, Wiring):
            self._rewire(message)
        else:
            log.warning("handler ignored unknown message", kind=type(message).__name__)

    async def stop(self) -> None:
        """Stop handing over, save the cursors (and release the lease), close the handler."""
        if self._scan_timer is not None:
            self._scan_timer.cancel()
        if self._keeper is not None:
            await self._keeper.stop()
        else:
            await self.end()
        if self._lease is not None:
            await self._lease.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # A call cancelled just now ends in a moment; one that ignores it is left.
        if await self._runner.wait_idle(IDLE_WAIT_S):
            try:
                await self._runner.call(self._loaded.handler.close, CLOSE_TIMEOUT_S)
            except Exception:
                log.exception("handler close failed", handler=self.name)
        self._runner.stop()
        for link in self._links:
            link.fail_all("handler stopped")
        await self._store.close()

    # --- LeaseHolder -----------------------------------------------------------------

    async def begin(self, fence: int | None) -> None:
        """Claim ``fence`` (None: one host, no lease), load the cursors, start handing over.

        Raises:
            FencedOut: storage holds a newer fence.
            StoreError: storage did not answer.
        """
        if fence is not None:
            await self._store.claim_handler_fence(self.name, fence)
        spec = self._loaded.spec
        worker = AfterStoreWorker(
            spec,
            self._store,
            self._call,
            self._send,
            self._counters,
            max_content_chars=self._config.chat.max_content_chars,
            fence=fence,
            hold_max_s=0.0 if fence is None else MULTI_HOST_HOLD_MAX_S,
            on_fenced=self._fenced_out,
        )
        self._worker = worker
        await worker.register()
        loop = asyncio.get_running_loop()
        self._hold_tasks = [
            loop.create_task(worker.run(), name=f"handler-{self.name}"),
            loop.create_task(worker.flush_forever(), name="handler-cursor-flush"),
        ]
        if fence is not None and self._feed is not None:
            feed = self._feed(spec.channels, worker.offer, worker.request_scan)
            self._hold_tasks.append(loop.create_task(feed.run(), name="handler-feed"))
        self._handing_over = True

    async def end(self) -> None:
        """Stop handing over at once, then save what was confirmed (bounded); never raises."""
        worker = self._worker
        if worker is None:
            return
        self._handing_over = False
        for task in self._hold_tasks:
            task.cancel()
        for task in self._hold_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._hold_tasks = []
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.flush(), STOP_FLUSH_TIMEOUT_S)
        self._worker = None

    # --- internals ---------------------------------------------------------------------

    def _fenced_out(self) -> None:
        if self._keeper is not None:
            self._keeper.lose()

    def _rewire(self, wiring: Wiring) -> None:
        changed = False
        for link, address in zip(self._links, wiring.persisters, strict=False):
            changed |= address is not None and address != link.address
            link.rewire(address)
        self._reporter.set_api(wiring.api)
        if changed:
            # New persisters (our first wiring, or a restart) deliver to us from
            # now on; what they stored before is in storage.
            if self._scan_timer is not None:
                self._scan_timer.cancel()
            self._scan_timer = asyncio.get_running_loop().call_later(
                SCAN_DELAY_S, self._request_scan
            )

    def _request_scan(self) -> None:
        if self._worker is not None:
            self._worker.request_scan()

    async def _call(self, event: ChannelEvent) -> Sequence[Reply]:
        handler = self._loaded.handler
        if isinstance(event, MessageChange):
            after_change = getattr(handler, "after_change", None)
            if after_change is None:
                return ()  # a handler without the optional method ignores changes
            return await self._runner.call(lambda: after_change(event), self._timeout_s)
        return await self._runner.call(lambda: handler.after_store(event), self._timeout_s)

    async def _send(self, record: SendRecord) -> SendOutcome:
        link = self._links[owner_index(record.channel_id, len(self._links))]
        return await link.submit(record)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            for link in self._links:
                link.expire()

    def _refresh_gauges(self) -> None:
        worker = self._worker
        metrics = self._handler_metrics
        metrics.lease_held.labels(handler=self.name).set(1 if self._handing_over else 0)
        metrics.lag.labels(handler=self.name).set(worker.lag if worker is not None else 0)
        stuck = worker is not None and worker.stuck
        metrics.stuck.labels(handler=self.name).set(1 if stuck else 0)
        depth = self.metrics.queue_depth
        depth.labels(queue="handler_backlog").set(len(worker.backlog) if worker else 0)
        depth.labels(queue="persist_link").set(sum(link.pending for link in self._links))
