"""Which records the lanes carry: every message one process actor posts to another.

The lanes' codec (``runtime.lane_codec``) decodes a frame to exactly these
classes (and what their fields hold) and refuses anything else; a post of any
other object raises at once. A record that starts travelling on a lane is
added here (a ``records.FrozenRecord``, in ``records`` or its core's module).
"""

from __future__ import annotations

from typing import Final

from chime_actors.bus.messages import Interest, InterestSnapshot, Resync
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
from chime_actors.records import Deliveries, PersistBatch, PersistResult
from chime_actors.runtime.lane_codec import LaneCodec
from chime_actors.runtime.messages import MetricsReport

LANE_RECORDS: Final[tuple[type, ...]] = (
    # persister <-> gateways, API, handlers, the Redis bridge
    PersistBatch,
    PersistResult,
    Deliveries,
    # gateways <-> the Redis bridge
    Interest,
    InterestSnapshot,
    Resync,
    # presence and typing (presence.messages)
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
    # every process -> the API
    MetricsReport,
)
"""Every class a lane carries at the top of a frame (what they hold is typed too)."""

LANE_CODEC: Final = LaneCodec(LANE_RECORDS)
"""The codec of every process actor's lanes."""
