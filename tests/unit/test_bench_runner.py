"""How ``chime bench`` splits a run over processes and judges the result."""

from __future__ import annotations

import argparse
import dataclasses
from array import array

import pytest

from chime_actors.bench.options import (
    BenchOptions,
    BenchUsageError,
    CheckReport,
    ConnectReport,
    Scenario,
    SendReport,
    add_bench_arguments,
    options_from_args,
)
from chime_actors.bench.report import Results, format_table
from chime_actors.bench.runner import make_plans, merge_acked, split
from chime_actors.bench.stats import Completeness


def parse(*argv: str) -> BenchOptions:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)), "run")


def test_scenario_defaults_fill_what_is_not_given() -> None:
    opts = parse("--start", "--scenario", "fanout", "--rate", "5")
    assert (opts.connections, opts.channels, opts.senders, opts.rate) == (1000, 4, 4, 5.0)
    assert opts.total_messages == 150  # 30 s at 5 msg/s
    assert parse("--start", "--scenario", "idle", "--senders", "3").senders == 0
    assert parse("--start", "--connections", "12000").processes == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["--scenario", "chatty"],  # neither --url nor --start
        ["--start", "--connections", "10", "--channels", "11"],
        ["--start", "--connections", "10", "--senders", "11"],
        ["--start", "--connections", "10", "--processes", "11"],
        ["--start", "--rate", "0"],
        ["--start", "--scenario", "chatty", "--typists", "3"],  # only the presence scenario
        ["--start", "--scenario", "presence", "--connections", "10", "--typists", "7"],
        ["--start", "--scenario", "presence", "--typing-interval", "0"],
    ],
)
def test_nonsense_is_refused(argv: list[str]) -> None:
    with pytest.raises(BenchUsageError):
        parse(*argv)


def test_plans_spread_connections_channels_and_senders() -> None:
    opts = parse("--start", "--connections", "10", "--channels", "3", "--senders", "4")
    opts = dataclasses.replace(opts, processes=2)
    plans = make_plans(opts, "ws://x/")
    assert [i for plan in plans for i, _ in plan.connections] == [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]
    assert plans[0].connections[1] == (2, "run-2")  # connection i joins channel i % M
    assert plans[1].connections[0] == (1, "run-1")
    # sender s is connection s, in the process that holds connection s
    assert plans[0].senders == ((0, 0), (2, 2)) and plans[1].senders == ((1, 1), (3, 3))
    assert all(plan.total_senders == 4 for plan in plans)


def test_the_presence_scenario_types_after_the_senders() -> None:
    opts = parse("--start", "--scenario", "presence", "--processes", "2")
    assert (opts.connections, opts.channels, opts.senders, opts.typists) == (500, 1, 4, 50)
    plans = make_plans(opts, "ws://x/")
    typists = sorted(i for plan in plans for i in plan.typists)
    assert typists == list(range(4, 54))
    assert all(i % 2 == plan.index for plan in plans for i in plan.typists)
    assert parse("--start", "--scenario", "presence", "--typists", "0").typists == 0


def test_split() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 4) == [1, 1, 0, 0]


def test_merge_acked_joins_every_process() -> None:
    def report(acked: dict[str, list[tuple[str, int]]]) -> SendReport:
        return SendReport(0, acked, array("q"), array("q"), {}, 0, None, None)

    merged = merge_acked([report({"a": [("1", 1)]}), report({"a": [("2", 2)], "b": [("3", 3)]})])
    assert merged == {"a": [("1", 1), ("2", 2)], "b": [("3", 3)]}


def results_with(completeness: Completeness, unacked: int = 0) -> Results:
    opts = parse("--start", "--connections", "2", "--channels", "1", "--senders", "1")
    results = Results(opts, url="ws://x/")
    results.connect = [ConnectReport(2, 0, {}, 0, 1_000_000)]
    results.sends = [
        SendReport(3, {"run-0": []}, array("q", [1000]), array("q"), {}, unacked, 1, 2)
    ]
    results.checks = [
        CheckReport(completeness, array("q", [2000]), 1, 3, 2, {}, {"rate_limited": 1}, 0.0)
    ]
    results.send_start_ns = 0
    return results


def test_a_complete_run_is_ok() -> None:
    summary = results_with(Completeness(expected=6, received=6)).summary()
    assert summary["result"] == "OK" and summary["failures"] == []
    assert summary["errors"] == {"rate_limited": 1}
    assert format_table(summary).endswith("OK\n")


@pytest.mark.parametrize(
    ("completeness", "unacked", "why"),
    [
        (Completeness(expected=6, received=5, missed=1), 0, "1 deliveries missed"),
        (Completeness(expected=6, received=6, duplicates=2), 0, "2 duplicate deliveries"),
        (Completeness(expected=6, received=6), 1, "1 sends got neither ack nor error within 15 s"),
    ],
)
def test_misses_duplicates_and_silence_fail_the_run(
    completeness: Completeness, unacked: int, why: str
) -> None:
    summary = results_with(completeness, unacked).summary()
    assert summary["result"] == "FAILED"
    assert why in summary["failures"]
    assert f"FAILED: {why}" in format_table(summary)


def test_idle_scenario_reports_no_sends() -> None:
    opts = parse("--start", "--scenario", "idle", "--connections", "2", "--channels", "1")
    assert opts.scenario is Scenario.IDLE
    results = Results(opts)
    results.connect = [ConnectReport(2, 0, {}, 0, 1)]
    results.checks = [CheckReport(Completeness(), array("q"), None, None, 2, {}, {}, 0.0)]
    results.memory = {
        "before": {"rss_kib": 1000, "pss_kib": 800, "processes": []},
        "end": {"rss_kib": 1040, "pss_kib": 830, "processes": []},
    }
    summary = results.summary()
    assert "sends" not in summary and summary["result"] == "OK"
    assert summary["memory"]["rss_per_connection_kib"] == 20.0
    assert summary["memory"]["pss_per_connection_kib"] == 15.0


def test_server_cpu_is_reported_per_message_and_per_delivery() -> None:
    results = results_with(Completeness(expected=6, received=6))
    results.acked["run-0"] = 3
    results.memory = {
        "before": {"rss_kib": 1000, "pss_kib": 800, "cpu_s": 10.0, "processes": []},
        "end": {"rss_kib": 1040, "pss_kib": 830, "cpu_s": 10.5, "processes": []},
    }
    summary = results.summary()
    acked, delivered = summary["sends"]["acked"], summary["deliveries"]["delivered"]
    assert acked and delivered
    assert summary["cpu"] == {
        "server_cpu_s": 0.5,
        "us_per_message": round(0.5 / acked * 1e6, 1),
        "us_per_delivery": round(0.5 / delivered * 1e6, 1),
    }
    assert "server CPU per" in format_table(summary)
