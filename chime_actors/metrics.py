"""Per-process metrics: counters, gauges and histograms, rendered for Prometheus.

Every Chime process owns one :class:`MetricsRegistry`. Its asyncio loop thread
updates the metrics; another thread (Thespian's) may take a :meth:`snapshot
<MetricsRegistry.snapshot>` at any time. Snapshots are frozen, picklable records,
so gateways and persisters send theirs to the API process, which renders all of
them at once with :func:`render_prometheus` (text exposition format 0.0.4), each
sample labelled with the ``process`` it came from.

Metrics are declared once, as module-level specs, and callers hold handles::

    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    metrics.messages_in.inc()
    metrics.errors.labels(code="bad_request").inc()
    metrics.persist_latency.observe(0.004)
    snapshot = registry.snapshot("gateway 1")

Label values are bound once with ``labels(...)``; the returned child can be kept
so that the hot path is a lock acquisition and a float addition.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

__all__ = [
    "ACKS",
    "ACTOR_RESTARTS",
    "CONNECTIONS",
    "ERRORS",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "PERSIST_BATCHES",
    "PERSIST_LATENCY",
    "PERSIST_LATENCY_BUCKETS",
    "PROCESS_LABEL",
    "QUEUE_DEPTH",
    "ChimeMetrics",
    "Counter",
    "CounterChild",
    "CounterSpec",
    "FamilySnapshot",
    "Gauge",
    "GaugeChild",
    "GaugeSpec",
    "Histogram",
    "HistogramChild",
    "HistogramSample",
    "HistogramSpec",
    "MetricKind",
    "MetricsRegistry",
    "MetricsSnapshot",
    "ScalarSample",
    "render_prometheus",
]

PROCESS_LABEL = "process"
"""Label added to every sample by :func:`render_prometheus`; reserved in specs."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

LabelValues = tuple[str, ...]


class MetricKind(Enum):
    """The Prometheus type of a metric family (the word on its ``# TYPE`` line)."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# --- specs ------------------------------------------------------------------------


def _validate_spec(name: str, label_names: tuple[str, ...], reserved: tuple[str, ...]) -> None:
    if not _METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name: {name!r}")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"{name}: duplicate label names {label_names}")
    for label in label_names:
        if not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"{name}: invalid label name {label!r}")
        if label in reserved:
            raise ValueError(f"{name}: label name {label!r} is reserved")


@dataclass(frozen=True, slots=True)
class _ScalarSpec:
    """What a counter and a gauge declare.

    Attributes:
        name: the Prometheus metric name.
        help: one line of documentation, rendered on the ``# HELP`` line.
        label_names: names of the labels every sample carries, in order.
    """

    name: str
    help: str
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_spec(self.name, self.label_names, (PROCESS_LABEL,))


@dataclass(frozen=True, slots=True)
class CounterSpec(_ScalarSpec):
    """Declaration of a counter: a value that only goes up (name ends in ``_total``)."""


@dataclass(frozen=True, slots=True)
class GaugeSpec(_ScalarSpec):
    """Declaration of a gauge: a value that goes up and down."""


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """Declaration of a histogram with fixed bucket upper bounds.

    Attributes:
        name: the Prometheus metric name (the ``_bucket``/``_sum``/``_count``
            series are derived from it).
        help: one line of documentation, rendered on the ``# HELP`` line.
        buckets: finite upper bounds, strictly increasing; ``+Inf`` is implicit.
        label_names: names of the labels every sample carries, in order.
    """

    name: str
    help: str
    buckets: tuple[float, ...]
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # "le" is how buckets are told apart in the exposition format.
        _validate_spec(self.name, self.label_names, (PROCESS_LABEL, "le"))
        if not self.buckets:
            raise ValueError(f"{self.name}: a histogram needs at least one bucket")
        if any(not math.isfinite(b) for b in self.buckets):
            raise ValueError(f"{self.name}: bucket bounds must be finite (+Inf is implicit)")
        if any(a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
            raise ValueError(f"{self.name}: buckets must be strictly increasing")


MetricSpec = CounterSpec | GaugeSpec | HistogramSpec

# --- the metrics Chime exposes ------------------------------------------------------

PERSIST_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Upper bounds, in seconds, of the persist latency histogram."""

CONNECTIONS = GaugeSpec("chime_connections", "Open chat WebSocket connections.")
MESSAGES_IN = CounterSpec("chime_messages_in_total", "Chat messages received from clients.")
MESSAGES_OUT = CounterSpec(
    "chime_messages_out_total", "Message frames delivered to subscribed connections."
)
ACKS = CounterSpec("chime_acks_total", "Acks sent for durably stored messages.")
ERRORS = CounterSpec("chime_errors_total", "Error frames sent to clients, by code.", ("code",))
ACTOR_RESTARTS = CounterSpec(
    "chime_actor_restarts_total", "Process actors restarted after a failure, by kind.", ("kind",)
)
QUEUE_DEPTH = GaugeSpec("chime_queue_depth", "Items waiting in an internal queue.", ("queue",))
PERSIST_LATENCY = HistogramSpec(
    "chime_persist_latency_seconds",
    "Time from a batch reaching the persister to it being durably stored.",
    PERSIST_LATENCY_BUCKETS,
)
PERSIST_BATCHES = CounterSpec("chime_persist_batches_total", "Batches written to storage.")
LANE_BATCHES = CounterSpec(
    "chime_lane_batches_total",
    "Frames (one per peer per loop turn) carried by this process's lanes, by direction.",
    ("direction",),
)
LANE_BYTES = CounterSpec(
    "chime_lane_bytes_total", "Bytes carried by this process's lanes, by direction.", ("direction",)
)
LANE_DROPPED = CounterSpec(
    "chime_lane_dropped_total", "Messages dropped because their peer's lane was gone."
)
CONNECTS_REFUSED = CounterSpec(
    "chime_connects_refused_total",
    "WebSocket upgrades refused before the handshake, by HTTP status.",
    ("status",),
)
GAP_FILLS = CounterSpec(
    "chime_gap_fills_total",
    "Messages a gateway read from storage because they did not arrive live (lost or late).",
)


# --- live metrics -------------------------------------------------------------------


class CounterChild:
    """One labelled series of a counter."""

    __slots__ = ("_lock", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the counter.

        Raises:
            ValueError: if ``amount`` is negative: counters never go down.
        """
        if amount < 0:
            raise ValueError(f"a counter cannot decrease (amount={amount})")
        # The lock makes ``+=`` atomic when Thespian's thread and the loop thread both
        # count; uncontended it costs well under a microsecond.
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        """The current value."""
        return self._value


class GaugeChild:
    """One labelled series of a gauge."""

    __slots__ = ("_lock", "_value")

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._value = 0.0

    def set(self, value: float) -> None:
        """Set the gauge to ``value``."""
        self._value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the gauge."""
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract ``amount`` from the gauge."""
        with self._lock:
            self._value -= amount

    @property
    def value(self) -> float:
        """The current value."""
        return self._value


class HistogramChild:
    """One labelled series of a histogram."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        self._lock = lock
        self._bounds = bounds
        # One slot per finite bound plus one for +Inf; counts are per bucket, not
        # cumulative, so an observation touches one slot. Snapshots accumulate.
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation (for latencies: seconds).

        Raises:
            ValueError: if ``value`` is NaN, which belongs to no bucket.
        """
        if math.isnan(value):
            raise ValueError("cannot observe NaN")
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        index = bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def _sample(self, label_values: LabelValues) -> HistogramSample:
        cumulative: list[int] = []
        running = 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return HistogramSample(label_values, tuple(cumulative[:-1]), running, self._sum)


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[ChildT]):
    """The series of one metric, keyed by label values."""

    __slots__ = ("_children", "_lock", "label_names", "name")

    def __init__(self, name: str, label_names: tuple[str, ...], lock: threading.Lock) -> None:
        self.name = name
        self.label_names = label_names
        self._lock = lock
        self._children: dict[LabelValues, ChildT] = {}
        if not label_names:
            # An unlabelled metric is exposed (as 0) from the start, so dashboards
            # see it before the first event.
            self._children[()] = self._new_child()

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def labels(self, *values: str, **named: str) -> ChildT:
        """Return the series for these label values, creating it on first use.

        Pass values positionally (in ``label_names`` order) or by name, not both.
        Keep the returned child when the same series is updated often.

        Raises:
            ValueError: if the values do not match the metric's label names.
        """
        if named:
            if values or set(named) != set(self.label_names):
                raise ValueError(
                    f"{self.name}: expected labels {self.label_names}, got {sorted(named)}"
                )
            values = tuple(named[label] for label in self.label_names)
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
        child = self._children.get(values)
        if child is None:
            key = tuple(str(value) for value in values)
            # Creation takes the lock so a concurrent snapshot never iterates a
            # dict that is changing size.
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._new_child()
        return child

    def _default(self) -> ChildT:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {self.label_names}: use .labels(...)")
        return self._children[()]

    def _items(self) -> list[tuple[LabelValues, ChildT]]:
        # Called with the registry lock held.
        return sorted(self._children.items())


class Counter(_Family[CounterChild]):
    """A counter family; use :meth:`inc` when unlabelled, else ``labels(...).inc()``."""

    __slots__ = ()

    def _new_child(self) -> CounterChild:
        return CounterChild(self._lock)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the unlabelled counter."""
        self._default().inc(amount)


class Gauge(_Family[GaugeChild]):
    """A gauge family; use :meth:`set`/:meth:`inc`/:meth:`dec` when unlabelled."""

    __slots__ = ()

    def _new_child(self) -> GaugeChild:
        return GaugeChild(self._lock)

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self._default().set(value)

    def inc(self, amount: float = 1.0) -> None:
        """Raise the unlabelled gauge."""
        self._default().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        """Lower the unlabelled gauge."""
        self._default().dec(amount)


class Histogram(_Family[HistogramChild]):
    """A histogram family; use :meth:`observe` when unlabelled."""

    __slots__ = ("buckets",)

    def __init__(
        self,
        name: str,
        label_names: tuple[str, ...],
        lock: threading.Lock,
        buckets: tuple[float, ...],
    ) -> None:
        self.buckets = buckets
        super().__init__(name, label_names, lock)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._lock, self.buckets)

    def observe(self, value: float) -> None:
        """Record one observation in the unlabelled histogram."""
        self._default().observe(value)


# --- snapshots ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScalarSample:
    """The value of one counter or gauge series."""

    label_values: LabelValues
    value: float


@dataclass(frozen=True, slots=True)
class HistogramSample:
    """One histogram series.

    Attributes:
        label_values: values of the family's labels, in ``label_names`` order.
        bucket_counts: cumulative counts, one per finite bucket bound.
        count: number of observations (the ``+Inf`` bucket).
        sum: sum of the observed values.
    """

    label_values: LabelValues
    bucket_counts: tuple[int, ...]
    count: int
    sum: float


@dataclass(frozen=True, slots=True)
class FamilySnapshot:
    """All series of one metric at one moment."""

    name: str
    kind: MetricKind
    help: str
    label_names: tuple[str, ...]
    samples: tuple[ScalarSample | HistogramSample, ...]
    buckets: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every metric of one process at one moment; picklable, sent between processes.

    Attributes:
        process: the process' display name (``"gateway 1"``), rendered as the
            ``process`` label.
        families: the metric families in registration order.
    """

    process: str
    families: tuple[FamilySnapshot, ...] = field(default_factory=tuple)

    def value(self, name: str, *label_values: str) -> float | None:
        """The value of a counter/gauge series, or None; handy in tests and logs."""
        for family in self.families:
            if family.name == name:
                for sample in family.samples:
                    if isinstance(sample, ScalarSample) and sample.label_values == label_values:
                        return sample.value
        return None


# --- the registry -------------------------------------------------------------------


class Tally:
    """An unlabelled counter for a hot path on one thread: no lock per count.

    ``add`` is a plain integer addition, for counts made thousands of times a
    second on the event loop (frames written); the registry folds the tally into
    its counter before every snapshot.
    """

    __slots__ = ("_counter", "_folded", "count")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._folded = 0
        self.count = 0

    def add(self, amount: int) -> None:
        """Count ``amount`` more (call it from one thread only)."""
        self.count += amount

    def fold(self) -> None:
        """Add what was counted since the last fold to the counter."""
        count = self.count
        if count != self._folded:
            self._counter.inc(count - self._folded)
            self._folded = count


class MetricsRegistry:
    """The metrics of one process.

    Registering the same spec twice returns the same family, so modules can ask for
    the metrics they use without coordinating; a different spec under an existing
    name is a bug and raises ``ValueError``.
    """

    def __init__(self) -> None:
        # One lock for the whole registry: updates come from at most two threads,
        # so contention is negligible and snapshots are consistent across metrics.
        self._lock = threading.Lock()
        self._families: dict[str, tuple[MetricSpec, Counter | Gauge | Histogram]] = {}
        self._tallies: dict[str, Tally] = {}

    def counter(self, spec: CounterSpec) -> Counter:
        """Register (or look up) the counter declared by ``spec``."""
        family = self._register(spec)
        assert isinstance(family, Counter)
        return family

    def tally(self, spec: CounterSpec) -> Tally:
        """The lock-free tally of the unlabelled counter ``spec`` (see ``Tally``)."""
        tally = self._tallies.get(spec.name)
        if tally is None:
            tally = self._tallies[spec.name] = Tally(self.counter(spec))
        return tally

    def gauge(self, spec: GaugeSpec) -> Gauge:
        """Register (or look up) the gauge declared by ``spec``."""
        family = self._register(spec)
        assert isinstance(family, Gauge)
        return family

    def histogram(self, spec: HistogramSpec) -> Histogram:
        """Register (or look up) the histogram declared by ``spec``."""
        family = self._register(spec)
        assert isinstance(family, Histogram)
        return family

    def _register(self, spec: MetricSpec) -> Counter | Gauge | Histogram:
        with self._lock:
            known = self._families.get(spec.name)
            if known is not None:
                if known[0] != spec:
                    raise ValueError(f"metric {spec.name} already registered as {known[0]}")
                return known[1]
            family: Counter | Gauge | Histogram
            if isinstance(spec, CounterSpec):
                family = Counter(spec.name, spec.label_names, self._lock)
            elif isinstance(spec, GaugeSpec):
                family = Gauge(spec.name, spec.label_names, self._lock)
            else:
                family = Histogram(spec.name, spec.label_names, self._lock, spec.buckets)
            self._families[spec.name] = (spec, family)
            return family

    def snapshot(self, process: str) -> MetricsSnapshot:
        """Copy every metric's current values into a frozen, picklable snapshot.

        Args:
            process: the name rendered as the ``process`` label (``"gateway 1"``).
        """
        for tally in self._tallies.values():
            tally.fold()
        families: list[FamilySnapshot] = []
        with self._lock:
            for spec, family in self._families.values():
                samples: tuple[ScalarSample | HistogramSample, ...]
                if isinstance(family, Histogram):
                    assert isinstance(spec, HistogramSpec)
                    samples = tuple(child._sample(values) for values, child in family._items())
                    families.append(
                        FamilySnapshot(
                            spec.name,
                            MetricKind.HISTOGRAM,
                            spec.help,
                            spec.label_names,
                            samples,
                            spec.buckets,
                        )
                    )
                else:
                    kind = MetricKind.COUNTER if isinstance(family, Counter) else MetricKind.GAUGE
                    samples = tuple(
                        ScalarSample(values, child.value) for values, child in family._items()
                    )
                    families.append(
                        FamilySnapshot(spec.name, kind, spec.help, spec.label_names, samples)
                    )
        return MetricsSnapshot(process, tuple(families))


@dataclass(frozen=True, slots=True)
class ChimeMetrics:
    """Handles on every metric Chime exposes, registered in one call.

    Attributes mirror the module constants: ``connections`` is ``CONNECTIONS``,
    ``persist_latency`` is ``PERSIST_LATENCY`` and so on.
    """

    connections: Gauge
    messages_in: Counter
    messages_out: Tally
    acks: Counter
    errors: Counter
    actor_restarts: Counter
    queue_depth: Gauge
    persist_latency: Histogram
    persist_batches: Counter
    gap_fills: Counter
    connects_refused: Counter
    lane_batches: Counter
    lane_bytes: Counter
    lane_dropped: Counter

    @classmethod
    def register(cls, registry: MetricsRegistry) -> ChimeMetrics:
        """Register Chime's metrics in ``registry`` and return handles on them."""
        return cls(
            connections=registry.gauge(CONNECTIONS),
            messages_in=registry.counter(MESSAGES_IN),
            messages_out=registry.tally(MESSAGES_OUT),
            acks=registry.counter(ACKS),
            errors=registry.counter(ERRORS),
            actor_restarts=registry.counter(ACTOR_RESTARTS),
            queue_depth=registry.gauge(QUEUE_DEPTH),
            persist_latency=registry.histogram(PERSIST_LATENCY),
            persist_batches=registry.counter(PERSIST_BATCHES),
            gap_fills=registry.counter(GAP_FILLS),
            connects_refused=registry.counter(CONNECTS_REFUSED),
            lane_batches=registry.counter(LANE_BATCHES),
            lane_bytes=registry.counter(LANE_BYTES),
            lane_dropped=registry.counter(LANE_DROPPED),
        )


# --- exposition -----------------------------------------------------------------------


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # Integral values print without ".0": counts read naturally and stay exact.
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _format_bound(bound: float) -> str:
    # repr keeps "0.0025" and "1.0" stable across processes, so equal bounds from
    # different snapshots render as the same series.
    return repr(float(bound))


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs) + "}"


def render_prometheus(snapshots: Iterable[MetricsSnapshot]) -> str:
    """Render snapshots of several processes as one Prometheus text exposition (0.0.4).

    Families with the same name are merged: ``# HELP`` and ``# TYPE`` appear once,
    followed by every process' samples, each labelled ``process="<name>"``.

    Args:
        snapshots: one snapshot per process; process names must be distinct.

    Returns:
        The exposition text, ending in a newline (empty string for no metrics).

    Raises:
        ValueError: if two snapshots share a process name, or declare the same
            metric name with a different type, labels or buckets.
    """
    seen_processes: set[str] = set()
    merged: dict[str, tuple[FamilySnapshot, list[tuple[str, FamilySnapshot]]]] = {}
    for snapshot in snapshots:
        if snapshot.process in seen_processes:
            raise ValueError(f"two snapshots for process {snapshot.process!r}")
        seen_processes.add(snapshot.process)
        for family in snapshot.families:
            entry = merged.get(family.name)
            if entry is None:
                merged[family.name] = (family, [(snapshot.process, family)])
                continue
            first = entry[0]
            if (first.kind, first.label_names, first.buckets) != (
                family.kind,
                family.label_names,
                family.buckets,
            ):
                raise ValueError(f"metric {family.name} differs between processes")
            entry[1].append((snapshot.process, family))

    lines: list[str] = []
    for name, (first, parts) in merged.items():
        lines.append(f"# HELP {name} {_escape_help(first.help)}")
        lines.append(f"# TYPE {name} {first.kind.value}")
        for process, family in parts:
            for sample in family.samples:
                pairs = [
                    (PROCESS_LABEL, process),
                    *zip(family.label_names, sample.label_values, strict=True),
                ]
                if isinstance(sample, ScalarSample):
                    lines.append(f"{name}{_label_text(pairs)} {_format_value(sample.value)}")
                    continue
                for bound, count in zip(family.buckets, sample.bucket_counts, strict=True):
                    labels = _label_text([*pairs, ("le", _format_bound(bound))])
                    lines.append(f"{name}_bucket{labels} {count}")
                lines.append(f"{name}_bucket{_label_text([*pairs, ('le', '+Inf')])} {sample.count}")
                lines.append(f"{name}_sum{_label_text(pairs)} {_format_value(sample.sum)}")
                lines.append(f"{name}_count{_label_text(pairs)} {sample.count}")
    return "\n".join(lines) + "\n" if lines else ""
