"""Tests for chime_actors.metrics: registry, snapshots and the Prometheus text format."""

from __future__ import annotations

import pickle
import threading

import pytest

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
    render_prometheus,
)

HITS = CounterSpec("hits_total", "Hits.", ("path",))
TEMP = GaugeSpec("temp", "Temperature.")
LATENCY = HistogramSpec("lat_seconds", "Latency.", (0.1, 0.5, 1.0))


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
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1)


def test_labels_must_match_the_spec() -> None:
    hits = MetricsRegistry().counter(HITS)
    with pytest.raises(ValueError, match=r"use \.labels"):
        hits.inc()
    with pytest.raises(ValueError, match="expected labels"):
        hits.labels("a", "b")
    with pytest.raises(ValueError, match="expected labels"):
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


def test_registering_twice_returns_the_same_family() -> None:
    registry = MetricsRegistry()
    assert registry.counter(HITS) is registry.counter(HITS)
    with pytest.raises(ValueError, match="already registered"):
        registry.counter(CounterSpec("hits_total", "Other help."))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: CounterSpec("bad-name", "h"), "invalid metric name"),
        (lambda: CounterSpec("x_total", "h", ("process",)), "reserved"),
        (lambda: CounterSpec("x_total", "h", ("a", "a")), "duplicate"),
        (lambda: CounterSpec("x_total", "h", ("__a",)), "invalid label"),
        (lambda: HistogramSpec("h", "h", (1.0,), ("le",)), "reserved"),
        (lambda: HistogramSpec("h", "h", ()), "at least one"),
        (lambda: HistogramSpec("h", "h", (1.0, 1.0)), "increasing"),
        (lambda: HistogramSpec("h", "h", (1.0, float("inf"))), "finite"),
    ],
)
def test_invalid_specs_are_refused(make: object, match: str) -> None:
    assert callable(make)
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
    with pytest.raises(ValueError, match="NaN"):
        latency.observe(float("nan"))


def test_snapshot_pickles_and_is_frozen() -> None:
    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    metrics.errors.labels(code="bad_request").inc()
    metrics.persist_latency.observe(0.003)
    snapshot = registry.snapshot("gateway 1")
    clone = pickle.loads(pickle.dumps(snapshot))
    assert clone == snapshot
    assert render_prometheus([clone]) == render_prometheus([snapshot])
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
    assert render_prometheus([registry.snapshot("gateway 1")]) == (
        "# HELP hits_total Hits.\n"
        "# TYPE hits_total counter\n"
        'hits_total{process="gateway 1",path="/a"} 3\n'
        "# HELP temp Temperature.\n"
        "# TYPE temp gauge\n"
        'temp{process="gateway 1"} 0.25\n'
        "# HELP lat_seconds Latency.\n"
        "# TYPE lat_seconds histogram\n"
        'lat_seconds_bucket{process="gateway 1",le="0.1"} 0\n'
        'lat_seconds_bucket{process="gateway 1",le="0.5"} 1\n'
        'lat_seconds_bucket{process="gateway 1",le="1.0"} 1\n'
        'lat_seconds_bucket{process="gateway 1",le="+Inf"} 1\n'
        'lat_seconds_sum{process="gateway 1"} 0.2\n'
        'lat_seconds_count{process="gateway 1"} 1\n'
    )


def test_render_escapes_label_values_and_help() -> None:
    registry = MetricsRegistry()
    family = registry.counter(
        CounterSpec("e_total", 'Help with \\ and\nnewline and "quotes".', ("code",))
    )
    family.labels('a"b\\c\nd').inc()
    text = render_prometheus([registry.snapshot('pro"cess')])
    # HELP escapes only backslash and newline; label values also escape quotes.
    assert '# HELP e_total Help with \\\\ and\\nnewline and "quotes".\n' in text
    assert 'e_total{process="pro\\"cess",code="a\\"b\\\\c\\nd"} 1\n' in text


def test_render_merges_processes_with_one_help_and_type() -> None:
    gateway, persister = MetricsRegistry(), MetricsRegistry()
    ChimeMetrics.register(gateway).messages_in.inc(5)
    persister_metrics = ChimeMetrics.register(persister)
    persister_metrics.persist_batches.inc()
    persister_metrics.errors.labels("unavailable").inc()
    text = render_prometheus([gateway.snapshot("gateway 1"), persister.snapshot("persister 0")])
    assert text.count("# HELP chime_messages_in_total ") == 1
    assert text.count("# TYPE chime_messages_in_total counter") == 1
    assert 'chime_messages_in_total{process="gateway 1"} 5\n' in text
    assert 'chime_messages_in_total{process="persister 0"} 0\n' in text
    assert 'chime_errors_total{process="persister 0",code="unavailable"} 1\n' in text
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
        render_prometheus([one.snapshot("p"), one.snapshot("p")])
    other = MetricsRegistry()
    other.gauge(GaugeSpec("hits_total", "Not a counter."))
    with pytest.raises(ValueError, match="differs"):
        render_prometheus([one.snapshot("a"), other.snapshot("b")])


def test_render_of_nothing_is_empty() -> None:
    assert render_prometheus([]) == ""
    assert render_prometheus([MetricsSnapshot("p")]) == ""


def test_chime_metrics_cover_the_documented_names() -> None:
    registry = MetricsRegistry()
    ChimeMetrics.register(registry)
    kinds = {f.name: f.kind for f in registry.snapshot("p").families}
    assert kinds == {
        "chime_connections": MetricKind.GAUGE,
        "chime_messages_in_total": MetricKind.COUNTER,
        "chime_messages_out_total": MetricKind.COUNTER,
        "chime_acks_total": MetricKind.COUNTER,
        "chime_errors_total": MetricKind.COUNTER,
        "chime_actor_restarts_total": MetricKind.COUNTER,
        "chime_queue_depth": MetricKind.GAUGE,
        "chime_persist_latency_seconds": MetricKind.HISTOGRAM,
        "chime_persist_batches_total": MetricKind.COUNTER,
        "chime_gap_fills_total": MetricKind.COUNTER,
        "chime_connects_refused_total": MetricKind.COUNTER,
        "chime_lane_batches_total": MetricKind.COUNTER,
        "chime_lane_bytes_total": MetricKind.COUNTER,
        "chime_lane_dropped_total": MetricKind.COUNTER,
    }
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


def test_output_parses_with_the_reference_parser() -> None:
    # prometheus_client is a dev-only cross-check of the format, not a dependency.
    parser = pytest.importorskip("prometheus_client.parser")
    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    metrics.errors.labels(code='we"ird\\').inc(2)
    metrics.queue_depth.labels(queue="persist").set(7)
    for value in (0.0005, 0.004, 0.2, 9.0):
        metrics.persist_latency.observe(value)
    text = render_prometheus([registry.snapshot("gateway 1"), registry.snapshot("gateway 2")])
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    errors = families["chime_errors"]
    assert errors.type == "counter"
    assert {(s.labels["process"], s.labels["code"], s.value) for s in errors.samples} == {
        ("gateway 1", 'we"ird\\', 2.0),
        ("gateway 2", 'we"ird\\', 2.0),
    }
    histogram = families["chime_persist_latency_seconds"]
    buckets = [
        s.value
        for s in histogram.samples
        if s.name.endswith("_bucket") and s.labels["process"] == "gateway 1"
    ]
    assert buckets == sorted(buckets)
    assert buckets[0] == 1 and buckets[-1] == 4
