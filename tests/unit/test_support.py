"""The shared test helpers of ``tests/support``: the fake clock and the pollers."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.clock import FakeClock
from tests.support.polling import until, until_async, wait_until
from tests.support.posts import PostLog


def test_timers_fire_in_deadline_order_only_when_time_is_advanced() -> None:
    clock = FakeClock(100.0)
    fired: list[str] = []
    clock.call_later(2.0, lambda: fired.append("b"))
    clock.call_later(1.0, lambda: fired.append("a"))
    cancelled = clock.call_later(1.5, lambda: fired.append("never"))
    cancelled.cancel()
    assert clock.pending == [1.0, 2.0]
    clock.advance(0.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == ["a"]
    clock.advance(5.0)
    assert fired == ["a", "b"]
    assert clock() == clock.time() == pytest.approx(106.0)


def test_a_timer_set_by_a_callback_fires_within_the_same_step() -> None:
    clock = FakeClock()
    seen: list[float] = []

    def first() -> None:
        seen.append(clock())
        clock.call_later(1.0, lambda: seen.append(clock()))

    clock.call_later(1.0, first)
    clock.advance(3.0)
    assert seen == [1.0, 2.0]  # each at its own deadline
    assert clock() == 3.0


def test_wait_until_returns_the_first_truthy_value_or_names_what_it_waited_for() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), 5, interval=0) == "ready"
    with pytest.raises(AssertionError, match="the thing"):
        wait_until(lambda: None, 0.01, "the thing", interval=0.001)


def test_until_yields_to_the_loop_between_checks() -> None:
    async def main() -> None:
        done = asyncio.Event()
        asyncio.get_running_loop().call_soon(done.set)
        assert await until(done.is_set, interval=0) is True

        async def never() -> bool:
            return False

        with pytest.raises(AssertionError, match="nothing"):
            await until_async(never, 0.01, "nothing", interval=0.001)

    asyncio.run(main())


def test_a_post_log_keeps_the_order_and_filters_by_kind_and_address() -> None:
    posts = PostLog()
    posts("a", 1)
    posts("b", "two")
    posts("a", 3)
    assert posts.sent == [("a", 1), ("b", "two"), ("a", 3)]
    assert posts.of(int) == [1, 3]
    assert posts.of(int, to="b") == []
    assert posts.of(object, to="b") == ["two"]
