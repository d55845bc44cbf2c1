"""Every process of a server dies with its main process (``chime: main``).

Thespian's admin detaches (``setsid`` and a double fork), so when the main
process is SIGKILLed, OOM-killed or loses its terminal, the whole actor tree would
otherwise go on serving with nobody to stop it. :func:`tie_to_main` registers a
fork hook in the main process; every process forked from it, and from those, at
any depth (the admin, Thespian's logger, every actor and every restarted actor),
starts a daemon thread that waits on a pidfd of the main process and SIGKILLs its
own process the moment main is gone. A pidfd cannot be fooled by pid reuse, and
waiting on it costs nothing while main lives.

SIGKILL, not a drain: with main gone there is nobody to order a drain, and
nothing acked is at risk (an ack is sent only once the write is durable).
Main's own clean-up dies with it, so the processes that follow it first remove
what :func:`remove_with_main` named (the run directory of the lane sockets).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import threading

_main_pid: int | None = None
_leftovers: list[str] = []


def tie_to_main() -> None:
    """Call once in the main process, before the actor system forks anything."""
    global _main_pid
    if _main_pid is not None:
        return
    _main_pid = os.getpid()
    os.register_at_fork(after_in_child=_watch_main)


def remove_with_main(path: str) -> None:
    """Call in the main process: if main dies, the processes it forked remove ``path``.

    Only processes forked after this call know of it.
    """
    _leftovers.append(path)


def _watch_main() -> None:
    main_pid = _main_pid
    if main_pid is None or os.getpid() == main_pid:
        return
    try:
        pidfd = os.pidfd_open(main_pid)
    except ProcessLookupError:
        # Main died between the fork and now: follow it at once.
        _follow_main()
        return
    threading.Thread(
        target=_wait_then_die, args=(main_pid, pidfd), name="lifeline", daemon=True
    ).start()


def _wait_then_die(main_pid: int, pidfd: int) -> None:
    while True:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        events = [event for _, event in poller.poll()]
        if any(event & select.POLLIN for event in events):
            break  # a pidfd is readable once its process has exited
        if any(event & select.POLLNVAL for event in events):
            # Someone closed our fd (a library closing "stray" fds): open another;
            # if main is gone by now, that fails and we follow it.
            try:
                pidfd = os.pidfd_open(main_pid)
            except ProcessLookupError:
                break
    _follow_main()


def _follow_main() -> None:
    for path in _leftovers:
        # Every follower tries; the first one wins, the others find nothing.
        shutil.rmtree(path, ignore_errors=True)
    os.kill(os.getpid(), signal.SIGKILL)
