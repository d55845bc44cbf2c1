"""What a run measured: the table people read, the JSON machines read, the verdict.

A run FAILED (exit 1) when a delivery was missed or duplicated, when a
connection could not be opened or was closed by the server, when a send was
never answered (neither ack nor error), or when a history page was wrong.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from chime_actors.bench.load import ACK_WAIT_S, PING_TIMEOUT_S
from chime_actors.bench.options import (
    BenchOptions,
    CheckReport,
    ConnectReport,
    HistoryReport,
    SendReport,
)
from chime_actors.bench.stats import Completeness, rate_per_s, summarize

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass
class Results:
    """Everything the phases of a run gathered (filled in by the runner)."""

    opts: BenchOptions
    url: str = ""
    backends: str | None = None  # bus+storage of a server the bench started
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    connect: list[ConnectReport] = field(default_factory=list)
    sends: list[SendReport] = field(default_factory=list)
    checks: list[CheckReport] = field(default_factory=list)
    history: list[HistoryReport] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    send_start_ns: int | None = None
    server_log: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The figures of the run as one JSON-ready dict."""
        opts = self.opts
        connected = sum(r.connected for r in self.connect)
        failed = sum(r.failed for r in self.connect)
        started = min((r.started_ns for r in self.connect), default=None)
        finished = max((r.finished_ns for r in self.connect), default=None)
        alive = sum(c.alive for c in self.checks)
        closed: Counter[str] = Counter()
        for check in self.checks:
            closed.update(check.closed)
        errors = _errors(self.connect, self.sends, self.checks)
        sent = sum(s.sent for s in self.sends)
        unacked = sum(s.unacked for s in self.sends)
        last_send = max((s.last_send_ns for s in self.sends if s.last_send_ns), default=None)
        last_recv = max((c.last_recv_ns for c in self.checks if c.last_recv_ns), default=None)
        delivered = sum(len(c.delivery_us) for c in self.checks)
        completeness = sum((c.completeness for c in self.checks), Completeness())
        memory = self._memory_figures(connected)
        out: dict[str, Any] = {
            "scenario": opts.scenario.value,
            "url": self.url,
            "started_server": opts.start,
            "backends": self.backends,
            "options": {
                "connections": opts.connections,
                "channels": opts.channels,
                "senders": opts.senders,
                "rate": opts.rate,
                "duration": opts.duration,
                "processes": opts.processes,
                "content_bytes": opts.content_bytes,
                "typists": opts.typists,
            },
            "connections": {
                "requested": opts.connections,
                "connected": connected,
                "failed": failed,
                "alive_at_end": alive,
                "closed_by_server": dict(closed),
                "connect_seconds": _seconds(started, finished),
                "connect_rate_per_s": _round(rate_per_s(connected, started, finished)),
            },
            "memory": memory,
            "errors": errors,
        }
        if opts.scenario.value != "idle":
            out["sends"] = {
                "total_planned": opts.total_messages,
                "sent": sent,
                "acked": sum(self.acked.values()),
                "unacked": unacked,
                "send_rate_per_s": _round(rate_per_s(sent, self.send_start_ns, last_send)),
                "schedule_lag": summarize(*(s.lag_us for s in self.sends)).to_ms(),
            }
            out["deliveries"] = {
                "delivered": delivered,
                "deliveries_per_s": _round(rate_per_s(delivered, self.send_start_ns, last_recv)),
                "drain_seconds": round(max((c.drain_s for c in self.checks), default=0.0), 3),
            }
            out["latency"] = {
                "send_to_deliver": summarize(*(c.delivery_us for c in self.checks)).to_ms(),
                "send_to_ack": summarize(*(s.ack_us for s in self.sends)).to_ms(),
            }
            # What the peers' harness reports too (shared/peers): CPU of every
            # server process during the run, per message stored and per delivery.
            cpu_s = memory.get("server_cpu_s")
            acked = out["sends"]["acked"]
            out["cpu"] = {
                "server_cpu_s": cpu_s,
                "us_per_message": _round(cpu_s / acked * 1e6) if cpu_s and acked else None,
                "us_per_delivery": (
                    _round(cpu_s / delivered * 1e6) if cpu_s and delivered else None
                ),
            }
            if opts.scenario.value == "presence":
                typing_received = sum(c.typing_received for c in self.checks)
                out["presence"] = {
                    "typists": opts.typists,
                    "typing_interval_s": opts.typing_interval,
                    "typing_sent": sum(s.typing_sent for s in self.sends),
                    "typing_received": typing_received,
                    "typing_received_per_s": _round(
                        typing_received / opts.duration if opts.duration else None
                    ),
                    "presence_changed_received": sum(c.presence_received for c in self.checks),
                }
            out["completeness"] = {
                "expected": completeness.expected,
                "received": completeness.received,
                "misses": completeness.missed,
                "duplicates": completeness.duplicates,
                "unexpected": completeness.unexpected,
            }
        if self.history:
            pages = sum(h.pages for h in self.history)
            elapsed = max(h.elapsed_s for h in self.history)
            history_errors: Counter[str] = Counter()
            for h in self.history:
                history_errors.update(h.errors)
            out["history"] = {
                "messages": sum(self.acked.values()),
                "pages": pages,
                "bad_pages": sum(h.bad_pages for h in self.history),
                "pages_per_s": round(pages / elapsed, 1) if elapsed > 0 else None,
                "latency": summarize(*(h.latency_us for h in self.history)).to_ms(),
                "errors": dict(history_errors),
                "examples": [e for h in self.history for e in h.examples][:5],
            }
        out["server_log_problems"] = dict(
            sorted(self.server_log.items(), key=lambda kv: -kv[1])[:10]
        )
        out["failures"] = failures(out)
        out["result"] = "FAILED" if out["failures"] else "OK"
        return out

    def _memory_figures(self, connected: int) -> dict[str, Any]:
        figures: dict[str, Any] = dict(self.memory)
        before = self.memory.get("before")
        after = self.memory.get("end") or self.memory.get("connected")
        if before and after and connected:
            delta_rss = after["rss_kib"] - before["rss_kib"]
            delta_pss = after["pss_kib"] - before["pss_kib"]
            figures["rss_total_mib"] = round(after["rss_kib"] / 1024, 1)
            figures["pss_total_mib"] = round(after["pss_kib"] / 1024, 1)
            figures["rss_per_connection_kib"] = round(delta_rss / connected, 2)
            figures["pss_per_connection_kib"] = round(delta_pss / connected, 2)
            figures["rss_total_per_connection_kib"] = round(after["rss_kib"] / connected, 2)
            if "cpu_s" in before and "cpu_s" in after:
                figures["server_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
        return figures


def _errors(
    connect: Iterable[ConnectReport], sends: Iterable[SendReport], checks: Iterable[CheckReport]
) -> dict[str, int]:
    """Errors by code; each process's counts are cumulative, so take its last report."""
    latest: dict[int, dict[str, int]] = {}
    for errors in (
        [r.errors for r in connect],
        [r.errors for r in sends],
        [r.errors for r in checks],
    ):
        for i, counts in enumerate(errors):
            latest[i] = counts
    total: Counter[str] = Counter()
    for counts in latest.values():
        total.update(counts)
    return dict(total)


def failures(summary: dict[str, Any]) -> list[str]:
    """Why a run FAILED (empty when it did not)."""
    why = []
    conns = summary["connections"]
    if conns["failed"]:
        why.append(f"{conns['failed']} of {conns['requested']} connections could not be opened")
    if conns["closed_by_server"]:
        why.append(f"connections closed by the server: {conns['closed_by_server']}")
    if conns["alive_at_end"] < conns["connected"] - sum(conns["closed_by_server"].values()):
        why.append(
            f"only {conns['alive_at_end']} of {conns['connected']} connections answered a ping "
            f"within {PING_TIMEOUT_S:g} s"
        )
    completeness = summary.get("completeness")
    if completeness and completeness["misses"]:
        why.append(f"{completeness['misses']} deliveries missed")
    if completeness and completeness["duplicates"]:
        why.append(f"{completeness['duplicates']} duplicate deliveries")
    sends = summary.get("sends")
    if sends and sends["unacked"]:
        why.append(f"{sends['unacked']} sends got neither ack nor error within {ACK_WAIT_S:g} s")
    history = summary.get("history")
    if history and history["bad_pages"]:
        why.append(f"{history['bad_pages']} history pages were wrong")
    if history and history["errors"]:
        why.append(f"history errors: {history['errors']}")
    return why


def write_report(results: Results) -> int:
    """Print the table (and write the JSON); return the exit status."""
    summary = results.summary()
    sys.stdout.write(format_table(summary))
    sys.stdout.flush()
    if results.opts.json_path:
        Path(results.opts.json_path).write_bytes(
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        )
    return EXIT_FAILED if summary["failures"] else EXIT_OK


def format_table(summary: dict[str, Any]) -> str:
    """The human-readable report."""
    rows: list[tuple[str, str]] = []
    opts = summary["options"]
    rows.append(("scenario", f"{summary['scenario']} against {summary['url']}"))
    if summary.get("backends"):
        rows.append(("backends", str(summary["backends"])))
    rows.append(
        (
            "load",
            f"{opts['connections']} conns, {opts['channels']} channels, "
            f"{opts['senders']} senders, {opts['rate']:g} msg/s, {opts['duration']:g} s, "
            f"{opts['processes']} load processes",
        )
    )
    conns = summary["connections"]
    rows.append(
        (
            "connections",
            f"{conns['connected']}/{conns['requested']} opened in {conns['connect_seconds']} s "
            f"({conns['connect_rate_per_s']} conn/s); {conns['alive_at_end']} alive at end",
        )
    )
    memory = summary["memory"]
    if "rss_total_mib" in memory:
        rows.append(
            (
                "server memory",
                f"RSS {memory['rss_total_mib']} MiB (PSS {memory['pss_total_mib']} MiB) "
                f"in {len(memory['end' if 'end' in memory else 'connected']['processes'])} "
                "processes",
            )
        )
        rows.append(
            (
                "per connection",
                f"+{memory['rss_per_connection_kib']} KiB RSS "
                f"(+{memory['pss_per_connection_kib']} KiB PSS) over the idle server; "
                f"{memory['rss_total_per_connection_kib']} KiB RSS total/conn",
            )
        )
    if "server_cpu_s" in memory:
        rows.append(("server CPU", f"{memory['server_cpu_s']} CPU-s during the run"))
    if "sends" in summary:
        sends = summary["sends"]
        rows.append(
            (
                "sends",
                f"{sends['sent']}/{sends['total_planned']} sent ({sends['send_rate_per_s']}/s), "
                f"{sends['acked']} acked, {sends['unacked']} unanswered; "
                f"schedule lag p99 {sends['schedule_lag']['p99_ms']} ms",
            )
        )
        deliveries = summary["deliveries"]
        rows.append(
            (
                "deliveries",
                f"{deliveries['delivered']} ({deliveries['deliveries_per_s']}/s); "
                f"drained in {deliveries['drain_seconds']} s",
            )
        )
        for name, key in (("send→deliver", "send_to_deliver"), ("send→ack", "send_to_ack")):
            rows.append((name, _latency(summary["latency"][key])))
        cpu = summary["cpu"]
        if cpu["us_per_message"] is not None:
            rows.append(
                (
                    "server CPU per",
                    f"message {cpu['us_per_message']} µs, delivery {cpu['us_per_delivery']} µs",
                )
            )
        if "presence" in summary:
            p = summary["presence"]
            rows.append(
                (
                    "presence",
                    f"{p['typists']} typists every {p['typing_interval_s']:g} s: "
                    f"{p['typing_sent']} typing sent, {p['typing_received']} received "
                    f"({p['typing_received_per_s']}/s); "
                    f"{p['presence_changed_received']} presence_changed received",
                )
            )
        c = summary["completeness"]
        rows.append(
            (
                "completeness",
                f"expected {c['expected']}, received {c['received']}, misses {c['misses']}, "
                f"duplicates {c['duplicates']}, unexpected {c['unexpected']}",
            )
        )
    if "history" in summary:
        h = summary["history"]
        rows.append(
            (
                "history",
                f"{h['pages']} pages over {h['messages']} messages ({h['pages_per_s']}/s), "
                f"{h['bad_pages']} wrong",
            )
        )
        rows.append(("history page", _latency(h["latency"])))
    rows.append(("errors", _counts(summary["errors"])))
    if summary["server_log_problems"]:
        rows.append(("server log", _counts(summary["server_log_problems"])))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    if summary["failures"]:
        lines.append("FAILED: " + "; ".join(summary["failures"]))
    else:
        lines.append("OK")
    return "\n".join(lines) + "\n"


def _latency(figures: dict[str, Any]) -> str:
    if not figures["count"]:
        return "no samples"
    return (
        f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, p99 {figures['p99_ms']} ms, "
        f"max {figures['max_ms']} ms ({figures['count']} samples)"
    )


def _counts(counts: dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _seconds(start: int | None, end: int | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start) / 1e9, 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
