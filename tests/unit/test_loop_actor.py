from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest

from chime_actors.runtime.loop_actor import run_bundle, run_guarded
from chime_actors.runtime.messages import ActorId, ActorKind, Bundle, bundle_by_target


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


def test_sends_for_one_address_travel_as_one_bundle_in_order() -> None:
    sends = [("gw1", "result"), ("gw2", "deliveries a"), ("gw1", "deliveries a"), ("api", "m")]
    assert bundle_by_target(sends) == [
        ("gw1", Bundle(("result", "deliveries a"))),
        ("gw2", "deliveries a"),  # alone: not wrapped
        ("api", "m"),
    ]
    assert bundle_by_target([]) == []


class _UnhashableAddress:
    """Like Thespian's ActorAddress: equal by value, ``__hash__`` is None."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, port: int) -> None:
        self.port = port

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnhashableAddress) and other.port == self.port


def test_bundling_works_with_unhashable_addresses() -> None:
    one, two = _UnhashableAddress(1), _UnhashableAddress(2)
    sends = [(one, "a"), (two, "b"), (_UnhashableAddress(1), "c")]
    assert bundle_by_target(sends) == [
        (_UnhashableAddress(1), Bundle(("a", "c"))),
        (_UnhashableAddress(2), "b"),
    ]


def test_a_bundle_pickles_and_is_handled_in_order_even_past_a_failing_message() -> None:
    bundle = pickle.loads(pickle.dumps(Bundle(("one", "boom", "two"))))
    core = _Core()
    run_bundle(core, ActorId(ActorKind.GATEWAY, 1), bundle.messages, "persister")
    assert core.handled == [("one", "persister"), ("two", "persister")]
