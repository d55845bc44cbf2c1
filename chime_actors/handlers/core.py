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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from chime_actors.actors.messages import ActorId, Wiring
from chime_actors.actors.metrics_reporter import MetricsReporter
from chime_actors.config import Config
from chime_actors.gateway.persist_link import PersistLink
from chime_actors.handlers.after_store import AfterStoreWorker
from chime_actors.handlers.api import Reply
from chime_actors.handlers.metrics import HandlerMetrics
from chime_actors.handlers.registry import after_store_indexes, build_handler
from chime_actors.handlers.runner import HandlerRunner
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.sequencer import owner_index
from chime_actors.records import (
    ChannelEvent,
    Deliveries,
    MessageChange,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.storage.factory import make_store

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


class HandlerCore:
    """Runs one ``after_store`` handler (``ActorCore``)."""

    def __init__(self, actor_id: ActorId, config: Config, post: Any) -> None:
        self.actor_id = actor_id
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._handler_metrics = HandlerMetrics.register(self.registry)
        self._loaded = build_handler(config, after_store_indexes(config)[actor_id.index - 1])
        spec = self._loaded.spec
        self.name = spec.name
        self._timeout_s = spec.timeout_ms / 1000
        self._store = make_store(config)
        self._links = [
            PersistLink(
                HANDLER_ORIGIN_BASE + actor_id.index,
                post,
                ack_timeout_s=config.chat.ack_timeout_ms / 1000,
            )
            for _ in range(config.persisters)
        ]
        self._runner = HandlerRunner(f"chime-handler-{spec.name}")
        self._worker = AfterStoreWorker(
            spec,
            self._store,
            self._call,
            self._send,
            self._handler_metrics.of(spec.name),
            max_content_chars=config.chat.max_content_chars,
        )
        self._reporter = MetricsReporter(actor_id, self.registry, post, self._refresh_gauges)
        self._tasks: list[asyncio.Task[None]] = []
        self._scan_timer: asyncio.TimerHandle | None = None

    # --- ActorCore -------------------------------------------------------------------

    async def start(self) -> int:
        """Open storage, load (or register) the cursors, start the handler's thread."""
        await self._store.open()
        await self._worker.register()
        self._runner.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._worker.run(), name=f"handler-{self.name}"),
            loop.create_task(self._worker.flush_forever(), name="handler-cursor-flush"),
            loop.create_task(self._reporter.run(), name="handler-metrics"),
            loop.create_task(self._maintain(), name="handler-maintenance"),
        ]
        log.info("handler started", handler=self.name, use=self._loaded.spec.use)
        return 0

    def handle(self, message: Any, sender: Any) -> None:
        """Messages from the persisters and the supervisor, on the loop thread."""
        if isinstance(message, Deliveries):
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
        """Stop handing over, save the cursors, close the handler."""
        if self._scan_timer is not None:
            self._scan_timer.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._worker.flush(), STOP_FLUSH_TIMEOUT_S)
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

    # --- internals ---------------------------------------------------------------------

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
                SCAN_DELAY_S, self._worker.request_scan
            )

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
        self._handler_metrics.lag.labels(handler=self.name).set(worker.lag)
        self._handler_metrics.stuck.labels(handler=self.name).set(1 if worker.stuck else 0)
        depth = self.metrics.queue_depth
        depth.labels(queue="handler_backlog").set(len(worker.backlog))
        depth.labels(queue="persist_link").set(sum(link.pending for link in self._links))
