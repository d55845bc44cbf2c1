"""``Supervisor``: the root process actor. Creates, restarts and stops the others.

It holds no threads and no client sockets, so every child it forks starts clean.

Failure policy (all of it, in one place):

==============================  ========================================================
event                           what the supervisor does
==============================  ========================================================
``ChildActorExited``            restart that child: at once the first time, then with
                                exponential backoff (0.1 s doubling to 5 s; reset once
                                the child has been up 30 s)
child ``Ready`` after restart   re-wire: send the new ``Wiring`` (every address) to
                                every child, because messages to a dead actor's old
                                address vanish silently; tell the API (metrics)
> 10 restarts within 60 s       escalate: report ``Status(failed)`` to the main
                                process, which shuts the server down (exit 1): a
                                crash loop is a bug, not load
a ``handler`` actor exits       restarted with the same backoff, but never counted
                                towards the intensity: a handler is plugged-in
                                code, and its crash loop must not stop the chat
                                (``/readyz`` names it; docs/handlers.md)
``PoisonMessage`` (Configure)   the child failed to start: ask it to exit, which
                                brings it back through ``ChildActorExited``
``PoisonMessage`` (other)       logged; never retried
``ShutdownRequest``             drain gateways (acks owed, 1001 to clients), then stop
                                persisters, the API and the gateways, then ``Stopped``
==============================  ========================================================

The decisions (which children, the backoff, when to give up, the ``Wiring``) are
plain code in ``supervision``; this actor carries them out with Thespian.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import setproctitle
from thespian.actors import (
    Actor,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from chime_actors.actors.api_actor import ApiActor
from chime_actors.actors.gateway_actor import GatewayActor
from chime_actors.actors.handler_actor import HandlerActor
from chime_actors.actors.persister_actor import PersisterActor
from chime_actors.actors.redis_bridge_actor import RedisBridgeActor
from chime_actors.actors.supervision import STOP_ORDER, Child, Restarts, actor_ids, wiring_of
from chime_actors.config import Config
from chime_actors.logs import configure_logging, get_logger
from chime_actors.runtime.messages import (
    ActorId,
    ActorKind,
    Bundle,
    Configure,
    Drain,
    Drained,
    Ready,
    RestartNotice,
    ShutdownRequest,
    Started,
    StartFailed,
    StartServer,
    Status,
    StatusQuery,
    Stopped,
)

log = get_logger(__name__)

ACTOR_CLASSES: dict[ActorKind, type] = {
    ActorKind.GATEWAY: GatewayActor,
    ActorKind.PERSISTER: PersisterActor,
    ActorKind.API: ApiActor,
    ActorKind.REDIS_BRIDGE: RedisBridgeActor,
    ActorKind.HANDLER: HandlerActor,
}
DRAIN_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 10.0


class Phase(enum.Enum):
    """Where the supervisor is on its way from serving to stopped (never back)."""

    SERVING = "serving"  # starting, running, restarting children
    DRAINING = "draining"  # ShutdownRequest: gateways finish what they owe
    EXITING = "exiting"  # every child was asked to exit; waiting for them
    STOPPED = "stopped"  # Stopped was sent


@dataclass(frozen=True, slots=True)
class _RestartDue:
    actor_id: ActorId


@dataclass(frozen=True, slots=True)
class _StopTimeout:
    phase: Phase


class Supervisor(Actor):  # type: ignore[misc]  # Thespian is untyped
    """Root of the process actors (one per server)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._config: Config | None = None
        self._chat_port = 0
        self._api_port = 0
        self._run_dir = ""
        self._children: dict[ActorId, Child] = {}
        self._starter: Any = None
        self._started = False
        self._failed = ""
        self._generation = 0
        self._restarts = Restarts()
        self._phase = Phase.SERVING
        self._stop_reply_to: Any = None
        self._drained: set[ActorId] = set()

    @property
    def _stopping(self) -> bool:
        return self._phase is not Phase.SERVING

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if isinstance(message, Bundle):
            for each in message.messages:
                self.receiveMessage(each, sender)
        elif isinstance(message, StartServer):
            self._start(message, sender)
        elif isinstance(message, Ready):
            self._on_ready(message, sender)
        elif isinstance(message, ChildActorExited):
            self._on_child_exited(message.childAddress)
        elif isinstance(message, WakeupMessage):
            self._on_wakeup(message.payload)
        elif isinstance(message, PoisonMessage):
            self._on_poison(message, sender)
        elif isinstance(message, StatusQuery):
            self.send(sender, Status(failed=bool(self._failed), reason=self._failed))
        elif isinstance(message, ShutdownRequest):
            self._begin_shutdown(sender)
        elif isinstance(message, Drained):
            self._drained.add(message.actor_id)
            if self._phase is Phase.DRAINING and self._all_gateways_drained():
                self._stop_children()
        elif isinstance(message, ActorExitRequest):
            pass  # Thespian stops our children for us after this

    # --- start ----------------------------------------------------------------------

    def _start(self, request: StartServer, sender: Any) -> None:
        if self._config is not None:
            return
        self._config = request.config
        self._chat_port = request.chat_port
        self._run_dir = request.run_dir
        self._starter = sender
        configure_logging(request.config.logging, process_name="supervisor")
        setproctitle.setproctitle("chime: supervisor")
        for actor_id in actor_ids(request.config):
            self._children[actor_id] = Child(actor_id)
            self._create(actor_id)

    def _create(self, actor_id: ActorId) -> None:
        assert self._config is not None
        child = self._children[actor_id]
        child.address = self.createActor(ACTOR_CLASSES[actor_id.kind])
        child.ready = False
        child.created_at = time.monotonic()
        self.send(
            child.address,
            Configure(
                actor_id,
                self._config,
                chat_port=self._chat_port,
                api_port=self._api_port,
                run_dir=self._run_dir,
            ),
        )

    def _on_ready(self, ready: Ready, sender: Any) -> None:
        child = self._children.get(ready.actor_id)
        if child is None or child.address != sender:
            return
        child.ready = True
        child.lane = (ready.lane_key, ready.lane) if ready.lane else None
        child.ready_at = time.monotonic()
        if ready.actor_id.kind is ActorKind.API and ready.port:
            self._api_port = ready.port
        if self._stopping:
            return
        if not self._started:
            if all(c.ready for c in self._children.values()):
                self._started = True
                self._rewire()
                log.info("all actors ready", chatPort=self._chat_port, apiPort=self._api_port)
                self.send(self._starter, Started(self._chat_port, self._api_port))
            return
        self._rewire()
        if child.exited_at is not None:
            restart_ms = (child.ready_at - child.exited_at) * 1000
            child.exited_at = None
            log.info("actor restarted", actor=str(ready.actor_id), restartMs=round(restart_ms, 1))
            api = self._children.get(ActorId(ActorKind.API, 1))
            if api is not None and api.address is not None:
                self.send(api.address, RestartNotice(ready.actor_id, restart_ms))

    def _rewire(self) -> None:
        self._generation += 1
        wiring = wiring_of(self._children.values(), self._generation)
        for child in self._children.values():
            if child.ready:
                self.send(child.address, wiring)

    # --- failures -------------------------------------------------------------------

    def _find(self, address: Any) -> Child | None:
        for child in self._children.values():
            if child.address == address:
                return child
        return None

    def _on_child_exited(self, address: Any) -> None:
        child = self._find(address)
        if child is None:
            return
        child.address = None
        child.ready = False
        if self._stopping:
            self._maybe_stopped()
            return
        now = time.monotonic()
        child.exited_at = now
        log.warning("actor exited", actor=str(child.actor_id))
        # Peers must stop sending to the dead address now, not after the restart.
        self._rewire()
        delay = self._restarts.after_exit(child, now)
        if delay is None:
            self._failed = f"restart intensity exceeded ({child.actor_id} kept failing)"
            log.error("supervisor gives up", reason=self._failed)
            if not self._started and self._starter is not None:
                self.send(self._starter, StartFailed(self._failed))
            return
        if delay <= 0:
            self._create(child.actor_id)
        else:
            self.wakeupAfter(timedelta(seconds=delay), payload=_RestartDue(child.actor_id))

    def _on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, _RestartDue):
            child = self._children.get(payload.actor_id)
            if child is not None and child.address is None and not self._stopping:
                self._create(payload.actor_id)
        elif isinstance(payload, _StopTimeout) and payload.phase is self._phase:
            if payload.phase is Phase.DRAINING:
                log.warning("drain timed out; stopping anyway")
                self._stop_children()
            elif payload.phase is Phase.EXITING:
                log.warning("children did not exit in time")
                self._finish_stop()

    def _on_poison(self, poison: PoisonMessage, sender: Any) -> None:
        poisoned = poison.poisonMessage
        log.error("a child failed on our message", poisoned=type(poisoned).__name__)
        if isinstance(poisoned, Configure):
            child = self._children.get(poisoned.actor_id)
            if child is not None and child.address is not None:
                self.send(child.address, ActorExitRequest())

    # --- shutdown -------------------------------------------------------------------

    def _begin_shutdown(self, sender: Any) -> None:
        if self._stopping:
            return
        self._stop_reply_to = sender
        self._phase = Phase.DRAINING
        gateways = [c for c in self._children.values() if c.actor_id.kind is ActorKind.GATEWAY]
        for child in gateways:
            if child.address is not None and child.ready:
                self.send(child.address, Drain())
            else:
                self._drained.add(child.actor_id)
        if self._all_gateways_drained():
            self._stop_children()
        else:
            self.wakeupAfter(
                timedelta(seconds=DRAIN_TIMEOUT_S), payload=_StopTimeout(Phase.DRAINING)
            )

    def _all_gateways_drained(self) -> bool:
        return all(
            c.actor_id in self._drained
            for c in self._children.values()
            if c.actor_id.kind is ActorKind.GATEWAY
        )

    def _stop_children(self) -> None:
        self._phase = Phase.EXITING
        for kind in STOP_ORDER:  # gateways first, the API last (see STOP_ORDER)
            for child in self._children.values():
                if child.actor_id.kind is kind and child.address is not None:
                    self.send(child.address, ActorExitRequest())
        self.wakeupAfter(timedelta(seconds=EXIT_TIMEOUT_S), payload=_StopTimeout(Phase.EXITING))
        self._maybe_stopped()

    def _maybe_stopped(self) -> None:
        if self._phase is Phase.EXITING and all(c.address is None for c in self._children.values()):
            self._finish_stop()

    def _finish_stop(self) -> None:
        if self._phase is Phase.STOPPED:
            return
        self._phase = Phase.STOPPED
        log.info("all actors stopped")
        self.send(self._stop_reply_to, Stopped())
