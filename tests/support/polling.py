"""Wait for a condition, bounded by a timeout: how tests synchronise, never a bare sleep.

``wait_until`` blocks (for tests outside an event loop, polling a server over
HTTP or a receiver thread); ``until`` and ``until_async`` yield to the running
loop between checks. Each returns the check's first truthy value and fails with
an ``AssertionError`` naming ``what`` once ``timeout`` seconds have passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], timeout: float = 15.0, what: str = "", *, interval: float = 0.1
) -> T:
    """Call ``check`` every ``interval`` s until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(interval)
    return value


async def until(
    check: Callable[[], T | None], timeout: float = 5.0, what: str = "", *, interval: float = 0.01
) -> T:
    """``wait_until`` on an event loop: sleeps ``interval`` s on the loop between checks.

    The default suits a wait on another process (a server, Redis): the test's
    loop does not spin meanwhile. A unit test on fakes, where nothing but this
    loop moves, passes ``interval=0``: checked on every turn of the loop, so a
    state that lasts one turn is seen.
    """
    return await until_async(_awaitable(check), timeout, what or repr(check), interval=interval)


async def until_async(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = 5.0,
    what: str = "",
    *,
    interval: float = 0.01,
) -> T:
    """``until`` for a check that is itself a coroutine (a Redis query, a store read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := await check()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        await asyncio.sleep(interval)
    return value


def _awaitable(check: Callable[[], T | None]) -> Callable[[], Awaitable[T | None]]:
    async def checked() -> T | None:
        return check()

    return checked
