"""The gateway's link to one persister: batching, a bounded window, timeouts.

Thespian drops sends past ~1,050 queued per link ("Dropping TX: overloaded"), so a
link never relies on Thespian to absorb load. Instead:

* ``submit`` adds a record to the link's buffer; one flush per loop iteration turns
  everything buffered into a single ``PersistBatch`` (batching without a timer:
  under load a batch holds whatever arrived while the previous one was in flight);
* at most ``window`` batches are in flight; while the window is full, records
  wait in the buffer;
* at most ``max_pending`` records may wait or fly; past that ``submit`` fails at
  once with ``unavailable`` (the caller tells the client), so memory is bounded;
* a record not answered within ``ack_timeout_s`` fails with ``unavailable``;
* when the persister is replaced (``rewire``), everything in flight to the old one
  fails at once instead of waiting for the timeout.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chime_actors.records import PersistBatch, PersistResult, SendOutcome, SendRecord

Post = Callable[[Any, Any], None]

_tokens = itertools.count(1)
# Batch ids are unique across all links of the gateway, so a ``PersistResult``
# finds its link without saying which persister sent it.
_batch_ids = itertools.count(1)


def next_token() -> int:
    """A gateway-unique token for a ``SendRecord``."""
    return next(_tokens)


@dataclass(slots=True)
class _InFlight:
    address: Any
    records: tuple[SendRecord, ...]
    sent_at: float


class PersistLink:
    """Carries ``SendRecord``s to one persister and resolves their futures."""

    def __init__(
        self,
        gateway_index: int,
        post: Post,
        *,
        window: int = 32,
        max_batch: int = 1000,
        max_pending: int = 20_000,
        ack_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway_index = gateway_index
        self._post = post
        self._window = window
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self.address: Any = None
        self._buffer: collections.deque[SendRecord] = collections.deque()
        self._futures: dict[int, asyncio.Future[SendOutcome]] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._flush_scheduled = False

    @property
    def pending(self) -> int:
        """Records buffered or in flight (queue depth for metrics)."""
        return len(self._futures)

    def submit(self, record: SendRecord) -> asyncio.Future[SendOutcome]:
        """Queue ``record``; the future resolves with its outcome (never raises)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SendOutcome] = loop.create_future()
        if len(self._futures) >= self._max_pending or self.address is None:
            why = "server overloaded" if self.address is not None else "persister restarting"
            future.set_result(_unavailable(record.token, why))
            return future
        self._futures[record.token] = future
        self._buffer.append(record)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._buffer and len(self._in_flight) < self._window and self.address is not None:
            count = min(len(self._buffer), self._max_batch)
            records = tuple(self._buffer.popleft() for _ in range(count))
            batch_id = next(_batch_ids)
            self._in_flight[batch_id] = _InFlight(self.address, records, self._clock())
            self._post(self.address, PersistBatch(batch_id, self._gateway_index, records))

    def owns(self, batch_id: int) -> bool:
        """True when ``batch_id`` is in flight on this link."""
        return batch_id in self._in_flight

    def on_result(self, result: PersistResult) -> None:
        """A persister answered a batch."""
        if self._in_flight.pop(result.batch_id, None) is None:
            return  # already failed by timeout or rewire; the client was told
        for outcome in result.outcomes:
            future = self._futures.pop(outcome.token, None)
            if future is not None and not future.done():
                future.set_result(outcome)
        if self._buffer:
            self._flush()

    def rewire(self, address: Any) -> None:
        """The persister has a new address: fail what flew to the old one."""
        if address == self.address:
            return
        old = self.address
        self.address = address
        for batch_id, flight in list(self._in_flight.items()):
            if flight.address == old:
                del self._in_flight[batch_id]
                self._fail(flight.records, "persister restarted; outcome unknown")
        if address is None:
            # No persister to send to and no timer on the buffer (``expire`` only
            # watches batches in flight): fail what waits, as ``submit`` would.
            self._fail(tuple(self._buffer), "persister restarting")
            self._buffer.clear()
        elif self._buffer:
            self._flush()

    def expire(self) -> None:
        """Fail every batch in flight longer than the ack timeout (call periodically)."""
        deadline = self._clock() - self._ack_timeout_s
        for batch_id, flight in list(self._in_flight.items()):
            if flight.sent_at <= deadline:
                del self._in_flight[batch_id]
                self._fail(flight.records, "storage did not answer in time")
        if self._buffer:
            self._flush()

    def fail_all(self, why: str) -> None:
        """Fail everything buffered and in flight (the gateway is going away)."""
        for flight in self._in_flight.values():
            self._fail(flight.records, why)
        self._in_flight.clear()
        self._fail(tuple(self._buffer), why)
        self._buffer.clear()

    def _fail(self, records: tuple[SendRecord, ...], why: str) -> None:
        for record in records:
            future = self._futures.pop(record.token, None)
            if future is not None and not future.done():
                future.set_result(_unavailable(record.token, why))


def _unavailable(token: int, why: str) -> SendOutcome:
    return SendOutcome(token, error_code="unavailable", error_message=why)
