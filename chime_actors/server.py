"""Run a Chime server in the foreground: the body of ``chime serve``.

This process is not an actor. It starts Thespian's admin (on a port of its own,
so two servers never share an admin), asks the ``Supervisor`` to start every
process actor, writes ``--ports-file``, then waits for SIGTERM/SIGINT. On a signal
(or SIGHUP) it asks the supervisor to drain and stop, shuts the actor system down and, because
Thespian can leave orphans behind (a SIGKILLed middle actor's children survive
``shutdown()``), ends every other process of the server (see ``_reap``). Nothing is
left running when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import setproctitle

from chime_actors.config import Config, StorageBackend, durability_warnings
from chime_actors.errors import ActorError, StoreError
from chime_actors.handlers.registry import check_handlers
from chime_actors.logs import configure_logging, get_logger
from chime_actors.open_files import needed_fds, raise_open_file_limit
from chime_actors.runtime.lifeline import remove_with_main, tie_to_main
from chime_actors.runtime.messages import (
    ShutdownRequest,
    Started,
    StartFailed,
    StartServer,
    Status,
    StatusQuery,
    Stopped,
)
from chime_actors.runtime.sealed_transport import new_key, seal
from chime_actors.storage.factory import init_storage

log = get_logger(__name__)

START_TIMEOUT = timedelta(seconds=90)
STOP_TIMEOUT = timedelta(seconds=45)
STATUS_TIMEOUT = timedelta(seconds=2)
STATUS_INTERVAL_S = 2.0
MAX_MISSED_STATUS = 3
EXIT_GRACE_S = 2.0
ADMIN_START_ATTEMPTS = 3


def run_server(config: Config, *, ports_file: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the exit status (0 after a clean stop).

    Raises:
        ConfigError: a handler of ``config.handlers`` cannot be built (the CLI
            prints the one line and exits 2).
    """
    # Before anything starts: a handler that cannot be built is a config error.
    check_handlers(config)
    configure_logging(config.logging, process_name="main")
    setproctitle.setproctitle("chime: main")
    for warning in durability_warnings(config):
        log.warning(warning)
    nofile = raise_open_file_limit(needed_fds(config))
    if not nofile.sufficient:
        log.warning(
            "the open-file limit is below what chat.max_connections needs: raise the hard "
            "limit (ulimit -Hn, or LimitNOFILE= for systemd) or lower chat.max_connections",
            needed=nofile.needed,
            soft=nofile.soft,
            hard=nofile.hard,
        )
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if config.storage.backend is StorageBackend.SQLITE:
        Path(config.storage.sqlite.path).parent.mkdir(parents=True, exist_ok=True)
    if config.storage.create_schema_on_start:
        # Once, here, before any actor opens the store (see storage.factory).
        try:
            asyncio.run(init_storage(config))
        except StoreError as exc:
            log.error(
                "storage is not reachable", storage=str(config.storage.backend), error=str(exc)
            )
            return 1
    # Thespian's own log goes next to our data instead of $TMPDIR/thespian.log.
    os.environ["THESPLOG_FILE"] = str(config.thespian_log_path.resolve())
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")

    stop = threading.Event()
    # Hold the chat port from here to the end: with port 0 this is where it is
    # chosen, once, for every gateway (they bind it with SO_REUSEPORT too).
    with _reserve_chat_port(config.chat.host, config.chat.port) as chat_port:
        sessions: set[int] = set()
        status = _run_actor_system(config, chat_port, ports_file, stop, sessions)
    _reap(sessions)
    return status


def _start_actor_system(config: Config, sessions: set[int]) -> Any:
    """Start Thespian's admin on ``config.admin_port``, or on a free port (0).

    A port ``_free_port`` picks is free when picked, not necessarily when the
    admin binds it in its own process a moment later: another process (a second
    server starting beside this one, whose actors bind ports of their own) can
    take it in between, and Thespian then gives up after ~11 s with
    ``InvalidActorAddress``. Seen once in CI, in a two-server test. So a port we
    picked is picked again, up to ``ADMIN_START_ATTEMPTS`` times; a configured
    port is not (it is the operator's to fix). Whatever a failed attempt left
    running is ended before the next.
    """
    from thespian.actors import ActorSystem, InvalidActorAddress

    # Before the admin is forked: it and every actor inherit the seal and its key,
    # and each of them dies with this process (lifeline.py).
    seal(new_key())
    tie_to_main()
    attempts = 1 if config.admin_port else ADMIN_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        admin_port = config.admin_port or _free_port()
        try:
            system = ActorSystem(
                "multiprocTCPBase",
                {"Admin Port": admin_port},
                logDefs={"version": 1, "disable_existing_loggers": False, "loggers": {}},
            )
        except InvalidActorAddress as exc:
            sessions.update(child_pids(os.getpid()))
            _reap(sessions)
            if attempt == attempts:
                raise ActorError(
                    f"Thespian's admin did not start on port {admin_port} "
                    f"({attempts} attempt(s)); is admin_port taken?"
                ) from exc
            log.warning("Thespian's admin did not start; trying another port", port=admin_port)
            continue
        # The admin's session id is the pid of the child that called setsid (see _reap).
        sessions.update(child_pids(os.getpid()))
        return system
    raise AssertionError("unreachable")  # the last attempt returned or raised


def _run_actor_system(
    config: Config,
    chat_port: int,
    ports_file: str | None,
    stop: threading.Event,
    sessions: set[int],
) -> int:
    # Lane sockets live in a directory of this run's own, closed to other users.
    run_dir = tempfile.mkdtemp(prefix="chime-run-")
    # Removed below on every exit main survives, and by the lifeline if it does not.
    remove_with_main(run_dir)
    try:
        return _serve(config, chat_port, ports_file, stop, sessions, run_dir)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _serve(
    config: Config,
    chat_port: int,
    ports_file: str | None,
    stop: threading.Event,
    sessions: set[int],
    run_dir: str,
) -> int:
    from chime_actors.actors.supervisor import Supervisor

    system = _start_actor_system(config, sessions)
    # Only now: the admin process has been forked already and must keep the default
    # handlers (a child inheriting "set an event" would ignore SIGTERM for ever).
    # SIGHUP (the terminal closed) gets the same clean stop as SIGTERM and SIGINT.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    status = 0
    try:
        supervisor = system.createActor(Supervisor)
        reply = system.ask(supervisor, StartServer(config, chat_port, run_dir), START_TIMEOUT)
        if not isinstance(reply, Started):
            why = reply.reason if isinstance(reply, StartFailed) else "no answer in time"
            log.error("server failed to start", reason=why)
            return 1
        chat_url = f"ws://{_url_host(config.chat.host)}:{reply.chat_port}/"
        api_url = f"http://{_url_host(config.api.host)}:{reply.api_port}/"
        log.info(
            "chime is ready",
            chat=chat_url,
            api=api_url,
            chatPort=reply.chat_port,
            apiPort=reply.api_port,
            workers=config.workers,
            runDir=run_dir,
            storage=str(config.storage.backend),
            hint=(
                f"open {api_url} in a browser, or try: "
                f"chime client --url {chat_url} --user alice --channel general"
            ),
        )
        if ports_file:
            _write_ports_file(Path(ports_file), reply.chat_port, reply.api_port)
        status, supervisor_alive = _wait_for_stop(system, supervisor, stop)
        log.info("shutting down")
        if supervisor_alive:
            answer = system.ask(supervisor, ShutdownRequest(), STOP_TIMEOUT)
            if not isinstance(answer, Stopped):
                log.warning("supervisor did not confirm the stop; forcing it")
    finally:
        system.shutdown()
    log.info("stopped", status=status)
    return status


def _wait_for_stop(system: Any, supervisor: Any, stop: threading.Event) -> tuple[int, bool]:
    """Block until a signal or until the supervisor fails or vanishes.

    Returns:
        The exit status (0 after a signal, 1 on failure) and whether the
        supervisor still answers (if not, there is nobody to ask for a drain).
    """
    missed = 0
    while not stop.wait(STATUS_INTERVAL_S):
        answer = system.ask(supervisor, StatusQuery(), STATUS_TIMEOUT)
        if isinstance(answer, Status):
            missed = 0
            if answer.failed:
                log.error("supervisor failed", reason=answer.reason)
                return 1, True
        elif not stop.is_set():
            missed += 1
            if missed >= MAX_MISSED_STATUS:
                log.error("supervisor does not answer")
                return 1, False
    return 0, True


def _write_ports_file(path: Path, chat_port: int, api_port: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps({"chat": chat_port, "api": api_port}))
    tmp.replace(path)  # atomic: a reader never sees half a file


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@contextlib.contextmanager
def _reserve_chat_port(host: str, port: int) -> Iterator[int]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ActorError(f"cannot bind the chat port {host}:{port}: {exc.strerror}") from exc
        # Bound but never listening: it reserves the port and takes no connections.
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_stat(pid: int | str) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process from /proc, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses ("chime: gateway
    # 1"), so split after its last closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def child_pids(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (zombies included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(entry.name)
            if stat is not None and stat[1] == parent:
                found.append(int(entry.name))
    return found


def session_members(sessions: set[int], pgid: int | None = None) -> list[int]:
    """Live pids in any of ``sessions`` (or in process group ``pgid``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(entry.name)
        if stat is None or stat[0] == "Z":
            continue
        if stat[3] in sessions or (pgid is not None and stat[2] == pgid):
            found.append(int(entry.name))
    return found


def _reap(sessions: set[int]) -> None:
    """End every process of this server but us: Thespian's admin, logger, orphans.

    Thespian's admin detaches with ``setsid`` from a child of ours, so every actor
    lives in a session whose id is the pid of one of our (exited) children; that,
    not the process tree, says what is ours even after a middle actor was killed
    and its children were re-parented.
    """
    me = os.getpid()
    # Thespian's admin and logger are still exiting when shutdown() returns:
    # give them a moment before calling anything a leftover.
    deadline = time.monotonic() + EXIT_GRACE_S
    while time.monotonic() < deadline and [p for p in session_members(sessions) if p != me]:
        _reap_children()
        time.sleep(0.05)
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        others = [pid for pid in session_members(sessions) if pid != me]
        if not others:
            return
        log.warning("ending leftover processes", pids=others, signal=sig.name)
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap_children()
            if not [pid for pid in session_members(sessions) if pid != me]:
                return
            time.sleep(0.05)


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
