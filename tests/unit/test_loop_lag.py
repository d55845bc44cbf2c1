"""Tests for chime_actors.runtime.loop_lag: a timer's lateness is how long the loop was held."""

from __future__ import annotations

import asyncio
import time

from chime_actors.runtime.loop_lag import LoopLag
from tests.support.polling import until

TIMEOUT = 5.0


def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    async def scenario() -> list[float]:
        seen: list[float] = []
        lag = LoopLag(seen.append, interval_s=0.001)
        lag.start()
        await until(lambda: len(seen) >= 1, TIMEOUT)
        # Hold the loop well past the timer's due time (a busy wait: this is the
        # behaviour under test, not a synchronisation).
        held_until = time.perf_counter() + 0.05
        while time.perf_counter() < held_until:
            pass
        count = len(seen)
        await until(lambda: len(seen) > count, TIMEOUT)
        lag.stop()
        return seen

    seen = asyncio.run(scenario())
    assert all(value >= 0 for value in seen)
    # The timer fell due during the hold and ran only after it: at least the part
    # of the hold after its due time (49 ms of 50).
    assert max(seen) >= 0.049


def test_stop_ends_the_sampling() -> None:
    async def scenario() -> tuple[int, int]:
        seen: list[float] = []
        lag = LoopLag(seen.append, interval_s=0.001)
        lag.start()
        lag.start()  # idempotent: still one timer
        await until(lambda: len(seen) >= 3, TIMEOUT)
        lag.stop()
        lag.stop()
        stopped_at = len(seen)
        # A timer due ten intervals later runs after any timer of the sampler
        # would have: nothing more was observed by then.
        later = asyncio.Event()
        asyncio.get_running_loop().call_later(0.01, later.set)
        await later.wait()
        return stopped_at, len(seen)

    stopped_at, after = asyncio.run(scenario())
    assert after == stopped_at
