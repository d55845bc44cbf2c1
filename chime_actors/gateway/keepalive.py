"""One keepalive sweep per gateway instead of a ping task per connection.

websockets' own keepalive (``ping_interval``) runs a task per connection that
sleeps, pings, and waits on a future under a timeout: a task, a future and a
timer per connection per ping, ~13 % of a gateway's CPU in the chatty profile
and a sleeping task (~0.3 KiB) per idle connection (docs/performance.md). Here one task per
gateway wakes every ``interval / TICKS_PER_INTERVAL`` and looks at each
connection's two timestamps; nothing else is kept per connection.

The promise (docs/protocol.md "Heartbeat", with H = ``chat.heartbeat_ms``):

- anything the client sends counts as a sign of life (a pong, a data frame);
  a connection that has sent nothing for (at most) H gets a WebSocket ping, so
  a silent client sees a ping at least every H;
- a ping gets at least 2 H to be answered ("closes a connection that misses
  two pongs"); then the connection is closed with 1011 "keepalive ping
  timeout", as websockets did, and its TCP connection is dropped after the
  close timeout if the peer does not finish the closing handshake;
- so a dead peer is dropped within 3 H of the last thing it sent, as with
  websockets' ``ping_interval=H, ping_timeout=2H``.

With T = H / ``TICKS_PER_INTERVAL``: a connection is pinged at the first tick
when it has been silent for H - 2T (so before H), and dropped at the first tick
2 H after the ping (so before ping + 2 H + T < last heard + 3 H).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

TICKS_PER_INTERVAL = 10


class Peer(Protocol):
    """What the sweep needs of a connection (``GatewayConnection``, or a test's fake)."""

    # Loop time of the last bytes received from the peer.
    heard_at: float
    # Loop time of the unanswered ping, 0.0 when none is outstanding.
    ping_sent_at: float

    def send_keepalive_ping(self) -> bool:
        """Send a WebSocket ping; False if the connection is no longer open."""
        ...

    def keepalive_timed_out(self) -> None:
        """Close the connection: its ping went unanswered."""
        ...


class Keepalive:
    """The gateway's one keepalive timer (see the module docstring)."""

    __slots__ = ("_interval_s", "_now", "_peers", "_ping_after_s", "_timeout_s", "tick_s")

    def __init__(self, interval_s: float, now: Callable[[], float]) -> None:
        """Ping after ``interval_s`` of silence, drop after ``2 * interval_s`` unanswered.

        Args:
            interval_s: ``chat.heartbeat_ms`` in seconds.
            now: the clock ``Peer.heard_at`` is on (the event loop's ``time``).
        """
        self._interval_s = interval_s
        # How often run() sweeps (public: a test steps its fake clock by it).
        self.tick_s = interval_s / TICKS_PER_INTERVAL
        self._ping_after_s = interval_s - 2 * self.tick_s
        self._timeout_s = 2 * interval_s
        self._now = now
        self._peers: set[Peer] = set()

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, peer: Peer) -> None:
        """Watch ``peer`` from now on (it counts as just heard)."""
        peer.heard_at = self._now()
        peer.ping_sent_at = 0.0
        self._peers.add(peer)

    def discard(self, peer: Peer) -> None:
        """Stop watching ``peer`` (it closed)."""
        self._peers.discard(peer)

    def sweep(self) -> None:
        """One tick: ping the silent, drop those that did not answer in time.

        A peer costs two attribute reads and a comparison or two; only those to
        ping or drop cost more.
        """
        now = self._now()
        ping_before = now - self._ping_after_s
        expired_before = now - self._timeout_s
        to_ping: list[Peer] = []
        dead: list[Peer] = []
        for peer in self._peers:
            heard_at = peer.heard_at
            sent_at = peer.ping_sent_at
            if sent_at:
                # ">=": loop time is coarse; a pong in the ping's own tick still counts.
                if heard_at < sent_at:
                    if sent_at <= expired_before:
                        dead.append(peer)
                    continue
                peer.ping_sent_at = 0.0
            if heard_at <= ping_before:
                to_ping.append(peer)
        # Acted on after the loop: closing may change the set.
        for peer in to_ping:
            if peer.send_keepalive_ping():
                peer.ping_sent_at = now
        for peer in dead:
            self._peers.discard(peer)
            peer.keepalive_timed_out()

    async def run(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Sweep every tick until cancelled."""
        while True:
            await sleep(self.tick_s)
            self.sweep()
