"""Restart intensity for the lightweight actors (pykka/Erlang style).

A lightweight actor whose handler raises is restarted by its local supervisor;
if it keeps failing (more than ``max_restarts`` within ``within_s``) the supervisor
escalates instead, because restarting a poisoned actor forever hides the bug and
burns the CPU its neighbours need. What "restart" and "escalate" mean for each kind
is written next to the actor (``ChannelActor``, ``ConnectionActor``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts within ``within_s`` seconds."""

    max_restarts: int = 5
    within_s: float = 10.0


class RestartBudget:
    """Counts restarts in a sliding window and says when to escalate."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        # At most ``max_restarts`` times, oldest first. A list, not a deque: an
        # idle deque holds a 64-slot block, and every channel actor has a budget.
        self._recent: list[float] = []

    @property
    def restarts(self) -> int:
        """Restarts within the current window."""
        return len(self._recent)

    def allow_restart(self) -> bool:
        """Record a failure; True to restart, False to escalate."""
        now = self._clock()
        while self._recent and now - self._recent[0] > self._policy.within_s:
            del self._recent[0]
        if len(self._recent) >= self._policy.max_restarts:
            return False
        self._recent.append(now)
        return True
