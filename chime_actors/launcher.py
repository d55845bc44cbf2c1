"""Start a ``chime serve`` child process and wait until it accepts connections.

Used by ``chime bench --start`` and by the test suite: the server runs in its own
session on free ports, its output goes to a log file, and it reports its ports
through ``--ports-file``. Stopping it (and checking nothing is left) stays with
the caller, who knows how strict to be.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from chime_actors.errors import ChimeError
from chime_actors.server import child_pids, session_members

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class LaunchError(ChimeError):
    """The server exited or did not report its ports in time; ``log`` is its tail."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}: {log}")
        self.log = log


@dataclass
class Launched:
    """A started server: its process, ports and the sessions its actors live in."""

    proc: subprocess.Popen[bytes]
    chat_port: int
    api_port: int
    log_path: Path
    sessions: set[int] = field(default_factory=set)


def launch_server(
    config_path: Path,
    workdir: Path,
    *,
    env_overrides: Mapping[str, str] | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Launched:
    """Run ``python -m chime_actors serve`` with ``config_path`` in ``workdir``.

    The child gets this environment without any ``CHIME_*`` variable (so the
    caller's shell cannot change the config behind its back), plus
    ``env_overrides``. Its log is ``workdir/server.log``.

    Raises:
        LaunchError: the server exited, or did not write its ports in time; the
            process is killed first.
    """
    ports_path = workdir / "ports.json"
    ports_path.unlink(missing_ok=True)
    log_path = workdir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIME_")}
    env.update(env_overrides or {})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "chime_actors", "serve"),
                *("--config", str(config_path), "--ports-file", str(ports_path)),
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    deadline = time.monotonic() + start_timeout_s
    while not ports_path.exists():
        if proc.poll() is not None:
            raise LaunchError("server exited at start", _tail(log_path))
        if time.monotonic() > deadline:
            stop_server(proc, set(child_pids(proc.pid)))
            raise LaunchError("server did not start in time", _tail(log_path))
        time.sleep(0.05)
    ports = orjson.loads(ports_path.read_bytes())
    # Thespian's admin detaches with setsid from a child of the server's main
    # process: that child's pid is the session every actor lives in.
    return Launched(proc, ports["chat"], ports["api"], log_path, set(child_pids(proc.pid)))


def stop_server(
    proc: subprocess.Popen[bytes], sessions: set[int], timeout_s: float = STOP_TIMEOUT_S
) -> tuple[bool, list[int]]:
    """SIGTERM the server and wait; then kill whatever of it is left.

    Returns whether it stopped within ``timeout_s`` and the pids that had to be
    killed afterwards (its process group and its actors' ``sessions``).
    """
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()  # the main process drains and reaps its actors on SIGTERM
    try:
        proc.wait(timeout_s)
        in_time = True
    except subprocess.TimeoutExpired:
        in_time = False
    leftovers = [pid for pid in session_members(sessions, proc.pid) if pid != os.getpid()]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(10)
    return in_time, leftovers


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
