"""``chime bench --start --services``: a tiny run on the real Redis and Cassandra."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.e2e.test_bench import processes_in
from tests.integration.services import ENV, load_services

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 240


def test_chatty_smoke_on_redis_and_cassandra(tmp_path: Path) -> None:
    load_services("redis", "cassandra")
    services = os.environ[ENV]
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIME_")}
    env["TMPDIR"] = str(tmp_path)  # where --start puts the server's data dir
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chime_actors",
            "bench",
            "--start",
            "--services",
            services,
            "--scenario=chatty",
            "--connections=20",
            "--channels=4",
            "--senders=4",
            "--rate=20",
            "--duration=2",
            "--server-workers=1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = orjson.loads(out.read_bytes())
    assert summary["backends"].startswith("redis+cassandra/bench_")
    assert summary["result"] == "OK"
    assert summary["sends"]["acked"] == 40  # 20 msg/s for 2 s
    assert summary["completeness"]["misses"] == 0
    assert summary["completeness"]["duplicates"] == 0
    assert summary["connections"]["alive_at_end"] == 20
    assert not processes_in(tmp_path), "the bench left its server running"
