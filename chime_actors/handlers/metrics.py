"""What channel handlers count (``/metrics``), labelled by the handler's name."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from chime_actors.metrics import CounterSpec, GaugeSpec, MetricsRegistry

HANDLED = CounterSpec(
    "chime_handler_handled_total",
    "Messages a channel handler judged (before_store) or confirmed (after_store).",
    ("handler",),
)
REJECTED = CounterSpec(
    "chime_handler_rejected_total", "Sends a before_store handler rejected.", ("handler",)
)
FAILURES = CounterSpec(
    "chime_handler_failures_total",
    "Handler calls that raised, overran timeout_ms or answered something invalid.",
    ("handler",),
)
LAG = GaugeSpec(
    "chime_handler_lag",
    "Stored messages of its channels an after_store handler has not confirmed yet.",
    ("handler",),
)
STUCK = GaugeSpec(
    "chime_handler_stuck",
    "1 while an after_store handler has work but confirmed nothing for a while.",
    ("handler",),
)
LEASE_HELD = GaugeSpec(
    "chime_handler_lease_held",
    "1 while this process runs the after_store handler's cursor (holds its lease).",
    ("handler",),
)


@dataclass(frozen=True, slots=True)
class HandlerCounters:
    """One handler's counters, labels bound once."""

    handled: Counter
    rejected: Counter
    failures: Counter


@dataclass(frozen=True, slots=True)
class HandlerMetrics:
    """The handler metric families of one process."""

    handled: Counter
    rejected: Counter
    failures: Counter
    lag: Gauge
    stuck: Gauge
    lease_held: Gauge

    @classmethod
    def register(cls, registry: MetricsRegistry) -> HandlerMetrics:
        """Register the families in ``registry`` (once per process)."""
        return cls(
            handled=registry.counter(HANDLED),
            rejected=registry.counter(REJECTED),
            failures=registry.counter(FAILURES),
            lag=registry.gauge(LAG),
            stuck=registry.gauge(STUCK),
            lease_held=registry.gauge(LEASE_HELD),
        )

    def of(self, handler: str) -> HandlerCounters:
        """The counters of ``handler``."""
        return HandlerCounters(
            self.handled.labels(handler=handler),
            self.rejected.labels(handler=handler),
            self.failures.labels(handler=handler),
        )
