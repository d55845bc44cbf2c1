"""The API process's core: health, readiness, metrics and REST history over HTTP.

Every other process actor sends a ``MetricsReport`` here once a second; the latest
report of each is both its metrics and its heartbeat: ``/readyz`` is ready only
when every expected actor reported within ``STALE_AFTER_S`` and storage answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from chime_actors.actors.messages import ActorId, MetricsReport, RestartNotice, Wiring
from chime_actors.api.exposition import exposition_registry, render
from chime_actors.api.http_server import HttpServer
from chime_actors.api.routes import Readiness, make_handler
from chime_actors.api.web import ClientConfig, WebClient
from chime_actors.auth import Authenticator, bearer_token
from chime_actors.config import AuthMode, BusBackend, Config
from chime_actors.errors import ProtocolError, StoreError
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry, MetricsSnapshot
from chime_actors.storage.factory import make_store
from chime_actors.storage.store import HistoryPage

log = get_logger(__name__)

STALE_AFTER_S = 3.0
PING_TIMEOUT_S = 2.0


class ApiCore:
    """Serves the HTTP API; implements ``routes.ApiBackend``."""

    def __init__(
        self, actor_id: ActorId, config: Config, api_port: int, chat_port: int = 0
    ) -> None:
        """Prepare the API; nothing listens until :meth:`start`.

        Args:
            actor_id: who we are.
            config: the server's configuration.
            api_port: the port to bind (0: ``api.port``; on a restart, the first one's).
            chat_port: the chat port actually bound (0: ``chat.port``), for the web page.
        """
        self.actor_id = actor_id
        self._config = config
        self._port = api_port or config.api.port
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._store = make_store(config)
        self._auth = Authenticator(config.auth)
        web = WebClient(
            ClientConfig(
                auth_mode=config.auth.mode.value,
                chat_port=chat_port or config.chat.port,
                max_content_chars=config.chat.max_content_chars,
            )
        )
        self._server = HttpServer(make_handler(self, web))
        self._reports: dict[ActorId, tuple[float, MetricsReport]] = {}
        self._expected: set[str] = set()
        self._exposition = exposition_registry(self._snapshots)

    async def start(self) -> int:
        """Open storage (read side) and bind the API port."""
        await self._store.open()
        await self._server.start(self._config.api.host, self._port)
        return self._server.port

    def handle(self, message: Any, sender: Any) -> None:
        """Thespian messages, on the loop thread."""
        if isinstance(message, MetricsReport):
            self._reports[message.actor_id] = (time.monotonic(), message)
        elif isinstance(message, RestartNotice):
            self.metrics.actor_restarts.labels(kind=message.actor_id.kind.value).inc()
        elif isinstance(message, Wiring):
            expected = {f"gateway {i + 1}" for i in range(len(message.gateways))}
            expected |= {f"persister {i + 1}" for i in range(len(message.persisters))}
            if self._config.bus.backend is BusBackend.REDIS:
                expected.add("redis-bridge")
            self._expected = expected

    async def stop(self) -> None:
        """Close the server and storage."""
        await self._server.close()
        await self._store.close()

    # --- ApiBackend -------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        """Ready when storage answers and every actor reported recently."""
        checks: dict[str, bool] = {}
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT_S)
            checks["storage"] = True
        except (StoreError, TimeoutError):
            checks["storage"] = False
        now = time.monotonic()
        fresh = {
            str(actor_id)
            for actor_id, (seen, _) in self._reports.items()
            if now - seen <= STALE_AFTER_S
        }
        for name in sorted(self._expected):
            checks[name] = name in fresh
        checks["actors wired"] = bool(self._expected)
        return Readiness(ready=all(checks.values()), checks=checks)

    def metrics_text(self) -> str:
        """Every process's latest metrics plus our own, in Prometheus text format."""
        return render(self._exposition)

    def _snapshots(self) -> list[MetricsSnapshot]:
        snapshots = [report.snapshot for _, report in self._reports.values()]
        snapshots.append(self.registry.snapshot(str(self.actor_id)))
        return snapshots

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        """A page of stored messages (REST)."""
        return await self._store.history(
            channel_id, before=before, after=after, limit=limit, thread_id=thread_id
        )

    def authorize(self, headers: Mapping[str, str], channel_id: str) -> str | None:
        """Insecure mode allows everyone; jwt mode needs a valid Bearer token
        whose ``channels`` claim grants ``channel_id``."""
        if self._auth.mode is AuthMode.INSECURE:
            return None
        token = bearer_token(headers)
        if token is None:
            return "unauthorized"
        try:
            identity = self._auth.verify(token)
        except ProtocolError as exc:
            return exc.code
        return None if identity.may_access(channel_id) else "forbidden"
