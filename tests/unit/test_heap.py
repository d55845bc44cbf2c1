"""Tests for chime_actors.runtime.heap: what exists at startup is never collected again."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from chime_actors.runtime.heap import (
    IDLE_CPU_SHARE,
    IDLE_MIN_GAP_S,
    IdleCollector,
    freeze_startup_heap,
)


class Node:
    """An object the cyclic collector tracks."""

    def __init__(self) -> None:
        self.peer: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Leave the collector as the other tests expect it."""
    yield
    gc.unfreeze()


def test_objects_alive_at_startup_leave_the_collectors_generations() -> None:
    kept = Node()
    assert freeze_startup_heap() >= 1
    assert not any(obj is kept for obj in gc.get_objects())
    made_after = Node()
    assert any(obj is made_after for obj in gc.get_objects())


def test_garbage_cycles_from_startup_are_collected_not_frozen() -> None:
    collected: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    gc.disable()  # so that nothing but the freeze collects the cycle
    try:
        first, second = Node(), Node()
        first.peer, second.peer = second, first
        del first, second
        gc.callbacks.append(note)
        try:
            freeze_startup_heap()
        finally:
            gc.callbacks.remove(note)
    finally:
        gc.enable()
    # Frozen instead, the two would be counted nowhere: 0 collected.
    assert sum(collected) >= 2


# --- the idle collector ------------------------------------------------------------


class FakeProcess:
    """Wall and CPU clocks the test moves, a due flag, and a count of collections."""

    def __init__(self) -> None:
        self.now = 100.0
        self.cpu = 5.0
        self.due = True
        self.collected = 0

    def run(self, seconds: float, cpu_share: float) -> None:
        self.now += seconds
        self.cpu += seconds * cpu_share

    def collect(self) -> None:
        self.collected += 1

    def collector(self) -> IdleCollector:
        return IdleCollector(
            clock=lambda: self.now,
            cpu_clock=lambda: self.cpu,
            due=lambda: self.due,
            collect=self.collect,
        )


def test_a_due_collection_runs_when_the_process_is_idle() -> None:
    process = FakeProcess()
    collector = process.collector()
    process.run(0.25, IDLE_CPU_SHARE / 2)
    assert collector.look()
    assert process.collected == 1 and collector.collections == 1


def test_a_busy_process_is_left_to_the_collectors_own_schedule() -> None:
    process = FakeProcess()
    collector = process.collector()
    for _ in range(100):
        process.run(0.25, 0.5)  # half a core: serving traffic
        assert not collector.look()
    assert process.collected == 0


def test_nothing_is_collected_when_no_collection_is_due() -> None:
    process = FakeProcess()
    process.due = False
    collector = process.collector()
    process.run(0.25, 0.0)
    assert not collector.look()
    assert process.collected == 0


def test_idle_collections_are_at_least_the_minimum_gap_apart() -> None:
    process = FakeProcess()
    collector = process.collector()
    looks = int(3 * IDLE_MIN_GAP_S / 0.25)
    for _ in range(looks):
        process.run(0.25, 0.0)
        collector.look()
    # Idle all along and always due: one collection per gap, not one per look.
    assert process.collected == 3


def test_on_a_real_loop_an_idle_process_gets_its_full_collection() -> None:
    async def scenario() -> int:
        before = gc.get_stats()[2]["collections"]
        gc.collect(1)  # a generation-1 collection: a full one is now due
        collector = IdleCollector(interval_s=0.05)
        collector.start()
        try:
            for _ in range(200):  # the loop only sleeps: the process is idle
                await asyncio.sleep(0.05)
                if collector.collections:
                    break
        finally:
            collector.stop()
        assert collector.collections == 1
        return int(gc.get_stats()[2]["collections"] - before)

    assert asyncio.run(scenario()) >= 1
