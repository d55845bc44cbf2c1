"""Tests for chime_actors.api.upload_budget on a fake clock."""

from __future__ import annotations

from chime_actors.api.upload_budget import UploadBudget
from tests.support.clock import FakeClock

MIB = 1024 * 1024


def test_a_user_may_upload_an_hours_worth_then_waits_for_the_refill() -> None:
    clock = FakeClock()
    budget = UploadBudget(60 * MIB, clock)  # 1 MiB a minute
    assert budget.reserve("alice", 50 * MIB) is None
    assert budget.reserve("alice", 10 * MIB) is None
    assert budget.reserve("alice", 1) == 1  # the bucket is empty: a byte needs 1 ms
    assert budget.reserve("alice", 2 * MIB) == 120_000  # 2 MiB need two minutes
    clock.now += 119.5
    assert budget.reserve("alice", 2 * MIB) in (500, 501)  # rounded up, never down
    clock.now += 0.5
    assert budget.reserve("alice", 2 * MIB) is None
    # Refills never exceed one hour's worth.
    clock.now += 10 * 3600
    assert budget.reserve("alice", 60 * MIB) is None
    assert budget.reserve("alice", 1) is not None


def test_users_have_budgets_of_their_own() -> None:
    budget = UploadBudget(10 * MIB, FakeClock())
    assert budget.reserve("alice", 10 * MIB) is None
    assert budget.reserve("alice", MIB) is not None
    assert budget.reserve("bob", 10 * MIB) is None


def test_reservations_made_at_once_share_the_budget_and_refunds_give_back() -> None:
    budget = UploadBudget(10 * MIB, FakeClock())
    # Four uploads of up to 3 MiB each start together: the fourth must wait.
    assert [budget.reserve("alice", 3 * MIB) for _ in range(4)][:3] == [None, None, None]
    assert budget.reserve("alice", 3 * MIB) is not None
    # Each of the three stored 1 MiB: 2 MiB back each, 7 MiB free.
    for _ in range(3):
        budget.refund("alice", 2 * MIB)
    assert budget.reserve("alice", 7 * MIB) is None
    assert budget.reserve("alice", 1) is not None
    # A refund never lifts the budget past its capacity.
    budget.refund("alice", 100 * MIB)
    assert budget.reserve("alice", 10 * MIB) is None
    assert budget.reserve("alice", 1) is not None


def test_a_file_larger_than_the_budget_waits_for_a_full_one_then_takes_it() -> None:
    clock = FakeClock()
    budget = UploadBudget(3600, clock)  # a byte a second
    assert budget.reserve("alice", 1000) is None
    assert budget.reserve("alice", 5000) == 1000 * 1000  # waits until the bucket is full
    clock.now += 1000
    assert budget.reserve("alice", 5000) is None  # then goes below zero,
    assert budget.reserve("alice", 1) == 1401 * 1000  # which must be paid back first


def test_no_limit_takes_nothing_and_keeps_no_table() -> None:
    budget = UploadBudget(0, FakeClock())
    assert all(budget.reserve(f"user-{n}", 10**12) is None for n in range(100))
    budget.refund("user-1", 5)
    assert len(budget) == 0


def test_the_table_of_users_is_bounded_least_recently_used_first() -> None:
    budget = UploadBudget(10, FakeClock(), max_keys=3)
    for user in ("a", "b", "c"):
        assert budget.reserve(user, 10) is None
    assert budget.reserve("a", 1) is not None  # a is used again: b is now the oldest
    assert budget.reserve("d", 10) is None
    assert len(budget) == 3
    assert budget.reserve("b", 10) is None  # b was evicted: a fresh bucket
    assert budget.reserve("a", 1) is not None  # a was kept
