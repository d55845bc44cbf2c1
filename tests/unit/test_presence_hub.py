"""Tests for PresenceHub: a gateway's presence and typing, with fake peers and members."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from chime_actors.errors import PresenceUnavailable
from chime_actors.presence.hub import PRESENCE_DELAY_S, PresenceHub
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
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.runtime.messages import Wiring
from tests.support.clock import FakeClock
from tests.support.posts import PostLog

BRIDGE = "bridge"
PEER = "gateway-2"
API = "api"


class Member:
    """A connection as presence sees it: records what it was given."""

    def __init__(self, connection_id: str, user_id: str, *, held: bool = False) -> None:
        self._connection_id = connection_id
        self._user_id = user_id
        self.held = held
        self.frames: list[dict[str, Any]] = []

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def user_id(self) -> str:
        return self._user_id

    def push(self, frame: str | WireFrame) -> None:
        self.frames.append(json.loads(frame.text if isinstance(frame, WireFrame) else frame))

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        if self.held:
            return False
        self.push(frame)
        return True

    def abort(self, code: int, reason: str) -> None:
        raise AssertionError("presence never aborts")

    def presence(self) -> list[tuple[str, str]]:
        return [(f["userId"], f["status"]) for f in self.frames if f["type"] == "presence_changed"]

    def typing(self) -> list[str]:
        return [f["userId"] for f in self.frames if f["type"] == "typing"]


class Posts(PostLog):
    def to(self, address: Any, kind: type = object) -> list[Any]:
        return self.of(kind, to=address)


def wiring(generation: int, gateways: tuple[Any, ...] = ("gateway-1", PEER), **kw: Any) -> Wiring:
    return Wiring(gateways=gateways, persisters=(), api=API, generation=generation, **kw)


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def hub(**kw: Any) -> tuple[PresenceHub, Posts, FakeClock]:
    posts, clock = Posts(), FakeClock()
    presence = PresenceHub(
        1, posts, clock=clock, typing_delay_s=0.0, call_later=clock.call_later, **kw
    )
    return presence, posts, clock


def handed_out(clock: FakeClock) -> None:
    """Step past the announcement batching: every queued change is handed out."""
    clock.advance(PRESENCE_DELAY_S)


def join(presence: PresenceHub, channel: str, member: Member) -> Member:
    presence.register(channel, member)
    presence.activate(channel, member.connection_id)
    return member


def test_first_in_and_last_out_are_announced_to_the_others_only() -> None:
    async def main() -> None:
        presence, posts, clock = hub()
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        bob = join(presence, "c", Member("b", "bob"))
        alice_1 = join(presence, "c", Member("a1", "alice"))
        alice_2 = join(presence, "c", Member("a2", "alice"))
        presence.leave("c", "a1")
        handed_out(clock)
        assert bob.presence() == [("alice", "online")]
        presence.leave("c", "a2")
        handed_out(clock)
        assert bob.presence() == [("alice", "online"), ("alice", "offline")]
        assert alice_1.presence() == [] and alice_2.presence() == []  # not about oneself
        await turn()
        # One numbered delta per loop turn, to the peer and to the bridge alike.
        (delta,) = posts.to(PEER, PresenceDelta)
        assert delta.seq == 1
        assert delta.changes == (
            ("c", "bob", True),
            ("c", "alice", True),
            ("c", "alice", False),
        )
        assert posts.to(BRIDGE, PresenceDelta) == [delta]
        assert await presence.online("c") == ["bob"]

    asyncio.run(main())


def test_a_member_that_left_before_its_activation_never_counts() -> None:
    async def main() -> None:
        presence, _, clock = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.register("c", Member("x", "racer"))
        presence.leave("c", "x")  # the socket closed while the join was in flight
        presence.activate("c", "x")
        handed_out(clock)
        assert await presence.online("c") == ["watcher"]
        assert watcher.presence() == []

    asyncio.run(main())


def test_new_peers_get_a_snapshot_and_a_dead_one_is_dropped() -> None:
    async def main() -> None:
        presence, posts, clock = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        (snapshot,) = posts.to(PEER, PresenceSnapshot)
        assert snapshot.entries == (("c", "watcher"),) and snapshot.generation == 1
        assert posts.to(BRIDGE, PresenceSnapshot) == [snapshot]
        presence.handle(PresenceSnapshot(2, "e", 0, 1, (("c", "remote"),)), PEER)
        handed_out(clock)
        assert watcher.presence() == [("remote", "online")]
        presence.rewire(wiring(2, ("gateway-1", None), redis_bridge=BRIDGE))
        handed_out(clock)
        assert watcher.presence() == [("remote", "online"), ("remote", "offline")]
        assert len(posts.to(BRIDGE, PresenceSnapshot)) == 1  # the bridge did not change

    asyncio.run(main())


def test_a_gap_in_a_peers_deltas_asks_it_for_a_snapshot() -> None:
    presence, posts, _ = hub()
    presence.handle(PresenceSnapshot(2, "e", 1, 1, ()), PEER)
    presence.handle(PresenceDelta(2, "e", 3, (("c", "x", True),)), PEER)
    assert posts.to(PEER, PresenceResync)
    presence.handle(PresenceResync(), "someone")
    assert posts.to("someone", PresenceSnapshot)


def test_remote_hosts_state_reaches_the_members() -> None:
    async def main() -> None:
        presence, _, clock = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.handle(RemoteChannels((("c", (("h1", "ann"), ("h2", "ben"))),)), BRIDGE)
        presence.handle(RemotePresence((("h1", "c", "cid", True),)), BRIDGE)
        presence.handle(RemoteHostState("h2", "c", ("dan",)), BRIDGE)
        presence.handle(HostsGone(("h1",)), BRIDGE)
        handed_out(clock)
        assert watcher.presence() == [
            ("ann", "online"),
            ("ben", "online"),
            ("cid", "online"),
            ("ben", "offline"),
            ("dan", "online"),
            ("ann", "offline"),
            ("cid", "offline"),
        ]
        # A channel no longer subscribed on this host: the bridge clears it.
        presence.handle(RemoteChannels((("c", ()),)), BRIDGE)
        handed_out(clock)
        assert watcher.presence()[-1] == ("dan", "offline")

    asyncio.run(main())


def test_typing_is_throttled_and_skips_the_typists_own_connections() -> None:
    async def main() -> None:
        presence, posts, clock = hub()
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        same = join(presence, "c", Member("a2", "alice"))
        bob = join(presence, "c", Member("b", "bob"))
        held = join(presence, "c", Member("h", "held", held=True))
        presence.typing("c", "alice")
        presence.typing("c", "alice")
        assert bob.typing() == []  # batched: handed out after the delay
        await turn()
        assert bob.typing() == ["alice"] and same.typing() == [] and held.typing() == []
        assert posts.to(PEER, TypingEvent) == [TypingEvent("c", "alice")]
        assert posts.to(BRIDGE, TypingEvent) == [TypingEvent("c", "alice")]
        # From another gateway within the 3 s: dropped here too.
        presence.handle(TypingEvent("c", "alice"), PEER)
        await turn()
        assert bob.typing() == ["alice"]
        clock.now += 3.0
        presence.handle(TypingEvent("c", "alice"), PEER)
        presence.handle(TypingEvent("c", "carol"), PEER)
        await turn()
        assert bob.typing() == ["alice", "alice", "carol"]
        assert len(posts.to(PEER, TypingEvent)) == 1  # what came from a peer is not sent on

    asyncio.run(main())


def test_lookups_add_other_hosts_through_the_bridge() -> None:
    async def main() -> None:
        presence, posts, _ = hub(multi_host=True)
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        join(presence, "c", Member("w", "zed"))
        asking = asyncio.ensure_future(presence.online("c"))
        await turn()
        (lookup,) = posts.to(BRIDGE, PresenceLookup)
        presence.handle(PresenceLookupResult(lookup.token, ("amy",)), BRIDGE)
        assert await asking == ["amy", "zed"]
        # The API asks a gateway; the gateway answers the sender.
        presence.handle(PresenceLookup(7, "c"), API)
        await turn()
        (second,) = posts.to(BRIDGE, PresenceLookup)[1:]
        presence.handle(PresenceLookupResult(second.token, None), BRIDGE)  # Redis down
        await turn()
        assert posts.to(API, PresenceLookupResult) == [PresenceLookupResult(7, None)]

    asyncio.run(main())


def test_a_lookup_without_a_bridge_is_unavailable() -> None:
    async def main() -> None:
        presence, _, _ = hub(multi_host=True)
        with pytest.raises(PresenceUnavailable):
            await presence.online("c")

    asyncio.run(main())


class TimedMember(Member):
    """A member that also notes when (on the fake clock, in ms) each frame came."""

    def __init__(self, connection_id: str, user_id: str, clock: FakeClock) -> None:
        super().__init__(connection_id, user_id)
        self._clock = clock
        self.pushed_at: list[int] = []

    def push(self, frame: str | WireFrame) -> None:
        self.pushed_at.append(round(self._clock.now * 1000))
        super().push(frame)


def test_a_join_storm_is_handed_out_in_batches_after_a_quiet_spell_at_once() -> None:
    """The first change after a quiet spell goes out at once (the next turn); those
    within ``PRESENCE_DELAY_S`` of it wait and go out together, in order, so each
    subscriber gets one write per batch instead of one per join."""

    async def main() -> None:
        presence, _, clock = hub()
        watcher = TimedMember("w", "watcher", clock)
        join(presence, "c", watcher)
        clock.advance(1.0)
        join(presence, "c", Member("a", "ann"))
        clock.advance(0)
        assert watcher.presence() == [("ann", "online")]  # nothing went out lately
        for index in range(20):
            join(presence, "c", Member(f"u{index}", f"user{index}"))
            clock.advance(0.001)
        presence.leave("c", "u3")
        assert len(watcher.presence()) == 1  # within the delay of the first hand-out
        handed_out(clock)
        assert watcher.presence()[1:] == [(f"user{i}", "online") for i in range(20)] + [
            ("user3", "offline")
        ]
        # Two hand-outs in all: at 1.000 s, and the whole batch at 1.100 s.
        assert sorted(set(watcher.pushed_at)) == [1000, 1100]

    asyncio.run(main())


def test_a_member_hears_only_of_changes_after_its_join() -> None:
    """A change queued before a member joined is not announced to it, even when it
    is handed out after the join (as if each change went out at once)."""

    async def main() -> None:
        presence, _, clock = hub()
        old = join(presence, "c", Member("o", "old"))
        join(presence, "c", Member("a", "ann"))  # handed out at once
        clock.advance(0)
        join(presence, "c", Member("b", "ben"))  # queued: within the delay
        newcomer = join(presence, "c", Member("n", "new"))
        presence.leave("c", "a")
        handed_out(clock)
        assert old.presence() == [
            ("ann", "online"),
            ("ben", "online"),
            ("new", "online"),
            ("ann", "offline"),
        ]
        assert newcomer.presence() == [("ann", "offline")]

    asyncio.run(main())


def test_a_member_that_leaves_before_the_hand_out_gets_nothing_more() -> None:
    async def main() -> None:
        presence, _, clock = hub()
        join(presence, "c", Member("a", "ann"))
        clock.advance(0)
        leaver = join(presence, "c", Member("l", "leo"))
        join(presence, "c", Member("b", "ben"))
        presence.leave("c", "l")
        handed_out(clock)
        assert leaver.presence() == []
        assert clock.pending == []  # nothing left queued
        presence.stop()

    asyncio.run(main())
