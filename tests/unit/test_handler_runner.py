"""chime_actors.handlers.runner: the handler's own thread, budgets, one call at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from chime_actors.errors import HandlerError
from chime_actors.handlers.runner import HandlerRunner


@pytest.fixture
def runner() -> Iterator[HandlerRunner]:
    runner = HandlerRunner("test-handler")
    runner.start()
    yield runner
    runner.stop()


def test_a_call_runs_on_the_handler_thread_and_returns(runner: HandlerRunner) -> None:
    async def work() -> str:
        return threading.current_thread().name

    async def scenario() -> str:
        return await runner.call(work, 5)

    assert asyncio.run(scenario()) == "test-handler"


def test_a_raise_reaches_the_caller(runner: HandlerRunner) -> None:
    async def work() -> None:
        raise ValueError("handler bug")

    async def scenario() -> None:
        with pytest.raises(ValueError, match="handler bug"):
            await runner.call(work, 5)

    asyncio.run(scenario())


def test_a_blocking_handler_blocks_neither_the_caller_nor_its_budget(runner: HandlerRunner) -> None:
    release = threading.Event()
    order: list[str] = []

    async def blocks() -> None:
        release.wait(30)  # a synchronous call: holds the handler's thread
        order.append("first done")

    async def second() -> None:
        order.append("second")

    async def scenario() -> None:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.get_running_loop().create_task(tick())
        with pytest.raises(HandlerError, match="no answer within"):
            await runner.call(blocks, 0.05)
        assert ticks > 0  # the caller's loop ran meanwhile
        assert runner.busy
        # The next call waits until the handler let go of the first.
        follow = asyncio.get_running_loop().create_task(runner.call(second, 5))
        await asyncio.sleep(0.05)
        assert order == []
        release.set()
        await follow
        assert order == ["first done", "second"]
        ticker.cancel()

    asyncio.run(scenario())
