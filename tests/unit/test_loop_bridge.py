"""Tests for chime_actors.runtime.loop_bridge: the loop thread and the Thespian side."""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections.abc import Iterator

import pytest

from chime_actors.errors import ActorError
from chime_actors.runtime.loop_bridge import LoopBridge

TIMEOUT = 5.0


@pytest.fixture
def bridge() -> Iterator[LoopBridge]:
    bridge = LoopBridge("test-loop")
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()


def readable(fd: int, timeout: float) -> bool:
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready)


def test_post_from_the_loop_wakes_the_watcher_and_drains(bridge: LoopBridge) -> None:
    async def produce() -> str:
        bridge.post("gateway-1", "a")
        bridge.post("gateway-2", "b")
        bridge.post("gateway-1", "c")
        return threading.current_thread().name

    assert not readable(bridge.watch_fd, 0)
    assert bridge.run_sync(produce(), TIMEOUT) == "test-loop"
    assert readable(bridge.watch_fd, TIMEOUT)
    # Drained from this thread (Thespian's), in order.
    assert bridge.drain() == [("gateway-1", "a"), ("gateway-2", "b"), ("gateway-1", "c")]
    assert not readable(bridge.watch_fd, 0)
    assert bridge.drain() == []


def test_one_wake_up_per_drain(bridge: LoopBridge) -> None:
    async def produce(n: int) -> None:
        for i in range(n):
            bridge.post("address", i)

    bridge.run_sync(produce(100), TIMEOUT)
    assert os.read(bridge.watch_fd, 4096) == b"!"
    assert [m for _, m in bridge.drain()] == list(range(100))
    bridge.run_sync(produce(1), TIMEOUT)  # signals again after a drain
    assert readable(bridge.watch_fd, TIMEOUT)
    assert bridge.drain() == [("address", 0)]


def test_call_in_loop_runs_on_the_loop_thread(bridge: LoopBridge) -> None:
    ran = threading.Event()
    seen: list[str] = []

    def record(value: str) -> None:
        seen.append(f"{value}@{threading.current_thread().name}")
        ran.set()

    bridge.call_in_loop(record, "x")
    assert ran.wait(TIMEOUT)
    assert seen == ["x@test-loop"]


def test_run_sync_returns_and_raises(bridge: LoopBridge) -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("boom")

    assert bridge.run_sync(answer(), TIMEOUT) == 42
    with pytest.raises(ValueError, match="boom"):
        bridge.run_sync(fail(), TIMEOUT)


def test_run_sync_timeout_cancels_the_task(bridge: LoopBridge) -> None:
    cancelled = threading.Event()
    never = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        never.set()

    with pytest.raises(ActorError, match="did not finish"):
        bridge.run_sync(hang(), 0.05)
    assert cancelled.wait(TIMEOUT)
    assert not never.is_set()


def test_outbox_overflow_is_loud() -> None:
    bridge = LoopBridge("test-loop-small", max_outbox=2)
    bridge.start()
    try:
        bridge.post("a", 1)
        bridge.post("a", 2)
        with pytest.raises(ActorError, match="overflow"):
            bridge.post("a", 3)
        assert bridge.drain() == [("a", 1), ("a", 2)]
    finally:
        bridge.stop()


def test_stop_joins_the_thread_and_closes_everything() -> None:
    bridge = LoopBridge("test-loop-stop")
    bridge.start()
    bridge.stop()
    assert bridge.loop.is_closed()
    assert not any(t.name == "test-loop-stop" for t in threading.enumerate())
    bridge.stop()  # twice is fine
    bridge.call_in_loop(print, "ignored after stop")


def test_stop_without_start_closes_the_loop() -> None:
    bridge = LoopBridge("never-started")
    bridge.stop()
    assert bridge.loop.is_closed()
