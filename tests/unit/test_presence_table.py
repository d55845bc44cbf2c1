"""Tests for the pure presence table, local counts and the typing throttle."""

from __future__ import annotations

from chime_actors.presence.table import (
    LOCAL,
    LocalCounts,
    PresenceChange,
    PresenceTable,
    TypingThrottle,
    gateway_origin,
    host_origin,
)

GW2 = gateway_origin(2)
HOST = host_origin("b")


def test_first_origin_in_and_last_one_out_are_the_changes() -> None:
    table = PresenceTable()
    assert table.set(LOCAL, "c", "alice", True) == PresenceChange("c", "alice", True)
    assert table.set(GW2, "c", "alice", True) is None  # already online
    assert table.set(LOCAL, "c", "alice", True) is None  # idempotent
    assert table.set(LOCAL, "c", "alice", False) is None  # gateway 2 still holds her
    assert table.online("c") == ["alice"]
    assert table.set(GW2, "c", "alice", False) == PresenceChange("c", "alice", False)
    assert table.online("c") == []
    assert table.set(GW2, "c", "alice", False) is None
    assert table.origins() == []


def test_dropping_an_origin_takes_only_its_own_users_offline() -> None:
    table = PresenceTable()
    table.set(GW2, "c", "alice", True)
    table.set(GW2, "c", "bob", True)
    table.set(GW2, "d", "bob", True)
    table.set(LOCAL, "c", "bob", True)
    changes = table.drop_origin(GW2)
    assert sorted(changes, key=lambda c: (c.channel_id, c.user_id)) == [
        PresenceChange("c", "alice", False),
        PresenceChange("d", "bob", False),
    ]
    assert table.online("c") == ["bob"]


def test_a_snapshot_replaces_what_the_origin_held() -> None:
    table = PresenceTable()
    table.set(GW2, "c", "alice", True)
    table.set(GW2, "c", "bob", True)
    changes = table.replace_origin(GW2, [("c", "bob"), ("c", "carol")])
    assert set(changes) == {PresenceChange("c", "alice", False), PresenceChange("c", "carol", True)}
    assert table.entries(GW2) == (("c", "bob"), ("c", "carol"))


def test_replace_channel_touches_one_channel_of_one_origin() -> None:
    table = PresenceTable()
    table.set(HOST, "c", "alice", True)
    table.set(HOST, "d", "alice", True)
    assert table.replace_channel(HOST, "c", ["bob"]) == [
        PresenceChange("c", "alice", False),
        PresenceChange("c", "bob", True),
    ]
    assert table.online("d") == ["alice"]


def test_online_without_hosts_is_this_hosts_view() -> None:
    table = PresenceTable()
    table.set(HOST, "c", "remote", True)
    table.set(GW2, "c", "peer", True)
    table.set(LOCAL, "c", "here", True)
    assert table.online("c") == ["here", "peer", "remote"]
    assert table.online("c", hosts=False) == ["here", "peer"]


def test_local_counts_report_first_and_last_connection() -> None:
    counts = LocalCounts()
    assert counts.add("c", "alice") is True
    assert counts.add("c", "alice") is False
    assert counts.remove("c", "alice") is False
    assert counts.remove("c", "alice") is True
    assert counts.remove("c", "alice") is False  # never below zero


def test_typing_passes_once_per_user_and_channel_per_interval() -> None:
    now = [100.0]
    throttle = TypingThrottle(lambda: now[0], interval_s=3.0)
    assert throttle.allow("c", "alice")
    assert not throttle.allow("c", "alice")
    assert throttle.allow("c", "bob")
    assert throttle.allow("d", "alice")
    now[0] += 2.9
    assert not throttle.allow("c", "alice")
    now[0] += 0.2
    assert throttle.allow("c", "alice")


def test_the_throttle_forgets_expired_entries() -> None:
    now = [0.0]
    throttle = TypingThrottle(lambda: now[0], interval_s=3.0)
    for i in range(1000):
        throttle.allow("c", f"u{i}")
    now[0] += 3.0
    throttle.allow("c", "last")
    assert len(throttle) == 1
