"""The persister process's core: owns a ``PersistWriter`` and reports metrics.

Messages in: ``PersistBatch`` (from gateways), ``Wiring`` (gateway and API
addresses). Out: ``PersistResult`` to the sending gateway, ``Deliveries`` to all.
Nothing is written before the first ``Wiring``: until then no gateway is known
to deliver to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chime_actors.config import Config
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.redis_ids import RedisIds
from chime_actors.persister.writer import PersistWriter
from chime_actors.records import PersistBatch
from chime_actors.runtime.messages import ActorId, Wiring
from chime_actors.runtime.metrics_reporter import MetricsReporter
from chime_actors.storage.factory import Storage

log = get_logger(__name__)


class PersisterCore:
    """One member of the persister pool."""

    def __init__(
        self,
        actor_id: ActorId,
        config: Config,
        post: Any,
        *,
        store: Storage,
        ids: RedisIds | None,
        wait_writable: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """A persister; nothing is opened until :meth:`start`.

        Args:
            actor_id: who we are.
            config: the server's configuration.
            post: how to send to other actors.
            store: the storage to write to, messages and attachments (unopened:
                :meth:`start` opens it, :meth:`stop` closes it).
            ids: the ids shared by every host (Redis's with ``bus.backend: redis``),
                or None: this persister numbers its channels alone (one host).
            wait_writable: the lanes' backpressure (see ``PersistWriter``).
        """
        self.actor_id = actor_id
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._post = post
        self._store = store
        self._ids = ids
        self._writer = PersistWriter(
            self._store,
            post,
            self.metrics,
            ids=self._ids,
            wait_writable=wait_writable,
            attachments=self._store,
            unsent_ttl_s=config.attachments.unsent_ttl_s,
            writes_in_flight=config.storage.writes_in_flight,
        )
        self._reporter = MetricsReporter(actor_id, self.registry, post, self._refresh_gauges)
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Open storage; the write loop starts with the first ``Wiring``."""
        await self._store.open()
        self._metrics_task = asyncio.get_running_loop().create_task(self._reporter.run())
        return 0

    def handle(self, message: Any, sender: Any) -> None:
        """Thespian messages, on the loop thread."""
        if isinstance(message, PersistBatch):
            self._writer.submit(message, sender)
        elif isinstance(message, Wiring):
            # Handler actors take every write's Deliveries exactly as gateways do.
            receivers = message.gateways + message.handlers
            self._writer.set_gateways(receivers, message.redis_bridge)
            # Not before: a batch stored without knowing the gateways would be
            # acked and delivered to nobody. A client can send that early: the
            # gateways may have their Wiring (and this persister's lane) before
            # this persister has its own. Until then batches wait in the inbox.
            self._writer.start()
            self._reporter.set_api(message.api)
        else:
            log.warning("persister ignored unknown message", kind=type(message).__name__)

    async def stop(self) -> None:
        """Write what is queued, then close storage."""
        if self._metrics_task is not None:
            self._metrics_task.cancel()
        await self._writer.stop()
        if self._ids is not None:
            await self._ids.close()
        await self._store.close()

    def _refresh_gauges(self) -> None:
        self.metrics.queue_depth.labels(queue="persist_inbox").set(self._writer.queue_depth)
