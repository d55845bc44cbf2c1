"""``ChannelActor``: one per channel that has subscribers in this gateway process.

It is the channel's local fan-out point: it receives the channel's durable
messages (in id order, from the channel's sequencer) and hands each, encoded once,
to every local subscriber. Changes of messages (edits, deletes, reactions:
``MessageChange``) have ids of their own in the same order and travel the same
way, so everything below holds for them too: a subscriber gets a channel's
messages and changes in one order, each once, live or replayed.

Because it handles its mailbox one message at a time, a join with ``resume``
(replay from storage, then live) and live publishes can never interleave
wrongly:

* a subscriber's *watermark* is the highest id it has been given; live messages at
  or below it are skipped, so a message that is both replayed and live arrives once;
* ids are contiguous (``chime_actors.ids``), so a jump from n to n+3 means two
  messages never reached this gateway (a persister died between storing and
  delivering, or the mailbox overflowed): they are read from storage and
  delivered first. No gaps, no duplicates.

Flow control (docs/protocol.md: a client that reads is never closed for a burst or a
replay). A connection refuses a live frame when too much already waits for its
client (``gateway/outbox.py``). That member then leaves live delivery and is
*behind*: it keeps its watermark (the last id it was given), gets nothing live,
and when its connection has room again (the ``on_room`` callback of the refused
offer) it is caught up from storage, a page of ``CATCH_UP_PAGE`` ids at a time,
for as long as the connection takes them; once it reaches the newest id
delivered here it rejoins live delivery. A resume replay is the same catch-up,
from the resume point, followed by ``resumed``. The channel never waits for one
client, and what it holds for a member behind is one page, whatever the lag.

Fan-out in slices. A message for a channel with thousands of local members is
thousands of offers and, when the loop turn ends, thousands of socket writes
(``FlushQueue``): tens of milliseconds in which the gateway's loop reads no
client and no lane. So a delivery is given to the live members ``FANOUT_SLICE``
at a time, each member all of the delivery's messages in order, and between
two slices the actor yields to the loop (``asyncio.sleep(0)``: its next step is
a ``call_soon``, behind the flush of the slice just offered and whatever else
is ready). No other mail is handled before the last slice, so the delivery's
members and order are those of its start; a member that leaves meanwhile
(``Leave`` takes effect at once) is skipped from then on, and one whose
connection refuses a frame leaves live delivery as always (flow control).
Deliveries that queued up meanwhile are then handled as one (``_Mailbox.peek``):
each member gets them in one write, so a channel that falls behind writes less
per message instead of more (without the merge, the 200k/s broadcast fell to
37k/s with slicing).

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
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chime_actors.errors import StoreError
from chime_actors.gateway.local_supervisor import RestartBudget, RestartPolicy
from chime_actors.gateway.mailbox import Mailbox
from chime_actors.ids import parse_message_id
from chime_actors.logs import get_logger
from chime_actors.protocol import server_frames
from chime_actors.protocol.codes import CloseCode
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.records import ChannelEvent
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

MAILBOX_SIZE = 10_000
# Live frames kept for one subscriber between its deferred join and activation;
# past it, the activation reads them from storage instead.
MAX_PENDING = 10_000
# Ids read from storage at once by a replay or a catch-up (of ~16 KB messages: 1 MB).
CATCH_UP_PAGE = 64
# Ids one catch-up covers before the actor's other mail is handled (fairness).
CATCH_UP_TURN = 512
# Live members given one delivery before the actor yields to the loop (with the
# flush of their outboxes, a slice holds the loop for ~1-3 ms on the 2-core box).
FANOUT_SLICE = 128
# A catch-up that storage failed is tried again after this.
CATCH_UP_RETRY_S = 0.5
DEFAULT_POLICY = RestartPolicy()
GAP_FILL_LIMIT = 10_000
# With several hosts, how often storage is asked again while a message waits
# behind a hole in the ids (see _release_held; how long: MULTI_HOST_HOLD_MAX_S).
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
        """Queue a text frame for the client (a marker: never refused); never blocks."""
        ...

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        """Queue a message frame unless the client is held back; never blocks.

        False: not queued, and ``on_room`` will be called when the client has
        room (unless the connection closes first, and then it leaves).
        """
        ...

    def abort(self, code: CloseCode, reason: str) -> None:
        """Close the connection (the channel gave up on it)."""
        ...


@dataclass(frozen=True, slots=True)
class JoinResult:
    """How a join went: ``replayed`` messages, or why resume failed.

    ``replayed`` counts what was queued before the join returned: all of the
    replay unless the connection held it back (the rest follows, then ``resumed``).
    """

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
    """Durable events (messages and changes) of this channel, ascending ids."""

    messages: tuple[ChannelEvent, ...]


@dataclass(frozen=True, slots=True)
class InjectFault:
    """Fault injection (tests only, behind ``testing.fault_injection``): raise."""


@dataclass(frozen=True, slots=True)
class Kick:
    """Members are ready to be caught up (their connections have room)."""


@dataclass(frozen=True, slots=True)
class CatchUp:
    """Read storage beyond the last delivered id and deliver what is there.

    Sent when messages may have been stored without reaching this gateway: the
    channel's persister was replaced (it may have died between storing and
    delivering), or the Redis subscription was down.
    """


ChannelMail = Join | Activate | Leave | Publish | InjectFault | CatchUp | Kick


def _ignore() -> None:
    pass


@dataclass(slots=True)
class _Member:
    subscriber: Subscriber
    # The highest id given to it (while behind: where its catch-up goes on from).
    watermark: int = 0
    resume_after: str | None = None
    # Registered, not activated: nothing is given to it yet.
    deferred: bool = False
    # While deferred: live frames kept for it, (seq, frame), oldest first; None
    # when there were too many (the activation reads storage instead).
    pending: list[tuple[int, WireFrame]] | None = None
    # While replaying a resume: the id after which ``resumed`` is sent, and the
    # number of messages replayed so far.
    replay_to: int | None = None
    replayed: int = 0
    # Given to its connection with every offer: "room again, catch me up".
    wake: Callable[[], None] = _ignore


@dataclass(slots=True)
class ChannelStats:
    """Counters the gateway turns into metrics."""

    delivered: int = 0
    gap_filled: int = 0
    caught_up: int = 0
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
        observe_step: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold_max_s: float = 0.0,
        mailbox_size: int = MAILBOX_SIZE,
        max_pending: int = MAX_PENDING,
        catch_up_page: int = CATCH_UP_PAGE,
        catch_up_turn: int = CATCH_UP_TURN,
        catch_up_retry_s: float = CATCH_UP_RETRY_S,
        fanout_slice: int = FANOUT_SLICE,
    ) -> None:
        """The bounds (``mailbox_size`` ... ``catch_up_retry_s``) default to the
        module's constants, which say what each is; tests make them small.
        ``observe_step`` gets how long each slice of a fan-out held the loop, in
        seconds (``chime_delivery_step_seconds{step="fanout"}``)."""
        self.channel_id = channel_id
        self._store = store
        self._max_resume = max_resume_messages
        self._on_stopped = on_stopped
        self._budget = RestartBudget(policy, clock)
        self.stats = stats if stats is not None else ChannelStats()
        self._observe_step = observe_step
        self._mailbox: Mailbox[ChannelMail] = Mailbox(mailbox_size)
        # Every member; of them, those given live messages, those not activated
        # yet, and those behind whose connection has room (to catch up next).
        # A member in none of the last three is behind, waiting for room.
        self._members: dict[str, _Member] = {}
        self._live: dict[str, _Member] = {}
        self._deferred: dict[str, _Member] = {}
        self._ready: dict[str, None] = {}
        self._kicked = False
        # Highest id delivered live in this process; None until the first join reads
        # the baseline from storage.
        self._last_seq: int | None = None
        # Messages that arrived ahead of a hole, by id (see _release_held).
        self._held: dict[int, ChannelEvent] = {}
        self._held_since: float | None = None
        self._retry_scheduled = False
        self._clock = clock
        self._hold_max_s = hold_max_s
        self._max_pending = max_pending
        self._catch_up_page = catch_up_page
        self._catch_up_turn = catch_up_turn
        self._catch_up_retry_s = catch_up_retry_s
        self._fanout_slice = max(1, fanout_slice)
        # Delivered here (``_last_seq`` counts them) but not yet given to the live
        # members: (seq, frame), ascending; ``_fan_out`` gives them.
        self._outgoing: list[tuple[int, WireFrame]] = []
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
            self._forget(mail.connection_id)
        if not self._mailbox.offer(mail):
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
            if isinstance(mail, Publish):
                mail = self._merge_queued(mail)
            try:
                await self._handle(mail)
                if self._ready:
                    await self._catch_up_ready()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not await self._on_failure(mail, exc):
                    return
            if not self._members and self._mailbox.empty():
                self._stop_idle()
                return

    def _merge_queued(self, mail: Publish) -> Publish:
        """``mail`` and the ``Publish``es queued right behind it, as one delivery.

        Handling them one after another would give each member one write per
        delivery; merged, one for all of them. Only consecutive ones: a mail
        between them (a join) still sees what came before it.
        """
        if not isinstance(self._mailbox.peek(), Publish):
            return mail
        messages = list(mail.messages)
        while isinstance(following := self._mailbox.peek(), Publish):
            self._mailbox.get_nowait()  # through the queue: a waiting put gets its room
            messages.extend(following.messages)
        # _publish holds and orders them by id, whatever order they came in.
        return Publish(tuple(messages))

    async def _handle(self, mail: ChannelMail) -> None:
        if isinstance(mail, Publish):
            await self._publish(mail.messages)
        elif isinstance(mail, Join):
            result = await self._join(mail.subscriber, mail.resume_after, mail.deferred)
            if not mail.done.done():
                mail.done.set_result(result)
        elif isinstance(mail, Activate):
            member = self._members.get(mail.connection_id)
            if member is not None and member.deferred:
                result = await self._activate(member)
            else:
                result = JoinResult()  # gone, or activated already
            if not mail.done.done():
                mail.done.set_result(result)
        elif isinstance(mail, CatchUp):
            await self._resync()
        elif isinstance(mail, Kick):
            self._kicked = False  # the ready members are caught up after this mail
        elif isinstance(mail, Leave):
            self._forget(mail.connection_id)
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
                member.subscriber.abort(
                    CloseCode.INTERNAL_ERROR, f"channel failed (correlation {correlation})"
                )
            for connection_id in list(self._members):
                self._forget(connection_id)
            self._stop_idle()
            return False
        self.stats.restarts += 1
        # A fan-out the failure interrupted: the live members it had not reached
        # yet are behind (their watermarks say what they were given) and are
        # caught up from storage with the rest, below.
        self._outgoing = []
        for connection_id, member in list(self._live.items()):
            if self._last_seq is not None and member.watermark < self._last_seq:
                del self._live[connection_id]
        await self._resync()
        # A catch-up the failure interrupted would wait for a wake-up that may
        # never come: every member behind tries again.
        for connection_id, member in self._members.items():
            if not member.deferred and connection_id not in self._live:
                self._ready[connection_id] = None
        self._kick()
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
        connection_id = subscriber.connection_id
        self._forget(connection_id)  # a second join of one connection starts afresh
        member = _Member(subscriber, watermark=baseline, resume_after=resume_after)
        member.wake = functools.partial(self._wake, connection_id)
        self._members[connection_id] = member
        if deferred:
            member.deferred = True
            member.pending = []
            self._deferred[connection_id] = member
            return JoinResult()
        return await self._activate(member)

    async def _activate(self, member: _Member) -> JoinResult:
        """Replay after ``member.resume_after`` (if any), then what was kept, then live."""
        member.deferred = False
        self._deferred.pop(member.subscriber.connection_id, None)
        pending, member.pending = member.pending, None
        result = JoinResult()
        if member.resume_after is not None:
            result = await self._start_replay(member)
            if self._members.get(member.subscriber.connection_id) is not member:
                return result  # it left while storage answered
        if member.replay_to is None:
            # Not replaying (a replay reads storage up to at least the newest kept
            # frame: these are all in it). Kept frames first, as far as they go.
            for seq, frame in pending or ():
                if seq <= member.watermark:
                    continue
                if not member.subscriber.offer(frame, member.wake):
                    # Held back: the rest comes from storage once it has room.
                    return result
                member.watermark = seq
                self.stats.delivered += 1
        await self._catch_up(member)
        if member.replayed and result.resume_failed is None:
            result = JoinResult(replayed=member.replayed)
        return result

    async def _start_replay(self, member: _Member) -> JoinResult:
        """Check a resume and set ``member`` up to replay it (``_catch_up`` gives it)."""
        subscriber, resume_after = member.subscriber, member.resume_after
        assert resume_after is not None
        member.resume_after = None
        after = parse_message_id(resume_after)
        try:
            head = await self._store.last_seq(self.channel_id)
            too_many = head - after > self._max_resume and await self._more_than(
                after, head, self._max_resume
            )
        except StoreError:
            subscriber.push(server_frames.resume_failed(self.channel_id, "unavailable"))
            return JoinResult(resume_failed="unavailable")
        if too_many:
            # The client pages history instead; live delivery starts after the
            # newest stored message, which that history already holds, so nothing
            # reaches it twice (stored but not yet delivered here included).
            member.watermark = max(member.watermark, head)
            subscriber.push(server_frames.resume_failed(self.channel_id, "too_many"))
            return JoinResult(resume_failed="too_many")
        # Replay what is stored after the resume point, up to the head: live
        # messages this gateway has not seen yet may be at or below it. A resume
        # point past the head (a client of a wiped or other server) must not make
        # us skip the next live messages as "already given".
        member.watermark = min(after, head)
        member.replay_to = head
        member.replayed = 0
        return JoinResult()

    async def _more_than(self, after: int, head: int, limit: int) -> bool:
        """True if more than ``limit`` messages are stored in ``(after, head]``.

        Counted a page at a time: ids of deleted messages stay taken, so the
        span of ids alone may overstate it.
        """
        count = 0
        while after < head:
            up_to = min(head, after + self._catch_up_page)
            page = await self._store.events_range(self.channel_id, after_seq=after, up_to_seq=up_to)
            count += len(page)
            if count > limit:
                return True
            after = up_to
        return False

    # --- catching a member up (flow control) --------------------------------------

    def _forget(self, connection_id: str) -> None:
        self._members.pop(connection_id, None)
        self._live.pop(connection_id, None)
        self._deferred.pop(connection_id, None)
        self._ready.pop(connection_id, None)

    def _wake(self, connection_id: str) -> None:
        """A connection has room again (its outbox calls this; same loop)."""
        member = self._members.get(connection_id)
        if member is None or member.deferred or connection_id in self._live:
            return  # gone, or a stale wake-up of an earlier membership
        self._ready[connection_id] = None
        self._kick()

    def _kick(self) -> None:
        """Make sure the ready members are caught up soon.

        Without room in the mailbox the Kick is dropped, but then mail is
        waiting, and ready members are caught up after every mail.
        """
        if self._ready and not self._kicked and not self._stopped:
            self._kicked = self.tell(Kick())

    async def _catch_up_ready(self) -> None:
        ready, self._ready = self._ready, {}
        for connection_id in ready:
            member = self._members.get(connection_id)
            if member is not None and not member.deferred and connection_id not in self._live:
                await self._catch_up(member)

    async def _catch_up(self, member: _Member) -> None:
        """Give ``member`` what it is behind from storage, as far as its connection
        takes it; then ``resumed`` if it was replaying, and live delivery.

        It stops when the connection refuses a frame (its ``wake`` brings it back
        here), after ``CATCH_UP_TURN`` ids (it is ready again: other mail first),
        or when storage fails (tried again after ``CATCH_UP_RETRY_S``).
        """
        subscriber = member.subscriber
        connection_id = subscriber.connection_id
        budget = self._catch_up_turn
        while self._members.get(connection_id) is member:
            replay_to = member.replay_to
            # Up to the newest id delivered live here (no Publish is handled
            # meanwhile: the actor does one thing at a time), or the replay's end.
            target = replay_to if replay_to is not None else self._last_seq or 0
            if member.watermark >= target:
                if replay_to is not None:
                    subscriber.push(server_frames.resumed(self.channel_id, member.replayed))
                    member.replay_to = None
                    continue
                self._live[connection_id] = member
                return
            if budget <= 0:
                self._ready[connection_id] = None
                self._kick()
                return
            after = member.watermark
            up_to = min(target, after + self._catch_up_page)
            budget -= up_to - after
            try:
                page = await self._store.events_range(
                    self.channel_id, after_seq=after, up_to_seq=up_to
                )
            except StoreError as exc:
                log.warning("catch-up failed", channelId=self.channel_id, error=str(exc))
                asyncio.get_running_loop().call_later(self._catch_up_retry_s, member.wake)
                return
            if self._members.get(connection_id) is not member:
                return  # it left while storage answered
            for message in page:
                if message.seq <= member.watermark:
                    continue
                if not subscriber.offer(
                    WireFrame.of(server_frames.channel_event(message)), member.wake
                ):
                    return  # held back again: its connection wakes it when it has room
                member.watermark = message.seq
                if replay_to is not None:
                    member.replayed += 1
                else:
                    self.stats.caught_up += 1
            # Every id of the page was given or is deleted.
            member.watermark = up_to

    async def _publish(self, messages: tuple[ChannelEvent, ...]) -> None:
        for message in messages:
            seq = message.seq
            if self._last_seq is None:
                self._deliver(message, seq)
            elif seq > self._last_seq:
                self._held[seq] = message
        await self._release_held()
        await self._fan_out()

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
            # What is ready goes out before storage is read for the hole.
            await self._fan_out()
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
            missing = await self._store.events_range(
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
        await self._fan_out()

    def _deliver(self, message: ChannelEvent, seq: int) -> None:
        """Count ``message`` delivered here and stage it for the live members
        (``_fan_out``); a deferred member keeps it for its activation."""
        # Encoded and framed once for every recipient.
        frame = WireFrame.of(server_frames.channel_event(message))
        self._outgoing.append((seq, frame))
        if self._deferred:
            for member in self._deferred.values():
                pending = member.pending
                if pending is None:
                    continue
                if len(pending) < self._max_pending:
                    pending.append((seq, frame))
                else:  # a long wait: the activation reads them from storage instead
                    member.pending = None
        self._last_seq = seq

    async def _fan_out(self) -> None:
        """Give the staged frames to the live members, ``fanout_slice`` at a time.

        Between two slices the loop runs what is ready (the flush of the slice's
        outboxes first: it was scheduled by the slice's first offer). Members
        are those live when the fan-out began, each checked again before its
        turn: one that left or fell behind meanwhile is skipped.
        """
        frames = self._outgoing
        if not frames:
            return
        self._outgoing = []
        members = list(self._live.values())
        size = self._fanout_slice
        for start in range(0, len(members), size):
            started = time.perf_counter()
            self._offer_slice(members[start : start + size], frames)
            if self._observe_step is not None:
                self._observe_step(time.perf_counter() - started)
            if len(members) > size:
                # A call_soon of this task's next step: behind every callback
                # already ready, the slice's flush included. After the last
                # slice too, so that the next mail starts a step of its own.
                await asyncio.sleep(0)

    def _offer_slice(self, members: list[_Member], frames: list[tuple[int, WireFrame]]) -> None:
        live = self._live
        delivered = 0
        for member in members:
            subscriber = member.subscriber
            connection_id = subscriber.connection_id
            if live.get(connection_id) is not member:
                continue  # left, or fell behind, since the fan-out began
            for seq, frame in frames:
                if seq <= member.watermark:
                    continue
                # Offer first: if it raises, the watermark still says "not given",
                # so the catch-up after the restart gives it again.
                if not subscriber.offer(frame, member.wake):
                    # Behind: no more live frames; caught up from storage when its
                    # connection has room (``_wake``).
                    del live[connection_id]
                    break
                member.watermark = seq
                delivered += 1
        self.stats.delivered += delivered
