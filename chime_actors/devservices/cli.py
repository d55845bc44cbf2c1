"""``bin/services up|down|status``: the commands (docs/services.md)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import chime_actors
import chime_actors.devservices
from chime_actors.devservices.cassandra_server import answers as cassandra_answers
from chime_actors.devservices.cassandra_server import cassandra_running, cassandra_up
from chime_actors.devservices.probes import redis_ping
from chime_actors.devservices.procs import (
    Record,
    err,
    log,
    pid_alive,
    read_json,
    read_pid,
    stop_pid,
    write_json,
)
from chime_actors.devservices.redis_server import redis_running, redis_up

# bin/services runs this package from its own checkout (PYTHONPATH), so the
# default DIR is that checkout's .services/.
REPO = Path(chime_actors.__file__).resolve().parent.parent
DEFAULT_DIR = REPO / ".services"


@contextlib.contextmanager
def dir_lock(d: Path) -> Iterator[None]:
    """One `up`/`down` at a time per DIR."""
    with open(d / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"services: waiting for another bin/services on {d} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cmd_up(args: argparse.Namespace) -> int:
    """``up``: start what is not running; write DIR/services.json."""
    d = Path(args.dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    with dir_lock(d):
        return _cmd_up(args, d)


def _cmd_up(args: argparse.Namespace, d: Path) -> int:
    sj = d / "services.json"
    state = read_json(sj)
    # drop entries whose process is gone
    if state.get("redis") and not redis_running(d, state):
        state.pop("redis")
        (d / "redis.pid").unlink(missing_ok=True)
    if state.get("cassandra") and not cassandra_running(d, state):
        state.pop("cassandra")
        (d / "cassandra.pid").unlink(missing_ok=True)
    if (
        args.redis_password
        and state.get("redis")
        and state["redis"].get("password") != args.redis_password
    ):
        err("redis is already up with another password; run `bin/services down` first")
        return 2
    rc = 0
    try:
        if args.only in (None, "redis"):
            state["redis"] = redis_up(d, state, args.redis_password)
            write_json(sj, state)
        if args.only in (None, "cassandra"):
            state["cassandra"] = cassandra_up(d, state, args.cassandra)
            write_json(sj, state)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        err(f"up failed: {e}")
        rc = 1
    if state:
        write_json(sj, state)
        log(f"services: {sj}")
    return rc


def cmd_down(args: argparse.Namespace) -> int:
    """``down``: stop what ``up`` started (``--purge``: and remove its files)."""
    d = Path(args.dir).resolve()
    if not d.is_dir():
        log(f"services: nothing to stop ({d} does not exist)")
        return 0
    with dir_lock(d):
        rc = _cmd_down(args, d)
    if args.purge:
        (d / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            d.rmdir()
    return rc


def _cmd_down(args: argparse.Namespace, d: Path) -> int:
    sj = d / "services.json"
    state = read_json(sj)
    rc = 0
    for name, check in (("cassandra", cassandra_running), ("redis", redis_running)):
        pidfile = d / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid is None:
            log(f"{name}: not running (no pidfile)")
            continue
        live = check(d, state)
        if live is None:
            if pid_alive(pid):
                err(
                    f"{name}: pid {pid} is alive but is not the {name} this DIR started; "
                    "leaving it alone"
                )
                rc = 1
            else:
                log(f"{name}: not running (stale pidfile)")
            pidfile.unlink(missing_ok=True)
            continue
        how = stop_pid(live, name)
        log(f"{name}: pid {live} {how}")
        pidfile.unlink(missing_ok=True)
    sj.unlink(missing_ok=True)
    if args.purge:
        for sub in ("redis", "cassandra", "cassandra-2.1", "logs"):
            p = d / sub
            if p.is_dir():
                shutil.rmtree(p)
        log(f"services: purged data and logs under {d}")
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    """``status``: print each service's state; 1 unless both answer."""
    d = Path(args.dir).resolve()
    state = read_json(d / "services.json")
    rc = 0
    r: Record = state.get("redis") or {}
    pid = redis_running(d, state) if r else None
    if pid and redis_ping("127.0.0.1", r["port"], r.get("password")):
        log(f"redis: up on 127.0.0.1:{r['port']} (pid {pid})")
    else:
        log("redis: down")
        rc = 1
    c: Record = state.get("cassandra") or {}
    pid = cassandra_running(d, state) if c else None
    if pid and cassandra_answers(c):
        log(f"cassandra: up on 127.0.0.1:{c['port']} (pid {pid}, Cassandra {c.get('version')})")
    else:
        log("cassandra: down")
        rc = 1
    return rc


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; its exit status."""
    p = argparse.ArgumentParser(
        prog="bin/services", description=(chime_actors.devservices.__doc__ or "").split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        sp = sub.add_parser(name)
        sp.add_argument(
            "--dir",
            default=str(DEFAULT_DIR),
            help="state directory (default: .services/ in the repo root)",
        )
        if name == "up":
            sp.add_argument("--redis-password", default=None)
            sp.add_argument("--only", choices=("redis", "cassandra"), default=None)
            sp.add_argument(
                "--cassandra",
                choices=("auto", "5.0", "2.1"),
                default=os.environ.get("CHIME_CASSANDRA", "auto"),
                help="auto: 5.0.x from Maven Central, else npm 2.1.0",
            )
        if name == "down":
            sp.add_argument(
                "--purge",
                action="store_true",
                help="also delete the data and logs `up` created in DIR",
            )
    args = p.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)
