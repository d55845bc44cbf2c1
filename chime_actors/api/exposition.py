"""The ``/metrics`` body: every process's latest snapshot, rendered by prometheus-client.

The API process keeps the latest :class:`~chime_actors.metrics.MetricsSnapshot`
of each process actor (and takes one of its own). :class:`SnapshotCollector`
turns them into prometheus-client metric families, each sample labelled with the
``process`` it came from; :func:`exposition_registry` registers it next to
prometheus-client's standard collectors, which describe the API process itself
(``process_*``, ``python_info``, ``python_gc_*``); :func:`render` is
``generate_latest``: Prometheus text format 0.0.4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from chime_actors.metrics import (
    PROCESS_LABEL,
    FamilySnapshot,
    HistogramSample,
    MetricKind,
    MetricsSnapshot,
)

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "exposition_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The content type of :func:`render`'s output.

Not ``CONTENT_TYPE_LATEST``: since prometheus-client 0.23 that names text format
1.0.0, while ``generate_latest`` (default escaping) writes 0.0.4, as
prometheus-client's own HTTP handler declares for it.
"""

_Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class SnapshotCollector(Collector):
    """A prometheus-client collector over the latest snapshot of every process.

    Families of the same name are merged: one ``# HELP``/``# TYPE`` each, then
    every process's samples, labelled ``process="<name>"`` first.
    """

    def __init__(self, snapshots: Callable[[], Iterable[MetricsSnapshot]]) -> None:
        """``snapshots`` is called at every scrape for the snapshots to render."""
        self._snapshots = snapshots

    def collect(self) -> Iterator[Metric]:
        """Yield one metric family per metric name across all snapshots.

        Raises:
            ValueError: if two snapshots share a process name, or declare the same
                metric name with a different type, labels or buckets.
        """
        merged: dict[str, tuple[FamilySnapshot, _Family]] = {}
        seen: set[str] = set()
        for snapshot in self._snapshots():
            if snapshot.process in seen:
                raise ValueError(f"two snapshots for process {snapshot.process!r}")
            seen.add(snapshot.process)
            for family in snapshot.families:
                entry = merged.get(family.name)
                if entry is None:
                    entry = merged[family.name] = (family, _new_family(family))
                first, metric = entry
                if (first.kind, first.label_names, first.buckets) != (
                    family.kind,
                    family.label_names,
                    family.buckets,
                ):
                    raise ValueError(f"metric {family.name} differs between processes")
                _add_samples(metric, snapshot.process, family)
        for _, metric in merged.values():
            yield metric


def _new_family(family: FamilySnapshot) -> _Family:
    labels = [PROCESS_LABEL, *family.label_names]
    if family.kind is MetricKind.COUNTER:
        # Strips the "_total" of the spec name and adds it back to the samples
        # (and to the HELP and TYPE lines): exposed names are the spec names.
        return CounterMetricFamily(family.name, family.help, labels=labels)
    if family.kind is MetricKind.GAUGE:
        return GaugeMetricFamily(family.name, family.help, labels=labels)
    return HistogramMetricFamily(family.name, family.help, labels=labels)


def _add_samples(metric: _Family, process: str, family: FamilySnapshot) -> None:
    for sample in family.samples:
        values = [process, *sample.label_values]
        if isinstance(sample, HistogramSample):
            assert isinstance(metric, HistogramMetricFamily)
            # repr, as prometheus-client's own Histogram writes its bounds ("0.0025",
            # "1.0"): equal bounds from different processes make one series.
            buckets = [
                (repr(float(bound)), float(count))
                for bound, count in zip(family.buckets, sample.bucket_counts, strict=True)
            ]
            buckets.append(("+Inf", float(sample.count)))
            metric.add_metric(values, buckets, sample.sum)
        else:
            assert not isinstance(metric, HistogramMetricFamily)
            metric.add_metric(values, sample.value)


def exposition_registry(snapshots: Callable[[], Iterable[MetricsSnapshot]]) -> CollectorRegistry:
    """A registry of the API process: every snapshot, plus the API process's own
    CPU, memory, file descriptors, Python version and garbage collector.

    Args:
        snapshots: called at every scrape; returns the snapshots to render.
    """
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(snapshots))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> str:
    """The registry in Prometheus text format 0.0.4 (:data:`CONTENT_TYPE`)."""
    return generate_latest(registry).decode()
