"""Each process actor's metrics, sent to the API actor once a second.

The report doubles as a heartbeat: ``/readyz`` counts an actor up only while its
reports keep coming. A report is also sent at once whenever the API's address
changes (start, or an API restart), so readiness does not lag a second behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chime_actors.metrics import MetricsRegistry
from chime_actors.runtime.messages import ActorId, MetricsReport

INTERVAL_S = 1.0


class MetricsReporter:
    """Sends ``MetricsReport``s of one registry to the API actor."""

    def __init__(
        self,
        actor_id: ActorId,
        registry: MetricsRegistry,
        post: Callable[[Any, Any], None],
        refresh: Callable[[], None] = lambda: None,
        *,
        interval_s: float = INTERVAL_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``refresh`` updates gauges (queue depths ...) just before each report;
        ``run`` reports every ``interval_s``, waiting with ``sleep`` (a test's fake)."""
        self._actor_id = actor_id
        self._interval_s = interval_s
        self._sleep = sleep
        self._registry = registry
        self._post = post
        self._refresh = refresh
        self._api: Any = None

    def set_api(self, api: Any) -> None:
        """The API's current address (from ``Wiring``); reports at once if it changed."""
        changed = api is not None and api != self._api
        self._api = api
        if changed:
            self.report()

    def report(self) -> None:
        """Send one report now (nothing while the API is unknown)."""
        if self._api is None:
            return
        self._refresh()
        snapshot = self._registry.snapshot(str(self._actor_id))
        self._post(self._api, MetricsReport(self._actor_id, snapshot))

    async def run(self) -> None:
        """Report every ``interval_s`` until cancelled."""
        while True:
            await self._sleep(self._interval_s)
            self.report()
