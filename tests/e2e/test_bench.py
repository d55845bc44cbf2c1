"""``chime bench`` against a server it starts itself: tiny runs of each scenario.

Each run must exit 0 (no miss, no duplicate, every connection alive) and leave
no process of its server behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.e2e

RUN_TIMEOUT_S = 240


def run_bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run ``chime bench --start ARGS --json``; its temporary files live in tmp_path."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIME_")}
    env["TMPDIR"] = str(tmp_path)  # where --start puts the server's data dir
    proc = subprocess.run(
        [sys.executable, "-m", "chime_actors", "bench", "--start", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        cwd=tmp_path,
    )
    summary = orjson.loads(out.read_bytes()) if out.exists() else None
    assert not processes_in(tmp_path), "the bench left its server running"
    return proc, summary


def processes_in(directory: Path) -> list[int]:
    """Pids whose working directory is under ``directory`` (the started server's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(directory)):
                found.append(int(entry.name))
    return found


def test_chatty_run_is_complete(tmp_path: Path) -> None:
    proc, summary = run_bench(
        tmp_path,
        "--scenario=chatty",
        "--connections=20",
        "--channels=4",
        "--senders=4",
        "--rate=20",
        "--duration=3",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["result"] == "OK"
    assert summary["connections"]["connected"] == 20
    assert summary["connections"]["alive_at_end"] == 20
    assert summary["sends"]["acked"] == 60  # 20 msg/s for 3 s
    completeness = summary["completeness"]
    assert completeness["expected"] == 60 * 5  # every message x the 5 members of its channel
    assert completeness["received"] == completeness["expected"]
    assert completeness["misses"] == 0
    assert completeness["duplicates"] == 0
    assert summary["latency"]["send_to_deliver"]["count"] == 300
    assert summary["memory"]["rss_total_mib"] > 0
    assert "OK" in proc.stdout and "send→deliver" in proc.stdout


def test_history_pages_are_timed_and_right(tmp_path: Path) -> None:
    proc, summary = run_bench(
        tmp_path,
        "--scenario=history",
        "--connections=2",
        "--senders=2",
        "--rate=200",
        "--history-messages=300",
        "--history-pages=40",
        "--history-concurrency=2",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    history = summary["history"]
    assert history["messages"] == 300
    assert history["pages"] == 40
    assert history["bad_pages"] == 0
    assert history["latency"]["p99_ms"] is not None
    assert summary["completeness"]["misses"] == 0


def test_idle_holds_connections_in_two_processes(tmp_path: Path) -> None:
    proc, summary = run_bench(
        tmp_path,
        "--scenario=idle",
        "--connections=50",
        "--channels=5",
        "--processes=2",
        "--duration=1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["connections"]["alive_at_end"] == 50
    assert summary["memory"]["rss_per_connection_kib"] is not None
    assert "sends" not in summary


def test_presence_run_counts_typing_and_presence_beside_complete_delivery(
    tmp_path: Path,
) -> None:
    proc, summary = run_bench(
        tmp_path,
        "--scenario=presence",
        "--connections=20",
        "--senders=2",
        "--typists=5",
        "--rate=10",
        "--duration=3",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert summary["completeness"]["misses"] == 0
    presence = summary["presence"]
    assert presence["typists"] == 5 and presence["typing_sent"] >= 5
    # Each typist passes at least once, to the 19 other members.
    assert presence["typing_received"] >= 5 * 19
    # 20 distinct users joined one room: each later one was announced to those before.
    assert presence["presence_changed_received"] >= 20 * 19 // 2
    assert summary["errors"] == {}
    assert "typists" in proc.stdout


def test_bad_options_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "chime_actors", "bench", "--scenario=chatty"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "--url" in proc.stderr
