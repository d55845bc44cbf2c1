"""Control messages between process actors and the ``chime serve`` main process.

All frozen, slotted and picklable: Thespian pickles every message. The two that
travel on lanes (``ActorId`` inside ``MetricsReport``) are ``FrozenRecord``s. Hot-path
records (``PersistBatch``, ``Deliveries`` ...) live in ``chime_actors.records``.
Actor addresses are Thespian ``ActorAddress`` objects, typed ``Any`` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from chime_actors.config import Config
from chime_actors.metrics import MetricsSnapshot
from chime_actors.records import FrozenRecord


class ActorKind(Enum):
    """The kinds of process actor the supervisor runs."""

    GATEWAY = "gateway"
    PERSISTER = "persister"
    API = "api"
    REDIS_BRIDGE = "redis-bridge"
    HANDLER = "handler"  # one per after_store handler (docs/handlers.md)


# Kinds with exactly one actor per server are named without an index (``chime: api``).
SINGLETON_KINDS = frozenset({ActorKind.API, ActorKind.REDIS_BRIDGE})


class ActorId(FrozenRecord, frozen=True):
    """Which child: kind plus 1-based index (``gateway 2``; ``api`` for singletons)."""

    kind: ActorKind
    index: int

    def __str__(self) -> str:
        if self.kind in SINGLETON_KINDS:
            return self.kind.value
        return f"{self.kind.value} {self.index}"


# --- main process <-> supervisor -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartServer:
    """Main process -> supervisor: start every child; answered with ``Started``.

    ``run_dir`` is the private (0700) directory of this run's lane sockets.
    """

    config: Config
    chat_port: int
    run_dir: str = ""


@dataclass(frozen=True, slots=True)
class Started:
    """Supervisor -> main: every child is up and the chat port accepts."""

    chat_port: int
    api_port: int


@dataclass(frozen=True, slots=True)
class StartFailed:
    """Supervisor -> main: a child could not start; ``reason`` says which and why."""

    reason: str


@dataclass(frozen=True, slots=True)
class StatusQuery:
    """Main -> supervisor: are you healthy? Answered with ``Status``."""


@dataclass(frozen=True, slots=True)
class Status:
    """Supervisor -> main. ``failed`` means the restart intensity was exceeded."""

    failed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ShutdownRequest:
    """Main -> supervisor: drain and stop everything; answered with ``Stopped``."""


@dataclass(frozen=True, slots=True)
class Stopped:
    """Supervisor -> main: every child has drained and exited."""


# --- supervisor <-> children ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configure:
    """Supervisor -> a new child: who you are and how to run.

    ``api_port`` is the port the API actor must bind (0 on first start; the port it
    got the first time on a restart, so clients keep their URL).
    """

    actor_id: ActorId
    config: Config
    chat_port: int = 0
    api_port: int = 0
    run_dir: str = ""


@dataclass(frozen=True, slots=True)
class Ready:
    """Child -> supervisor: configured and serving. ``port`` for the API actor;
    ``lane`` is the path of the socket its lane server listens on ("" for none),
    ``lane_key`` the child's own ``lanes.address_key`` of its address."""

    actor_id: ActorId
    port: int = 0
    lane: str = ""
    lane_key: str = ""


@dataclass(frozen=True, slots=True)
class Wiring:
    """Supervisor -> every child: the current addresses of all peers.

    Sent after start and again after every restart, because a restarted actor has a
    new address and messages to the old one vanish silently.
    """

    gateways: tuple[Any, ...]
    persisters: tuple[Any, ...]
    api: Any
    generation: int
    redis_bridge: Any = None
    # (lanes.address_key, lane socket path) of every ready child that has a lane.
    lanes: tuple[tuple[str, str], ...] = ()
    # The HandlerActors (after_store handlers), in configuration order: persisters
    # deliver to them as to gateways.
    handlers: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Drain:
    """Supervisor -> gateway: stop accepting, settle owed acks, close clients 1001."""


@dataclass(frozen=True, slots=True)
class Drained:
    """Gateway -> supervisor: done draining."""

    actor_id: ActorId


class MetricsReport(FrozenRecord, frozen=True):
    """Every child -> API actor, once a second: its metrics, which also says 'alive'."""

    actor_id: ActorId
    snapshot: MetricsSnapshot

    def __repr__(self) -> str:
        return f"MetricsReport({self.actor_id})"  # see Bundle.__repr__


@dataclass(frozen=True, slots=True)
class RestartNotice:
    """Supervisor -> API actor: a child was restarted (counted in metrics)."""

    actor_id: ActorId
    restart_ms: float


@dataclass(frozen=True, slots=True)
class Bundle:
    """Several messages for one actor, carried by one Thespian send.

    Thespian's TCP transport sends one message at a time per peer and waits for
    its acknowledgement, and its per-send bookkeeping costs more CPU than the
    pickling: a persister that answered each write with a result and a batch of
    deliveries per gateway spent most of its time in the transport. Whatever a
    loop queued for one peer between two drains of the bridge travels as one
    ``Bundle``, which the receiver unpacks in order (``bundle_by_target``).
    """

    messages: tuple[Any, ...]

    def __repr__(self) -> str:
        # Thespian formats every message for a debug line; see PersistBatch.__repr__.
        return f"Bundle({len(self.messages)} messages)"


def bundle_by_target(sends: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Group ``(address, message)`` sends into one send per address.

    The order of the messages for each address is kept; an address with a single
    message gets it as it is, not wrapped.
    """
    # Thespian addresses compare equal but are not hashable: a list, scanned
    # linearly (a process has a handful of peers).
    grouped: list[tuple[Any, list[Any]]] = []
    for address, message in sends:
        for known, messages in grouped:
            if known == address:
                messages.append(message)
                break
        else:
            grouped.append((address, [message]))
    return [
        (address, messages[0] if len(messages) == 1 else Bundle(tuple(messages)))
        for address, messages in grouped
    ]
