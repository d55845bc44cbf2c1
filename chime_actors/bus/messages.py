"""Messages between gateways, persisters and the ``RedisBridgeActor``.

``records.FrozenRecord``s: frozen, tagged, they travel on lanes. Newly stored
messages travel to the bridge in the same ``Deliveries`` record the persisters
send to gateways.
"""

from __future__ import annotations

from chime_actors.records import FrozenRecord


class Interest(FrozenRecord, frozen=True):
    """Gateway -> bridge: this gateway gained (or lost) its first (last) subscriber."""

    gateway_index: int
    channel_id: str
    subscribed: bool


class InterestSnapshot(FrozenRecord, frozen=True):
    """Gateway -> bridge: every channel this gateway has subscribers in.

    Sent whenever the bridge's address changes (a restarted bridge knows nothing).
    """

    gateway_index: int
    channels: tuple[str, ...]


class Resync(FrozenRecord, frozen=True):
    """Bridge -> gateways: the subscription was down; read storage for these channels.

    Publications made while Redis was unreachable are lost to Pub/Sub, but every
    message is stored before it is published, so each ChannelActor catches up from
    storage beyond the last id it delivered.
    """

    channels: tuple[str, ...]
