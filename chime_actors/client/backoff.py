"""When to reconnect: exponential backoff with jitter, bounded (sans I/O).

The clock and the random source are injected, so the policy is tested without
sleeping; the client's I/O loop only sleeps for the delays it is given.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of ``initial_s * factor ** attempt``, capped at ``max_s``, with jitter.

    Jitter takes up to ``jitter`` (a fraction) off each delay, so clients dropped
    by one server restart do not all come back in the same instant; a delay is
    therefore always within ``[(1 - jitter) * bound, bound]`` and never above
    ``max_s``.
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("backoff: need 0 < initial_s <= max_s")
        if self.factor < 1:
            raise ValueError("backoff: factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff: jitter must be within [0, 1]")

    def bound(self, attempt: int) -> float:
        """The delay before jitter for the ``attempt``-th retry in a row (0-based)."""
        # Capping the exponent first keeps factor ** attempt from overflowing.
        exponent = 0
        delay = self.initial_s
        while exponent < attempt and delay < self.max_s:
            delay *= self.factor
            exponent += 1
        return min(delay, self.max_s)

    def delay(self, attempt: int, rand: float) -> float:
        """The jittered delay; ``rand`` is a uniform sample from ``[0, 1)``."""
        return self.bound(attempt) * (1.0 - self.jitter * rand)


class Reconnector:
    """Counts failed attempts in a row and says how long to wait before the next.

    The count starts again only once a connection has stayed open for
    ``stable_s``: a server that accepts and at once drops us (say, while it
    restarts) is retried with growing delays, not in a tight loop.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        max_attempts: int | None = None,
        stable_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._backoff = backoff
        self._max_attempts = max_attempts
        self._stable_s = stable_s
        self._clock = clock
        self._rand = rand
        self._attempts = 0
        self._opened_at: float | None = None

    @property
    def attempts(self) -> int:
        """Failed attempts since the last stable connection."""
        return self._attempts

    def opened(self) -> None:
        """A connection was accepted (the server answered ``connected``)."""
        self._opened_at = self._clock()

    def next_delay(self) -> float | None:
        """The connection (or an attempt) ended: seconds to wait, or None to give up."""
        if self._opened_at is not None and self._clock() - self._opened_at >= self._stable_s:
            self._attempts = 0
        self._opened_at = None
        if self._max_attempts is not None and self._attempts >= self._max_attempts:
            return None
        delay = self._backoff.delay(self._attempts, self._rand())
        self._attempts += 1
        return delay
