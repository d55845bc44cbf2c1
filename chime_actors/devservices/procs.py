"""Process, file and package helpers shared by ``bin/services``' services."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# A service's record in services.json (host, port, ... : see docs/services.md).
Record = dict[str, Any]

STOP_TIMEOUT = 30.0


def log(msg: str) -> None:
    """Progress for people, on stdout."""
    print(msg, flush=True)


def err(msg: str) -> None:
    """A problem, on stderr."""
    print(f"services: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A free loopback TCP port, picked by binding port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback TCP ports, all bound at once so they differ."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def run_quiet(
    cmd: list[str], logfile: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> None:
    """Run ``cmd``, its output appended to ``logfile``; RuntimeError (with the tail) on failure."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        out.write(("\n$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        rc = subprocess.call(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=timeout,
        )
    if rc != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(
            f"{' '.join(cmd[:3])}... failed (exit {rc}); see {logfile}:\n  " + "\n  ".join(tail)
        )


_apt_updated = False


def apt_install(packages: list[str], logfile: Path) -> None:
    """Install Debian packages (as root, or with ``sudo -n``), ``apt-get update`` once."""
    global _apt_updated
    if os.geteuid() != 0 and not shutil.which("sudo"):
        raise RuntimeError(f"need {packages} installed (apt-get as root)")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        run_quiet([*prefix, "apt-get", "update", "-q"], logfile, env=env, timeout=600)
        _apt_updated = True
    run_quiet(
        [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        logfile,
        env=env,
        timeout=900,
    )


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        pass
    return True


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid`` from /proc, empty when unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile``, or None."""
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> Record:
    """The JSON object in ``path``; empty when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Record) -> None:
    """Write ``data`` atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def tail(path: Path, n: int = 20) -> str:
    """The last ``n`` lines of ``path``, indented for an error message."""
    try:
        return "\n  ".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_pid(pid: int, name: str, timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM ``pid``, SIGKILL after ``timeout``; how it went, for the log."""
    if not pid_alive(pid):
        return "was not running"
    t0 = time.monotonic()
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return "was not running"
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return f"stopped in {time.monotonic() - t0:.1f}s"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid) and time.monotonic() - t0 < timeout + 10:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    return f"killed (SIGKILL) after {timeout:.0f}s"
