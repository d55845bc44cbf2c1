"""Redis for the tests: Debian's ``redis-server`` on a free loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from chime_actors.devservices.probes import redis_ping
from chime_actors.devservices.procs import (
    Record,
    apt_install,
    cmdline,
    free_port,
    log,
    pid_alive,
    read_pid,
    stop_pid,
    tail,
)

REDIS_START_TIMEOUT = 30.0


def redis_running(d: Path, state: Record) -> int | None:
    """The pid of the redis-server this DIR started, when it is still running."""
    pid = read_pid(d / "redis.pid")
    if pid and pid_alive(pid):
        # redis-server rewrites its argv into a title ("redis-server 127.0.0.1:PORT")
        # but runs in its --dir, which is DIR/redis: check both.
        args = cmdline(pid)
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            cwd = ""
        if args and "redis-server" in args[0] and cwd == str(d / "redis"):
            return pid
    return None


def redis_up(d: Path, state: Record, password: str | None) -> Record:
    """Start redis-server (or find it already up); its services.json record."""
    pid = redis_running(d, state)
    r = state.get("redis") or {}
    if pid and r.get("port") and redis_ping("127.0.0.1", r["port"], r.get("password")):
        log(f"redis: already up on 127.0.0.1:{r['port']} (pid {pid})")
        return r
    if pid:  # alive but unknown or not answering: a leftover from an interrupted `up`
        stop_pid(pid, "redis")
    t0 = time.monotonic()
    installed = ""
    if not shutil.which("redis-server"):
        log("redis: redis-server missing, installing Debian's redis-server ...")
        apt_install(["redis-server"], d / "logs" / "install.log")
        installed = f", installed in {time.monotonic() - t0:.1f}s"
    rdir = d / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    logfile = d / "logs" / "redis.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _attempt in range(3):
        port = free_port()
        cmd = [
            shutil.which("redis-server") or "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(rdir),
            "--logfile",
            str(logfile),
            "--protected-mode",
            "yes",
        ]
        if password:
            cmd += ["--requirepass", password]
        t1 = time.monotonic()
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (d / "redis.pid").write_text(f"{proc.pid}\n")
        deadline = t1 + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = f"redis-server exited with {proc.returncode}:\n  {tail(logfile)}"
                break
            if redis_ping("127.0.0.1", port, password, timeout=0.5):
                took = time.monotonic() - t1
                info = {
                    "host": "127.0.0.1",
                    "port": port,
                    "password": password or None,
                    "start_seconds": round(took, 2),
                }
                log(
                    f"redis: up on 127.0.0.1:{port} (pid {proc.pid}) "
                    f"started in {took:.2f}s{installed}"
                )
                return info
            time.sleep(0.05)
        else:
            last_error = f"redis did not answer PING in {REDIS_START_TIMEOUT}s"
            stop_pid(proc.pid, "redis")
        (d / "redis.pid").unlink(missing_ok=True)
    raise RuntimeError(last_error)
