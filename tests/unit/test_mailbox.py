"""Tests for chime_actors.gateway.mailbox: bound, order, waiting, and its size when idle."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest

from chime_actors.gateway.channel_actor import ChannelActor
from chime_actors.gateway.mailbox import Mailbox
from chime_actors.storage import MemoryStore

TIMEOUT = 5.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_offer_refuses_past_the_bound_and_get_takes_in_order() -> None:
    async def scenario() -> None:
        box: Mailbox[int] = Mailbox(2)
        assert box.offer(1) and box.offer(2)
        assert not box.offer(3)  # full: dropped
        assert len(box) == 2 and box.peek() == 1
        assert [await box.get(), await box.get()] == [1, 2]
        assert box.empty() and box.peek() is None

    run(scenario)


def test_get_waits_for_an_item() -> None:
    async def scenario() -> None:
        box: Mailbox[str] = Mailbox(1)
        reader = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        assert not reader.done()
        assert box.offer("a")
        assert await reader == "a"

    run(scenario)


def test_a_second_reader_is_refused() -> None:
    async def scenario() -> None:
        box: Mailbox[str] = Mailbox(1)
        first = asyncio.ensure_future(box.get())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="one reader"):
            await box.get()
        first.cancel()

    run(scenario)


def test_put_waits_for_room_and_writers_get_it_in_turn() -> None:
    async def scenario() -> None:
        box: Mailbox[int] = Mailbox(1)
        box.offer(0)
        writers = [asyncio.ensure_future(box.put(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in writers)
        assert [await box.get() for _ in range(3)] == [0, 1, 2]
        await asyncio.gather(*writers)

    run(scenario)


def test_a_woken_writer_cancelled_before_it_writes_passes_the_room_on() -> None:
    async def scenario() -> None:
        box: Mailbox[int] = Mailbox(1)
        box.offer(0)
        first = asyncio.ensure_future(box.put(1))
        second = asyncio.ensure_future(box.put(2))
        await asyncio.sleep(0)
        assert box.get_nowait() == 0  # wakes the first writer...
        first.cancel()  # ...which is cancelled before it runs
        await asyncio.wait_for(second, TIMEOUT)
        assert box.get_nowait() == 2
        assert first.cancelled()

    run(scenario)


def test_a_waiting_writer_cancelled_leaves_no_trace() -> None:
    async def scenario() -> None:
        box: Mailbox[int] = Mailbox(1)
        box.offer(0)
        gone = asyncio.ensure_future(box.put(1))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert box.get_nowait() == 0
        assert box.offer(3)  # the room went to nobody else
        assert box.get_nowait() == 3 and box.empty()

    run(scenario)


def test_a_mailbox_holds_at_least_one_item() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Mailbox[int](0)


def test_an_idle_channel_actor_stays_small() -> None:
    """A gateway keeps an actor per channel with local members, idle most of the time.

    With ``asyncio.Queue`` as its mailbox and a deque in its restart budget, an
    idle actor (its task waiting for mail) took 6.3 KB; now about 3 KB.
    """

    async def scenario() -> None:
        store = MemoryStore()
        actors: list[ChannelActor] = []
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for index in range(200):
                actor = ChannelActor(
                    f"c{index}", store, max_resume_messages=10, on_stopped=lambda _channel: None
                )
                actor.start()
                actors.append(actor)
            await asyncio.sleep(0)  # every task now waits on its mailbox
            gc.collect()
            per_actor = (tracemalloc.get_traced_memory()[0] - before) / len(actors)
        finally:
            tracemalloc.stop()
        for actor in actors:
            await actor.stop()
        assert per_actor < 4_000, f"{per_actor:.0f} bytes per idle channel actor"

    run(scenario)
