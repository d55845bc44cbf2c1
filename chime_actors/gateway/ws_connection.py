"""``GatewayConnection``: websockets' ``ServerConnection`` as the gateway uses it.

The gateway passes it as ``websockets.serve(create_connection=...)``, with
websockets' own keepalive off (``ping_interval=None``). It adds:

- what the gateway's one keepalive sweep needs (``gateway/keepalive.py``): the
  time it last heard from the peer, the unanswered ping, a ping without a pong
  waiter, and the 1011 close when the ping times out;
- ``release_handshake``: the opening handshake's request and response headers
  are dropped once the gateway has read the query and the token from them
  (~3 KiB per idle connection with a library client's few headers, more with a
  browser's; docs/performance.md).
"""

from __future__ import annotations

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from chime_actors.protocol.codes import CloseCode

TIMEOUT_REASON = "keepalive ping timeout"


class GatewayConnection(ServerConnection):
    """A ``ServerConnection`` the gateway's ``Keepalive`` watches (a ``keepalive.Peer``)."""

    # Slots, not the base class's instance dict: two more keys there would make
    # every connection's dict grow to the next size (~1.5 KiB, measured).
    __slots__ = ("heard_at", "ping_sent_at")

    # Both set by Keepalive.add, once the handshake is done.
    heard_at: float
    ping_sent_at: float

    def data_received(self, data: bytes) -> None:
        """Note the time (any bytes are a sign of life), then websockets' handling."""
        self.heard_at = self.loop.time()
        super().data_received(data)

    def release_handshake(self) -> None:
        """Drop the handshake's headers (and with them the token they may carry).

        websockets needs ``request`` to stay set (its ``process_event`` tells the
        handshake from later frames by it) but reads neither its headers nor
        ``response`` after the handshake.
        """
        if self.request is not None:
            self.request.headers.clear()
            self.request.path = "/"
        self.response = None

    def send_keepalive_ping(self) -> bool:
        """A ping frame with an empty payload, unless the connection is closing.

        Sent through websockets' protocol, which frames it, but with no pong
        waiter: the keepalive takes any bytes received after it as the answer.
        """
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_ping(b"")
        self.send_data()
        return True

    def keepalive_timed_out(self) -> None:
        """Close 1011 and stop waiting for the peer after ``close_timeout``."""
        if self.protocol.state is not State.OPEN:
            return
        self.protocol.fail(CloseCode.INTERNAL_ERROR, TIMEOUT_REASON)
        self.send_data()
        # A dead peer never completes the closing handshake; drop the TCP
        # connection then, as websockets' keepalive does (its send_context).
        self.loop.call_later(self.close_timeout or 0.0, self.transport.abort)
