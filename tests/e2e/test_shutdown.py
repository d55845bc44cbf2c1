"""The server stops cleanly and leaves no process behind, whatever happened."""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
from pathlib import Path

import pytest

from chime_actors.open_files import RESERVE_FDS
from tests.support.servers import ServerProcess, group_pids, running_server

pytestmark = pytest.mark.e2e


def test_sigint_to_main_stops_with_status_0(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        assert server.pids_by_title("chime: supervisor")
        assert len(server.pids_by_title("chime: gateway 1")) == 1
        assert server.stop(signal.SIGINT) == 0
    assert any(line.get("message") == "all actors stopped" for line in server.log_lines())


def test_killed_supervisor_orphans_are_reaped(tmp_path: Path) -> None:
    """SIGKILL the middle actor: its children are orphaned, yet nothing survives."""
    with running_server(tmp_path) as server:
        (supervisor,) = server.pids_by_title("chime: supervisor")
        gateways = server.pids_by_title("chime: gateway 1") + server.pids_by_title(
            "chime: gateway 2"
        )
        assert len(gateways) == 2
        os.kill(supervisor, signal.SIGKILL)
        # The main process notices the supervisor is gone and exits 1 by itself.
        status = server.proc.wait(60)
        server.stopped_status = status
        assert status == 1
        deadline = time.monotonic() + 10
        while group_pids(server.proc.pid, server.sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_pids(server.proc.pid, server.sessions) == []
    messages = [line.get("message") for line in server.log_lines()]
    assert "supervisor does not answer" in messages


def _gone_within(server: ServerProcess, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := group_pids(server.proc.pid, server.sessions)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_sighup_stops_cleanly_like_sigterm(tmp_path: Path) -> None:
    """The terminal closing must not leave an actor tree serving without its main."""
    with running_server(tmp_path) as server:
        assert server.stop(signal.SIGHUP) == 0
    assert any(line.get("message") == "all actors stopped" for line in server.log_lines())


def test_sigkilled_main_takes_every_process_with_it(tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) on ``chime: main``: all gone within 3 s, ports
    free, and the run directory of the lane sockets removed."""
    with running_server(tmp_path) as server:
        (ready,) = [line for line in server.log_lines() if line.get("message") == "chime is ready"]
        run_dir = Path(ready["runDir"])
        assert run_dir.is_dir() and any(run_dir.glob("*.sock")), run_dir
        actors = group_pids(server.proc.pid, server.sessions)
        assert len(actors) >= 6, actors  # admin, logger, supervisor, gateways, persisters, api
        os.kill(server.proc.pid, signal.SIGKILL)
        server.stopped_status = server.proc.wait(10)
        started = time.monotonic()
        assert _gone_within(server, 3.0) == []
        assert time.monotonic() - started <= 3.0
        for port in (server.chat_port, server.api_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
        assert not run_dir.exists(), sorted(run_dir.iterdir())


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


def test_the_open_file_limit_is_raised_for_every_gateway(tmp_path: Path) -> None:
    """Each gateway may hold its share of chat.max_connections sockets."""
    max_connections = 6000  # 3,000 per gateway + the reserve: above a 1024 default
    with running_server(tmp_path, {"chat.max_connections": max_connections}) as server:
        gateways = server.pids_by_title("chime: gateway 1") + server.pids_by_title(
            "chime: gateway 2"
        )
        assert len(gateways) == 2
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        needed = max_connections // 2 + RESERVE_FDS
        for pid in gateways:
            assert _soft_nofile(pid) >= min(needed, hard)
        if hard < needed:
            assert any("open-file limit" in str(line.get("message")) for line in server.log_lines())
