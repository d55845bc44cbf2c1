"""Messages between gateways, persisters and the ``RedisBridgeActor``.

Frozen, slotted, picklable. Newly stored messages travel to the bridge in the same
``Deliveries`` record the persisters send to gateways.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Interest:
    """Gateway -> bridge: this gateway gained (or lost) its first (last) subscriber."""

    gateway_index: int
    channel_id: str
    subscribed: bool


@dataclass(frozen=True, slots=True)
class InterestSnapshot:
    """Gateway -> bridge: every channel this gateway has subscribers in.

    Sent whenever the bridge's address changes (a restarted bridge knows nothing).
    """

    gateway_index: int
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resync:
    """Bridge -> gateways: the subscription was down; read storage for these channels.

    Publications made while Redis was unreachable are lost to Pub/Sub, but every
    message is stored before it is published, so each ChannelActor catches up from
    storage beyond the last id it delivered.
    """

    channels: tuple[str, ...]
