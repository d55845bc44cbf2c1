"""Tests for GatewayReplicas: snapshots, numbered deltas, and gateways that die."""

from __future__ import annotations

from chime_actors.presence.messages import PresenceDelta, PresenceSnapshot
from chime_actors.presence.replicas import GatewayReplicas
from chime_actors.presence.table import PresenceChange, PresenceTable

GW1, GW2, GW2_REPLACED = "addr-1", "addr-2", "addr-2b"


def replicas(own: int | None = 1) -> tuple[PresenceTable, GatewayReplicas]:
    table = PresenceTable()
    return table, GatewayReplicas(table, own)


def snapshot(
    seq: int = 0, generation: int = 1, epoch: str = "e1", *entries: str
) -> PresenceSnapshot:
    return PresenceSnapshot(2, epoch, seq, generation, tuple(("c", u) for u in entries))


def test_new_peers_are_reported_and_our_own_slot_is_skipped() -> None:
    _, reps = replicas(own=1)
    changes, new = reps.rewire((GW1, GW2), generation=1)
    assert (changes, new) == ([], [GW2])
    assert reps.rewire((GW1, GW2), generation=2) == ([], [])  # nothing changed
    assert reps.peers == [GW2]


def test_deltas_apply_in_order_after_the_snapshot() -> None:
    table, reps = replicas()
    reps.rewire((GW1, GW2), 1)
    assert reps.on_snapshot(snapshot(3, 1, "e1", "alice")) == [PresenceChange("c", "alice", True)]
    assert reps.on_delta(PresenceDelta(2, "e1", 3, (("c", "alice", False),))) == ([], False)
    changes, resync = reps.on_delta(PresenceDelta(2, "e1", 4, (("c", "bob", True),)))
    assert (changes, resync) == ([PresenceChange("c", "bob", True)], False)
    assert table.online("c") == ["alice", "bob"]


def test_a_gap_asks_for_a_snapshot_once_and_applies_nothing() -> None:
    table, reps = replicas()
    reps.on_snapshot(snapshot(1, 1, "e1"))
    assert reps.on_delta(PresenceDelta(2, "e1", 3, (("c", "bob", True),))) == ([], True)
    assert reps.on_delta(PresenceDelta(2, "e1", 4, (("c", "eve", True),))) == ([], False)
    assert table.online("c") == []
    reps.on_snapshot(snapshot(4, 1, "e1", "bob", "eve"))
    assert table.online("c") == ["bob", "eve"]


def test_a_delta_of_an_epoch_without_snapshot_asks_once() -> None:
    _, reps = replicas()
    assert reps.on_delta(PresenceDelta(2, "e9", 1, (("c", "bob", True),))) == ([], True)
    assert reps.on_delta(PresenceDelta(2, "e9", 2, (("c", "bob", False),))) == ([], False)


def test_an_empty_slot_drops_the_dead_gateways_users() -> None:
    table, reps = replicas()
    reps.rewire((GW1, GW2), 1)
    reps.on_snapshot(snapshot(0, 1, "e1", "alice", "bob"))
    changes, new = reps.rewire((GW1, None), 2)
    assert set(changes) == {PresenceChange("c", "alice", False), PresenceChange("c", "bob", False)}
    assert new == [] and reps.peers == []
    assert table.online("c") == []


def test_the_successors_snapshot_survives_the_wiring_that_announces_it() -> None:
    """The restarted gateway got wiring 3 and sent its snapshot before we saw wiring 3."""
    table, reps = replicas()
    reps.rewire((GW1, GW2), 1)
    reps.on_snapshot(snapshot(5, 1, "old", "alice"))
    reps.rewire((GW1, None), 2)
    reps.on_snapshot(snapshot(0, 3, "new", "carol"))
    changes, new = reps.rewire((GW1, GW2_REPLACED), 3)
    assert (changes, new) == ([], [GW2_REPLACED])
    assert table.online("c") == ["carol"]


def test_a_replaced_address_without_an_empty_slot_still_drops_the_old_one() -> None:
    table, reps = replicas()
    reps.rewire((GW1, GW2), 1)
    reps.on_snapshot(snapshot(0, 1, "old", "alice"))
    changes, new = reps.rewire((GW1, GW2_REPLACED), 4)
    assert changes == [PresenceChange("c", "alice", False)] and new == [GW2_REPLACED]
    assert table.online("c") == []


def test_the_bridge_replicates_every_gateway() -> None:
    table, reps = replicas(own=None)
    _, new = reps.rewire((GW1, GW2), 1)
    assert new == [GW1, GW2]
    reps.on_snapshot(PresenceSnapshot(1, "a", 0, 1, (("c", "alice"),)))
    reps.on_snapshot(PresenceSnapshot(2, "b", 0, 1, (("c", "alice"),)))
    changes, _ = reps.rewire((None, GW2), 2)
    assert changes == []  # gateway 2 still holds her
    assert table.online("c") == ["alice"]
