"""Tests for chime_actors.runtime.heap: what exists at startup is never collected again."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from chime_actors.runtime.heap import freeze_startup_heap


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
