"""Tests for chime_actors.gateway.local_supervisor: the restart budget, a fake clock."""

from __future__ import annotations

from chime_actors.gateway.local_supervisor import RestartBudget, RestartPolicy
from tests.support.clock import FakeClock


def test_default_policy_is_five_restarts_in_ten_seconds() -> None:
    assert RestartPolicy() == RestartPolicy(max_restarts=5, within_s=10.0)


def test_restarts_up_to_the_limit_then_escalates() -> None:
    clock = FakeClock(100.0)
    budget = RestartBudget(RestartPolicy(max_restarts=3, within_s=10.0), clock)
    assert budget.restarts == 0
    assert [budget.allow_restart() for _ in range(3)] == [True, True, True]
    assert budget.restarts == 3
    assert not budget.allow_restart()
    assert budget.restarts == 3  # an escalation is not counted as a restart


def test_old_failures_leave_the_window() -> None:
    clock = FakeClock(100.0)
    budget = RestartBudget(RestartPolicy(max_restarts=2, within_s=10.0), clock)
    assert budget.allow_restart()  # t=100
    clock.now = 105.0
    assert budget.allow_restart()  # t=105
    clock.now = 110.0
    assert not budget.allow_restart()  # the first is exactly 10 s old: still counts
    clock.now = 110.5
    assert budget.allow_restart()  # the first has left the window
    assert budget.restarts == 2
    clock.now = 200.0
    assert budget.allow_restart()
    assert budget.restarts == 1


def test_zero_restarts_always_escalates() -> None:
    budget = RestartBudget(RestartPolicy(max_restarts=0, within_s=10.0), FakeClock(100.0))
    assert not budget.allow_restart()
