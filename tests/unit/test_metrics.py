"""Tests for chime_actors.metrics (registry, snapshots) and chime_actors.api.exposition
(the Prometheus text exposition rendered by prometheus-client)."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from chime_actors.api.exposition import SnapshotCollector, exposition_registry, render
from chime_actors.metrics import (
    ERRORS,
    MESSAGES_IN,
    PERSIST_LATENCY,
    PERSIST_LATENCY_BUCKETS,
    ChimeMetrics,
    CounterSpec,
    GaugeSpec,
    HistogramSample,
    HistogramSpec,
    MetricKind,
    MetricsRegistry,
    MetricsSnapshot,
)

HITS = CounterSpec("hits_total", "Hits.", ("path",))
TEMP = GaugeSpec("temp", "Temperature.")
LATENCY = HistogramSpec("lat_seconds", "Latency.", (0.1, 0.5, 1.0))

# docs/operations.md "Health, readiness and metrics": name -> (type, label names).
DOCUMENTED = {
    "chime_connections": ("gauge", ()),
    "chime_messages_in_total": ("counter", ()),
    "chime_messages_out_total": ("counter", ()),
    "chime_acks_total": ("counter", ()),
    "chime_errors_total": ("counter", ("code",)),
    "chime_actor_restarts_total": ("counter", ("kind",)),
    "chime_queue_depth": ("gauge", ("queue",)),
    "chime_persist_latency_seconds": ("histogram", ()),
    "chime_persist_batches_total": ("counter", ()),
    "chime_gap_fills_total": ("counter", ()),
    "chime_caught_up_total": ("counter", ()),
    "chime_connects_refused_total": ("counter", ("status",)),
    "chime_lane_batches_total": ("counter", ("direction",)),
    "chime_lane_bytes_total": ("counter", ("direction",)),
    "chime_lane_dropped_total": ("counter", ()),
    "chime_delivery_step_seconds": ("histogram", ("step",)),
    "chime_loop_lag_seconds": ("histogram", ()),
}


def exposition(*snapshots: MetricsSnapshot) -> str:
    """Only the snapshots, without the API process's standard collectors."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: snapshots))
    return render(registry)


def test_counter_counts_per_label_set() -> None:
    registry = MetricsRegistry()
    hits = registry.counter(HITS)
    hits.labels("/a").inc()
    hits.labels(path="/a").inc(2)
    hits.labels("/b").inc()
    snapshot = registry.snapshot("p")
    assert snapshot.value("hits_total", "/a") == 3
    assert snapshot.value("hits_total", "/b") == 1
    assert snapshot.value("hits_total", "/c") is None


def test_counter_refuses_to_decrease() -> None:
    counter = MetricsRegistry().counter(MESSAGES_IN)
    with pytest.raises(ValueError, match="non-negative"):
        counter.inc(-1)


def test_labels_must_match_the_spec() -> None:
    hits = MetricsRegistry().counter(HITS)
    with pytest.raises(ValueError, match="missing label values"):
        hits.inc()
    with pytest.raises(ValueError, match="label count"):
        hits.labels("a", "b")
    with pytest.raises(ValueError, match="label names"):
        hits.labels(route="/a")


def test_gauge_set_inc_dec() -> None:
    registry = MetricsRegistry()
    gauge = registry.gauge(TEMP)
    gauge.set(10)
    gauge.inc(2.5)
    gauge.dec()
    assert registry.snapshot("p").value("temp") == 11.5


def test_unlabelled_metrics_exist_before_first_use() -> None:
    registry = MetricsRegistry()
    registry.counter(MESSAGES_IN)
    assert registry.snapshot("p").value("chime_messages_in_total") == 0


def test_registering_twice_returns_the_same_metric() -> None:
    registry = MetricsRegistry()
    assert registry.counter(HITS) is registry.counter(HITS)
    with pytest.raises(ValueError, match="already registered"):
        registry.counter(CounterSpec("hits_total", "Other help."))


def test_tally_is_folded_into_its_counter_at_each_snapshot() -> None:
    registry = MetricsRegistry()
    frames = ChimeMetrics.register(registry).messages_out
    frames.add(5)
    assert registry.snapshot("p").value("chime_messages_out_total") == 5
    frames.add(2)
    assert registry.snapshot("p").value("chime_messages_out_total") == 7
    assert registry.snapshot("p").value("chime_messages_out_total") == 7


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CounterSpec("bad-name_total", "h"), "invalid metric name"),
        (lambda: CounterSpec("x", "h"), "ends in _total"),
        (lambda: CounterSpec("x_total", "h", ("process",)), "reserved"),
        (lambda: CounterSpec("x_total", "h", ("a", "a")), "duplicate"),
        (lambda: CounterSpec("x_total", "h", ("__a",)), "invalid label"),
        (lambda: GaugeSpec("g", "h", ("bad-label",)), "invalid label"),
        (lambda: HistogramSpec("h", "h", (1.0,), ("le",)), "reserved"),
        (lambda: HistogramSpec("h", "h", ()), "at least one"),
        (lambda: HistogramSpec("h", "h", (1.0, 1.0)), "increasing"),
        (lambda: HistogramSpec("h", "h", (1.0, float("inf"))), "finite"),
        (lambda: HistogramSpec("h", "h", (-1.0, 1.0)), "negative"),
    ],
)
def test_invalid_specs_are_refused(make: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_histogram_buckets_are_cumulative_and_le_inclusive() -> None:
    registry = MetricsRegistry()
    latency = registry.histogram(LATENCY)
    for value in (0.05, 0.1, 0.3, 2.0):
        latency.observe(value)
    (family,) = registry.snapshot("p").families
    (sample,) = family.samples
    assert isinstance(sample, HistogramSample)
    # 0.1 lands in le="0.1" (bounds are inclusive); 2.0 only in +Inf.
    assert sample.bucket_counts == (2, 3, 3)
    assert sample.count == 4
    assert sample.sum == pytest.approx(2.45)


def test_snapshot_pickles_and_is_frozen() -> None:
    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    metrics.errors.labels(code="bad_request").inc()
    metrics.persist_latency.observe(0.003)
    snapshot = registry.snapshot("gateway 1")
    clone = pickle.loads(pickle.dumps(snapshot))
    assert clone == snapshot
    assert exposition(clone) == exposition(snapshot)
    with pytest.raises(AttributeError):
        snapshot.process = "other"  # type: ignore[misc]


def test_snapshot_is_a_copy() -> None:
    registry = MetricsRegistry()
    counter = registry.counter(MESSAGES_IN)
    before = registry.snapshot("p")
    counter.inc()
    assert before.value("chime_messages_in_total") == 0
    assert registry.snapshot("p").value("chime_messages_in_total") == 1


def test_render_exact_text() -> None:
    registry = MetricsRegistry()
    registry.counter(HITS).labels("/a").inc(3)
    registry.gauge(TEMP).set(0.25)
    registry.histogram(LATENCY).observe(0.2)
    # prometheus-client's text format 0.0.4: labels sorted by name, values as floats,
    # no "_created" series.
    assert exposition(registry.snapshot("gateway 1")) == (
        "# HELP hits_total Hits.\n"
        "# TYPE hits_total counter\n"
        'hits_total{path="/a",process="gateway 1"} 3.0\n'
        "# HELP temp Temperature.\n"
        "# TYPE temp gauge\n"
        'temp{process="gateway 1"} 0.25\n'
        "# HELP lat_seconds Latency.\n"
        "# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{le="0.1",process="gateway 1"} 0.0\n'
        'lat_seconds_bucket{le="0.5",process="gateway 1"} 1.0\n'
        'lat_seconds_bucket{le="1.0",process="gateway 1"} 1.0\n'
        'lat_seconds_bucket{le="+Inf",process="gateway 1"} 1.0\n'
        'lat_seconds_count{process="gateway 1"} 1.0\n'
        'lat_seconds_sum{process="gateway 1"} 0.2\n'
    )


def test_render_escapes_label_values_and_help() -> None:
    registry = MetricsRegistry()
    family = registry.counter(
        CounterSpec("e_total", 'Help with \\ and\nnewline and "quotes".', ("code",))
    )
    family.labels('a"b\\c\nd').inc()
    text = exposition(registry.snapshot('pro"cess'))
    # HELP escapes only backslash and newline; label values also escape quotes.
    assert '# HELP e_total Help with \\\\ and\\nnewline and "quotes".\n' in text
    assert 'e_total{code="a\\"b\\\\c\\nd",process="pro\\"cess"} 1.0\n' in text


def test_render_merges_processes_with_one_help_and_type() -> None:
    gateway, persister = MetricsRegistry(), MetricsRegistry()
    ChimeMetrics.register(gateway).messages_in.inc(5)
    persister_metrics = ChimeMetrics.register(persister)
    persister_metrics.persist_batches.inc()
    persister_metrics.errors.labels("unavailable").inc()
    text = exposition(gateway.snapshot("gateway 1"), persister.snapshot("persister 0"))
    assert text.count("# HELP chime_messages_in_total ") == 1
    assert text.count("# TYPE chime_messages_in_total counter") == 1
    assert 'chime_messages_in_total{process="gateway 1"} 5.0\n' in text
    assert 'chime_messages_in_total{process="persister 0"} 0.0\n' in text
    assert 'chime_errors_total{code="unavailable",process="persister 0"} 1.0\n' in text
    # Both processes' samples follow their family's single TYPE line.
    type_at = text.index("# TYPE chime_messages_in_total")
    assert type_at < text.index('chime_messages_in_total{process="persister 0"}')
    assert text.index("# TYPE chime_messages_out_total") > text.index(
        'chime_messages_in_total{process="persister 0"}'
    )


def test_render_refuses_duplicate_processes_and_conflicting_families() -> None:
    one = MetricsRegistry()
    one.counter(HITS)
    with pytest.raises(ValueError, match="two snapshots"):
        exposition(one.snapshot("p"), one.snapshot("p"))
    other = MetricsRegistry()
    other.counter(CounterSpec("hits_total", "Hits.", ("route",)))
    with pytest.raises(ValueError, match="differs"):
        exposition(one.snapshot("a"), other.snapshot("b"))


def test_render_of_nothing_is_empty() -> None:
    assert exposition() == ""
    assert exposition(MetricsSnapshot("p")) == ""


def test_chime_metrics_cover_the_documented_names() -> None:
    registry = MetricsRegistry()
    ChimeMetrics.register(registry)
    kinds = {f.name: f.kind.value for f in registry.snapshot("p").families}
    assert kinds == {name: kind for name, (kind, _) in DOCUMENTED.items()}
    assert PERSIST_LATENCY.buckets == PERSIST_LATENCY_BUCKETS
    assert ERRORS.label_names == ("code",)


def test_updates_from_two_threads_are_not_lost() -> None:
    registry = MetricsRegistry()
    counter = registry.counter(MESSAGES_IN)
    latency = registry.histogram(PERSIST_LATENCY)
    rounds = 20_000

    def work() -> None:
        for _ in range(rounds):
            counter.inc()
            latency.observe(0.002)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = registry.snapshot("p")
    assert snapshot.value("chime_messages_in_total") == 2 * rounds
    histogram = next(f for f in snapshot.families if f.kind is MetricKind.HISTOGRAM)
    (sample,) = histogram.samples
    assert isinstance(sample, HistogramSample)
    assert sample.count == 2 * rounds


def _exposed_names(samples: list[Sample]) -> set[str]:
    return {sample.name for sample in samples}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="ProcessCollector reads /proc")
def test_api_exposition_parses_with_every_documented_metric() -> None:
    gateway, persister, api = MetricsRegistry(), MetricsRegistry(), MetricsRegistry()
    gateway_metrics = ChimeMetrics.register(gateway)
    gateway_metrics.errors.labels(code='we"ird\\').inc(2)
    gateway_metrics.connects_refused.labels(status="429").inc()
    gateway_metrics.queue_depth.labels(queue="channels").set(7)
    gateway_metrics.messages_out.add(3)
    gateway_metrics.lane_batches.labels(direction="out").inc(4)
    gateway_metrics.lane_bytes.labels(direction="in").inc(900)
    gateway_metrics.delivery_step.labels(step="fanout").observe(0.003)
    persister_metrics = ChimeMetrics.register(persister)
    for value in (0.0005, 0.004, 0.2, 9.0):
        persister_metrics.persist_latency.observe(value)
    ChimeMetrics.register(api).actor_restarts.labels(kind="gateway").inc()
    snapshots = [gateway.snapshot("gateway 1"), persister.snapshot("persister 1")]
    text = render(exposition_registry(lambda: [*snapshots, api.snapshot("api")]))

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, label_names) in DOCUMENTED.items():
        # The parser names a counter family without "_total", as OpenMetrics does;
        # its samples keep the exposed name.
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
        processes = {s.labels["process"] for s in family.samples}
        if label_names:
            assert processes, f"{name}: every labelled family was set above"
        else:
            # Every process exports every unlabelled family, from its first report.
            assert processes == {"gateway 1", "persister 1", "api"}, name
        for sample in family.samples:
            bucket = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == {"process", *label_names, *bucket}, (name, sample)
        if kind == "counter":
            assert _exposed_names(family.samples) == {name}, "no _created series"
        elif kind == "histogram":
            suffixes = ("bucket", "count", "sum")
            assert _exposed_names(family.samples) == {f"{name}_{s}" for s in suffixes}

    errors = families["chime_errors"]
    assert {(s.labels["process"], s.labels["code"], s.value) for s in errors.samples} == {
        ("gateway 1", 'we"ird\\', 2.0)
    }
    assert families["chime_messages_out"].samples[0].value == 3
    buckets = [
        (s.labels["le"], s.value)
        for s in families["chime_persist_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["process"] == "persister 1"
    ]
    assert [le for le, _ in buckets] == [*(repr(b) for b in PERSIST_LATENCY_BUCKETS), "+Inf"]
    assert [count for _, count in buckets] == [1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4]
    # The API process's own, from prometheus-client's standard collectors.
    assert families["process_cpu_seconds"].type == "counter"
    assert "process_cpu_seconds_total" in text
    assert "python_info" in families
    assert "python_gc_collections" in families
