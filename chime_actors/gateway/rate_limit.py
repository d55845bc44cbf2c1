"""Token buckets for the gateway's limits (docs/protocol.md, "Errors and close codes").

Pure: no I/O, the clock injected. Two users of it:

- :class:`KeyedBuckets` (``limits.connects_per_ip_per_10s``): one bucket per
  client address, checked before the upgrade (admission.py).
- :class:`MessageRate` (``limits.messages_per_10s``): sends, edits, reactions
  and typing, counted per connection *and* per user across the connections
  that user has on this gateway. A frame over either bucket is refused with
  ``rate_limited`` and ``retryAfterMs``; a connection that goes on past twice
  the limit (the limit's worth of refusals on top of the limit's worth of
  frames, both refilling over the window) is closed with 4008.

A bucket of capacity ``limit`` refills at ``limit`` tokens per
:data:`WINDOW_S`: a burst of ``limit`` is allowed, then one frame per
``WINDOW_S / limit`` seconds. Keyed tables are bounded
(:data:`MAX_KEYS`): the least recently used key is evicted first, so rotating
keys costs an attacker a fresh bucket, never our memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 10.0
MAX_KEYS = 65536


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per ``window_s`` (``WINDOW_S``)."""

    __slots__ = ("_capacity", "_stamp", "_tokens", "_window_s")

    def __init__(self, capacity: float, now: float, window_s: float = WINDOW_S) -> None:
        self._capacity = capacity
        self._tokens = capacity
        self._stamp = now
        self._window_s = window_s

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._capacity / self._window_s)
        self._stamp = now

    def wait_s(self, now: float, amount: float = 1.0) -> float:
        """Seconds until ``amount`` tokens are free (0 when they are now); takes nothing.

        An amount over the capacity waits for a full bucket.
        """
        self._refill(now)
        need = min(amount, self._capacity)
        if self._tokens >= need:
            return 0.0
        return (need - self._tokens) * self._window_s / self._capacity

    def take(self, now: float, amount: float = 1.0) -> float | None:
        """Take ``amount`` tokens: None when taken, else the seconds until they are free.

        An amount over the capacity is taken from a full bucket, which then
        stays below zero until it has refilled past it.
        """
        wait = self.wait_s(now, amount)
        if wait > 0.0:
            return wait
        self._tokens -= amount
        return None

    def give_back(self, now: float, amount: float) -> None:
        """Return ``amount`` taken tokens that were not used (never past the capacity)."""
        self._refill(now)
        self._tokens = min(self._capacity, self._tokens + amount)


class KeyedBuckets:
    """A bounded table of buckets of ``limit`` per ``window_s``, one per key (0 = no limit)."""

    def __init__(
        self,
        limit: int,
        clock: Callable[[], float],
        *,
        window_s: float = WINDOW_S,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._limit = float(limit)
        self._clock = clock
        self._window_s = window_s
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str) -> TokenBucket | None:
        """The bucket of ``key`` (made on first use), or None without a limit."""
        if self._limit <= 0:
            return None
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._limit, self._clock(), self._window_s)
        self._buckets[key] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def take(self, key: str, amount: float = 1.0) -> float | None:
        """Take ``amount`` for ``key``; None when taken, else seconds until it is free."""
        bucket = self.bucket(key)
        return None if bucket is None else bucket.take(self._clock(), amount)

    def give_back(self, key: str, amount: float) -> None:
        """Return ``amount`` that ``key`` took and did not use."""
        bucket = self.bucket(key)
        if bucket is not None:
            bucket.give_back(self._clock(), amount)


@dataclass(frozen=True, slots=True)
class Limited:
    """A frame refused by the rate limit.

    Attributes:
        retry_after_ms: when the client may try again.
        close: the connection went on past twice the limit: close it with 4008.
    """

    retry_after_ms: int
    close: bool


class MessageRate:
    """``limits.messages_per_10s`` for one gateway: per-user buckets, and a
    :class:`ConnectionRate` for each connection."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.clock = clock
        self.users = KeyedBuckets(limit, clock)

    def for_connection(self) -> ConnectionRate:
        """The limiter of one new connection."""
        return ConnectionRate(self)


class ConnectionRate:
    """One connection's buckets, plus its user's (shared through ``MessageRate``)."""

    def __init__(self, rate: MessageRate) -> None:
        self._rate = rate
        now = rate.clock()
        self._frames = TokenBucket(rate.limit, now) if rate.limit > 0 else None
        # Refusals allowed before the connection counts as flooding.
        self._strikes = TokenBucket(rate.limit, now) if rate.limit > 0 else None

    def check(self, user_id: str) -> Limited | None:
        """Count one rate-limited frame of ``user_id``; None when it may go on."""
        if self._frames is None or self._strikes is None:
            return None
        now = self._rate.clock()
        user = self._rate.users.bucket(user_id)
        assert user is not None  # a limit is set, or _frames would be None
        # Take from both or from neither: a refused frame must not use up tokens.
        wait = max(self._frames.wait_s(now), user.wait_s(now))
        if wait == 0.0:
            self._frames.take(now)
            user.take(now)
            return None
        flooding = self._strikes.take(now) is not None
        return Limited(retry_after_ms=max(1, math.ceil(wait * 1000)), close=flooding)
