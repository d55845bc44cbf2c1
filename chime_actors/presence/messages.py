"""What gateways, the Redis bridge and the API tell each other about presence and typing.

All of it travels on lanes (``runtime/lanes.py``), never through Thespian:
``records.FrozenRecord``s (frozen, tagged msgspec Structs). Who sends what:

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

from chime_actors.records import FrozenRecord

Entry = tuple[str, str]
"""``(channel_id, user_id)``."""

Change = tuple[str, str, bool]
"""``(channel_id, user_id, online)``."""


class PresenceSnapshot(FrozenRecord, frozen=True):
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


class PresenceDelta(FrozenRecord, frozen=True):
    """Changes of gateway ``index``'s own presence; ``seq`` counts deltas per epoch."""

    index: int
    epoch: str
    seq: int
    changes: tuple[Change, ...]


class PresenceResync(FrozenRecord, frozen=True):
    """Ask a gateway for its ``PresenceSnapshot`` (a delta was missed)."""


class TypingEvent(FrozenRecord, frozen=True):
    """``user_id`` is typing in ``channel_id``; never stored."""

    channel_id: str
    user_id: str


class RemotePresence(FrozenRecord, frozen=True):
    """Other hosts' changes: ``(host, channel_id, user_id, online)``, in order."""

    changes: tuple[tuple[str, str, str, bool], ...]


class RemoteHostState(FrozenRecord, frozen=True):
    """Host ``host`` holds exactly ``users`` in ``channel_id`` (it wrote its state again)."""

    host: str
    channel_id: str
    users: tuple[str, ...]


class RemoteChannels(FrozenRecord, frozen=True):
    """Other hosts' state in these channels, read from Redis just now.

    ``channels`` pairs each channel with every live ``(host, user)`` in it; a host
    that holds nobody there is absent.
    """

    channels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]


class HostsGone(FrozenRecord, frozen=True):
    """These hosts stopped refreshing their liveness key: their users are offline."""

    hosts: tuple[str, ...]


class PresenceLookup(FrozenRecord, frozen=True):
    """Who is online in ``channel_id``? Answered with ``PresenceLookupResult(token)``."""

    token: int
    channel_id: str


class PresenceLookupResult(FrozenRecord, frozen=True):
    """The answer to ``PresenceLookup(token)``: sorted users, or None (unavailable)."""

    token: int
    users: tuple[str, ...] | None
