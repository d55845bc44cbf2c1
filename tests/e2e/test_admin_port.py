"""Thespian's admin port: a taken port is picked again, or (if configured) fails cleanly.

``chime serve`` picks the admin's port itself (``admin_port: 0``); another
process can take that port before the admin binds it (seen once in CI, with two
servers starting side by side). These tests make that race certain, with a
plain listening socket on the port, and check that the server picks another
port, or, for a port the operator configured, exits with a clear error; and in
both cases that nothing of the failed attempt is left running.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml

from chime_actors.server import child_pids, session_members
from tests.support.servers import kill_group

pytestmark = pytest.mark.e2e

# Thespian gives up on an admin after ~11 s; a retry then starts one in ~1 s.
START_TIMEOUT_S = 60.0


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port with a listener that is not a Thespian admin (and never answers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        yield int(blocker.getsockname()[1])


def write_config(tmp: Path, admin_port: int = 0) -> Path:
    config = {
        "chat": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "workers": 1,
        "persisters": 1,
        "admin_port": admin_port,
        "storage": {"sqlite": {"path": str(tmp / "data" / "chime.db")}},
        "data_dir": str(tmp / "data"),
    }
    path = tmp / "chime.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(tmp: Path, args: list[str]) -> subprocess.Popen[bytes]:
    with (tmp / "server.log").open("wb") as log_file:
        return subprocess.Popen(
            [sys.executable, *args],
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def admins_on(port: int) -> list[int]:
    """Pids of Thespian admins for ``port`` (their title names it: ``ActorAddr-(T|:port)``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"|:{port})".encode() in cmdline:
                found.append(int(entry.name))
    return found


def log_text(tmp: Path) -> str:
    return (tmp / "server.log").read_text(errors="replace")


def test_a_picked_admin_port_that_is_taken_is_picked_again(tmp_path: Path, taken_port: int) -> None:
    # The server's first pick is the taken port (as if another process had won
    # the race for it); its next picks are its own.
    script = tmp_path / "serve.py"
    script.write_text(
        "import sys\n"
        "import chime_actors.server as server\n"
        f"picks = iter([{taken_port}])\n"
        "own_pick = server._free_port\n"
        "server._free_port = lambda: next(picks, None) or own_pick()\n"
        "from chime_actors.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    ports_file = tmp_path / "ports.json"
    config = write_config(tmp_path)
    proc = start(
        tmp_path, [str(script), "serve", "--config", str(config), "--ports-file", str(ports_file)]
    )
    sessions: set[int] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ports_file.exists():
            assert proc.poll() is None, log_text(tmp_path)
            assert time.monotonic() < deadline, log_text(tmp_path)
            time.sleep(0.1)
        sessions = set(child_pids(proc.pid))
        assert orjson.loads(ports_file.read_bytes())["chat"] > 0
        assert "trying another port" in log_text(tmp_path)
        proc.terminate()
        assert proc.wait(START_TIMEOUT_S) == 0, log_text(tmp_path)
    finally:
        leftovers = session_members(sessions, proc.pid)
        kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait(10)
    assert leftovers == [], f"processes left behind: {leftovers}"
    assert admins_on(taken_port) == []  # the failed attempt's admin is gone too


def test_a_configured_admin_port_that_is_taken_fails_with_a_clear_error(
    tmp_path: Path, taken_port: int
) -> None:
    config = write_config(tmp_path, admin_port=taken_port)
    proc = start(tmp_path, ["-m", "chime_actors", "serve", "--config", str(config)])
    try:
        status = proc.wait(START_TIMEOUT_S)
    finally:
        kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait(10)
    text = log_text(tmp_path)
    assert status == 1, text
    assert f"did not start on port {taken_port}" in text
    assert "Traceback" not in text
    assert session_members(set(), proc.pid) == []
    assert admins_on(taken_port) == []
