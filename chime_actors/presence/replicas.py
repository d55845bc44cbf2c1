"""Replicas of the gateways' own presence, kept honest across restarts and lost frames.

Used by every gateway (for its peers) and by the Redis bridge (for all of its
host's gateways). Each gateway's presence arrives as a ``PresenceSnapshot`` and
then numbered ``PresenceDelta``s; the ``Wiring`` says when a gateway is gone:

* a delta applies only when it is the next one of the epoch its snapshot named;
  anything else (a lane broke and dropped one, or an epoch with no snapshot yet)
  is not applied, and the sender is asked for a snapshot, once;
* a slot that is empty in the wiring, or holds a new address, means the gateway
  died: its replica is dropped, taking its users offline unless another origin
  holds them. A snapshot from its successor may have arrived before that wiring
  (the successor sent it when it got that same wiring): a replica whose snapshot
  came with this wiring's generation or a later one is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chime_actors.presence.messages import PresenceDelta, PresenceSnapshot
from chime_actors.presence.table import PresenceChange, PresenceTable, gateway_origin


@dataclass(slots=True)
class _Replica:
    epoch: str
    seq: int
    generation: int
    resync_asked: bool = False


class GatewayReplicas:
    """The other gateways' presence, as origins ``gw:<index>`` of a ``PresenceTable``.

    Args:
        table: where the replicas live (shared with other origins).
        own_index: the index of the gateway that keeps these replicas, never
            replicated; None for the bridge (it replicates every gateway).
    """

    __slots__ = ("_asked", "_generation", "_own", "_peers", "_replicas", "_table")

    def __init__(self, table: PresenceTable, own_index: int | None = None) -> None:
        self._table = table
        self._own = own_index
        self._peers: dict[int, Any] = {}
        self._replicas: dict[int, _Replica] = {}
        self._asked: dict[int, str] = {}
        self._generation = 0

    @property
    def generation(self) -> int:
        """The generation of the last ``Wiring`` seen."""
        return self._generation

    @property
    def peers(self) -> list[Any]:
        """Addresses of the live gateways (but our own)."""
        return list(self._peers.values())

    def rewire(
        self, gateways: Sequence[Any], generation: int
    ) -> tuple[list[PresenceChange], list[Any]]:
        """A new ``Wiring``: the changes of dropping dead gateways, and the new peers."""
        self._generation = generation
        changes: list[PresenceChange] = []
        new: list[Any] = []
        for index, address in enumerate(gateways, start=1):
            if index == self._own:
                continue
            known = self._peers.get(index)
            if address is None:
                self._peers.pop(index, None)
                changes += self._drop_stale(index)
            elif known is None or address != known:
                self._peers[index] = address
                changes += self._drop_stale(index)
                new.append(address)
        return changes, new

    def on_snapshot(self, snapshot: PresenceSnapshot) -> list[PresenceChange]:
        """Replace what the gateway held with its snapshot."""
        if snapshot.index == self._own:
            return []
        self._replicas[snapshot.index] = _Replica(snapshot.epoch, snapshot.seq, snapshot.generation)
        return self._table.replace_origin(gateway_origin(snapshot.index), snapshot.entries)

    def on_delta(self, delta: PresenceDelta) -> tuple[list[PresenceChange], bool]:
        """Apply the delta if it is the next one; ``(changes, ask for a snapshot)``."""
        replica = self._replicas.get(delta.index)
        if replica is not None and replica.epoch == delta.epoch:
            if delta.seq <= replica.seq:
                return [], False  # already in the snapshot it followed
            if delta.seq == replica.seq + 1:
                replica.seq = delta.seq
                origin = gateway_origin(delta.index)
                changes = [
                    self._table.set(origin, channel_id, user_id, online)
                    for channel_id, user_id, online in delta.changes
                ]
                return [c for c in changes if c is not None], False
            if replica.resync_asked:
                return [], False
            replica.resync_asked = True
            return [], True
        # An epoch with no snapshot yet: ask once per epoch (one is usually on its way).
        if self._asked.get(delta.index) == delta.epoch:
            return [], False
        self._asked[delta.index] = delta.epoch
        return [], True

    def _drop_stale(self, index: int) -> list[PresenceChange]:
        replica = self._replicas.get(index)
        if replica is not None and replica.generation >= self._generation:
            return []  # the successor's snapshot, sent with this very wiring
        self._replicas.pop(index, None)
        return self._table.drop_origin(gateway_origin(index))
