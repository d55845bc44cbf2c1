"""Per-process metrics: declared once, counted with prometheus-client, reported as snapshots.

Every Chime process owns one :class:`MetricsRegistry`. Its live metrics are
prometheus-client's own ``Counter``, ``Gauge`` and ``Histogram`` (thread-safe,
label handling included), registered in a private ``CollectorRegistry``. The
asyncio loop thread updates them; another thread (Thespian's) may take a
:meth:`snapshot <MetricsRegistry.snapshot>` at any time::

    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    metrics.messages_in.inc()
    metrics.errors.labels(code="bad_request").inc()
    metrics.persist_latency.observe(0.004)
    snapshot = registry.snapshot("gateway 1")

Label values are bound once with ``labels(...)``; the returned child can be kept
so that the hot path skips the label lookup.

What is kept here, and why:

- **Specs** (``CounterSpec`` ...): the names, help texts, labels and buckets of
  what Chime measures, validated at import. They add what prometheus-client
  leaves open: names and labels legal in text format 0.0.4 (prometheus-client
  accepts any UTF-8 name), no duplicate labels, the ``process`` label reserved.
- **Snapshots** (``MetricsSnapshot``): gateways, persisters and the Redis bridge
  are separate processes. prometheus-client's own answer to that
  (``PROMETHEUS_MULTIPROC_DIR``: an mmap file per process, merged at scrape)
  sums counters across processes, so the ``process`` label is lost, and needs a
  shared directory cleaned of dead processes' files. Instead each process sends
  the API process a frozen, picklable snapshot once a second (``MetricsReport``):
  plain tuples, about half the pickled size of prometheus-client's own
  ``Metric``/``Sample`` objects (a label dict per sample, ``_created`` series),
  and independent of that library's internal classes. The API renders the
  latest snapshot of each process with prometheus-client
  (:mod:`chime_actors.api.exposition`).
- **Tally**: a lock-free count for the hottest path (frames written), folded
  into its prometheus-client counter before every snapshot.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from chime_actors.records import FrozenRecord

__all__ = [
    "ACKS",
    "ACTOR_RESTARTS",
    "CONNECTIONS",
    "CONNECTS_REFUSED",
    "DELIVERY_STEP",
    "ERRORS",
    "GAP_FILLS",
    "LOOP_HOLD_BUCKETS",
    "LOOP_LAG",
    "MESSAGES_IN",
    "MESSAGES_OUT",
    "PERSIST_BATCHES",
    "PERSIST_LATENCY",
    "PERSIST_LATENCY_BUCKETS",
    "PROCESS_LABEL",
    "QUEUE_DEPTH",
    "ChimeMetrics",
    "CounterSpec",
    "FamilySnapshot",
    "GaugeSpec",
    "HistogramSample",
    "HistogramSpec",
    "MetricKind",
    "MetricsRegistry",
    "MetricsSnapshot",
    "ScalarSample",
    "Tally",
]

PROCESS_LABEL = "process"
"""Label the API adds to every sample of a snapshot; reserved in specs."""

# Text format 0.0.4 names; prometheus-client would accept any UTF-8 here.
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
class CounterSpec:
    """Declaration of a counter: a value that only goes up.

    Attributes:
        name: the exposed sample name, ending in ``_total``.
        help: one line of documentation, rendered on the ``# HELP`` line.
        label_names: names of the labels every sample carries, in order.
    """

    name: str
    help: str
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_spec(self.name, self.label_names, (PROCESS_LABEL,))
        # prometheus-client names the family without "_total" and adds it to the
        # sample; requiring it here keeps the spec name the exposed name.
        if not self.name.endswith("_total"):
            raise ValueError(f"{self.name}: a counter's name ends in _total")


@dataclass(frozen=True, slots=True)
class GaugeSpec:
    """Declaration of a gauge: a value that goes up and down.

    Attributes:
        name: the exposed sample name.
        help: one line of documentation, rendered on the ``# HELP`` line.
        label_names: names of the labels every sample carries, in order.
    """

    name: str
    help: str
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_spec(self.name, self.label_names, (PROCESS_LABEL,))


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """Declaration of a histogram with fixed bucket upper bounds.

    Attributes:
        name: the Prometheus metric name (the ``_bucket``/``_sum``/``_count``
            series are derived from it).
        help: one line of documentation, rendered on the ``# HELP`` line.
        buckets: finite upper bounds, >= 0 and strictly increasing; ``+Inf`` is
            implicit.
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
        # prometheus-client drops _sum and _count when a bound is negative.
        if self.buckets[0] < 0:
            raise ValueError(f"{self.name}: bucket bounds must not be negative")


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

LOOP_HOLD_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
)
"""Upper bounds, in seconds, of how long something held a gateway's event loop."""

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
DELIVERY_STEP = HistogramSpec(
    "chime_delivery_step_seconds",
    "How long one step of a gateway's delivery held its event loop, by step "
    "(fanout: a channel offering messages to its members; flush: writing every waiting outbox).",
    LOOP_HOLD_BUCKETS,
    ("step",),
)
LOOP_LAG = HistogramSpec(
    "chime_loop_lag_seconds",
    "How late a gateway's event loop ran a timer sampled every 100 ms (what held the loop).",
    LOOP_HOLD_BUCKETS,
)
CAUGHT_UP = CounterSpec(
    "chime_caught_up_total",
    "Messages given from storage to subscribers whose live delivery was held back.",
)


# --- snapshots ----------------------------------------------------------------------


class ScalarSample(FrozenRecord, frozen=True):
    """The value of one counter or gauge series."""

    label_values: LabelValues
    value: float


class HistogramSample(FrozenRecord, frozen=True):
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


class FamilySnapshot(FrozenRecord, frozen=True):
    """All series of one metric at one moment."""

    name: str
    kind: MetricKind
    help: str
    label_names: tuple[str, ...]
    samples: tuple[ScalarSample | HistogramSample, ...]
    buckets: tuple[float, ...] = ()


class MetricsSnapshot(FrozenRecord, frozen=True):
    """Every metric of one process at one moment; a lane record, sent between processes.

    Attributes:
        process: the process' display name (``"gateway 1"``), rendered as the
            ``process`` label.
        families: the metric families in registration order.
    """

    process: str
    families: tuple[FamilySnapshot, ...] = ()

    def value(self, name: str, *label_values: str) -> float | None:
        """The value of a counter/gauge series, or None; handy in tests and logs."""
        for family in self.families:
            if family.name == name:
                for sample in family.samples:
                    if isinstance(sample, ScalarSample) and sample.label_values == label_values:
                        return sample.value
        return None


def _label_values(label_names: tuple[str, ...], labels: Mapping[str, str]) -> LabelValues:
    return tuple(labels[name] for name in label_names)


def _scalar_samples(spec: CounterSpec | GaugeSpec, metric: Counter | Gauge) -> FamilySnapshot:
    samples = [
        ScalarSample(_label_values(spec.label_names, sample.labels), sample.value)
        for family in metric.collect()
        for sample in family.samples
        # Skips a counter's "_created" sample: text format 0.0.4 has no use for it.
        if sample.name == spec.name
    ]
    samples.sort(key=lambda sample: sample.label_values)
    kind = MetricKind.COUNTER if isinstance(spec, CounterSpec) else MetricKind.GAUGE
    return FamilySnapshot(spec.name, kind, spec.help, spec.label_names, tuple(samples))


def _histogram_samples(spec: HistogramSpec, metric: Histogram) -> FamilySnapshot:
    buckets: dict[LabelValues, list[int]] = {}
    counts: dict[LabelValues, int] = {}
    sums: dict[LabelValues, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            key = _label_values(spec.label_names, sample.labels)
            if sample.name == f"{spec.name}_bucket":
                # Cumulative, in bound order; +Inf is the count, kept once.
                if sample.labels["le"] != "+Inf":
                    buckets.setdefault(key, []).append(int(sample.value))
            elif sample.name == f"{spec.name}_count":
                counts[key] = int(sample.value)
            elif sample.name == f"{spec.name}_sum":
                sums[key] = sample.value
    samples = tuple(
        HistogramSample(key, tuple(buckets[key]), counts[key], sums[key]) for key in sorted(buckets)
    )
    return FamilySnapshot(
        spec.name, MetricKind.HISTOGRAM, spec.help, spec.label_names, samples, spec.buckets
    )


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
    """The metrics of one process, as prometheus-client metrics.

    Registering the same spec twice returns the same metric, so modules can ask
    for the metrics they use without coordinating; a different spec under an
    existing name is a bug and raises ``ValueError``.
    """

    def __init__(self) -> None:
        # Our own registry, not prometheus-client's global one: tests build several
        # processes' registries in one interpreter, and each must start at zero.
        self._registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._families: dict[str, tuple[MetricSpec, Counter | Gauge | Histogram]] = {}
        self._tallies: dict[str, Tally] = {}

    def counter(self, spec: CounterSpec) -> Counter:
        """Register (or look up) the counter declared by ``spec``."""
        metric = self._register(spec)
        assert isinstance(metric, Counter)
        return metric

    def tally(self, spec: CounterSpec) -> Tally:
        """The lock-free tally of the unlabelled counter ``spec`` (see ``Tally``)."""
        tally = self._tallies.get(spec.name)
        if tally is None:
            tally = self._tallies[spec.name] = Tally(self.counter(spec))
        return tally

    def gauge(self, spec: GaugeSpec) -> Gauge:
        """Register (or look up) the gauge declared by ``spec``."""
        metric = self._register(spec)
        assert isinstance(metric, Gauge)
        return metric

    def histogram(self, spec: HistogramSpec) -> Histogram:
        """Register (or look up) the histogram declared by ``spec``."""
        metric = self._register(spec)
        assert isinstance(metric, Histogram)
        return metric

    def _register(self, spec: MetricSpec) -> Counter | Gauge | Histogram:
        with self._lock:
            known = self._families.get(spec.name)
            if known is not None:
                if known[0] != spec:
                    raise ValueError(f"metric {spec.name} already registered as {known[0]}")
                return known[1]
            metric: Counter | Gauge | Histogram
            if isinstance(spec, CounterSpec):
                metric = Counter(spec.name, spec.help, spec.label_names, registry=self._registry)
            elif isinstance(spec, GaugeSpec):
                metric = Gauge(spec.name, spec.help, spec.label_names, registry=self._registry)
            else:
                metric = Histogram(
                    spec.name,
                    spec.help,
                    spec.label_names,
                    registry=self._registry,
                    buckets=spec.buckets,
                )
            self._families[spec.name] = (spec, metric)
            return metric

    def snapshot(self, process: str) -> MetricsSnapshot:
        """Copy every metric's current values into a frozen, picklable snapshot.

        Args:
            process: the name rendered as the ``process`` label (``"gateway 1"``).
        """
        for tally in self._tallies.values():
            tally.fold()
        with self._lock:
            registered = list(self._families.values())
        families: list[FamilySnapshot] = []
        for spec, metric in registered:
            if isinstance(spec, HistogramSpec):
                assert isinstance(metric, Histogram)
                families.append(_histogram_samples(spec, metric))
            else:
                assert isinstance(metric, Counter | Gauge)
                families.append(_scalar_samples(spec, metric))
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
    caught_up: Counter
    connects_refused: Counter
    lane_batches: Counter
    lane_bytes: Counter
    lane_dropped: Counter
    delivery_step: Histogram
    loop_lag: Histogram

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
            caught_up=registry.counter(CAUGHT_UP),
            connects_refused=registry.counter(CONNECTS_REFUSED),
            lane_batches=registry.counter(LANE_BATCHES),
            lane_bytes=registry.counter(LANE_BYTES),
            lane_dropped=registry.counter(LANE_DROPPED),
            delivery_step=registry.histogram(DELIVERY_STEP),
            loop_lag=registry.histogram(LOOP_LAG),
        )
