"""Tests for the gateway's keepalive sweep (``gateway/keepalive.py``) on a fake clock.

A ``FakePeer`` plays a connection: it records the pings it is sent and the
keepalive close, and a test makes it "send" (``heard_at``) when the client
would. Time moves only with ``FakeClock.advance``; each tick the test sweeps,
as the gateway's one keepalive task does.
"""

from __future__ import annotations

import asyncio

from chime_actors.gateway.keepalive import TICKS_PER_INTERVAL, Keepalive
from tests.support.clock import FakeClock
from tests.support.polling import until

HEARTBEAT_S = 10.0  # a tick of 1 s: exact in floating point


class FakePeer:
    """A connection as the sweep sees it."""

    def __init__(self, clock: FakeClock, *, answers: bool = False, is_open: bool = True) -> None:
        self.heard_at = 0.0
        self.ping_sent_at = 0.0
        self.pings: list[float] = []
        self.timed_out_at: float | None = None
        self._clock = clock
        self._answers = answers
        self.is_open = is_open

    def send_keepalive_ping(self) -> bool:
        if not self.is_open:
            return False
        self.pings.append(self._clock.now)
        return True

    def keepalive_timed_out(self) -> None:
        assert self.timed_out_at is None, "closed twice"
        self.timed_out_at = self._clock.now

    def hear(self) -> None:
        """The client sent something (a frame or a pong)."""
        self.heard_at = self._clock.now


def make(clock: FakeClock) -> Keepalive:
    keepalive = Keepalive(HEARTBEAT_S, clock)
    assert keepalive.tick_s == HEARTBEAT_S / TICKS_PER_INTERVAL
    return keepalive


def tick(clock: FakeClock, keepalive: Keepalive, peers: list[FakePeer] | None = None) -> None:
    """One tick; answering peers answer the pings sent in it before the next."""
    clock.advance(keepalive.tick_s)
    keepalive.sweep()
    for peer in peers or []:
        if peer._answers and peer.pings and peer.pings[-1] == clock.now:
            peer.hear()


def test_a_silent_connection_is_pinged_before_one_interval_passes() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock)
    keepalive.add(peer)
    while not peer.pings:
        tick(clock, keepalive)
    assert 100.0 + HEARTBEAT_S - 2 * keepalive.tick_s <= peer.pings[0] < 100.0 + HEARTBEAT_S
    assert peer.ping_sent_at == peer.pings[0]


def test_a_connection_that_sends_is_never_pinged() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock)
    keepalive.add(peer)
    for step in range(10 * TICKS_PER_INTERVAL):
        if step % (TICKS_PER_INTERVAL // 2) == 0:
            peer.hear()
        tick(clock, keepalive)
    assert peer.pings == []
    assert peer.timed_out_at is None


def test_an_answering_idle_connection_is_pinged_every_interval_and_kept() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock, answers=True)
    keepalive.add(peer)
    for _ in range(10 * TICKS_PER_INTERVAL):
        tick(clock, keepalive, [peer])
    assert peer.timed_out_at is None
    assert len(peer.pings) >= 10
    gaps = [b - a for a, b in zip(peer.pings, peer.pings[1:], strict=False)]
    # The client sees a ping at least every heartbeat, and not more than ~1.25 x as often.
    assert all(HEARTBEAT_S * 0.75 <= gap <= HEARTBEAT_S for gap in gaps), gaps


def test_a_late_pong_within_two_intervals_keeps_the_connection() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock)
    keepalive.add(peer)
    while not peer.pings:
        tick(clock, keepalive)
    while clock.now < peer.pings[0] + 2 * HEARTBEAT_S - keepalive.tick_s:
        tick(clock, keepalive)
    peer.hear()  # the pong, just inside two intervals
    for _ in range(TICKS_PER_INTERVAL):
        tick(clock, keepalive)
    assert peer.timed_out_at is None
    assert peer.ping_sent_at == 0.0 or peer.ping_sent_at > peer.pings[0]


def test_a_dead_peer_is_closed_after_two_intervals_and_within_three_of_its_last_frame() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock)
    keepalive.add(peer)
    clock.advance(3.5)
    peer.hear()  # its last frame
    last_frame = clock.now
    while peer.timed_out_at is None:
        tick(clock, keepalive)
        assert clock.now < last_frame + 4 * HEARTBEAT_S, "never closed"
    assert peer.pings == [peer.pings[0]], "pinged once, then waited"
    assert peer.timed_out_at >= peer.pings[0] + 2 * HEARTBEAT_S
    assert peer.timed_out_at < last_frame + 3 * HEARTBEAT_S
    # Closed once and no longer watched.
    assert len(keepalive) == 0
    for _ in range(3 * TICKS_PER_INTERVAL):
        tick(clock, keepalive)
    assert len(peer.pings) == 1


def test_a_closing_connection_is_neither_pinged_nor_closed_by_the_keepalive() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    peer = FakePeer(clock, is_open=False)
    keepalive.add(peer)
    for _ in range(5 * TICKS_PER_INTERVAL):
        tick(clock, keepalive)
    assert peer.pings == []
    assert peer.timed_out_at is None
    assert peer.ping_sent_at == 0.0


def test_each_connection_on_its_own_schedule_and_discard_stops_watching() -> None:
    clock = FakeClock(start=100.0)
    keepalive = make(clock)
    dead = FakePeer(clock)
    alive = FakePeer(clock, answers=True)
    gone = FakePeer(clock)
    keepalive.add(dead)
    for _ in range(3):
        tick(clock, keepalive)
    keepalive.add(alive)
    keepalive.add(gone)
    keepalive.discard(gone)
    for _ in range(4 * TICKS_PER_INTERVAL):
        tick(clock, keepalive, [alive])
    assert dead.timed_out_at is not None
    assert alive.timed_out_at is None
    assert alive.pings[0] - dead.pings[0] == 3 * keepalive.tick_s
    assert gone.pings == []
    assert len(keepalive) == 1


def test_run_sweeps_once_a_tick_on_its_clock() -> None:
    async def main() -> None:
        clock = FakeClock(start=100.0)
        keepalive = make(clock)
        peer = FakePeer(clock)
        keepalive.add(peer)
        task = asyncio.get_running_loop().create_task(keepalive.run(clock.sleep))
        try:
            while not peer.pings:
                await until(lambda: clock.pending, what="the sweep waits", interval=0)
                clock.advance(keepalive.tick_s)
                await asyncio.sleep(0)
            assert 100.0 + HEARTBEAT_S - 2 * keepalive.tick_s <= peer.pings[0] < 100.0 + HEARTBEAT_S
        finally:
            task.cancel()

    asyncio.run(main())
