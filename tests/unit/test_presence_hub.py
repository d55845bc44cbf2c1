"""Tests for PresenceHub: a gateway's presence and typing, with fake peers and members."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from chime_actors.errors import PresenceUnavailable
from chime_actors.presence.hub import PresenceHub
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


class Posts:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))

    def to(self, address: Any, kind: type | None = None) -> list[Any]:
        return [m for a, m in self.sent if a == address and (kind is None or isinstance(m, kind))]


def wiring(generation: int, gateways: tuple[Any, ...] = ("gateway-1", PEER), **kw: Any) -> Wiring:
    return Wiring(gateways=gateways, persisters=(), api=API, generation=generation, **kw)


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def hub(**kw: Any) -> tuple[PresenceHub, Posts, FakeClock]:
    posts, clock = Posts(), FakeClock()
    return PresenceHub(1, posts, clock=clock, typing_delay_s=0.0, **kw), posts, clock


def join(presence: PresenceHub, channel: str, member: Member) -> Member:
    presence.register(channel, member)
    presence.activate(channel, member.connection_id)
    return member


def test_first_in_and_last_out_are_announced_to_the_others_only() -> None:
    async def main() -> None:
        presence, posts, _ = hub()
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        bob = join(presence, "c", Member("b", "bob"))
        alice_1 = join(presence, "c", Member("a1", "alice"))
        alice_2 = join(presence, "c", Member("a2", "alice"))
        presence.leave("c", "a1")
        assert bob.presence() == [("alice", "online")]
        presence.leave("c", "a2")
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
        presence, _, _ = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.register("c", Member("x", "racer"))
        presence.leave("c", "x")  # the socket closed while the join was in flight
        presence.activate("c", "x")
        assert await presence.online("c") == ["watcher"]
        assert watcher.presence() == []

    asyncio.run(main())


def test_new_peers_get_a_snapshot_and_a_dead_one_is_dropped() -> None:
    async def main() -> None:
        presence, posts, _ = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.rewire(wiring(1, redis_bridge=BRIDGE))
        (snapshot,) = posts.to(PEER, PresenceSnapshot)
        assert snapshot.entries == (("c", "watcher"),) and snapshot.generation == 1
        assert posts.to(BRIDGE, PresenceSnapshot) == [snapshot]
        presence.handle(PresenceSnapshot(2, "e", 0, 1, (("c", "remote"),)), PEER)
        assert watcher.presence() == [("remote", "online")]
        presence.rewire(wiring(2, ("gateway-1", None), redis_bridge=BRIDGE))
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
        presence, _, _ = hub()
        watcher = join(presence, "c", Member("w", "watcher"))
        presence.handle(RemoteChannels((("c", (("h1", "ann"), ("h2", "ben"))),)), BRIDGE)
        presence.handle(RemotePresence((("h1", "c", "cid", True),)), BRIDGE)
        presence.handle(RemoteHostState("h2", "c", ("dan",)), BRIDGE)
        presence.handle(HostsGone(("h1",)), BRIDGE)
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
