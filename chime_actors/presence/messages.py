"""What gateways, the Redis bridge and the API tell each other about presence and typing.

All of it travels on lanes (``runtime/lanes.py``), never through Thespian: frozen,
slotted, picklable records. Who sends what:

==========================  ===============================  ==============================
record                      from -> to                       means
==========================  ===============================  ==============================
``PresenceSnapshot``        gateway -> other gateways,       everything this gateway's
                            the bridge                       connections hold (to a peer
                                                             that is new, or asked)
``PresenceDelta``           gateway -> other gateways,       what changed since, numbered
                            the bridge                       (a gap asks for a snapshot)
``PresenceResync``          anyone -> a gateway              "send me your snapshot"
``TypingEvent``             gateway -> other gateways,       someone typed (passed the
                            the bridge; bridge -> gateways   sender's throttle)
``RemotePresence``          bridge -> gateways               other hosts' changes
``RemoteHostState``         bridge -> gateways               what one host holds in a
                                                             channel (it resynced)
``RemoteChannels``          bridge -> gateways               other hosts' whole state in
                                                             these channels (just loaded)
``HostsGone``               bridge -> gateways               these hosts died
``PresenceLookup`` /        API -> gateway, gateway ->       who is online in a channel
``PresenceLookupResult``    bridge, and back                 (``users`` None: unavailable)
==========================  ===============================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

Entry = tuple[str, str]
"""``(channel_id, user_id)``."""

Change = tuple[str, str, bool]
"""``(channel_id, user_id, online)``."""


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """Every ``(channel, user)`` gateway ``index`` holds, as of its delta ``seq``.

    ``epoch`` names the gateway's incarnation (a restarted gateway starts a new
    one); ``generation`` is the ``Wiring`` generation it had when it sent this, so
    a receiver that learns of the gateway's replacement from an older wiring does
    not throw a newer snapshot away.
    """

    index: int
    epoch: str
    seq: int
    generation: int
    entries: tuple[Entry, ...]

    def __repr__(self) -> str:
        return f"PresenceSnapshot(gw {self.index}, seq {self.seq}, {len(self.entries)} entries)"


@dataclass(frozen=True, slots=True)
class PresenceDelta:
    """Changes of gateway ``index``'s own presence; ``seq`` counts deltas per epoch."""

    index: int
    epoch: str
    seq: int
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class PresenceResync:
    """Ask a gateway for its ``PresenceSnapshot`` (a delta was missed)."""


@dataclass(frozen=True, slots=True)
class TypingEvent:
    """``user_id`` is typing in ``channel_id``; never stored."""

    channel_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class RemotePresence:
    """Other hosts' changes: ``(host, channel_id, user_id, online)``, in order."""

    changes: tuple[tuple[str, str, str, bool], ...]


@dataclass(frozen=True, slots=True)
class RemoteHostState:
    """Host ``host`` holds exactly ``users`` in ``channel_id`` (it wrote its state again)."""

    host: str
    channel_id: str
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RemoteChannels:
    """Other hosts' state in these channels, read from Redis just now.

    ``channels`` pairs each channel with every live ``(host, user)`` in it; a host
    that holds nobody there is absent.
    """

    channels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


@dataclass(frozen=True, slots=True)
class HostsGone:
    """These hosts stopped refreshing their liveness key: their users are offline."""

    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresenceLookup:
    """Who is online in ``channel_id``? Answered with ``PresenceLookupResult(token)``."""

    token: int
    channel_id: str


@dataclass(frozen=True, slots=True)
class PresenceLookupResult:
    """The answer to ``PresenceLookup(token)``: sorted users, or None (unavailable)."""

    token: int
    users: tuple[str, ...] | None
