"""How long something held an event loop, measured from the loop itself.

A callback that runs for 30 ms keeps every other callback of its loop waiting
30 ms: the reads of other clients, lane frames, flushes. No single place knows
how long the loop was held, but a timer does: a timer due every ``interval_s``
runs late by however long the callback that was running when it fell due still
had to go (plus the loop's own timer resolution, about a millisecond with
uvloop). The largest lateness seen over a period bounds the longest hold in it
from below, and any hold longer than ``interval_s`` is caught by one timer at
least, whatever it was.

It costs one timer callback every ``interval_s``. Each wakes an idle process:
at 20 ms the two gateways' timers were two thirds of an idle server's CPU
(17 and 17 of 41 ticks in 20 s, docs/performance.md). At 100 ms every hold
longer than 100 ms is still seen, and a shorter one is seen in proportion to
its length, which is what a histogram of holds over minutes needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL_S = 0.1


class LoopLag:
    """Observes the lateness, in seconds, of a timer due every ``interval_s``."""

    def __init__(
        self,
        observe: Callable[[float], None],
        *,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``observe`` gets each lateness (``>= 0``); ``clock`` is a monotonic clock
        finer than the loop's own (uvloop's ``loop.time()`` is in milliseconds)."""
        self._observe = observe
        self._interval_s = interval_s
        self._clock = clock
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start sampling on the running loop."""
        if self._timer is None:
            self._schedule()

    def stop(self) -> None:
        """Stop sampling; idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._due = self._clock() + self._interval_s
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def _tick(self) -> None:
        self._observe(max(0.0, self._clock() - self._due))
        self._schedule()
