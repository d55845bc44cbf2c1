"""Asking another process who is online, over lanes: a future per question."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from chime_actors.errors import PresenceUnavailable
from chime_actors.presence.messages import PresenceLookup, PresenceLookupResult

LOOKUP_TIMEOUT_S = 2.0
"""A lookup not answered within this is ``unavailable`` (the peer died or is busy)."""


class Lookups:
    """The questions this process has asked and not had answered yet."""

    __slots__ = ("_pending", "_post", "_tokens")

    def __init__(self, post: Callable[[Any, Any], None]) -> None:
        self._post = post
        self._tokens = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[str, ...] | None]] = {}

    async def ask(
        self, address: Any, channel_id: str, timeout_s: float = LOOKUP_TIMEOUT_S
    ) -> tuple[str, ...]:
        """The users ``address`` says are online in ``channel_id``.

        Raises:
            PresenceUnavailable: no address, no answer in time, or the peer
                could not tell (its own source is down).
        """
        if address is None:
            raise PresenceUnavailable("presence is not wired yet")
        token = next(self._tokens)
        future: asyncio.Future[tuple[str, ...] | None] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            self._post(address, PresenceLookup(token, channel_id))
            users = await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise PresenceUnavailable("presence lookup not answered in time") from exc
        finally:
            self._pending.pop(token, None)
        if users is None:
            raise PresenceUnavailable("presence source unavailable")
        return users

    def resolve(self, result: PresenceLookupResult) -> None:
        """An answer arrived (a late one, after its timeout, is dropped)."""
        future = self._pending.get(result.token)
        if future is not None and not future.done():
            future.set_result(result.users)
