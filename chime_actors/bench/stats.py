"""Pure arithmetic of the load generator: no I/O, no event loop.

* :func:`percentile` / :func:`summarize`: latency percentiles (nearest rank);
* :class:`PacingSchedule`: when each sender sends its k-th message, computed
  from the start time and the index, so a late send never delays the next ones
  (an open-loop schedule: no sleep drift, no coordinated slow-down);
* :class:`DeliveryLog` and :func:`check_connection`: completeness accounting,
  i.e. what one connection should have received (every acked message of its
  channels sent while it was subscribed) against what it did receive, counting
  misses, duplicates and messages nobody acked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

NS_PER_S = 1_000_000_000


def percentile(sorted_values: Sequence[int], q: float) -> int | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of sorted values.

    The smallest value such that at least ``q`` percent of the values are less
    than or equal to it; ``None`` for no values.
    """
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    if not sorted_values:
        return None
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Count and percentiles of latencies, in microseconds."""

    count: int
    p50: int | None
    p95: int | None
    p99: int | None
    max: int | None

    def to_ms(self) -> dict[str, float | int | None]:
        """The summary with the percentiles in milliseconds (for reports)."""
        return {
            "count": self.count,
            "p50_ms": _ms(self.p50),
            "p95_ms": _ms(self.p95),
            "p99_ms": _ms(self.p99),
            "max_ms": _ms(self.max),
        }


def _ms(value_us: int | None) -> float | None:
    return None if value_us is None else round(value_us / 1000, 3)


def summarize(*samples: Iterable[int]) -> LatencySummary:
    """Percentiles of every sample of every iterable (microseconds)."""
    values = sorted(v for sample in samples for v in sample)
    return LatencySummary(
        count=len(values),
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
        max=values[-1] if values else None,
    )


@dataclass(frozen=True, slots=True)
class PacingSchedule:
    """``senders`` senders sharing a total ``rate`` (messages/s) from ``start_ns``.

    Message ``i`` of the whole run is due at ``start + i / rate`` and belongs to
    sender ``i % senders``; so sender ``s`` sends its ``k``-th message at
    ``start + (k * senders + s) / rate``. The senders are evenly interleaved and
    the total rate is exact whatever the number of senders.
    """

    rate: float
    senders: int
    start_ns: int

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        if self.senders < 1:
            raise ValueError("at least one sender")

    def due_ns(self, sender: int, k: int) -> int:
        """When sender ``sender`` sends its ``k``-th message (0-based), in ns."""
        index = k * self.senders + sender
        return self.start_ns + round(index * NS_PER_S / self.rate)

    def total_for(self, duration_s: float) -> int:
        """How many messages are due in ``[start, start + duration)``."""
        # Indices i with i / rate < duration; the epsilon absorbs float noise
        # (20 msg/s for 3 s is exactly 60 messages, not 61).
        return max(0, math.ceil(duration_s * self.rate - 1e-9))

    def count_for(self, sender: int, total: int) -> int:
        """How many of ``total`` messages sender ``sender`` sends."""
        return len(range(sender, total, self.senders))


@dataclass(slots=True)
class DeliveryLog:
    """What one connection received: distinct ``messageId`` s per channel, duplicates."""

    seen: dict[str, set[str]] = field(default_factory=dict)
    duplicates: int = 0

    def record(self, channel_id: str, message_id: str) -> bool:
        """Note a delivery; False (and a duplicate counted) if it was seen already."""
        ids = self.seen.get(channel_id)
        if ids is None:
            ids = self.seen[channel_id] = set()
        if message_id in ids:
            self.duplicates += 1
            return False
        ids.add(message_id)
        return True

    def received(self, channel_id: str) -> int:
        """Distinct messages received on ``channel_id``."""
        ids = self.seen.get(channel_id)
        return len(ids) if ids is not None else 0


@dataclass(frozen=True, slots=True)
class Completeness:
    """Expected deliveries against received ones, summed over connections.

    ``expected``: acked messages x subscribers at send time; ``received``: distinct
    expected messages that arrived; ``missed = expected - received``;
    ``duplicates``: second and later copies of a (channel, messageId) on one
    connection; ``unexpected``: distinct deliveries of messages nobody acked (a
    send still unanswered at the end, or one answered with an error).
    """

    expected: int = 0
    received: int = 0
    missed: int = 0
    duplicates: int = 0
    unexpected: int = 0

    def __add__(self, other: Completeness) -> Completeness:
        return Completeness(
            self.expected + other.expected,
            self.received + other.received,
            self.missed + other.missed,
            self.duplicates + other.duplicates,
            self.unexpected + other.unexpected,
        )

    @property
    def complete(self) -> bool:
        """No miss and no duplicate."""
        return self.missed == 0 and self.duplicates == 0


# Acked messages of one channel: (messageId, send time in ns).
AckedMessages = Sequence[tuple[str, int]]


def check_connection(
    acked: Mapping[str, AckedMessages],
    channels: Iterable[str],
    log: DeliveryLog,
    closed_at_ns: int | None = None,
) -> Completeness:
    """Completeness of one connection subscribed to ``channels`` for the whole run.

    Args:
        acked: every acked message of the run, by channel.
        channels: the channels this connection subscribed to before the first send.
        log: what it received.
        closed_at_ns: when the connection closed, if it did before the end: it is
            then owed only the messages sent before that moment.
    """
    total = Completeness(duplicates=log.duplicates)
    subscribed = set(channels)
    for channel_id in subscribed:
        messages = acked.get(channel_id, ())
        got = log.seen.get(channel_id, set())
        owed = {mid for mid, sent_ns in messages if closed_at_ns is None or sent_ns < closed_at_ns}
        everything = owed if closed_at_ns is None else {mid for mid, _ in messages}
        received = len(owed & got)
        total += Completeness(
            expected=len(owed),
            received=received,
            missed=len(owed) - received,
            unexpected=len(got - everything),
        )
    for channel_id, got in log.seen.items():
        if channel_id not in subscribed:
            total += Completeness(unexpected=len(got))
    return total


def rate_per_s(count: int, start_ns: int | None, end_ns: int | None) -> float | None:
    """``count`` events over ``[start, end]`` as events per second (None if empty)."""
    if start_ns is None or end_ns is None or end_ns <= start_ns:
        return None
    return count * NS_PER_S / (end_ns - start_ns)
