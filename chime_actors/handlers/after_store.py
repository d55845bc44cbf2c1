"""``after_store`` delivery: every stored message of a handler's channels, in order, at least once.

The worker here runs in the handler's process (``HandlerCore``), on its loop;
it hands each message to the handler (through ``HandlerRunner``, on the
handler's own thread) and keeps the handler's **cursor**: per channel, the last
message id the handler confirmed. The rules:

* **what.** Every stored event of the handler's channels: messages
  (``after_store``) and the changes of them (``after_change``: edits, deletes,
  reactions), which take positions in the channel's order like messages.
* **order.** Events of a channel are handed over in id order, one at a time
  (across channels in the order they arrived). A message whose predecessors the
  handler has not confirmed is not handed over before them: the missing ones
  are read from storage first (``messages_range``), so a lost delivery is a
  delay, never a gap. Deleted messages are skipped.
* **at least once.** A message is confirmed once the handler returned (and its
  replies were stored); then the cursor moves. Cursors are saved to storage
  every ``FLUSH_INTERVAL_S`` and when the process stops, so after a crash the
  handler is offered again what it confirmed in the last half second at most.
  Replies carry an idempotency key made from the handler and the message, so
  a message answered twice is still answered once.
* **failure.** A call that raises or overruns ``timeout_ms`` is retried with
  exponential backoff (0.1 s doubling to 30 s) with ``on_failure: reject``;
  with ``accept`` the message is skipped (counted and logged).
* **bounded.** Deliveries queue in memory up to ``backlog`` messages. Past it the
  handler is *paused*: new messages are not queued, their channels are marked
  behind, and once the queue has drained each of them is read from storage
  from its cursor on. Nothing is dropped; memory stays bounded.
* **several hosts.** Under a lease (``handlers/lease.py``) the worker is made
  afresh for every hold, with the hold's ``fence`` on every cursor write; a
  write storage refuses (a newer holder) calls ``on_fenced``. Its events come
  from every host, so one may arrive twice (dropped: an event at or below the
  newest queued one of its channel is not queued again; storage has it) and an
  id missing from storage may still be being stored by another host: such a
  hole is waited for (``hold_max_s``, as the gateways do) before it counts as
  deleted, and only if the handler saw the channel's head pass it less than
  ``hold_max_s`` ago (an older hole has had that long to land).
* **restarts.** When its process starts, the worker loads the cursors and lists
  the channels in storage: a channel whose last id is past its cursor is read
  from there. The very first time a handler (by name) starts it registers
  (cursor key ``*``) and begins at the head of every existing channel: it
  handles what is stored from then on, not years of history. A channel that
  appears later starts at its first message.

Nothing here waits on a client or a persister: the core feeds the worker what
the persisters deliver and the worker never blocks them (docs/handlers.md).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from chime_actors.config import HandlerConfig, HandlerFailure
from chime_actors.errors import FencedOut, HandlerError, StoreError
from chime_actors.handlers.api import Reply
from chime_actors.handlers.checks import content_problem, metadata_problem
from chime_actors.handlers.metrics import HandlerCounters
from chime_actors.handlers.registry import channel_matches
from chime_actors.logs import get_logger
from chime_actors.persister.link import next_token
from chime_actors.protocol.frames import is_channel_id, is_user_id
from chime_actors.records import ChannelEvent, ChimeMessage, MessageChange, SendOutcome, SendRecord
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

REGISTERED = "*"
"""Cursor key saved on a handler's first start (no channel id contains ``*``)."""
PAGE = 200
FLUSH_INTERVAL_S = 0.5
FIRST_RETRY_S = 0.1
MAX_RETRY_S = 30.0
STUCK_AFTER_S = 30.0
SCAN_CONCURRENCY = 32
# How often storage is asked again for a hole held (several hosts).
HOLD_RETRY_S = 0.05

Call = Callable[[ChannelEvent], Awaitable[Sequence[Reply]]]
"""Runs the handler on one event within its budget (``HandlerRunner.call``):
``after_store`` for a message, ``after_change`` for an edit, delete or reaction."""
Send = Callable[[SendRecord], Awaitable[SendOutcome]]
"""Stores one reply like a client's send (a ``PersistLink``)."""
Sleep = Callable[[float], Awaitable[None]]


class Cursors:
    """Confirmed positions per channel, and what is not saved to storage yet."""

    def __init__(self) -> None:
        self._confirmed: dict[str, int] = {}
        self._saved: dict[str, int] = {}

    def load(self, saved: Mapping[str, int]) -> None:
        """Positions read from storage."""
        self._confirmed = dict(saved)
        self._saved = dict(saved)

    def of(self, channel_id: str) -> int:
        """The last seq confirmed in ``channel_id`` (0: none)."""
        return self._confirmed.get(channel_id, 0)

    def confirm(self, channel_id: str, seq: int) -> None:
        """The handler is done with everything up to ``seq`` (never moves back)."""
        if seq > self._confirmed.get(channel_id, 0):
            self._confirmed[channel_id] = seq

    def unsaved(self) -> dict[str, int]:
        """Positions that moved since the last ``saved``."""
        return {k: v for k, v in self._confirmed.items() if self._saved.get(k) != v}

    def saved(self, positions: Mapping[str, int]) -> None:
        """``positions`` are durable now."""
        for key, seq in positions.items():
            self._saved[key] = max(seq, self._saved.get(key, seq))

    def items(self) -> Iterable[tuple[str, int]]:
        """Every confirmed position."""
        return self._confirmed.items()


class Backlog:
    """Deliveries waiting for the handler, bounded; past the bound channels fall behind.

    ``next`` gives queued messages first (the live stream), then the channels to
    read from storage, oldest mark first.
    """

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._queue: collections.deque[ChannelEvent] = collections.deque()
        self._behind: dict[str, None] = {}  # an ordered set
        self._wake = asyncio.Event()
        self.paused = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def behind(self) -> int:
        """Channels marked to be read from storage."""
        return len(self._behind)

    def offer(self, message: ChannelEvent) -> None:
        """Queue a delivery, or (queue full) mark its channel behind."""
        if self.paused or len(self._queue) >= self._bound:
            if not self.paused:
                log.warning("handler backlog full: paused, reading from storage later")
            self.paused = True
            self.mark_behind(message.channel_id)
            return
        self._queue.append(message)
        self._wake.set()

    def wake(self) -> None:
        """Make a waiting ``wait`` return (there is other work: a scan)."""
        self._wake.set()

    def mark_behind(self, channel_id: str) -> None:
        """``channel_id`` has stored messages the queue does not hold."""
        self._behind.setdefault(channel_id)
        self._wake.set()

    def next(self) -> ChannelEvent | str | None:
        """An event, a channel to read from storage, or None (nothing to do)."""
        if self._queue:
            return self._queue.popleft()
        self.paused = False  # drained: live deliveries are queued again
        if self._behind:
            channel_id = next(iter(self._behind))
            del self._behind[channel_id]
            return channel_id
        self._wake.clear()
        return None

    async def wait(self) -> None:
        """Until something is offered or marked."""
        await self._wake.wait()


class AfterStoreWorker:
    """Hands one handler every stored message of its channels (module docstring)."""

    def __init__(
        self,
        spec: HandlerConfig,
        store: MessageStore,
        call: Call,
        send: Send,
        counters: HandlerCounters,
        *,
        max_content_chars: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        fence: int | None = None,
        hold_max_s: float = 0.0,
        on_fenced: Callable[[], None] = lambda: None,
    ) -> None:
        self._spec = spec
        self._store = store
        self._call = call
        self._send = send
        self._counters = counters
        self._max_content_chars = max_content_chars
        self._clock = clock
        self._sleep = sleep
        self.cursors = Cursors()
        self.backlog = Backlog(spec.backlog)
        self._fence = fence
        self._hold_max_s = hold_max_s
        self._on_fenced = on_fenced
        self._heads: dict[str, int] = {}
        # The newest event queued per channel: a repeat (two hosts) is not queued.
        self._queued: dict[str, int] = {}
        # With hold_max_s: per channel, heads seen (when, seq) within the last
        # hold_max_s, and the highest head seen before that (its holes are old).
        self._sightings: dict[str, collections.deque[tuple[float, int]]] = {}
        self._settled: dict[str, int] = {}
        self._scan_wanted = False
        self._working = False
        self._last_progress = clock()

    @property
    def name(self) -> str:
        """The handler's configured name."""
        return self._spec.name

    # --- what the core calls ---------------------------------------------------------

    async def register(self) -> None:
        """Load the cursors; the first time ever, start every existing channel at its head.

        Raises:
            StoreError: storage did not answer (the process fails to start and
                the supervisor starts it again).
            FencedOut: under a fence, a newer holder claimed the handler.
        """
        saved = dict(await self._store.handler_cursors(self.name))
        if REGISTERED not in saved:
            heads = await self._heads_of(await self._matching_channels())
            saved = {**heads, REGISTERED: 0}
            await self._store.save_handler_cursors(self.name, saved, fence=self._fence)
            log.info("handler registered", handler=self.name, channels=len(heads))
        self.cursors.load(saved)
        self._scan_wanted = True  # what was stored while we were down

    def offer(self, messages: Iterable[ChannelEvent]) -> None:
        """Newly stored events (a ``Deliveries``); those of other channels are dropped."""
        for message in messages:
            channel_id = message.channel_id
            if not channel_matches(self._spec, channel_id):
                continue
            self._saw_head(channel_id, message.seq)
            if message.seq > self.cursors.of(channel_id) and message.seq > self._queued.get(
                channel_id, 0
            ):
                self._queued[channel_id] = message.seq
                self.backlog.offer(message)

    def request_scan(self) -> None:
        """Compare every channel's last id with its cursor once the queue is idle."""
        self._scan_wanted = True
        self.backlog.wake()

    async def run(self) -> None:
        """Hand messages over until cancelled."""
        while True:
            item = self.backlog.next()
            if item is None:
                if self._scan_wanted:
                    self._scan_wanted = False
                    await self._retrying("scan", self._scan)
                    continue
                self._working = False
                await self.backlog.wait()
                continue
            if not self._working:
                self._working = True
                self._last_progress = self._clock()
            if isinstance(item, ChimeMessage | MessageChange):
                await self._on_live(item)
            else:
                await self._retrying("catch up", functools.partial(self._catch_up, item), item)

    async def flush(self) -> None:
        """Save the cursors that moved; a storage failure leaves them for the next flush.

        Under a fence that storage refuses (a newer holder), ``on_fenced``.
        """
        unsaved = self.cursors.unsaved()
        if not unsaved:
            return
        try:
            await self._store.save_handler_cursors(self.name, unsaved, fence=self._fence)
        except FencedOut as exc:
            log.warning("handler cursors fenced out", handler=self.name, stored=exc.fence)
            self._on_fenced()
            return
        except StoreError as exc:
            log.warning("handler cursors not saved", handler=self.name, error=str(exc))
            return
        self.cursors.saved(unsaved)

    async def flush_forever(self) -> None:
        """``flush`` every ``FLUSH_INTERVAL_S`` until cancelled."""
        while True:
            await self._sleep(FLUSH_INTERVAL_S)
            await self.flush()

    @property
    def lag(self) -> int:
        """Stored messages known to this process that the handler has not confirmed."""
        return sum(max(0, head - self.cursors.of(c)) for c, head in self._heads.items())

    @property
    def stuck(self) -> bool:
        """True while it has work but confirmed nothing for ``STUCK_AFTER_S``."""
        return self._working and self._clock() - self._last_progress > STUCK_AFTER_S

    # --- delivery ----------------------------------------------------------------------

    async def _on_live(self, message: ChannelEvent) -> None:
        confirmed = self.cursors.of(message.channel_id)
        if message.seq <= confirmed:
            return  # handed over already (from storage, or a repeat)
        if message.seq == confirmed + 1:
            await self._deliver(message)
            return
        # Predecessors missing (dropped on the way, or never queued): storage first.
        channel_id = message.channel_id
        catch_up = functools.partial(self._catch_up, channel_id, up_to=message.seq)
        await self._retrying("catch up", catch_up, channel_id)

    async def _catch_up(self, channel_id: str, up_to: int | None = None) -> None:
        """Hand over what storage holds after the cursor, up to ``up_to`` (None: the end)."""
        head = up_to if up_to is not None else await self._store.last_seq(channel_id)
        self._saw_head(channel_id, head)
        while (confirmed := self.cursors.of(channel_id)) < head:
            until = min(head, confirmed + PAGE)
            page = await self._store.events_range(channel_id, after_seq=confirmed, up_to_seq=until)
            if await self._deliver_page(channel_id, page, confirmed, until):
                # Ids missing from the page are deleted messages: nothing to hand over.
                self.cursors.confirm(channel_id, until)
            else:
                await self._sleep(HOLD_RETRY_S)  # then read storage again from the hole
            self._last_progress = self._clock()

    async def _deliver_page(
        self, channel_id: str, page: Sequence[ChannelEvent], confirmed: int, until: int
    ) -> bool:
        """Hand ``page`` (ids ``confirmed + 1 .. until``) over; False at a hole to hold."""
        expected = confirmed + 1
        for message in page:
            if message.seq > expected and not self._old_hole(channel_id, expected):
                return False
            if message.seq > self.cursors.of(channel_id):
                await self._deliver(message)
            expected = message.seq + 1
        return expected > until or self._old_hole(channel_id, expected)

    def _saw_head(self, channel_id: str, seq: int) -> None:
        """``seq`` is stored (or being stored) in ``channel_id``: every id below it is taken."""
        if seq > self._heads.get(channel_id, 0):
            self._heads[channel_id] = seq
        if self._hold_max_s <= 0:
            return
        seen = self._sightings.setdefault(channel_id, collections.deque())
        self._settle(channel_id, seen)
        if seq > (seen[-1][1] if seen else self._settled.get(channel_id, 0)):
            seen.append((self._clock(), seq))

    def _old_hole(self, channel_id: str, seq: int) -> bool:
        """Whether the missing id ``seq`` counts as deleted (nothing more to wait for).

        One host: always. Several: once a head past it was seen ``hold_max_s``
        ago, since ids are taken in order: ``seq`` was taken before that head,
        and its write had that long to land or fail.
        """
        if self._hold_max_s <= 0:
            return True
        seen = self._sightings.get(channel_id)
        if seen is not None:
            self._settle(channel_id, seen)
        return seq <= self._settled.get(channel_id, 0)

    def _settle(self, channel_id: str, seen: collections.deque[tuple[float, int]]) -> None:
        now = self._clock()
        while seen and now - seen[0][0] >= self._hold_max_s:
            self._settled[channel_id] = seen.popleft()[1]

    async def _deliver(self, message: ChannelEvent) -> None:
        """Hand one event over until it is confirmed (or skipped, ``on_failure: accept``)."""
        delay = FIRST_RETRY_S
        while True:
            try:
                replies = await self._call(message)
                await self._send_replies(message, replies)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._counters.failures.inc()
                skip = self._spec.on_failure is HandlerFailure.ACCEPT
                log.warning(
                    "after_store handler failed",
                    handler=self.name,
                    channelId=message.channel_id,
                    eventId=_event_id(message),
                    error=str(exc) or type(exc).__name__,
                    then="skip" if skip else f"retry in {delay:g} s",
                )
                if not skip:
                    await self._sleep(delay)
                    delay = min(MAX_RETRY_S, delay * 2)
                    continue
            else:
                self._counters.handled.inc()
            self.cursors.confirm(message.channel_id, message.seq)
            self._last_progress = self._clock()
            return

    async def _send_replies(self, source: ChannelEvent, replies: Sequence[Reply]) -> None:
        for index, reply in enumerate(replies):
            outcome = await self._send(self._reply_record(source, reply, index))
            if outcome.message is None:
                raise HandlerError(
                    f"reply not stored: {outcome.error_code}: {outcome.error_message}"
                )

    def _reply_record(self, source: ChannelEvent, reply: Any, index: int) -> SendRecord:
        """A reply as a send; ``HandlerError`` if it is not one a client could send."""
        if not isinstance(reply, Reply):
            raise HandlerError(f"answered {reply!r}, not a Reply")
        channel_id = reply.channel_id or source.channel_id
        if not is_channel_id(channel_id):
            raise HandlerError(f"reply to an invalid channel id {channel_id!r}")
        if not isinstance(reply.user_id, str) or not is_user_id(reply.user_id):
            raise HandlerError(f"reply from an invalid user id {reply.user_id!r}")
        problem = content_problem(reply.content, self._max_content_chars) or metadata_problem(
            reply.metadata
        )
        if problem:
            raise HandlerError(f"reply: {problem}")
        key = f"{self.name}\0{source.channel_id}\0{_event_id(source)}\0{index}"
        return SendRecord(
            token=next_token(),
            channel_id=channel_id,
            user_id=reply.user_id,
            content=reply.content,
            metadata=reply.metadata,
            thread_id=reply.thread_id,
            client_msg_id="handler:" + hashlib.sha256(key.encode()).hexdigest()[:40],
        )

    # --- storage -------------------------------------------------------------------------

    async def _scan(self) -> None:
        """Mark behind every channel whose last id in storage is past its cursor."""
        heads = await self._heads_of(await self._matching_channels())
        for channel_id, head in heads.items():
            self._saw_head(channel_id, head)
            if head > self.cursors.of(channel_id):
                self.backlog.mark_behind(channel_id)

    async def _matching_channels(self) -> list[str]:
        return [c for c in await self._store.channel_ids() if channel_matches(self._spec, c)]

    async def _heads_of(self, channels: Sequence[str]) -> dict[str, int]:
        heads: dict[str, int] = {}
        for start in range(0, len(channels), SCAN_CONCURRENCY):
            chunk = channels[start : start + SCAN_CONCURRENCY]
            found = await asyncio.gather(*(self._store.last_seq(c) for c in chunk))
            heads.update(zip(chunk, found, strict=True))
        return heads

    async def _retrying(
        self, what: str, work: Callable[[], Awaitable[None]], channel_id: str | None = None
    ) -> None:
        """``work()``; on a storage failure mark it to be done again later, after a pause."""
        try:
            await work()
        except StoreError as exc:
            log.warning("handler storage read failed", handler=self.name, work=what, error=str(exc))
            if channel_id is None:
                self._scan_wanted = True
            else:
                self.backlog.mark_behind(channel_id)
            await self._sleep(FIRST_RETRY_S * 10)


def _event_id(event: ChannelEvent) -> str:
    """The event's own position: a message's id, a change's ``event_id``."""
    return event.event_id if isinstance(event, MessageChange) else event.message_id
