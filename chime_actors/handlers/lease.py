"""One host at a time runs an ``after_store`` handler's cursor: a lease, kept alive.

With several hosts (``bus.backend: redis``) every host runs every handler's
process, but only the one holding the handler's **lease** hands messages over;
the others stand by. ``LeaseKeeper`` is the logic, over a ``Lease`` (Redis in
production, ``handlers/redis_lease.py``; a fake in the unit tests):

* **acquire.** A standby tries to take the lease; when another host holds it, it
  waits for as long as that lease still runs (at most a third of the ttl) and
  tries again. Each acquisition gets a **fence**: a number higher than any
  earlier holder's.
* **hold.** Holding, it renews every third of ``lease_ttl_ms``. Its own
  deadline is the time it *sent* the last successful acquire or renew plus the
  ttl: Redis started the ttl later than that, so by the deadline no other host
  can have taken over yet.
* **lose.** A renewal that is refused (the lease is gone or someone else's),
  fails (Redis down) or does not answer before the deadline ends the hold at
  once: the holder stops handing over (``LeaseHolder.end``) before any other
  host can have started. So does the holder finding itself fenced out
  (``lose``). Then it goes back to acquiring: if the lease is still its own
  (Redis only blinked) it gets it back with a new fence at once.
* **fencing.** The holder's ``begin(fence)`` claims the fence in storage, and
  every cursor write carries it (``MessageStore.save_handler_cursors``): a
  holder that lost its lease without knowing (a process paused past its
  deadline) cannot write its cursor over the next holder's. A fence storage
  already has a higher one of (Redis lost its counter) raises the floor the
  next acquisition starts from.
* **stop.** A clean stop ends the hold and releases the lease, so a standby
  takes over at its next try instead of after the ttl.

A host that dies (SIGKILL, power) stops renewing: its lease runs out at most
one ttl after its last renewal, and a standby takes over at its next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from chime_actors.errors import BusError, FencedOut, StoreError
from chime_actors.logs import get_logger

log = get_logger(__name__)

_T = TypeVar("_T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

RENEWALS_PER_TTL = 3
MIN_WAIT_S = 0.01
# After a failed begin (storage down): before trying again.
RETRY_S = 1.0
RELEASE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """How an acquisition went.

    Attributes:
        fence: the fence of the new hold, or None when another holder has it.
        expires_in_s: when ``fence`` is None, how long the other's lease still
            runs as Redis sees it (0 if unknown).
    """

    fence: int | None
    expires_in_s: float = 0.0


class Lease(Protocol):
    """One handler's lease, shared by every host (``RedisLease``)."""

    async def acquire(self, token: str, ttl_ms: int, floor: int) -> Attempt:
        """Take the lease for ``ttl_ms`` unless another token holds it.

        The lease held by ``token`` itself is taken again. A new hold gets a
        fence higher than every earlier one and than ``floor``.

        Raises:
            BusError: the lease's store did not answer.
        """
        ...

    async def renew(self, token: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now; False if ``token`` no longer holds it.

        Raises:
            BusError: the lease's store did not answer.
        """
        ...

    async def release(self, token: str) -> bool:
        """Give the lease up if ``token`` holds it; True if it did.

        Raises:
            BusError: the lease's store did not answer.
        """
        ...


class ClosableLease(Lease, Protocol):
    """A ``Lease`` on a connection of its own, closed with its process (``HandlerCore``)."""

    async def close(self) -> None:
        """Close the lease's connection (a hold still running is not released)."""
        ...


class LeaseHolder(Protocol):
    """What runs while the lease is held (the handler's ``HandlerCore``)."""

    async def begin(self, fence: int) -> None:
        """Start handing over under ``fence``: claim it in storage, load the cursors.

        Raises:
            FencedOut: storage holds a higher fence.
            StoreError: storage did not answer.
        """
        ...

    async def end(self) -> None:
        """Stop handing over now and save what was confirmed (under the fence).

        Called after every ``begin``, also one that raised or was cancelled;
        never raises.
        """
        ...


class LeaseKeeper:
    """Acquires, renews and gives up one handler's lease (module docstring)."""

    def __init__(
        self,
        name: str,
        lease: Lease,
        holder: LeaseHolder,
        *,
        ttl_ms: int,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        token: str | None = None,
    ) -> None:
        self._name = name
        self._lease = lease
        self._holder = holder
        self._ttl_ms = ttl_ms
        self._ttl_s = ttl_ms / 1000
        self._renew_every_s = self._ttl_s / RENEWALS_PER_TTL
        self._clock = clock
        self._sleep = sleep
        self.token = token or uuid.uuid4().hex
        self._floor = 0
        self._deadline = 0.0
        self._lost = asyncio.Event()
        self._begun = False
        self._task: asyncio.Task[None] | None = None
        self.held = False
        self.fence: int | None = None
        self.holds = 0

    def start(self) -> None:
        """Run in the background until ``stop``."""
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"handler-lease-{self._name}"
        )

    async def stop(self) -> None:
        """End the hold (if any), then release the lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._finish()

    def lose(self) -> None:
        """The holder found itself fenced out: end the hold now."""
        self._lost.set()

    async def run(self) -> None:
        """Acquire, hold until lost, and again, until cancelled."""
        while True:
            fence = await self._acquire()
            self.held, self.fence = True, fence
            self._lost.clear()
            self._begun = True
            try:
                await self._holder.begin(fence)
            except FencedOut as exc:
                # Redis is behind storage (it lost its counter): start above.
                self._floor = max(self._floor, exc.fence)
                log.warning(
                    "handler lease: a newer fence is stored",
                    handler=self._name,
                    fence=fence,
                    stored=exc.fence,
                )
                await self._finish()
                continue
            except StoreError as exc:
                log.warning("handler lease: could not begin", handler=self._name, error=str(exc))
                await self._finish()
                await self._sleep(RETRY_S)
                continue
            except Exception:  # a bug must not end the attempts for good
                log.exception("handler lease: begin failed", handler=self._name)
                await self._finish()
                await self._sleep(RETRY_S)
                continue
            self.holds += 1
            log.info("handler lease acquired", handler=self._name, fence=fence)
            why = await self._keep()
            log.warning("handler lease lost", handler=self._name, fence=fence, why=why)
            await self._finish()

    # --- internals ---------------------------------------------------------------------

    async def _acquire(self) -> int:
        """Until the lease is ours: its fence (the deadline is set)."""
        failures = 0
        while True:
            sent = self._clock()
            try:
                attempt = await self._within(
                    self._lease.acquire(self.token, self._ttl_ms, self._floor), self._ttl_s
                )
            except BusError as exc:
                attempt, error = None, str(exc)
            else:
                error = "no answer"
            if attempt is None:
                if failures == 0:
                    log.warning("handler lease: redis failed", handler=self._name, error=error)
                failures += 1
                await self._sleep(self._renew_every_s)
                continue
            failures = 0
            if attempt.fence is not None:
                self._deadline = sent + self._ttl_s
                if self._clock() < self._deadline:
                    return attempt.fence
                continue  # answered too late to be of use: try again
            wait = min(max(attempt.expires_in_s, MIN_WAIT_S), self._renew_every_s)
            await self._sleep(wait)

    async def _keep(self) -> str:
        """Renew until the hold ends; why it ended."""
        while True:
            if await self._pause(self._renew_every_s):
                return "fenced out"
            sent = self._clock()
            remaining = self._deadline - sent
            if remaining <= 0:
                return "not renewed before its deadline"
            try:
                renewed = await self._within(self._lease.renew(self.token, self._ttl_ms), remaining)
            except BusError as exc:
                return f"renewal failed: {exc}"
            except Exception as exc:  # whatever it was, the lease is not known renewed
                log.exception("handler lease: renewal raised", handler=self._name)
                return f"renewal raised {type(exc).__name__}"
            if renewed is None:
                return "renewal unanswered before the deadline"
            if not renewed:
                return "renewal refused: the lease is gone"
            if self._lost.is_set():
                return "fenced out"
            self._deadline = sent + self._ttl_s

    async def _finish(self) -> None:
        """End the holder's work (if begun) and give the lease back (if held)."""
        if self._begun:
            # Cleared once ``end`` returned: a stop that cancels it ends again.
            await self._holder.end()
            self._begun = False
        if self.held:
            self.held, self.fence = False, None
            try:
                released = await self._within(self._lease.release(self.token), RELEASE_TIMEOUT_S)
            except BusError:
                released = None
            if released is None:
                # Harmless: it runs out by itself within the ttl.
                log.info("handler lease left to run out", handler=self._name, ttlMs=self._ttl_ms)

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less if ``lose`` is called meanwhile; True if it was."""
        if self._lost.is_set():
            return True
        return await self._within(self._lost.wait(), seconds) is not None

    async def _within(self, work: Awaitable[_T], seconds: float) -> _T | None:
        """``work``'s result, or None (``work`` cancelled) after ``seconds`` of our sleep."""
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return task.result() if not task.cancelled() else None
