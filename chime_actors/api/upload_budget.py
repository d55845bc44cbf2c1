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
from collections.abc import Callable

from chime_actors.gateway.rate_limit import MAX_KEYS, KeyedBuckets

HOUR_S = 3600.0


class UploadBudget:
    """Bytes each user may still upload on this host (0 = no limit).

    The gateway's token buckets (``rate_limit.KeyedBuckets``), filled in bytes
    over an hour.
    """

    def __init__(
        self, bytes_per_hour: int, clock: Callable[[], float], *, max_keys: int = MAX_KEYS
    ) -> None:
        self._buckets = KeyedBuckets(bytes_per_hour, clock, window_s=HOUR_S, max_keys=max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    def reserve(self, user_id: str, size: int) -> int | None:
        """Take ``size`` bytes of ``user_id``'s budget: None when taken, else the
        milliseconds until enough is free (nothing is taken then).

        A size over the whole budget waits for a full budget and then takes it
        all (the bucket goes below zero), so no file within ``attachments.max_bytes``
        is refused for ever.
        """
        wait_s = self._buckets.take(user_id, size)
        return None if wait_s is None else max(1, math.ceil(wait_s * 1000))

    def refund(self, user_id: str, size: int) -> None:
        """Give back ``size`` reserved bytes that were not stored."""
        if size > 0:
            self._buckets.give_back(user_id, size)
