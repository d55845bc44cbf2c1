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

import logging
import uuid
from typing import Any, Protocol

import setproctitle
from thespian.actors import (
    Actor,
    ActorExitRequest,
    PoisonMessage,
    ThespianWatch,
    WatchMessage,
)

from chime_actors.actors.loop_bridge import LoopBridge
from chime_actors.actors.messages import ActorId, Bundle, Configure, Ready, bundle_by_target
from chime_actors.logs import configure_logging, get_logger

log = get_logger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


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


class LoopActor(Actor):  # type: ignore[misc]  # Thespian is untyped
    """A Thespian actor whose work runs on an ``ActorCore`` in a loop thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge: LoopBridge | None = None
        self._core: ActorCore | None = None
        self._actor_id: ActorId | None = None

    def make_core(self, configure: Configure, bridge: LoopBridge, supervisor: Any) -> ActorCore:
        """Build this actor's core (subclasses override)."""
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
        try:
            core = self.make_core(configure, bridge, sender)
            port = bridge.run_sync(core.start(), START_TIMEOUT_S)
        except Exception:
            log.exception("actor failed to start", actor=str(configure.actor_id))
            bridge.stop()
            raise
        self._bridge = bridge
        self._core = core
        log.info("actor started", actor=str(configure.actor_id), port=port)
        self.send(sender, Ready(configure.actor_id, port))

    def _shut_down(self) -> None:
        if self._bridge is None or self._core is None:
            return
        try:
            self._bridge.run_sync(self._core.stop(), STOP_TIMEOUT_S)
        except Exception:
            log.exception("actor stop failed", actor=str(self._actor_id))
        self._flush_outbox()
        self._bridge.stop()
        self._bridge = None
        self._core = None
        logging.shutdown()
