"""The one thread a ``SqliteStore`` runs its statements on, and how the loop awaits it.

sqlite3 calls block (a commit with ``synchronous = full`` waits for an fsync, a
write may wait up to ``busy_timeout`` for another process's lock), so they stay
off the event loop. A ``ThreadPoolExecutor`` did that at a price the persister
paid on every write: ``submit`` (locks, a ``concurrent.futures.Future`` with its
condition variable), ``wrap_future`` chaining it to an asyncio future, and
``wait_for`` wrapping that in a third future. Here a call costs one queue put,
one asyncio future, one timer and exactly one wake-up of the loop
(``call_soon_threadsafe``) when the work is done.

The timeout semantics are the executor's: a job whose caller gave up before it
started is skipped (a cancelled future); a running one sees ``abandoned`` (a
write then rolls back instead of committing) and its statement is interrupted.

The queue is bounded (``max_queued``, :data:`MAX_QUEUED` by default): past it a
call is refused at once with ``StoreUnavailable`` instead of waiting behind
thousands of others for its timeout. The API process queues a call per HTTP
request, and nothing else bounds how many requests arrive at once. The bound is
above the most one caller queues in one go (a persister loads at most
``MAX_RECORDS_PER_WRITE``, 2,000, channels at once).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from chime_actors.errors import StoreUnavailable

_T = TypeVar("_T")

#: Calls waiting for the worker at most; one more is refused.
MAX_QUEUED = 4096


class Abandoned:
    """Set once the caller of a job stopped waiting (timed out or was cancelled).

    A plain flag: one thread sets it, the other reads it, and an attribute store
    is atomic; a ``threading.Event`` per call would cost a lock and a condition.
    """

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Mark the job abandoned."""
        self._set = True

    def is_set(self) -> bool:
        """True once the caller gave up."""
        return self._set


class Job(Generic[_T]):
    """One call handed to the worker: what to run and where its answer goes."""

    __slots__ = ("abandoned", "future", "loop", "started", "work")

    def __init__(
        self, work: Callable[[], _T], loop: asyncio.AbstractEventLoop, abandoned: Abandoned
    ) -> None:
        self.work = work
        self.loop = loop
        self.future: asyncio.Future[_T] = loop.create_future()
        self.abandoned = abandoned
        self.started = False

    def run(self) -> None:
        """Worker thread: run the work unless abandoned, then wake the loop once."""
        # started before the check: a caller that gives up in between finds it
        # started and interrupts; the work then sees ``abandoned`` itself.
        self.started = True
        if self.abandoned.is_set():
            return  # nobody waits for it any more, like a cancelled future
        try:
            result = self.work()
        except BaseException as exc:  # handed to the caller, raised there
            self.loop.call_soon_threadsafe(self._fail, exc)
        else:
            self.loop.call_soon_threadsafe(self._succeed, result)

    def _succeed(self, result: _T) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class SqliteWorker:
    """A daemon thread that runs ``Job``s one after the other, in submission order."""

    def __init__(self, name: str, *, max_queued: int = MAX_QUEUED) -> None:
        self._jobs: queue.SimpleQueue[Job[object] | None] = queue.SimpleQueue()
        self._max_queued = max_queued
        self._name = name
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Job[_T]) -> None:
        """Queue ``job``; its future is settled on its loop when it has run.

        Raises:
            StoreUnavailable: ``max_queued`` calls are waiting already.
        """
        # qsize is approximate across threads, never drifting: good enough for a bound.
        if self._jobs.qsize() >= self._max_queued:
            raise StoreUnavailable(
                f"{self._name}: {self._max_queued} calls are queued; refused at once"
            )
        self._jobs.put(job)  # type: ignore[arg-type]  # the queue is invariant in _T

    def stop(self, timeout_s: float | None = None) -> bool:
        """Let the queued jobs run, then end the thread; False if it is still busy."""
        self._jobs.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.run()
