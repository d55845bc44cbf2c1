"""``ChannelActor``: one per channel that has subscribers in this gateway process.

It is the channel's local fan-out point: it receives the channel's durable
messages (in id order, from the channel's sequencer) and hands each, encoded once,
to every local subscriber. Because it handles its mailbox one message at a time,
a join with ``resume`` (replay from storage, then live) and live publishes can
never interleave wrongly:

* a subscriber's *watermark* is the highest id it has been given; live messages at
  or below it are skipped, so a message that is both replayed and live arrives once;
* ids are contiguous (``chime_actors.ids``), so a jump from n to n+3 means two
  messages never reached this gateway (a persister died between storing and
  delivering, or the mailbox overflowed): they are read from storage and
  delivered first. No gaps, no duplicates.

Failure policy (``local_supervisor``):

========================  ==============================================================
handler raises            logged with a correlation id; the actor restarts with its
                          subscribers and watermarks intact and re-reads from storage
                          everything after the last id it delivered, so the message
                          that was being handled is not lost
Join raised               the joining connection is told (``internal`` error)
> 5 failures in 10 s      escalate: every subscriber is closed with 1011 and resumes
                          on reconnect; the actor is removed
========================  ==============================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chime_actors.errors import StoreError
from chime_actors.gateway.local_supervisor import RestartBudget, RestartPolicy
from chime_actors.ids import parse_message_id
from chime_actors.logs import get_logger
from chime_actors.protocol import server_frames
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.records import ChimeMessage
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

MAILBOX_SIZE = 10_000
# Live frames kept for one subscriber between its deferred join and activation.
MAX_PENDING = 10_000
DEFAULT_POLICY = RestartPolicy()
GAP_FILL_LIMIT = 10_000
# With several hosts, how long a message waits behind a hole in the ids (see
# _release_held), and how often storage is asked again meanwhile.
MULTI_HOST_HOLD_MAX_S = 1.0
HOLD_RETRY_S = 0.05
# Past this many held messages a hole is skipped even while storage is down
# (bounded memory beats completeness; those subscribers can resume).
MAX_HELD = 10_000


class Subscriber(Protocol):
    """What a channel needs of a connection."""

    @property
    def connection_id(self) -> str:
        """Unique id of the connection."""
        ...

    def push(self, frame: str | WireFrame) -> None:
        """Queue a text frame for the client; never blocks."""
        ...

    def abort(self, code: int, reason: str) -> None:
        """Close the connection (the channel gave up on it)."""
        ...


@dataclass(frozen=True, slots=True)
class JoinResult:
    """How a join went: ``replayed`` messages, or why resume failed."""

    replayed: int = 0
    resume_failed: str | None = None


@dataclass(slots=True)
class Join:
    """Add a subscriber; replay after ``resume_after`` (a message id) if given.

    With ``deferred`` the subscriber is registered but nothing is pushed to it
    (live messages are kept for it) until ``Activate``: a connect registers all
    its channels *before* ``connected`` is sent, so no message stored after
    ``connected`` can be missed, and activates them after it, so no message frame
    precedes ``connected``.
    """

    subscriber: Subscriber
    resume_after: str | None
    done: asyncio.Future[JoinResult]
    deferred: bool = False


@dataclass(slots=True)
class Activate:
    """Start pushing to a deferred subscriber: replay (if it resumes), then live."""

    connection_id: str
    done: asyncio.Future[JoinResult]


@dataclass(frozen=True, slots=True)
class Leave:
    """Remove a subscriber."""

    connection_id: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Durable messages of this channel, ascending ids."""

    messages: tuple[ChimeMessage, ...]


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Fault injection (tests only, behind ``testing.fault_injection``): raise."""


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Read storage beyond the last delivered id and deliver what is there.

    Sent when messages may have been stored without reaching this gateway: the
    channel's persister was replaced (it may have died between storing and
    delivering), or the Redis subscription was down.
    """


ChannelMail = Join | Activate | Leave | Publish | InjectFault | CatchUp


@dataclass(slots=True)
class _Member:
    subscriber: Subscriber
    watermark: int = 0
    resume_after: str | None = None
    # While deferred: live frames kept for it, (seq, frame), oldest first.
    pending: list[tuple[int, WireFrame]] | None = None


@dataclass(slots=True)
class ChannelStats:
    """Counters the gateway turns into metrics."""

    delivered: int = 0
    gap_filled: int = 0
    restarts: int = 0
    dropped_mail: int = 0


class ChannelActor:
    """Fans one channel's messages out to this process's subscribers."""

    def __init__(
        self,
        channel_id: str,
        store: MessageStore,
        *,
        max_resume_messages: int,
        on_stopped: Callable[[str], None],
        policy: RestartPolicy = DEFAULT_POLICY,
        stats: ChannelStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold_max_s: float = 0.0,
    ) -> None:
        self.channel_id = channel_id
        self._store = store
        self._max_resume = max_resume_messages
        self._on_stopped = on_stopped
        self._budget = RestartBudget(policy, clock)
        self.stats = stats if stats is not None else ChannelStats()
        self._mailbox: asyncio.Queue[ChannelMail] = asyncio.Queue(MAILBOX_SIZE)
        self._members: dict[str, _Member] = {}
        # Highest id delivered live in this process; None until the first join reads
        # the baseline from storage.
        self._last_seq: int | None = None
        # Messages that arrived ahead of a hole, by id (see _release_held).
        self._held: dict[int, ChimeMessage] = {}
        self._held_since: float | None = None
        self._retry_scheduled = False
        self._clock = clock
        self._hold_max_s = hold_max_s
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # --- outside API (same loop) --------------------------------------------------

    def start(self) -> None:
        """Start the mailbox loop."""
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"channel:{self.channel_id}"
        )

    @property
    def member_count(self) -> int:
        """Local subscribers."""
        return len(self._members)

    @property
    def stopped(self) -> bool:
        """True once the actor has stopped (last member left or escalated)."""
        return self._stopped

    def tell(self, mail: ChannelMail) -> bool:
        """Put ``mail`` in the mailbox; False when it is full (the mail is dropped).

        A dropped ``Publish`` is recovered by the gap fill of the next one. A
        ``Leave`` takes effect at once (nothing is delivered to a connection after
        its ``unsubscribed``, and a full mailbox cannot keep a member for ever);
        the mail still goes through the mailbox so an idle actor stops.
        """
        if isinstance(mail, Leave):
            self._members.pop(mail.connection_id, None)
        try:
            self._mailbox.put_nowait(mail)
        except asyncio.QueueFull:
            self.stats.dropped_mail += 1
            return False
        return True

    async def join(
        self, subscriber: Subscriber, resume_after: str | None, *, deferred: bool = False
    ) -> JoinResult:
        """Subscribe and wait until any replay has been queued to the subscriber.

        With ``deferred``, only register (see ``Join``); ``activate`` later.
        """
        done: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        return await self._ask(Join(subscriber, resume_after, done, deferred), done)

    async def activate(self, connection_id: str) -> JoinResult:
        """Replay (if resuming) and start live delivery for a deferred subscriber."""
        done: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        return await self._ask(Activate(connection_id, done), done)

    async def _ask(self, mail: ChannelMail, done: asyncio.Future[JoinResult]) -> JoinResult:
        if self._stopped:
            raise StoreError("channel actor stopped; retry")
        # A join must not be lost to a full mailbox: wait for room (bounded by the
        # caller's timeout).
        await self._mailbox.put(mail)
        if self._stopped and not done.done():
            # The actor stopped while we waited for room: nobody will read the mail.
            raise StoreError("channel actor stopped; retry")
        return await done

    async def stop(self) -> None:
        """Stop the loop (gateway shutdown)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- the actor loop -----------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopped:
            mail = await self._mailbox.get()
            try:
                await self._handle(mail)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not await self._on_failure(mail, exc):
                    return
            if not self._members and self._mailbox.empty():
                self._stop_idle()
                return

    async def _handle(self, mail: ChannelMail) -> None:
        if isinstance(mail, Publish):
            await self._publish(mail.messages)
        elif isinstance(mail, Join):
            result = await self._join(mail.subscriber, mail.resume_after, mail.deferred)
            if not mail.done.done():
                mail.done.set_result(result)
        elif isinstance(mail, Activate):
            member = self._members.get(mail.connection_id)
            result = JoinResult() if member is None else await self._activate(member)
            if not mail.done.done():
                mail.done.set_result(result)
        elif isinstance(mail, CatchUp):
            await self._resync()
        elif isinstance(mail, Leave):
            self._members.pop(mail.connection_id, None)
        else:
            raise RuntimeError(f"injected fault in channel {self.channel_id}")

    async def _on_failure(self, mail: ChannelMail, exc: Exception) -> bool:
        """The failure policy; False when the actor escalated and stopped."""
        correlation = uuid.uuid4().hex[:12]
        log.error(
            "channel actor failed",
            channelId=self.channel_id,
            correlationId=correlation,
            mail=type(mail).__name__,
            exc_info=exc,
        )
        if isinstance(mail, (Join, Activate)) and not mail.done.done():
            mail.done.set_exception(exc)
        if not self._budget.allow_restart():
            log.error("channel actor escalates: closing subscribers", channelId=self.channel_id)
            for member in list(self._members.values()):
                member.subscriber.abort(1011, f"channel failed (correlation {correlation})")
            self._members.clear()
            self._stop_idle()
            return False
        self.stats.restarts += 1
        await self._resync()
        return True

    def _stop_idle(self) -> None:
        self._stopped = True
        # Anything still queued (a late Join) must not hang its caller.
        while not self._mailbox.empty():
            mail = self._mailbox.get_nowait()
            if isinstance(mail, (Join, Activate)) and not mail.done.done():
                mail.done.set_exception(StoreError("channel actor stopped; retry"))
        self._on_stopped(self.channel_id)

    # --- behaviour ----------------------------------------------------------------

    async def _baseline(self) -> int:
        if self._last_seq is None:
            self._last_seq = await self._store.last_seq(self.channel_id)
        return self._last_seq

    async def _join(
        self, subscriber: Subscriber, resume_after: str | None, deferred: bool = False
    ) -> JoinResult:
        try:
            # Not storage's newest id: a message stored just before this join
            # whose Publish is still on its way here is delivered (a little older
            # than the subscription) rather than risk skipping one stored just
            # after the client was told it is subscribed.
            baseline = await self._baseline()
        except StoreError:
            # Without a baseline we still deliver live messages; only gap
            # detection waits until storage answers.
            baseline = self._last_seq or 0
        member = _Member(subscriber, watermark=baseline, resume_after=resume_after)
        self._members[subscriber.connection_id] = member
        if deferred:
            member.pending = []
            return JoinResult()
        return await self._activate(member)

    async def _activate(self, member: _Member) -> JoinResult:
        """Replay after ``member.resume_after`` (if any), then what was kept, then live."""
        try:
            result = await self._replay(member)
        finally:
            pending, member.pending = member.pending, None
            for seq, frame in pending or ():
                if seq > member.watermark:
                    member.subscriber.push(frame)
                    member.watermark = seq
        return result

    async def _replay(self, member: _Member) -> JoinResult:
        subscriber, resume_after = member.subscriber, member.resume_after
        if resume_after is None:
            return JoinResult()
        try:
            page = await self._store.history(
                self.channel_id, after=resume_after, limit=self._max_resume + 1
            )
        except StoreError:
            subscriber.push(server_frames.resume_failed(self.channel_id, "unavailable"))
            return JoinResult(resume_failed="unavailable")
        if len(page.messages) > self._max_resume:
            # The client pages history instead; live delivery starts after the
            # newest stored message, which that history already holds, so nothing
            # reaches it twice (stored but not yet delivered here included).
            member.watermark = max(member.watermark, await self._stored_head(member))
            subscriber.push(server_frames.resume_failed(self.channel_id, "too_many"))
            return JoinResult(resume_failed="too_many")
        for message in page.messages:
            subscriber.push(server_frames.message(message))
        # The client now has everything up to the last replayed id, or up to
        # ``resume_after`` when nothing was newer: live messages this gateway has
        # not seen yet may be at or below it.
        if page.messages:
            given = page.messages[-1].seq
        else:
            # ...but never beyond what is stored: a resume point past the channel's
            # head (a client of a wiped or other server) must not make us skip the
            # next live messages as "already given".
            given = min(parse_message_id(resume_after), await self._stored_head(member))
        member.watermark = max(member.watermark, given)
        subscriber.push(server_frames.resumed(self.channel_id, len(page.messages)))
        return JoinResult(replayed=len(page.messages))

    async def _stored_head(self, member: _Member) -> int:
        """The channel's highest stored id; ``member``'s watermark if storage is down."""
        try:
            return await self._store.last_seq(self.channel_id)
        except StoreError:
            return member.watermark

    async def _publish(self, messages: tuple[ChimeMessage, ...]) -> None:
        for message in messages:
            seq = message.seq
            if self._last_seq is None:
                self._deliver(message, seq)
            elif seq > self._last_seq:
                self._held[seq] = message
        await self._release_held()

    async def _release_held(self) -> None:
        """Deliver held messages in id order, filling holes from storage.

        A hole is an id that has not arrived: lost on the way (a persister died
        between storing and delivering, a mailbox overflowed, Redis was down),
        deleted, or, with several hosts, still being stored by another host.
        Storage is asked first. With one host whatever storage lacks is deleted
        or was never stored, so it is skipped at once (``hold_max_s`` 0); with
        several hosts it may still come, so it is waited for, at most
        ``hold_max_s`` (an id whose write failed on another host never comes).
        """
        while self._held and self._last_seq is not None:
            self._deliver_consecutive()
            if not self._held:
                break
            first_held = min(self._held)
            answered = await self._fill_gap(first_held - 1)
            self._deliver_consecutive()
            if not self._held or min(self._held) != first_held:
                continue
            if self._last_seq + 1 < first_held:
                if not answered and len(self._held) < MAX_HELD:
                    # Storage is down: the hole may be stored and unreadable right
                    # now. Wait for storage (nothing new is stored meanwhile).
                    self._schedule_retry()
                    return
                now = self._clock()
                if self._held_since is None:
                    self._held_since = now
                if now - self._held_since < self._hold_max_s:
                    self._schedule_retry()
                    return
                log.warning(
                    "skipping ids that never arrived",
                    channelId=self.channel_id,
                    missing=first_held - self._last_seq - 1,
                )
                self._last_seq = first_held - 1
        if not self._held:
            self._held_since = None

    def _deliver_consecutive(self) -> None:
        assert self._last_seq is not None
        while self._last_seq + 1 in self._held:
            seq = self._last_seq + 1
            self._deliver(self._held.pop(seq), seq)
        for seq in [s for s in self._held if s <= self._last_seq]:
            del self._held[seq]  # delivered by a gap fill meanwhile

    def _schedule_retry(self) -> None:
        if self._retry_scheduled:
            return
        self._retry_scheduled = True

        def retry() -> None:
            self._retry_scheduled = False
            if not self._stopped:
                self.tell(CatchUp())

        asyncio.get_running_loop().call_later(HOLD_RETRY_S, retry)

    async def _fill_gap(self, up_to_seq: int) -> bool:
        """Deliver (or hold) stored messages up to ``up_to_seq``; False if storage failed."""
        assert self._last_seq is not None
        start = max(self._last_seq, up_to_seq - GAP_FILL_LIMIT)
        if up_to_seq <= start:
            return True
        try:
            missing = await self._store.messages_range(
                self.channel_id, after_seq=start, up_to_seq=up_to_seq
            )
        except StoreError as exc:
            log.warning("gap fill failed", channelId=self.channel_id, error=str(exc))
            return False
        for message in missing:
            if message.seq <= self._last_seq or message.seq in self._held:
                continue
            self.stats.gap_filled += 1
            if message.seq == self._last_seq + 1:
                self._deliver(message, message.seq)
            else:
                # A hole inside the range (a deleted message, or one still being
                # stored elsewhere): keep the order, hold the rest.
                self._held[message.seq] = message
        return True

    async def _resync(self) -> None:
        """Deliver whatever storage has beyond our last id, then what is held."""
        if self._last_seq is None:
            return
        try:
            latest = await self._store.last_seq(self.channel_id)
        except StoreError:
            if self._held:
                self._schedule_retry()  # storage is down; held messages wait for it
            return
        if latest > self._last_seq:
            await self._fill_gap(latest)
        await self._release_held()

    def _deliver(self, message: ChimeMessage, seq: int) -> None:
        # Encoded and framed once for every recipient.
        frame = WireFrame.of(server_frames.message(message))
        for member in self._members.values():
            if member.pending is not None:
                if len(member.pending) < MAX_PENDING:
                    member.pending.append((seq, frame))
                else:  # a replay that long: let the client resume instead
                    member.subscriber.abort(1013, "too much arrived while resuming; resume again")
            elif seq > member.watermark:
                # Push first: if it raises, the watermark still says "not given",
                # so the resync after the restart gives it again.
                member.subscriber.push(frame)
                member.watermark = seq
                self.stats.delivered += 1
        self._last_seq = seq
