"""The pure arithmetic of ``chime bench``: percentiles, pacing, completeness."""

from __future__ import annotations

import itertools

import pytest

from chime_actors.bench.stats import (
    NS_PER_S,
    Completeness,
    DeliveryLog,
    PacingSchedule,
    check_connection,
    percentile,
    rate_per_s,
    summarize,
)

# --- percentiles -------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile(values, 0.5) == 1


def test_percentile_of_few_values_rounds_up() -> None:
    assert percentile([10, 20, 30], 50) == 20
    assert percentile([10, 20, 30], 99) == 30
    assert percentile([7], 1) == 7


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


@pytest.mark.parametrize("q", [0, -1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1, 2, 3], q)


def test_summarize_merges_samples_and_sorts() -> None:
    summary = summarize([5, 1, 3], [4, 2], [])
    assert summary.count == 5
    assert (summary.p50, summary.p95, summary.p99, summary.max) == (3, 5, 5, 5)
    assert summary.to_ms() == {
        "count": 5,
        "p50_ms": 0.003,
        "p95_ms": 0.005,
        "p99_ms": 0.005,
        "max_ms": 0.005,
    }


def test_summarize_nothing() -> None:
    summary = summarize()
    assert summary.count == 0
    assert summary.p99 is None and summary.max is None


# --- pacing ------------------------------------------------------------------------


def test_schedule_interleaves_senders_at_the_total_rate() -> None:
    schedule = PacingSchedule(rate=10.0, senders=2, start_ns=1_000)
    # message i of the run is due at start + i / rate, sender i % 2
    assert schedule.due_ns(0, 0) == 1_000
    assert schedule.due_ns(1, 0) == 1_000 + NS_PER_S // 10
    assert schedule.due_ns(0, 1) == 1_000 + 2 * NS_PER_S // 10
    assert schedule.due_ns(1, 4) == 1_000 + 9 * NS_PER_S // 10


def test_schedule_is_computed_from_the_index_not_from_the_last_send() -> None:
    """No drift: message k's due time depends on k only, however late k-1 went."""
    schedule = PacingSchedule(rate=200.0, senders=200, start_ns=0)
    assert schedule.due_ns(0, 1000) == 1000 * NS_PER_S
    assert schedule.due_ns(199, 0) == round(199 * NS_PER_S / 200)


def test_schedule_due_times_are_evenly_spaced() -> None:
    schedule = PacingSchedule(rate=3.0, senders=4, start_ns=0)
    total = schedule.total_for(10.0)
    due = sorted(
        schedule.due_ns(s, k) for s in range(4) for k in range(schedule.count_for(s, total))
    )
    assert len(due) == total == 30
    gaps = {b - a for a, b in itertools.pairwise(due)}
    assert max(gaps) - min(gaps) <= 1  # rounding only
    assert due[-1] < 10 * NS_PER_S


def test_total_for_a_duration_has_no_float_off_by_one() -> None:
    schedule = PacingSchedule(rate=20.0, senders=4, start_ns=0)
    assert schedule.total_for(3.0) == 60
    assert PacingSchedule(0.1 + 0.2, 1, 0).total_for(10.0) == 3
    assert schedule.total_for(3.01) == 61
    assert schedule.total_for(0) == 0


def test_counts_per_sender_add_up_to_the_total() -> None:
    schedule = PacingSchedule(rate=7.0, senders=3, start_ns=0)
    assert [schedule.count_for(s, 10) for s in range(3)] == [4, 3, 3]
    assert [schedule.count_for(s, 2) for s in range(3)] == [1, 1, 0]


@pytest.mark.parametrize(("rate", "senders"), [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_schedule_rejects_nonsense(rate: float, senders: int) -> None:
    with pytest.raises(ValueError):
        PacingSchedule(rate, senders, 0)


# --- completeness --------------------------------------------------------------------


def acked(*ids: str, sent_ns: int = 0) -> list[tuple[str, int]]:
    return [(mid, sent_ns) for mid in ids]


def test_delivery_log_counts_duplicates_per_channel() -> None:
    log = DeliveryLog()
    assert log.record("a", "1")
    assert log.record("b", "1")  # same id, other channel: not a duplicate
    assert not log.record("a", "1")
    assert log.duplicates == 1
    assert log.received("a") == 1 and log.received("c") == 0


def test_complete_connection() -> None:
    log = DeliveryLog()
    for mid in ("1", "2", "3"):
        log.record("a", mid)
    result = check_connection({"a": acked("1", "2", "3"), "b": acked("9")}, ["a"], log)
    assert result == Completeness(expected=3, received=3)
    assert result.complete


def test_misses_are_expected_minus_received() -> None:
    log = DeliveryLog()
    log.record("a", "1")
    log.record("a", "3")
    result = check_connection({"a": acked("1", "2", "3", "4")}, ["a"], log)
    assert result == Completeness(expected=4, received=2, missed=2)
    assert not result.complete


def test_duplicates_make_it_incomplete_even_with_everything_received() -> None:
    log = DeliveryLog()
    for mid in ("1", "2", "2", "2"):
        log.record("a", mid)
    result = check_connection({"a": acked("1", "2")}, ["a"], log)
    assert result == Completeness(expected=2, received=2, duplicates=2)
    assert not result.complete


def test_unacked_and_foreign_deliveries_are_unexpected_not_received() -> None:
    log = DeliveryLog()
    log.record("a", "1")
    log.record("a", "x")  # never acked
    log.record("z", "7")  # a channel it never joined
    result = check_connection({"a": acked("1")}, ["a"], log)
    assert result == Completeness(expected=1, received=1, unexpected=2)
    assert result.complete  # unexpected deliveries are reported, not failures


def test_closed_connection_is_owed_only_what_was_sent_before_it_closed() -> None:
    messages = [("1", 100), ("2", 200), ("3", 300)]
    log = DeliveryLog()
    log.record("a", "1")
    result = check_connection({"a": messages}, ["a"], log, closed_at_ns=250)
    assert result == Completeness(expected=2, received=1, missed=1)
    log.record("a", "3")  # sent after it closed: not owed, but acked, so not unexpected
    assert check_connection({"a": messages}, ["a"], log, closed_at_ns=250) == result


def test_expected_is_messages_times_subscribers() -> None:
    """Summed over connections: every acked message x every subscriber of its channel."""
    run = {"a": acked("1", "2"), "b": acked("3")}
    subscribers = {"a": 3, "b": 2}
    total = Completeness()
    for channel, count in subscribers.items():
        for _ in range(count):
            log = DeliveryLog()
            for mid, _sent in run[channel]:
                log.record(channel, mid)
            total += check_connection(run, [channel], log)
    assert total.expected == 2 * 3 + 1 * 2
    assert total.received == total.expected and total.complete


def test_rate_per_s() -> None:
    assert rate_per_s(50, 0, NS_PER_S // 2) == 100.0
    assert rate_per_s(5, None, 10) is None
    assert rate_per_s(5, 10, 10) is None
