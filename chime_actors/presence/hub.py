"""``PresenceHub``: one per gateway; presence and typing of this gateway's connections.

Each gateway **owns** the presence of its own connections and keeps a
**replica** of everyone else's (docs/architecture.md, "Presence and typing"):

* a connection counts once it is *activated* in a channel (after ``connected`` or
  ``subscribed`` was sent), until it leaves; a user's first connection in and
  last one out change this gateway's own presence (``LocalCounts``);
* every change is sent, numbered, to the other gateways and to the Redis bridge
  as one ``PresenceDelta`` per loop turn, on lanes; a peer that is new in the
  ``Wiring`` (start, or a restart) gets a ``PresenceSnapshot`` first, and one that
  sees a gap in the numbers asks for one (``PresenceResync``);
* a gateway that died is dropped from every replica when the supervisor's next
  ``Wiring`` shows its slot empty or holding a new address (the supervisor sends
  one as soon as it learns of the exit, ~2 ms after a SIGKILL): its users go
  offline at once unless another origin still holds them;
* other hosts' presence reaches it from the bridge (``RemotePresence``,
  ``RemoteHostState``, ``RemoteChannels``, ``HostsGone``), for the channels
  this host has subscribers in;
* whenever a user's status in a channel changes in this gateway's view, its own
  subscribers of that channel get ``presence_changed`` (pushed: never refused by
  flow control, so a client's view is never silently wrong), except that user's
  own connections: nobody is told about themselves. A subscriber hears only of
  changes after its own join (as when each change was handed out at once).

Announcements are batched like typing, with a leading edge: a change after a
quiet spell is handed out on the next loop turn, and the changes that follow
within ``PRESENCE_DELAY_S`` of that go out together when it ends. A join storm
into one big room (2,000 members: about 2 million ``presence_changed``) then
costs each subscriber one socket write per batch instead of one per join
(docs/performance.md, "Joining one big room").

Typing: a ``typing`` passes the gateway's throttle (one per user and channel per
3 s) or is dropped; one that passes goes to this gateway's other subscribers
(offered: a client held back by flow control loses it, it is ephemeral) and to
the other gateways and the bridge, whose own throttles apply again, so a
recipient anywhere sees at most one per user and channel per 3 s even when the
user types from several gateways or hosts. Nothing of it is stored. Locally,
typing is handed to the subscribers in batches, at most ``TYPING_DELAY_S``
after it arrived: every subscriber then gets the batch in one socket write
instead of one write per typing user (in a 500-member room with 50 typists
the unbatched fan-out cost as much CPU per frame as a chat message;
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from uuid import uuid4

from chime_actors.errors import PresenceUnavailable
from chime_actors.logs import get_logger
from chime_actors.presence.lookups import Lookups
from chime_actors.presence.messages import (
    HostsGone,
    PresenceDelta,
    PresenceLookup,
    PresenceLookupResult,
    PresenceResync,
    PresenceSnapshot,
    RemoteChannels,
    RemoteHostState,
    RemotePresence,
    TypingEvent,
)
from chime_actors.presence.replicas import GatewayReplicas
from chime_actors.presence.table import (
    LOCAL,
    LocalCounts,
    PresenceChange,
    PresenceTable,
    TypingThrottle,
    host_origin,
)
from chime_actors.protocol import server_frames
from chime_actors.protocol.events import PresenceStatus
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.runtime.messages import Wiring

log = get_logger(__name__)

HOST_PREFIX = host_origin("")

TYPING_DELAY_S = 0.2
"""The longest a passed ``typing`` waits to be handed to the subscribers (batching)."""

PRESENCE_DELAY_S = 0.1
"""The shortest time between two hand-outs of ``presence_changed`` (batching).

Well inside the 1 s in which docs/protocol.md has a dead gateway's users go
offline; a change after a quiet spell is not delayed at all.
"""

PRESENCE_MESSAGES = (
    PresenceSnapshot,
    PresenceDelta,
    PresenceResync,
    TypingEvent,
    RemotePresence,
    RemoteHostState,
    RemoteChannels,
    HostsGone,
    PresenceLookup,
    PresenceLookupResult,
)
"""Everything ``PresenceHub.handle`` takes."""


class Timer(Protocol):
    """A pending timer (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """It will not fire."""
        ...


CallLater = Callable[[float, Callable[[], object]], Timer]
"""``loop.call_later``: how the hub sets its announcement timer (a test's clock)."""


def _loop_call_later(delay: float, callback: Callable[[], object]) -> Timer:
    return asyncio.get_running_loop().call_later(delay, callback)


class Member(Protocol):
    """What presence needs of a connection: its ids, and a way to reach its client.

    ``ConnectionActor`` is one. Presence pushes ``presence_changed`` (never
    refused) and offers ``typing`` (refused while the client is held back).
    Defined here, on the receiving side, so presence imports nothing of the
    gateway (the gateway's connections satisfy it structurally).
    """

    @property
    def connection_id(self) -> str:
        """Unique id of the connection."""
        ...

    @property
    def user_id(self) -> str:
        """The connected user."""
        ...

    def push(self, frame: str | WireFrame) -> None:
        """Queue a text frame for the client (never refused); never blocks."""
        ...

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        """Queue a frame unless the client is held back (then False); never blocks."""
        ...


def _ignore() -> None:
    """A typing frame refused by flow control is not worth a wake-up."""


class PresenceHub:
    """A gateway's presence: its own connections, and replicas of the rest.

    Args:
        index: this gateway's index (1-based, as in ``Wiring.gateways``).
        post: ``post(address, message)``, the core's way out (lanes).
        multi_host: with the Redis bus, lookups add other hosts' users (asked of
            the bridge, which reads Redis).
        clock: monotonic seconds (the typing throttle, the announcement batching).
        typing_delay_s: how long typing is batched before it is handed out.
        presence_delay_s: the shortest time between two hand-outs of
            ``presence_changed`` (the first after a quiet spell is not delayed).
        call_later: the timer of those hand-outs, on the same time as ``clock``.
    """

    def __init__(
        self,
        index: int,
        post: Callable[[Any, Any], None],
        *,
        multi_host: bool = False,
        clock: Callable[[], float] = time.monotonic,
        typing_delay_s: float = TYPING_DELAY_S,
        presence_delay_s: float = PRESENCE_DELAY_S,
        call_later: CallLater = _loop_call_later,
    ) -> None:
        self._index = index
        self._post = post
        self._multi_host = multi_host
        self._epoch = uuid4().hex
        self._seq = 0
        self._table = PresenceTable()
        self._local = LocalCounts()
        # channel -> connection id -> member, activated (counted) or registered only
        self._members: dict[str, dict[str, Member]] = {}
        self._registered: dict[str, dict[str, Member]] = {}
        self._replicas = GatewayReplicas(self._table, index)
        self._bridge: Any = None
        self._outgoing: list[tuple[str, str, bool]] = []
        self._flush_scheduled = False
        self._throttle = TypingThrottle(clock)
        self._typing_delay_s = typing_delay_s
        self._typing: dict[str, list[str]] = {}  # channel -> users typing, not handed out yet
        self._typing_timer: asyncio.TimerHandle | None = None
        self._clock = clock
        self._presence_delay_s = presence_delay_s
        # Changes not handed out yet: channel -> (number, user, online). A change's
        # number is compared with each member's join number, so a member hears
        # only of what changed after it joined.
        self._changes_seen = 0
        self._announcements: dict[str, list[tuple[int, str, bool]]] = {}
        self._joined_at: dict[tuple[str, str], int] = {}
        self._call_later = call_later
        self._announce_timer: Timer | None = None
        self._last_announced = -float("inf")
        self._lookups = Lookups(post)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- connections ------------------------------------------------------------

    def register(self, channel_id: str, member: Member) -> None:
        """A connection is joining ``channel_id``; it counts once activated."""
        if member.connection_id in self._members.get(channel_id, {}):
            return
        self._registered.setdefault(channel_id, {})[member.connection_id] = member

    def activate(self, channel_id: str, connection_id: str) -> None:
        """The connection was told it is subscribed: it now holds its user there.

        A connection that left meanwhile (it is no longer registered) is ignored,
        so a close racing the join never leaves a user online.
        """
        registered = self._registered.get(channel_id)
        member = registered.pop(connection_id, None) if registered else None
        if member is None:
            return
        if not registered:
            self._registered.pop(channel_id, None)
        self._members.setdefault(channel_id, {})[connection_id] = member
        self._joined_at[(channel_id, connection_id)] = self._changes_seen
        if self._local.add(channel_id, member.user_id):
            self._own_change(channel_id, member.user_id, online=True)

    def leave(self, channel_id: str, connection_id: str) -> None:
        """The connection left ``channel_id`` (or closed); idempotent."""
        registered = self._registered.get(channel_id)
        if registered and registered.pop(connection_id, None) is not None:
            if not registered:
                self._registered.pop(channel_id, None)
            return
        members = self._members.get(channel_id)
        member = members.pop(connection_id, None) if members else None
        if member is None:
            return
        del self._joined_at[(channel_id, connection_id)]
        if not members:
            self._members.pop(channel_id, None)
        if self._local.remove(channel_id, member.user_id):
            self._own_change(channel_id, member.user_id, online=False)

    # --- requests -----------------------------------------------------------------

    def typing(self, channel_id: str, user_id: str) -> None:
        """A connection of ``user_id`` typed in ``channel_id`` (it is subscribed there)."""
        if not self._throttle.allow(channel_id, user_id):
            return
        self._deliver_typing(channel_id, user_id)
        event = TypingEvent(channel_id, user_id)
        for address in self._targets():
            self._post(address, event)

    async def online(self, channel_id: str) -> list[str]:
        """Who is online in ``channel_id``: this host's view, plus Redis's of the others.

        Raises:
            PresenceUnavailable: with the Redis bus, the bridge did not answer
                (restarting, or Redis is down).
        """
        here = self._table.online(channel_id, hosts=False)
        if not self._multi_host:
            return here
        others = await self._lookups.ask(self._bridge, channel_id)
        return sorted(set(here).union(others))

    # --- wiring and messages ------------------------------------------------------

    def rewire(self, wiring: Wiring) -> None:
        """New addresses: drop dead gateways, greet new ones with a snapshot."""
        changes, new_peers = self._replicas.rewire(wiring.gateways, wiring.generation)
        self._announce(changes)
        for address in new_peers:
            self._post(address, self._snapshot())
        if wiring.redis_bridge is not None and wiring.redis_bridge != self._bridge:
            # A new (or restarted) bridge knows nothing of this gateway.
            self._post(wiring.redis_bridge, self._snapshot())
        self._bridge = wiring.redis_bridge

    def handle(self, message: Any, sender: Any) -> None:
        """One of ``PRESENCE_MESSAGES``, from a peer, the bridge or the API."""
        if isinstance(message, PresenceDelta):
            changes, resync = self._replicas.on_delta(message)
            self._announce(changes)
            if resync:
                log.info(
                    "presence delta out of order; asking for a snapshot", gateway=message.index
                )
                self._post(sender, PresenceResync())
        elif isinstance(message, TypingEvent):
            if self._throttle.allow(message.channel_id, message.user_id):
                self._deliver_typing(message.channel_id, message.user_id)
        elif isinstance(message, PresenceSnapshot):
            self._announce(self._replicas.on_snapshot(message))
        elif isinstance(message, PresenceResync):
            self._post(sender, self._snapshot())
        elif isinstance(message, RemotePresence):
            self._announce(
                self._table.set(host_origin(host), channel_id, user_id, online)
                for host, channel_id, user_id, online in message.changes
            )
        elif isinstance(message, RemoteHostState):
            origin = host_origin(message.host)
            self._announce(self._table.replace_channel(origin, message.channel_id, message.users))
        elif isinstance(message, RemoteChannels):
            for channel_id, entries in message.channels:
                self._replace_remote_channel(channel_id, entries)
        elif isinstance(message, HostsGone):
            for host in message.hosts:
                self._announce(self._table.drop_origin(host_origin(host)))
        elif isinstance(message, PresenceLookup):
            task = asyncio.get_running_loop().create_task(self._answer(message, sender))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(message, PresenceLookupResult):
            self._lookups.resolve(message)

    def stop(self) -> None:
        """Cancel lookups being answered, pending typing and announcements (stopping)."""
        for task in list(self._tasks):
            task.cancel()
        for timer in (self._typing_timer, self._announce_timer):
            if timer is not None:
                timer.cancel()

    # --- internals ----------------------------------------------------------------

    def _targets(self) -> list[Any]:
        targets = self._replicas.peers
        if self._bridge is not None:
            targets.append(self._bridge)
        return targets

    def _snapshot(self) -> PresenceSnapshot:
        return PresenceSnapshot(
            self._index,
            self._epoch,
            self._seq,
            self._replicas.generation,
            self._table.entries(LOCAL),
        )

    def _own_change(self, channel_id: str, user_id: str, *, online: bool) -> None:
        self._announce([self._table.set(LOCAL, channel_id, user_id, online)])
        self._outgoing.append((channel_id, user_id, online))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """One numbered delta per loop turn for every peer (the lanes batch it further)."""
        self._flush_scheduled = False
        if not self._outgoing:
            return
        self._seq += 1
        delta = PresenceDelta(self._index, self._epoch, self._seq, tuple(self._outgoing))
        self._outgoing = []
        for address in self._targets():
            self._post(address, delta)

    def _replace_remote_channel(
        self, channel_id: str, entries: tuple[tuple[str, str], ...]
    ) -> None:
        wanted: dict[str, set[str]] = {}
        for host, user_id in entries:
            wanted.setdefault(host_origin(host), set()).add(user_id)
        holding = [
            origin
            for origin in self._table.origins()
            if origin.startswith(HOST_PREFIX) and self._table.users_of(origin, channel_id)
        ]
        for origin in sorted(set(holding) | set(wanted)):
            self._announce(self._table.replace_channel(origin, channel_id, wanted.get(origin, ())))

    def _announce(self, changes: Iterable[PresenceChange | None]) -> None:
        """Queue ``presence_changed`` for this gateway's subscribers of each channel."""
        queued = False
        for change in changes:
            if change is None or not self._members.get(change.channel_id):
                continue
            self._changes_seen += 1
            self._announcements.setdefault(change.channel_id, []).append(
                (self._changes_seen, change.user_id, change.online)
            )
            queued = True
        if queued and self._announce_timer is None:
            wait = self._last_announced + self._presence_delay_s - self._clock()
            self._announce_timer = self._call_later(max(wait, 0.0), self._hand_out_announcements)

    def _hand_out_announcements(self) -> None:
        """Push the queued changes: each subscriber gets its batch in one write (one turn)."""
        self._announce_timer = None
        self._last_announced = self._clock()
        batch, self._announcements = self._announcements, {}
        for channel_id, changes in batch.items():
            members = self._members.get(channel_id)
            if not members:
                continue
            frames = [
                (
                    number,
                    user_id,
                    WireFrame.of(
                        server_frames.presence_changed(
                            channel_id,
                            user_id,
                            PresenceStatus.ONLINE if online else PresenceStatus.OFFLINE,
                        )
                    ),
                )
                for number, user_id, online in changes
            ]
            for connection_id, member in list(members.items()):
                joined = self._joined_at[(channel_id, connection_id)]
                for number, user_id, frame in frames:
                    # Never about oneself: a user's own connections know they are online.
                    if number > joined and member.user_id != user_id:
                        member.push(frame)

    def _deliver_typing(self, channel_id: str, user_id: str) -> None:
        if channel_id not in self._members:
            return
        self._typing.setdefault(channel_id, []).append(user_id)
        if self._typing_timer is None:
            self._typing_timer = asyncio.get_running_loop().call_later(
                self._typing_delay_s, self._flush_typing
            )

    def _flush_typing(self) -> None:
        """Hand out the batch: each subscriber's frames go in one write (one turn)."""
        self._typing_timer = None
        batch, self._typing = self._typing, {}
        for channel_id, users in batch.items():
            members = self._members.get(channel_id)
            if not members:
                continue
            frames = [(u, WireFrame.of(server_frames.typing(channel_id, u))) for u in users]
            for member in list(members.values()):
                for user_id, frame in frames:
                    # "The other subscribers": none of the typing user's own connections.
                    if member.user_id != user_id:
                        member.offer(frame, _ignore)

    async def _answer(self, lookup: PresenceLookup, sender: Any) -> None:
        try:
            users: tuple[str, ...] | None = tuple(await self.online(lookup.channel_id))
        except PresenceUnavailable:
            users = None
        self._post(sender, PresenceLookupResult(lookup.token, users))
