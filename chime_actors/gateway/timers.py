"""The clock a ``ConnectionActor`` runs its timers on: the event loop's, or a test's.

A connection keeps three deadlines (the handshake timeout, the grace before an
aborted socket is dropped, its token's ``exp``); each is a timer on this clock,
so a unit test steps past them with a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A pending timer (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """It will not fire."""
        ...


class Clock(Protocol):
    """Wall-clock time and timers."""

    def time(self) -> float:
        """Seconds since the epoch (a token's ``exp`` is wall-clock time)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Call ``callback`` once, ``delay`` seconds from now."""
        ...


class LoopClock:
    """``time.time`` and the running event loop's timers (monotonic, as asyncio's)."""

    __slots__ = ()

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """``loop.call_later`` on the running loop."""
        return asyncio.get_running_loop().call_later(delay, callback)


LOOP_CLOCK = LoopClock()
