"""``HandlerRunner``: an after_store handler's own thread and event loop.

The handler process's core (``HandlerCore``) runs on the process's loop: it
reads the lane the persisters deliver on, keeps the backlog and the cursor.
The handler's code runs here instead, on a second thread with a loop of its
own, so a handler that blocks (a synchronous HTTP client, a slow computation,
an ``async def`` that forgot to await) stalls only itself: the core keeps
reading its lane, so no persister ever waits on a handler (lanes apply
backpressure to their writers) and the backlog stays bounded.

One call at a time: a call that overran its budget is cancelled, and the next
call waits until the handler has really let go of it (a handler sees its
messages strictly one after another, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chime_actors.errors import HandlerError

_T = TypeVar("_T")

JOIN_TIMEOUT_S = 2.0


class HandlerRunner:
    """Runs coroutines of one handler on a dedicated thread, each within a budget."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """Start the thread and its loop; returns once the loop runs."""
        ready = threading.Event()
        # A daemon: a handler stuck in a blocking call must not keep the process alive.
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=self._name, daemon=True
        )
        self._thread.start()
        ready.wait()

    @property
    def busy(self) -> bool:
        """True while a call (perhaps one given up on) is still running."""
        return self._running is not None and not self._running.done()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (bounded) until no call runs; True when none does."""
        if self._running is not None and not self._running.done():
            await asyncio.wait([self._running], timeout=timeout_s)
        return not self.busy

    async def call(self, work: Callable[[], Awaitable[_T]], timeout_s: float) -> _T:
        """Run ``work()`` on the handler's thread; its result, or what it raised.

        Raises:
            HandlerError: no answer within ``timeout_s`` (the call is cancelled).
        """
        loop = self._loop
        if loop is None:
            raise HandlerError(f"handler runner {self._name} is not started")
        if self._running is not None and not self._running.done():
            await asyncio.wait([self._running])
        core = asyncio.get_running_loop()
        # Resolved when the handler's task has really ended, not when it was
        # asked to cancel: the next call waits for exactly that.
        answer: asyncio.Future[_T] = core.create_future()
        answer.add_done_callback(_consume)
        self._running = answer
        tasks: list[asyncio.Task[_T]] = []

        def start() -> None:  # on the handler's thread
            task = loop.create_task(_invoke(work))
            tasks.append(task)
            task.add_done_callback(lambda done: _settle(core, answer, done))

        def cancel() -> None:  # on the handler's thread, always after start()
            for task in tasks:
                task.cancel()

        loop.call_soon_threadsafe(start)
        try:
            done, _ = await asyncio.wait([answer], timeout=timeout_s)
        except asyncio.CancelledError:
            loop.call_soon_threadsafe(cancel)
            raise
        if not done:
            loop.call_soon_threadsafe(cancel)
            raise HandlerError(f"no answer within {timeout_s:g} s")
        return answer.result()

    def stop(self) -> None:
        """Stop the loop and wait (bounded) for the thread; a stuck one is left behind."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(JOIN_TIMEOUT_S)
        self._loop = None

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=JOIN_TIMEOUT_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _invoke(work: Callable[[], Awaitable[_T]]) -> _T:
    # Called (not just awaited) on the handler's thread: a handler whose method
    # blocks before its first await blocks that thread, never the core's.
    return await work()


def _settle(
    core: asyncio.AbstractEventLoop, answer: asyncio.Future[_T], task: asyncio.Task[_T]
) -> None:
    """On the handler's thread: pass the task's outcome to ``answer`` on the core's loop."""

    def copy() -> None:
        if answer.done():
            return
        if task.cancelled():
            answer.cancel()
        elif (exc := task.exception()) is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(task.result())

    with contextlib.suppress(RuntimeError):  # the core's loop is gone (stopping)
        core.call_soon_threadsafe(copy)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        with contextlib.suppress(BaseException):
            future.exception()
