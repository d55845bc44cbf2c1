"""The server stops cleanly and leaves no process behind, whatever happened."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.server_process import group_pids, running_server

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
