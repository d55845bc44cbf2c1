"""Start real ``chime serve``s, each in its own process group, on free ports.

``running_server`` runs one; ``running_hosts`` runs several on one configuration
(hosts of one deployment, sharing its Redis and Cassandra).

A test that fails while servers run gets the tail of each one's log in its report
(``server_logs_to_report``, read by the hook in tests/conftest.py): the log is
gone with the temporary directory once the run ends, and a flake in CI is
otherwise a bare timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from chime_actors.devservices.procs import free_ports
from chime_actors.launcher import LaunchError, launch_server
from chime_actors.server import session_members

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
#: Lines of a server's log shown with a failed test.
LOG_TAIL_LINES = 60


@dataclass
class ServerProcess:
    """A running server: its ports, its process, where it logs."""

    proc: subprocess.Popen[bytes]
    chat_port: int
    api_port: int
    log_path: Path
    workdir: Path
    sessions: set[int] = field(default_factory=set)
    stopped_status: int | None = field(default=None)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.chat_port}/"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                lines.append(orjson.loads(raw))
        return lines

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, as written (empty if there is none yet)."""
        try:
            raw = self.log_path.read_bytes()
        except OSError:
            return ""
        return b"\n".join(raw.splitlines()[-lines:]).decode(errors="replace")

    def pids_by_title(self, title: str) -> list[int]:
        """Pids of this server's processes whose ``ps`` title is ``title``."""
        found = []
        for pid in group_pids(self.proc.pid, self.sessions):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
            except OSError:
                continue
            if cmdline.decode(errors="replace") == title:
                found.append(pid)
        return found

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it; returns its exit status."""
        if self.stopped_status is not None:
            return self.stopped_status
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.stopped_status = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            self.stopped_status = self.proc.wait(10)
            raise AssertionError("server did not stop in time") from None
        return self.stopped_status


_live: list[ServerProcess] = []
_left_by_errors: list[tuple[Path, str]] = []


def server_logs_to_report() -> list[tuple[Path, str]]:
    """Log tails for a test's report: of the servers still running, and of those
    whose ``with`` block an exception left since the last call (which it clears)."""
    tails = list(_left_by_errors)
    _left_by_errors.clear()
    return tails + [(server.log_path, server.log_tail()) for server in _live]


def group_pids(pgid: int, sessions: set[int] | None = None) -> list[int]:
    """Live processes of process group ``pgid`` or of any of ``sessions``.

    Thespian's admin detaches with setsid, so the actors are found by session: its
    id is the pid of a child of the server's main process (see chime_actors.server).
    """
    return session_members(sessions or set(), pgid)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def restart_overrides(tmp: Path) -> dict[str, Any]:
    """Overrides for one server that is stopped and started again, as an operator would.

    Two free ports are chosen once, now, so that every start binds the same ones
    (its clients reconnect to where the server was), and the data (SQLite) is in
    ``tmp/data`` whatever each run's own directory. Start each run with
    ``running_server(tmp / "run1", overrides)``, ``tmp / "run2"``...: each keeps
    its own config and log.
    """
    chat_port, api_port = free_ports(2)
    data = tmp / "data"
    return {
        "chat.port": chat_port,
        "api.port": api_port,
        "storage.sqlite.path": str(data / "chime.db"),
        "data_dir": str(data),
    }


@contextlib.contextmanager
def running_server(
    tmp: Path,
    overrides: dict[str, Any] | None = None,
    workers: int = 2,
    *,
    config_file: Path | None = None,
    env_overrides: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run ``chime serve`` on free ports with its data in ``tmp``; stop it after.

    Normally the server gets a generated config (test defaults plus
    ``overrides``). With ``config_file`` it runs that file as it is, and only
    ``env_overrides`` (``CHIME_*`` variables) adapt it, as an operator would.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "chat": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "workers": workers,
        # Two, not the default one: channels owned by different persisters, and
        # the faults of one while the other goes on, are what the tests exercise.
        "persisters": 2,
        "storage": {"sqlite": {"path": str(tmp / "data" / "chime.db")}},
        "data_dir": str(tmp / "data"),
        "testing": {"fault_injection": True},
        # Load, fault and resume tests send far past the per-connection default;
        # the tests of the limits themselves set them (test_rate_limits.py).
        "limits": {"messages_per_10s": 0},
    }
    for key, value in (overrides or {}).items():
        section = config
        *parents, last = key.split(".")
        for name in parents:
            section = section.setdefault(name, {})
        section[last] = value
    if config.get("auth", {}).get("mode") == "jwt" and "testing.fault_injection" not in (
        overrides or {}
    ):
        # The server refuses fault injection outside insecure (loopback) mode.
        config["testing"]["fault_injection"] = False
    config_path = tmp / "chime.yaml"
    config_path.write_text(yaml.safe_dump(config))
    if config_file is not None:
        config_path = config_file
    try:
        launched = launch_server(
            config_path, tmp, env_overrides=env_overrides, start_timeout_s=START_TIMEOUT_S
        )
    except LaunchError as exc:
        raise AssertionError(str(exc)) from exc
    proc = launched.proc
    server = None
    try:
        server = ServerProcess(
            proc, launched.chat_port, launched.api_port, launched.log_path, tmp, launched.sessions
        )
        _live.append(server)
        try:
            yield server
        except BaseException:
            # Read now: the report is made after the server stopped, and its
            # directory may be a temporary one the test's own ``with`` removes.
            _left_by_errors.append((server.log_path, server.log_tail()))
            raise
    finally:
        if server is not None:
            _live.remove(server)
            server.stop()
        else:
            kill_group(proc.pid)
            proc.wait(10)
        # Nothing of the server may outlive it: not an actor, not Thespian's admin.
        sessions = server.sessions if server is not None else set()
        leftovers = group_pids(proc.pid, sessions)
        kill_group(proc.pid)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert leftovers == [], f"processes left behind: {leftovers}"


@contextlib.contextmanager
def running_hosts(
    workdirs: Iterable[Path], overrides: dict[str, Any], workers: int = 1
) -> Iterator[tuple[ServerProcess, ...]]:
    """One ``running_server`` per directory of ``workdirs``, all on ``overrides``.

    They start in order and stop in reverse; each checks that nothing of it
    outlives it.
    """
    with contextlib.ExitStack() as stack:
        yield tuple(
            stack.enter_context(running_server(workdir, overrides, workers)) for workdir in workdirs
        )
