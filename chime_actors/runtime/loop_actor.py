"""Base class of the process actors that host an asyncio loop (gateway, persister, API).

The Thespian half is deliberately thin: it turns Thespian messages into calls on
an ``ActorCore`` running on the loop thread, and carries the core's sends back out
(see ``loop_bridge``). All domain logic lives in the core, which knows nothing of
Thespian and is unit-tested on a plain event loop.

Failure policy of a process actor (the supervisor's side is in ``supervisor``):

=========================  ============================================================
what fails                 what happens
=========================  ============================================================
``Configure`` raises       logged; re-raised so Thespian retries once, then the
                           supervisor gets ``PoisonMessage`` and restarts us
a core handler raises      logged with a correlation id (``run_guarded``); the
                           message is dropped and the process keeps running
``PoisonMessage`` for us   a peer's handler failed twice on something we sent:
                           logged and counted, never retried (it would fail again)
the process dies           ``ChildActorExited`` at the supervisor, which restarts us
=========================  ============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import uuid
from pathlib import Path
from typing import Any, ClassVar, Protocol

import setproctitle
from thespian.actors import (
    Actor,
    ActorExitRequest,
    PoisonMessage,
    ThespianWatch,
    WatchMessage,
)

from chime_actors.logs import configure_logging, get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.runtime.heap import IdleCollector, freeze_startup_heap
from chime_actors.runtime.lane_codec import LaneCodec
from chime_actors.runtime.lanes import LaneServer, Router, address_key
from chime_actors.runtime.loop_bridge import LoopBridge
from chime_actors.runtime.messages import (
    ActorId,
    Bundle,
    Configure,
    Ready,
    Wiring,
    bundle_by_target,
)
from chime_actors.runtime.sealed_transport import transport_key

log = get_logger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
LANE_METRICS_INTERVAL_S = 1.0


class ActorCore(Protocol):
    """The asyncio half of a process actor. Every method runs on the loop thread."""

    async def start(self) -> int:
        """Bring the core up; return the port it serves on, or 0."""
        ...

    def handle(self, message: Any, sender: Any) -> None:
        """Handle one Thespian message (already unpickled)."""
        ...

    async def stop(self) -> None:
        """Release everything; called once, before the process exits."""
        ...


def run_guarded(core: ActorCore, actor_id: ActorId | None, message: Any, sender: Any) -> None:
    """Call ``core.handle`` on the loop thread; a raise is logged, never propagated.

    Without this the exception would reach asyncio's default handler: logged
    without context, and with no correlation id to find it by.
    """
    try:
        core.handle(message, sender)
    except Exception:
        log.exception(
            "actor handler failed",
            actor=str(actor_id),
            kind=type(message).__name__,
            correlationId=uuid.uuid4().hex[:12],
        )


def run_bundle(
    core: ActorCore, actor_id: ActorId | None, messages: tuple[Any, ...], sender: Any
) -> None:
    """``run_guarded`` for each message of a ``Bundle``, in order."""
    for message in messages:
        run_guarded(core, actor_id, message, sender)


async def _report_lanes(router: Router, registry: MetricsRegistry) -> None:
    """Mirror the lanes' counts into the core's metrics, once a second."""
    metrics = ChimeMetrics.register(registry)
    reported = (0, 0, 0, 0, 0)
    while True:
        stats = router.stats
        now = (
            stats.batches_out,
            stats.bytes_out,
            stats.batches_in,
            stats.bytes_in,
            stats.dropped,
        )
        deltas = [new - old for new, old in zip(now, reported, strict=True)]
        metrics.lane_batches.labels(direction="out").inc(deltas[0])
        metrics.lane_bytes.labels(direction="out").inc(deltas[1])
        metrics.lane_batches.labels(direction="in").inc(deltas[2])
        metrics.lane_bytes.labels(direction="in").inc(deltas[3])
        metrics.lane_dropped.inc(deltas[4])
        metrics.queue_depth.labels(queue="lanes").set(router.depth)
        reported = now
        await asyncio.sleep(LANE_METRICS_INTERVAL_S)


class LoopActor(Actor):  # type: ignore[misc]  # Thespian is untyped
    """A Thespian actor whose work runs on an ``ActorCore`` in a loop thread."""

    #: What its lanes carry: ``actors.lane_records.LANE_CODEC``, set by each
    #: subclass (the runtime knows no core's records).
    lane_codec: ClassVar[LaneCodec]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge: LoopBridge | None = None
        self._core: ActorCore | None = None
        self._actor_id: ActorId | None = None
        self._router: Router | None = None
        self._lane_server: LaneServer | None = None
        self._lane_metrics: asyncio.Task[None] | None = None
        self._idle_collector = IdleCollector()

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        """Build this actor's core (subclasses override).

        ``router.post(address, message)`` is how the core sends: on a lane when
        the peer has one (the data plane), else through Thespian.
        """
        raise NotImplementedError

    def receiveMessage(self, message: Any, sender: Any) -> ThespianWatch | None:
        if isinstance(message, WatchMessage):
            self._flush_outbox()
        elif isinstance(message, Configure):
            self._configure(message, sender)
        elif isinstance(message, ActorExitRequest):
            self._shut_down()
            return None
        elif isinstance(message, PoisonMessage):
            log.error(
                "peer failed on our message",
                actor=str(self._actor_id),
                poisoned=type(message.poisonMessage).__name__,
            )
        elif self._bridge is not None and self._core is not None:
            if isinstance(message, Wiring) and self._router is not None:
                # Before the core sees the new addresses, so its next posts use
                # the new peers' lanes (call_in_loop keeps the order).
                self._bridge.call_in_loop(self._router.update, dict(message.lanes))
            if isinstance(message, Bundle):
                # One hand-off to the loop for the lot (each costs a pipe write).
                self._bridge.call_in_loop(
                    run_bundle, self._core, self._actor_id, message.messages, sender
                )
            else:
                self._bridge.call_in_loop(run_guarded, self._core, self._actor_id, message, sender)
        if self._bridge is not None:
            return ThespianWatch([self._bridge.watch_fd])
        return None

    def _flush_outbox(self) -> None:
        if self._bridge is None:
            return
        sends = [
            (address, outgoing) for address, outgoing in self._bridge.drain() if address is not None
        ]
        for address, outgoing in bundle_by_target(sends):
            self.send(address, outgoing)

    def _configure(self, configure: Configure, sender: Any) -> None:
        if self._core is not None:
            return  # a duplicate Configure (Thespian retry): we are already up
        self._actor_id = configure.actor_id
        setproctitle.setproctitle(f"chime: {configure.actor_id}")
        configure_logging(configure.config.logging, process_name=str(configure.actor_id))
        bridge = LoopBridge(name=f"chime-{configure.actor_id.kind.value}-loop")
        bridge.start()
        key = transport_key()
        router = Router(self.myAddress, key, bridge.post, codec=self.lane_codec)
        lane = ""
        try:
            core = self.make_core(configure, router, sender)
            port = bridge.run_sync(core.start(), START_TIMEOUT_S)
            if configure.run_dir:
                actor_id = configure.actor_id
                path = Path(configure.run_dir) / (
                    f"{actor_id.kind.value}-{actor_id.index}-{os.getpid()}.sock"
                )
                deliver = functools.partial(run_bundle, core, actor_id)
                server = LaneServer(path, key, deliver, router.stats, codec=self.lane_codec)
                bridge.run_sync(server.start(), START_TIMEOUT_S)
                self._lane_server = server
                lane = str(path)
        except Exception:
            log.exception("actor failed to start", actor=str(configure.actor_id))
            bridge.stop()
            raise
        self._bridge = bridge
        self._core = core
        self._router = router
        registry = getattr(core, "registry", None)
        if isinstance(registry, MetricsRegistry):
            self._lane_metrics = bridge.run_sync(_start_task(_report_lanes(router, registry)), 5)
        frozen = freeze_startup_heap()
        bridge.call_in_loop(self._idle_collector.start)
        log.info(
            "actor started", actor=str(configure.actor_id), port=port, lane=lane, gcFrozen=frozen
        )
        ready = Ready(configure.actor_id, port, lane=lane, lane_key=address_key(self.myAddress))
        self.send(sender, ready)

    def _shut_down(self) -> None:
        if self._bridge is None or self._core is None:
            return
        try:
            self._bridge.run_sync(self._core.stop(), STOP_TIMEOUT_S)
            self._bridge.run_sync(self._close_lanes(), STOP_TIMEOUT_S)
        except Exception:
            log.exception("actor stop failed", actor=str(self._actor_id))
        self._flush_outbox()
        self._bridge.stop()
        self._bridge = None
        self._core = None
        logging.shutdown()

    async def _close_lanes(self) -> None:
        self._idle_collector.stop()
        if self._lane_metrics is not None:
            self._lane_metrics.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lane_metrics
        if self._router is not None:
            self._router.close()
        if self._lane_server is not None:
            await self._lane_server.close()


async def _start_task(coro: Any) -> asyncio.Task[None]:
    """Start ``coro`` as a task of the running loop (for ``run_sync`` from Thespian)."""
    return asyncio.get_running_loop().create_task(coro)
