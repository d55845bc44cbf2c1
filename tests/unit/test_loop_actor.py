from __future__ import annotations

import logging
from typing import Any

import pytest

from chime_actors.actors.loop_actor import run_guarded
from chime_actors.actors.messages import ActorId, ActorKind


class _Core:
    def __init__(self) -> None:
        self.handled: list[Any] = []

    async def start(self) -> int:
        return 0

    def handle(self, message: Any, sender: Any) -> None:
        if message == "boom":
            raise RuntimeError("handler bug")
        self.handled.append((message, sender))

    async def stop(self) -> None:
        return None


def test_run_guarded_passes_messages_through() -> None:
    core = _Core()
    run_guarded(core, ActorId(ActorKind.GATEWAY, 1), "hello", "someone")
    assert core.handled == [("hello", "someone")]


def test_run_guarded_logs_a_raise_with_a_correlation_id(caplog: pytest.LogCaptureFixture) -> None:
    core = _Core()
    with caplog.at_level(logging.ERROR):
        run_guarded(core, ActorId(ActorKind.PERSISTER, 2), "boom", None)  # does not raise
    assert "actor handler failed" in caplog.text
    run_guarded(core, ActorId(ActorKind.PERSISTER, 2), "after", None)
    assert core.handled == [("after", None)]
