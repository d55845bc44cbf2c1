"""The cyclic garbage collector: told what a process built at startup, and given idle time.

Every full collection walks every object the collector tracks. A process actor
starts with about 60,000 of them (modules, classes, functions: measured after
the server's imports), and a full collection of those alone holds the loop
about 20 ms, in the middle of whatever it was doing: on a persister, the acks
and deliveries of every message then in flight. None of them will ever be
garbage, so once a process is up they are moved where the collector never
looks (``gc.freeze``).

What the process builds later (connections, channel actors, sequencer caches)
is walked by every full collection: about 80,000 tracked objects, and 22-35
ms of CPU per full collection, in a gateway with 1,000 connections in 500 rooms.
CPython starts one when a generation-1 collection finds that the long-lived
objects grew by a quarter, which is what happens right after a burst of
connects, once the first messages flow. ``IdleCollector`` runs that collection
while the process is idle instead: when it used under ``IDLE_CPU_SHARE`` of a
core since its last look and a generation-1 collection has run since the last
full one. Under load with no pause the collector's own schedule stays as it
was. docs/performance.md has the measurements.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

# How often the idle collector looks at the process.
IDLE_CHECK_S = 0.25
# CPU used since the last look, as a share of one core, below which the process is idle.
IDLE_CPU_SHARE = 0.02
# Idle full collections at least this far apart: a process that is idle most of
# the time spends at most one collection's CPU per interval on them.
IDLE_MIN_GAP_S = 10.0


def freeze_startup_heap() -> int:
    """Collect what startup left behind, then exempt everything alive from collection.

    Call once, when the process has finished starting. Returns how many objects
    the collector now leaves alone.
    """
    # Collect first: a cycle that is garbage now would otherwise be kept for ever.
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _full_collections_due() -> bool:
    # gc.get_count()[2]: generation-1 collections since the last full one. At 0
    # a full collection has nothing new to find in the old generation.
    return gc.get_count()[2] > 0


class IdleCollector:
    """Runs a due full collection when the process is idle (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_collect",
        "_cpu_clock",
        "_due",
        "_last_at",
        "_last_collect_at",
        "_last_cpu",
        "_timer",
        "collections",
        "interval_s",
    )

    def __init__(
        self,
        *,
        interval_s: float = IDLE_CHECK_S,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
        due: Callable[[], bool] = _full_collections_due,
        collect: Callable[[], object] = lambda: gc.collect(2),
    ) -> None:
        """Look every ``interval_s``; the clocks and the collector are injectable for tests."""
        self.interval_s = interval_s
        self._clock = clock
        self._cpu_clock = cpu_clock
        self._due = due
        self._collect = collect
        self._last_at = clock()
        self._last_cpu = cpu_clock()
        self._last_collect_at = -IDLE_MIN_GAP_S
        self._timer: asyncio.TimerHandle | None = None
        #: Full collections run because the process was idle.
        self.collections = 0

    def start(self) -> None:
        """Start looking, on the running loop."""
        if self._timer is None:
            self._last_at, self._last_cpu = self._clock(), self._cpu_clock()
            self._schedule()

    def stop(self) -> None:
        """Stop looking; idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def look(self) -> bool:
        """Collect now if the process was idle since the last look; True if it did."""
        now, cpu = self._clock(), self._cpu_clock()
        elapsed = now - self._last_at
        idle = elapsed > 0 and (cpu - self._last_cpu) <= IDLE_CPU_SHARE * elapsed
        collected = False
        if idle and now - self._last_collect_at >= IDLE_MIN_GAP_S and self._due():
            self._collect()
            self.collections += 1
            self._last_collect_at = now
            collected = True
        # After a collection its own CPU is not the process's: start afresh.
        self._last_at, self._last_cpu = self._clock(), self._cpu_clock()
        return collected

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.look()
        self._schedule()
