"""``FakeClock``: time that moves only when a test says so.

One object plays every clock a unit under test may take: call it for the time
(``clock()``, as ``time.monotonic`` is called), ``time()`` for wall-clock
seconds, ``call_later`` for a timer (as ``loop.call_later``) and ``sleep`` (as
``asyncio.sleep``). Timers fire, in order of their deadlines, only inside
``advance``: a test steps past a timeout instead of sleeping through it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class FakeTimer:
    """A timer of a ``FakeClock`` (``asyncio.TimerHandle``'s ``cancel``)."""

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """It will not fire."""
        self.cancelled = True


class FakeClock:
    """A settable clock with timers (see the module docstring)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        """Wall-clock seconds: the same fake time."""
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        """Run ``callback`` once the clock has been advanced ``delay`` s past now."""
        timer = FakeTimer(self.now + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` on this clock: returns once ``advance`` has passed ``seconds``."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, lambda: woken.done() or woken.set_result(None))
        try:
            await woken
        finally:
            timer.cancel()

    @property
    def pending(self) -> list[float]:
        """Seconds from now until each live timer fires, soonest first."""
        return sorted(t.when - self.now for _, _, t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing every timer that falls due, in order.

        A timer set by a callback fires too if it falls due within the step.
        """
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.callback()
        self.now = target
