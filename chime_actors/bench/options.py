"""The options of one ``chime bench`` run and the messages of its processes.

Everything here is a frozen, picklable record: the parent sends a
:class:`WorkerPlan` and commands to each load process over a pipe and gets
reports back.
"""

from __future__ import annotations

import argparse
import enum
import math
from array import array
from dataclasses import dataclass, field
from typing import TypeVar

from chime_actors.bench.stats import Completeness
from chime_actors.errors import ChimeError

T = TypeVar("T")


class Scenario(enum.StrEnum):
    """What a run does once its connections are open."""

    IDLE = "idle"  # hold the connections; measure memory per connection
    FANOUT = "fanout"  # few senders, big channels
    CHATTY = "chatty"  # many small channels, many senders
    HISTORY = "history"  # fill a channel, then time history pages
    PRESENCE = "presence"  # one big room: messages beside presence and typing


@dataclass(frozen=True, slots=True)
class ScenarioDefaults:
    """Sizes used for options not given on the command line."""

    connections: int
    channels: int
    senders: int
    rate: float
    duration: float


DEFAULTS: dict[Scenario, ScenarioDefaults] = {
    Scenario.IDLE: ScenarioDefaults(1000, 10, 0, 0.0, 10.0),
    Scenario.FANOUT: ScenarioDefaults(1000, 4, 4, 20.0, 30.0),
    Scenario.CHATTY: ScenarioDefaults(1000, 200, 200, 200.0, 30.0),
    Scenario.HISTORY: ScenarioDefaults(4, 1, 4, 1000.0, 0.0),
    Scenario.PRESENCE: ScenarioDefaults(500, 1, 4, 20.0, 30.0),
}

PRESENCE_TYPISTS = 50  # the presence scenario's default --typists
TYPING_INTERVAL_S = 1.0  # how often a typist sends ``typing`` (the server passes 1 per 3 s)

CONNECTIONS_PER_PROCESS = 5000  # default split; the fd limit is per process


class BenchUsageError(ChimeError):
    """Options that do not make a run (exit 2 like a bad config)."""


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """A validated run."""

    scenario: Scenario
    url: str | None
    start: bool
    connections: int
    channels: int
    senders: int
    rate: float
    duration: float
    processes: int
    json_path: str | None
    connect_concurrency: int = 100
    content_bytes: int = 32
    history_messages: int = 10_000
    history_pages: int = 1000
    history_concurrency: int = 4
    history_limit: int = 50
    server_workers: int | None = None
    drain_timeout: float = 15.0
    run_id: str = "bench"
    server_config: str | None = None  # --start: YAML merged over the bench's config
    services: str | None = None  # --start: bin/services' services.json (Redis + Cassandra)
    typists: int = 0  # connections (after the senders) sending ``typing`` while messages flow
    typing_interval: float = TYPING_INTERVAL_S

    @property
    def keyspace(self) -> str:
        """The fresh Cassandra keyspace of a ``--services`` run (``bench_<random>``)."""
        return self.run_id.replace("-", "_")

    @property
    def total_messages(self) -> int:
        """Messages the senders send in the whole run."""
        if self.scenario is Scenario.IDLE:
            return 0
        if self.scenario is Scenario.HISTORY:
            return self.history_messages
        return max(0, math.ceil(self.duration * self.rate - 1e-9))

    def channel_id(self, index: int) -> str:
        """The id of channel ``index`` (fresh per run: ``run_id`` is random)."""
        return f"{self.run_id}-{index}"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``chime bench`` options (sizes left out take the scenario's defaults)."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="chat WebSocket of a running server (ws://host:port/)")
    target.add_argument(
        "--start",
        action="store_true",
        help="start a server on free ports with a temporary data directory; stop it after",
    )
    parser.add_argument("--scenario", choices=[s.value for s in Scenario], default="chatty")
    parser.add_argument("--connections", type=int, help="connections to open (N)")
    parser.add_argument("--channels", type=int, help="channels (M); connection i joins i %% M")
    parser.add_argument("--senders", type=int, help="sending connections (S)")
    parser.add_argument("--rate", type=float, help="total messages per second of all senders")
    parser.add_argument("--duration", type=float, help="seconds of sending (idle: of holding)")
    parser.add_argument("--processes", type=int, help="load processes (default: N / 5000)")
    parser.add_argument("--json", dest="json_path", help="also write the results here as JSON")
    parser.add_argument("--connect-concurrency", type=int, default=100, help="handshakes at once")
    parser.add_argument("--content-bytes", type=int, default=32, help="message content size")
    parser.add_argument(
        "--typists",
        type=int,
        help=f"connections sending typing during the send phase (presence: {PRESENCE_TYPISTS})",
    )
    parser.add_argument(
        "--typing-interval",
        type=float,
        default=TYPING_INTERVAL_S,
        help="seconds between one typist's typing frames",
    )
    parser.add_argument("--history-messages", type=int, default=10_000, help="history: fill K")
    parser.add_argument("--history-pages", type=int, default=1000, help="history: pages to time")
    parser.add_argument("--history-concurrency", type=int, default=4, help="history: in flight")
    parser.add_argument(
        "--server-workers", type=int, help="--start: gateway processes (default: cores)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=15.0, help="seconds to wait for late deliveries"
    )
    parser.add_argument(
        "--services",
        metavar="PATH",
        help="--start: bin/services' services.json: Redis bus, Cassandra store "
        "(fresh keyspace bench_<random>, consistency ONE)",
    )
    parser.add_argument(
        "--server-config",
        metavar="PATH",
        help="--start: YAML merged over the bench's server config (and --services); "
        "the bench keeps its ports and data directory",
    )


def options_from_args(args: argparse.Namespace, run_id: str) -> BenchOptions:
    """Fill the scenario's defaults in and validate; raises BenchUsageError."""
    scenario = Scenario(args.scenario)
    defaults = DEFAULTS[scenario]
    connections = _pick(args.connections, defaults.connections)
    senders = _pick(args.senders, defaults.senders)
    if scenario is Scenario.IDLE:
        senders = 0
    processes = _pick(args.processes, max(1, math.ceil(connections / CONNECTIONS_PER_PROCESS)))
    opts = BenchOptions(
        scenario=scenario,
        url=args.url,
        start=bool(args.start),
        connections=connections,
        channels=_pick(args.channels, defaults.channels),
        senders=senders,
        rate=_pick(args.rate, defaults.rate),
        duration=_pick(args.duration, defaults.duration),
        processes=processes,
        json_path=args.json_path,
        connect_concurrency=args.connect_concurrency,
        content_bytes=args.content_bytes,
        history_messages=args.history_messages,
        history_pages=args.history_pages,
        history_concurrency=args.history_concurrency,
        server_workers=args.server_workers,
        drain_timeout=args.drain_timeout,
        run_id=run_id,
        server_config=args.server_config,
        services=args.services,
        typists=_pick(
            getattr(args, "typists", None),
            PRESENCE_TYPISTS if scenario is Scenario.PRESENCE else 0,
        ),
        typing_interval=getattr(args, "typing_interval", TYPING_INTERVAL_S),
    )
    validate(opts)
    return opts


def _pick(given: T | None, default: T) -> T:
    return default if given is None else given


def validate(opts: BenchOptions) -> None:
    """Raise BenchUsageError naming the first option that does not make sense."""
    if not opts.start and not opts.url:
        raise BenchUsageError("give --url ws://host:port/ or --start")
    if not opts.start and (opts.services or opts.server_config):
        raise BenchUsageError("--services and --server-config need --start")
    if opts.connections < 1:
        raise BenchUsageError("--connections must be at least 1")
    if not 1 <= opts.channels <= opts.connections:
        raise BenchUsageError("--channels must be between 1 and --connections")
    if opts.processes < 1 or opts.processes > opts.connections:
        raise BenchUsageError("--processes must be between 1 and --connections")
    if opts.scenario is not Scenario.IDLE:
        if not 1 <= opts.senders <= opts.connections:
            raise BenchUsageError("--senders must be between 1 and --connections")
        if opts.rate <= 0:
            raise BenchUsageError("--rate must be positive")
    if not 0 <= opts.typists <= opts.connections - opts.senders:
        raise BenchUsageError("--typists must be between 0 and --connections minus --senders")
    if opts.typists and opts.scenario is not Scenario.PRESENCE:
        raise BenchUsageError("--typists needs --scenario presence")
    if opts.typing_interval <= 0:
        raise BenchUsageError("--typing-interval must be positive")
    if (
        opts.scenario in (Scenario.FANOUT, Scenario.CHATTY, Scenario.PRESENCE)
        and opts.duration <= 0
    ):
        raise BenchUsageError("--duration must be positive")
    if opts.scenario is Scenario.HISTORY and (
        opts.history_messages < 1 or opts.history_pages < 1 or opts.history_concurrency < 1
    ):
        raise BenchUsageError("--history-messages/-pages/-concurrency must be positive")
    if opts.connect_concurrency < 1:
        raise BenchUsageError("--connect-concurrency must be positive")
    if not 1 <= opts.content_bytes <= 4000:
        raise BenchUsageError("--content-bytes must be between 1 and 4000")


# --- parent <-> load process ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one load process does: its connections and its senders."""

    index: int
    url: str
    connections: tuple[tuple[int, str], ...]  # (global connection index, channel id)
    senders: tuple[tuple[int, int], ...]  # (sender index, global connection index)
    total_senders: int
    rate: float
    connect_concurrency: int
    content_bytes: int
    typists: tuple[int, ...] = ()  # global connection indices that send ``typing``
    typing_interval: float = TYPING_INTERVAL_S


@dataclass(frozen=True, slots=True)
class StartSending:
    """Send ``total`` messages (over every sender of the run) from ``start_ns``."""

    start_ns: int
    total: int


@dataclass(frozen=True, slots=True)
class ExpectDeliveries:
    """Every acked message of the run by channel: wait for them, then account."""

    acked: dict[str, list[tuple[str, int]]]
    drain_timeout_s: float


@dataclass(frozen=True, slots=True)
class RunHistory:
    """Time ``pages`` history requests with ``before`` cursors from ``cursors``."""

    channel_id: str
    ordered_ids: tuple[str, ...]  # every message of the channel, oldest first
    pages: int
    concurrency: int
    limit: int
    seed: int


@dataclass(frozen=True, slots=True)
class Finish:
    """Close every connection and exit."""


@dataclass(frozen=True, slots=True)
class ConnectReport:
    """How the connect phase went in one load process."""

    connected: int
    failed: int
    errors: dict[str, int]
    started_ns: int
    finished_ns: int


@dataclass(frozen=True, slots=True)
class SendReport:
    """The senders of one load process after the send phase."""

    sent: int
    acked: dict[str, list[tuple[str, int]]]
    ack_us: array[int]
    lag_us: array[int]
    errors: dict[str, int]
    unacked: int
    first_send_ns: int | None
    last_send_ns: int | None
    typing_sent: int = 0


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The receivers of one load process at the end."""

    completeness: Completeness
    delivery_us: array[int]
    first_recv_ns: int | None
    last_recv_ns: int | None
    alive: int
    closed: dict[str, int]  # close code -> connections the server closed
    errors: dict[str, int]
    drain_s: float
    typing_received: int = 0
    presence_received: int = 0


@dataclass(frozen=True, slots=True)
class HistoryReport:
    """History pages timed in one load process."""

    latency_us: array[int]
    pages: int
    bad_pages: int
    errors: dict[str, int]
    elapsed_s: float
    examples: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """A load process failed; ``reason`` holds its traceback."""

    reason: str
