"""The SQLite store's worker thread: order, answers on the loop, abandoned jobs skipped."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from chime_actors.errors import StoreUnavailable
from chime_actors.storage.sqlite_worker import Abandoned, Job, SqliteWorker


def test_jobs_run_in_order_off_the_loop_and_answer_on_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = SqliteWorker("test-sqlite")
        ran: list[tuple[int, str]] = []

        def work(n: int) -> int:
            ran.append((n, threading.current_thread().name))
            return n * 10

        jobs = [Job(functools.partial(work, n), loop, Abandoned()) for n in range(5)]
        for job in jobs:
            worker.submit(job)
        assert [await job.future for job in jobs] == [0, 10, 20, 30, 40]
        assert ran == [(n, "test-sqlite") for n in range(5)]
        assert worker.stop(timeout_s=5)

    asyncio.run(main())


def test_an_error_is_raised_to_the_caller() -> None:
    async def main() -> None:
        worker = SqliteWorker("test-sqlite")

        def fail() -> None:
            raise ValueError("boom")

        job: Job[None] = Job(fail, asyncio.get_running_loop(), Abandoned())
        worker.submit(job)
        with pytest.raises(ValueError, match="boom"):
            await job.future
        assert worker.stop(timeout_s=5)

    asyncio.run(main())


def test_a_job_abandoned_before_it_started_never_runs() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = SqliteWorker("test-sqlite")
        gate = threading.Event()
        ran: list[str] = []
        blocker: Job[bool] = Job(lambda: gate.wait(10), loop, Abandoned())
        given_up = Abandoned()
        skipped: Job[None] = Job(lambda: ran.append("skipped"), loop, given_up)
        after: Job[None] = Job(lambda: ran.append("after"), loop, Abandoned())
        worker.submit(blocker)
        worker.submit(skipped)
        worker.submit(after)
        given_up.set()  # its caller timed out while the blocker held the thread
        gate.set()
        assert await blocker.future
        await after.future
        assert ran == ["after"]
        assert not skipped.future.done()
        assert worker.stop(timeout_s=5)

    asyncio.run(main())


def test_the_queue_is_bounded_a_call_past_it_is_refused_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        worker = SqliteWorker("test-sqlite", max_queued=3)
        started, release = threading.Event(), threading.Event()

        def blocking() -> str:
            started.set()
            release.wait(10)
            return "first"

        first = Job(blocking, loop, Abandoned())
        worker.submit(first)
        assert await asyncio.to_thread(started.wait, 5)  # the worker holds it: none queued
        queued = [Job(functools.partial(int, n), loop, Abandoned()) for n in range(3)]
        for job in queued:
            worker.submit(job)
        refused = Job(functools.partial(int, 99), loop, Abandoned())
        with pytest.raises(StoreUnavailable, match="3 calls are queued"):
            worker.submit(refused)
        release.set()
        assert await first.future == "first"
        assert [await job.future for job in queued] == [0, 1, 2]
        # Room again once the queue has drained.
        again = Job(functools.partial(int, 7), loop, Abandoned())
        worker.submit(again)
        assert await again.future == 7
        assert worker.stop(timeout_s=5)

    asyncio.run(main())
