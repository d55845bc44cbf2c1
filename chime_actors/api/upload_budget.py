"""``limits.upload_bytes_per_hour``: how many bytes one user may upload (docs/protocol.md).

Without it one user could fill the disk: 30 uploads of 10 MiB were taken in 1.6 s,
one after the other, from a single client. The budget is a token bucket of bytes
per user, refilled at ``bytes_per_hour / 3600`` a second up to one hour's worth.

An upload *reserves* its size before a byte of the body is read: the
``Content-Length`` when the client sent one, else ``attachments.max_bytes`` (a
chunked body may grow that far). Reserving first is what bounds uploads that run
at the same time: each takes its share before it starts, so ten parallel ones
cannot each see the whole budget. When the upload ends, what it did not store is
given back (all of it when it failed), so the user is charged exactly the bytes
kept.

Pure: no I/O, the clock injected. The table of users is bounded like the
gateway's (``rate_limit.MAX_KEYS``, least recently used first out). The budget is
per API process, that is per host: with several hosts a user may upload once
per host.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from chime_actors.gateway.rate_limit import MAX_KEYS

HOUR_S = 3600.0


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class UploadBudget:
    """Bytes each user may still upload on this host (0 = no limit)."""

    def __init__(
        self, bytes_per_hour: int, clock: Callable[[], float], *, max_keys: int = MAX_KEYS
    ) -> None:
        self._capacity = float(bytes_per_hour)
        self._rate = self._capacity / HOUR_S
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def reserve(self, user_id: str, size: int) -> int | None:
        """Take ``size`` bytes of ``user_id``'s budget: None when taken, else the
        milliseconds until enough is free (nothing is taken then).

        A size over the whole budget waits for a full budget and then takes it
        all (the bucket goes below zero), so no file within ``attachments.max_bytes``
        is refused for ever.
        """
        bucket = self._bucket(user_id)
        if bucket is None:
            return None
        need = min(float(size), self._capacity)
        if bucket.tokens < need:
            return max(1, math.ceil((need - bucket.tokens) / self._rate * 1000))
        bucket.tokens -= size
        return None

    def refund(self, user_id: str, size: int) -> None:
        """Give back ``size`` reserved bytes that were not stored."""
        bucket = self._bucket(user_id)
        if bucket is not None and size > 0:
            bucket.tokens = min(self._capacity, bucket.tokens + size)

    def _bucket(self, user_id: str) -> _Bucket | None:
        if self._capacity <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.pop(user_id, None)
        if bucket is None:
            bucket = _Bucket(self._capacity, now)
        else:
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(self._capacity, bucket.tokens + elapsed * self._rate)
            bucket.stamp = now
        self._buckets[user_id] = bucket  # most recently used last
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return bucket
