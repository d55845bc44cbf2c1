"""The supervisor's decisions, apart from Thespian: which actors, restart or give up,
how long to wait, and what every child is told of the others.

``Supervisor`` (supervisor.py) carries these out with Thespian's ``createActor``,
``wakeupAfter`` and ``send``; here they are plain functions of plain state, so
unit tests check the policy without processes (tests/unit/test_supervision.py).
The policy itself is the table in supervisor.py's docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from chime_actors.config import BusBackend, Config
from chime_actors.gateway.local_supervisor import RestartBudget, RestartPolicy
from chime_actors.handlers.registry import after_store_indexes
from chime_actors.runtime.messages import ActorId, ActorKind, Wiring

# More than this many restarts (handlers aside) and the server gives up (exit 1).
INTENSITY = RestartPolicy(max_restarts=10, within_s=60.0)
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
# A child up longer than this before it died restarts at once again.
STABLE_AFTER_S = 30.0
# Gateways first (no new sends), then persisters (their queues are written out on
# exit), the API last so /readyz reports the shutdown.
STOP_ORDER = (
    ActorKind.GATEWAY,
    ActorKind.PERSISTER,
    ActorKind.HANDLER,
    ActorKind.REDIS_BRIDGE,
    ActorKind.API,
)


@dataclass(slots=True)
class Child:
    """What the supervisor knows of one child (its current incarnation)."""

    actor_id: ActorId
    address: Any = None
    ready: bool = False
    lane: tuple[str, str] | None = None  # (the child's address key, socket path)
    created_at: float = 0.0
    ready_at: float = 0.0
    exited_at: float | None = None
    backoff_s: float = 0.0  # the delay before its next restart


def actor_ids(config: Config) -> list[ActorId]:
    """Every child of a server with ``config``, in the order they are created.

    Persisters first, then the gateways, the API, the Redis bridge (with the
    Redis bus) and one actor per ``after_store`` handler.
    """
    ids = [ActorId(ActorKind.PERSISTER, i + 1) for i in range(config.persisters)]
    ids += [ActorId(ActorKind.GATEWAY, i + 1) for i in range(config.workers)]
    ids.append(ActorId(ActorKind.API, 1))
    if config.bus.backend is BusBackend.REDIS:
        ids.append(ActorId(ActorKind.REDIS_BRIDGE, 1))
    ids += [ActorId(ActorKind.HANDLER, n + 1) for n in range(len(after_store_indexes(config)))]
    return ids


class Restarts:
    """When a child that exited comes back, or that the server gives up.

    The first restart of a child is immediate; each further one waits twice as
    long as the one before (``first_backoff_s`` up to ``max_backoff_s``), until
    the child stays up longer than ``stable_after_s``, which resets its delay.
    Past ``policy`` (restarts of any children, handlers aside, within a window)
    the server gives up: a crash loop is a bug, not load. A handler is
    plugged-in code: it is restarted with the same backoff but never counted.
    """

    def __init__(
        self,
        policy: RestartPolicy = INTENSITY,
        clock: Callable[[], float] = time.monotonic,
        *,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        stable_after_s: float = STABLE_AFTER_S,
    ) -> None:
        self._budget = RestartBudget(policy, clock)
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._stable_after_s = stable_after_s

    @property
    def counted(self) -> int:
        """Restarts within the intensity window (handlers' are not counted)."""
        return self._budget.restarts

    def after_exit(self, child: Child, now: float) -> float | None:
        """``child`` exited at ``now``: seconds until it is created again (0: at
        once), or None to give up. Updates the child's backoff."""
        if child.actor_id.kind is not ActorKind.HANDLER and not self._budget.allow_restart():
            return None
        if child.ready_at and now - child.ready_at > self._stable_after_s:
            child.backoff_s = 0.0
        # That incarnation's life is spent: one that dies before its Ready must
        # not be credited with it again.
        child.ready_at = 0.0
        delay = child.backoff_s
        child.backoff_s = min(self._max_backoff_s, max(self._first_backoff_s, delay * 2))
        return delay


def wiring_of(children: Iterable[Child], generation: int) -> Wiring:
    """The ``Wiring`` every ready child is sent: each peer's address, None where
    that peer is not ready (down, or restarting), and the lanes of the ready ones."""
    children = list(children)

    def addresses(kind: ActorKind) -> tuple[Any, ...]:
        found = sorted((c for c in children if c.actor_id.kind is kind), key=_index)
        return tuple(c.address if c.ready else None for c in found)

    def singleton(kind: ActorKind) -> Any:
        found = [c for c in children if c.actor_id == ActorId(kind, 1)]
        return found[0].address if found and found[0].ready else None

    return Wiring(
        gateways=addresses(ActorKind.GATEWAY),
        persisters=addresses(ActorKind.PERSISTER),
        api=singleton(ActorKind.API),
        generation=generation,
        redis_bridge=singleton(ActorKind.REDIS_BRIDGE),
        lanes=tuple(c.lane for c in children if c.ready and c.lane),
        handlers=addresses(ActorKind.HANDLER),
    )


def _index(child: Child) -> int:
    return child.actor_id.index
