"""A link to one persister: batching, a bounded window, timeouts.

The persister's client side, used by gateways, the handler process and the API
(it lives with the persister, so none of them imports another to reach it).

Thespian drops sends past ~1,050 queued per link ("Dropping TX: overloaded"), so a
link never relies on Thespian to absorb load. Instead:

* ``submit`` adds a record to the link's buffer; one flush per loop iteration turns
  everything buffered into a single ``PersistBatch`` (batching without a timer:
  under load a batch holds whatever arrived while the previous one was in flight);
* at most ``window`` (2) batches are in flight; while the window is full,
  records wait in the buffer and go together in the next batch. Small on
  purpose since the Thespian days, when a wide window (32) let hundreds of
  one-record batches queue inside Thespian, where nothing could merge them (a
  record then took ~0.5 s to reach the persister at 200 msg/s). Batches now
  travel on lanes, and the persister merges whatever is queued into one group
  commit; a window of 16 measured no different from 2 in many small rooms
  (docs/performance.md, stop 12), so 2 stays, bounding what one gateway has in
  flight;
* at most ``max_pending`` records may wait or fly; past that ``submit`` fails at
  once with ``unavailable`` (the caller tells the client), so memory is bounded;
* a record that waited ``ack_timeout_s`` without being sent (the window stayed
  full: overload) fails with ``unavailable`` "server overloaded": it was never
  sent, so it is certainly not stored — load is shed instead of piling up;
* a batch in flight is waited for up to ``in_flight_timeout_s`` (30 s): the
  persister is alive and will answer, and failing it earlier would answer
  ``unavailable`` for messages it then stores. Past that backstop the outcome is
  unknown (the client retries with its ``clientMsgId``);
* while the persister is down (``rewire(None)``, between its death and its
  restart), records wait in the buffer, up to that same timeout;
* when the persister is replaced, what was in flight to the old one may or may
  not have been stored. Every record carries a ``clientMsgId`` (the client's, or
  one the gateway made: ``records.server_client_msg_id``), so all of them are
  sent again to the new persister, whose idempotency check (reloaded from
  storage) acks the stored ones with their original id and stores the rest:
  exactly once, and ``unavailable`` is never a guess. Changes (``ChangeRecord``:
  edits, deletes, reactions) are sent again as well, marked ``retried``: the
  new persister checks them against storage as it finds it, so a reaction
  already there is not added twice and a delete that already landed is
  answered as done; an edit that already landed lands a second time (same
  content, one more ``message_edited``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from chime_actors.records import (
    ChangeRecord,
    PersistBatch,
    PersistRecord,
    PersistResult,
    SendOutcome,
)

Post = Callable[[Any, Any], None]

_tokens = itertools.count(1)
# Batch ids are unique across all links of the gateway, so a ``PersistResult``
# finds its link without saying which persister sent it.
_batch_ids = itertools.count(1)


def next_token() -> int:
    """A gateway-unique token for a ``PersistRecord``."""
    return next(_tokens)


@dataclass(slots=True)
class _InFlight:
    address: Any
    entries: tuple[tuple[float, PersistRecord], ...]  # (submitted at, record)
    sent_at: float

    @property
    def records(self) -> tuple[PersistRecord, ...]:
        return tuple(record for _, record in self.entries)


class PersistLink:
    """Carries ``PersistRecord``s to one persister and resolves their futures."""

    def __init__(
        self,
        gateway_index: int,
        post: Post,
        *,
        window: int = 2,
        max_batch: int = 1000,
        max_pending: int = 5_000,
        ack_timeout_s: float = 5.0,
        in_flight_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway_index = gateway_index
        self._post = post
        self._window = window
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._ack_timeout_s = ack_timeout_s
        self._in_flight_timeout_s = max(in_flight_timeout_s, ack_timeout_s)
        self._clock = clock
        self.address: Any = None
        # (submitted at, record), oldest first.
        self._buffer: collections.deque[tuple[float, PersistRecord]] = collections.deque()
        self._futures: dict[int, asyncio.Future[SendOutcome]] = {}
        self._in_flight: dict[int, _InFlight] = {}
        self._flush_scheduled = False

    @property
    def pending(self) -> int:
        """Records buffered or in flight (queue depth for metrics)."""
        return len(self._futures)

    def submit(self, record: PersistRecord) -> asyncio.Future[SendOutcome]:
        """Queue ``record``; the future resolves with its outcome (never raises)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SendOutcome] = loop.create_future()
        if len(self._futures) >= self._max_pending:
            future.set_result(_unavailable(record.token, "server overloaded"))
            return future
        self._futures[record.token] = future
        self._buffer.append((self._clock(), record))
        if not self._flush_scheduled and self.address is not None:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._buffer and len(self._in_flight) < self._window and self.address is not None:
            count = min(len(self._buffer), self._max_batch)
            entries = tuple(self._buffer.popleft() for _ in range(count))
            batch_id = next(_batch_ids)
            flight = _InFlight(self.address, entries, self._clock())
            self._in_flight[batch_id] = flight
            self._post(self.address, PersistBatch(batch_id, self._gateway_index, flight.records))

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
        """The persister changed: None while it restarts, then its new address."""
        if address == self.address:
            return
        old = self.address
        self.address = address
        retry: list[tuple[float, PersistRecord]] = []
        for batch_id, flight in list(self._in_flight.items()):
            if flight.address != old:
                continue
            del self._in_flight[batch_id]
            for entry in flight.entries:
                record = entry[1]
                if isinstance(record, ChangeRecord):
                    # Safe to repeat (see ChangeRecord.retried): an edit lands
                    # again, a reaction already there is not added twice.
                    retry.append((entry[0], replace(record, retried=True)))
                elif record.client_msg_id:
                    retry.append(entry)
                else:
                    # Not from a gateway (those always carry a key): cannot be
                    # retried safely, so its outcome is unknown.
                    self._fail((entry[1],), "persister failed; outcome unknown")
        # Retried records go first, in their original order.
        self._buffer.extendleft(reversed(retry))
        if self._buffer and address is not None:
            self._flush()

    def expire(self) -> None:
        """Fail what waited too long (call periodically; see the module docstring)."""
        now = self._clock()
        flight_deadline = now - self._in_flight_timeout_s
        for batch_id, flight in list(self._in_flight.items()):
            if flight.sent_at <= flight_deadline:
                del self._in_flight[batch_id]
                self._fail(flight.records, "storage did not answer in time; outcome unknown")
        deadline = now - self._ack_timeout_s
        while self._buffer and self._buffer[0][0] <= deadline:
            why = "server overloaded" if self.address is not None else "persister unavailable"
            self._fail((self._buffer.popleft()[1],), why)
        if self._buffer:
            self._flush()

    def fail_all(self, why: str) -> None:
        """Fail everything buffered and in flight (the gateway is going away)."""
        for flight in self._in_flight.values():
            self._fail(flight.records, why)
        self._in_flight.clear()
        self._fail(tuple(record for _, record in self._buffer), why)
        self._buffer.clear()

    def _fail(self, records: tuple[PersistRecord, ...], why: str) -> None:
        for record in records:
            future = self._futures.pop(record.token, None)
            if future is not None and not future.done():
                future.set_result(_unavailable(record.token, why))


def _unavailable(token: int, why: str) -> SendOutcome:
    return SendOutcome(token, error_code="unavailable", error_message=why)
