"""The server under test: started by the bench (``--start``) or given (``--url``).

Memory is read from ``/proc``: the sum of the RSS (and of the PSS, which counts a
page shared by forked processes once) of every process of the server. With
``--start`` those are the main process and every member of the Thespian sessions
its children opened (the same rule ``chime serve`` uses to reap them, see
:mod:`chime_actors.server`). With ``--url`` they are the processes listening on
the chat port (the gateways) and every member of their sessions: the actor system
without the ``chime: main`` launcher (~30 MB, constant).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml

from chime_actors.errors import ChimeError
from chime_actors.launcher import LaunchError, launch_server, stop_server
from chime_actors.server import session_members

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0


class BenchTargetError(ChimeError):
    """The server under test could not be started or found."""


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One server process: its title and memory in KiB."""

    pid: int
    title: str
    rss_kib: int
    pss_kib: int
    cpu_s: float  # user + system CPU time since the process started


@dataclass(frozen=True, slots=True)
class MemorySample:
    """Memory of every server process at one moment."""

    processes: tuple[ProcessMemory, ...]

    @property
    def rss_kib(self) -> int:
        return sum(p.rss_kib for p in self.processes)

    @property
    def pss_kib(self) -> int:
        return sum(p.pss_kib for p in self.processes)

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.processes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rss_kib": self.rss_kib,
            "pss_kib": self.pss_kib,
            "cpu_s": round(self.cpu_s, 2),
            "processes": [
                {
                    "pid": p.pid,
                    "title": p.title,
                    "rss_kib": p.rss_kib,
                    "pss_kib": p.pss_kib,
                    "cpu_s": round(p.cpu_s, 2),
                }
                for p in self.processes
            ],
        }


class Target:
    """A server to load: its chat URL and a way to find its processes."""

    def __init__(self, url: str, main_pid: int | None = None, sessions: set[int] | None = None):
        self.url = url
        self.main_pid = main_pid
        self.sessions = sessions or set()
        self.log_path: Path | None = None
        self.backends: str | None = None  # bus+storage of a server we started

    def pids(self) -> list[int]:
        """Live pids of the server's processes."""
        if self.main_pid is not None:
            found = set(session_members(self.sessions, self.main_pid))
            found.add(self.main_pid)
            return sorted(found)
        port = urlsplit(self.url).port or 80
        listeners = pids_listening_on(port)
        sessions = {s for s in (_session_of(pid) for pid in listeners) if s is not None}
        return sorted(set(listeners) | set(session_members(sessions)))

    def memory(self) -> MemorySample:
        """Memory of every server process now."""
        found = []
        for pid in self.pids():
            sample = process_memory(pid)
            if sample is not None:
                found.append(sample)
        return MemorySample(tuple(found))

    def log_problems(self) -> dict[str, int]:
        """Warning-or-worse log lines of a server we started, by level and message."""
        if self.log_path is None or not self.log_path.exists():
            return {}
        problems: dict[str, int] = {}
        for raw in self.log_path.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict) and line.get("level") in ("warning", "error", "critical"):
                key = f"{line.get('level')}: {line.get('event') or line.get('message')}"
                problems[key] = problems.get(key, 0) + 1
        return problems


def process_memory(pid: int) -> ProcessMemory | None:
    """RSS and PSS of ``pid`` in KiB and its CPU time, or None if it is gone."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip().decode()
        rss = _kib_field(Path(f"/proc/{pid}/status").read_text(), "VmRSS:")
        try:
            pss = _kib_field(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss:")
        except OSError:
            pss = rss
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return ProcessMemory(pid, title, rss, pss, cpu)


def _kib_field(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name):
            return int(line.split()[1])
    raise ValueError(f"no {name}")


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[3])


def pids_listening_on(port: int) -> list[int]:
    """Pids holding a TCP socket that listens on ``port`` (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.append(int(entry.name))
                        break
    return found


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (``--server-config``); BenchTargetError otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise BenchTargetError(f"--server-config {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchTargetError(f"--server-config {path}: expected a mapping at the top")
    return data


def load_services_file(path: str | Path) -> dict[str, Any]:
    """``bin/services``' services.json; BenchTargetError unless it has redis and cassandra."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise BenchTargetError(f"--services {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(data.get(name), dict) for name in ("redis", "cassandra")
    ):
        raise BenchTargetError(f"--services {path}: expected redis and cassandra entries")
    return data


def services_layer(services: dict[str, Any], keyspace: str) -> dict[str, Any]:
    """Config that puts the server on the Redis bus and Cassandra store of ``services``.

    A fresh ``keyspace`` per run (created by the server at start), consistency
    ONE: the single node of ``bin/services``.
    """
    redis, cassandra = services["redis"], services["cassandra"]
    cassandra_config: dict[str, Any] = {
        "hosts": [cassandra["host"]],
        "port": int(cassandra["port"]),
        "keyspace": keyspace,
        "consistency": "ONE",
    }
    if cassandra.get("protocol_version") is not None:
        cassandra_config["protocol_version"] = int(cassandra["protocol_version"])
    redis_config: dict[str, Any] = {"host": redis["host"], "port": int(redis["port"])}
    if redis.get("password"):
        redis_config["password"] = redis["password"]
    return {
        "bus": {"backend": "redis", "redis": redis_config},
        "storage": {"backend": "cassandra", "cassandra": cassandra_config},
    }


def merge_config(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base`` key by key (mappings recurse, anything else replaces)."""
    merged = dict(base)
    for key, value in layer.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            merged[key] = merge_config(current, value)
        else:
            merged[key] = value
    return merged


def bench_server_config(
    tmp: Path, workers: int | None, layers: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The config of a ``--start`` server: the bench's defaults, ``layers`` over them.

    The bench's own choices come back on top: free ports on 127.0.0.1 (the URL
    it connects to) and the data directory (and SQLite file) in ``tmp``.
    """
    data = tmp / "data"
    config: dict[str, Any] = {
        "chat": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "storage": {"backend": "sqlite", "sqlite": {"path": str(data / "chime.db")}},
        "bus": {"backend": "local"},
        "data_dir": str(data),
        "limits": {"messages_per_10s": 0, "connects_per_ip_per_10s": 0},
    }
    if workers is not None:
        config["workers"] = workers
    for layer in layers:
        config = merge_config(config, layer)
    owned: dict[str, Any] = {
        "chat": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "storage": {"sqlite": {"path": str(data / "chime.db")}},
        "data_dir": str(data),
    }
    if workers is not None:
        owned["workers"] = workers
    return merge_config(config, owned)


def describe_backends(config: dict[str, Any]) -> str:
    """``bus+storage`` of a config (``local+sqlite``, ``redis+cassandra/<keyspace>``)."""
    bus = str(config.get("bus", {}).get("backend", "local"))
    storage = config.get("storage", {})
    backend = str(storage.get("backend", "sqlite"))
    if backend == "cassandra":
        backend += f"/{storage.get('cassandra', {}).get('keyspace', 'chime')}"
    return f"{bus}+{backend}"


@contextlib.contextmanager
def started_server(workers: int | None, layers: Sequence[dict[str, Any]] = ()) -> Iterator[Target]:
    """Run ``chime serve`` on free ports with a temporary data directory; stop it after.

    Limits (messages per connection, connects per address) are off: the load
    generator is one address sending on purpose. ``layers`` (``--services``,
    ``--server-config``) are merged over that config, in order.
    """
    with tempfile.TemporaryDirectory(prefix="chime-bench-") as tmp_name:
        tmp = Path(tmp_name)
        config = bench_server_config(tmp, workers, layers)
        config_path = tmp / "chime.yaml"
        config_path.write_text(yaml.safe_dump(config))
        try:
            launched = launch_server(config_path, tmp, start_timeout_s=START_TIMEOUT_S)
        except LaunchError as exc:
            raise BenchTargetError(str(exc)) from exc
        proc, sessions = launched.proc, launched.sessions
        try:
            target = Target(f"ws://127.0.0.1:{launched.chat_port}/", proc.pid, sessions)
            target.log_path = launched.log_path
            target.backends = describe_backends(config)
            yield target
        finally:
            _stop(proc, sessions)


def _stop(proc: subprocess.Popen[bytes], sessions: set[int]) -> None:
    """SIGTERM and wait; then make sure nothing of the server is left."""
    in_time, leftovers = stop_server(proc, sessions, STOP_TIMEOUT_S)
    if not in_time:
        print("chime bench: the server did not stop in time; killing it", file=sys.stderr)
    if leftovers:
        print(f"chime bench: killed leftover server processes {leftovers}", file=sys.stderr)
