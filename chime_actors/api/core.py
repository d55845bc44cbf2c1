"""The API process's core: health, readiness, metrics and REST over HTTP.

Every other process actor sends a ``MetricsReport`` here once a second; the latest
report of each is both its metrics and its heartbeat: ``/readyz`` is ready only
when every expected actor reported within ``STALE_AFTER_S`` and storage answers.

REST reads go to storage directly. REST changes (edits, deletes, reactions) go
where the WebSocket's go: a ``ChangeRecord`` to the persister that owns the
channel, on a ``PersistLink`` of the API's own (origin ``API_ORIGIN``), so they
are checked, numbered, stored and delivered to every subscriber exactly as if
they came from a gateway. Messages in: ``Wiring`` (the persisters, re-pointed
after a restart like a gateway's links) and ``PersistResult``.

``after_store`` handlers are named too (``"handler <name>": false`` while one is
down, was restarted within the last ``HANDLER_RESTART_WINDOW_S`` (a crash loop), or
is stuck: it has work and confirmed nothing for 30 s) but do not make the
server unready: a handler delays no client's sends or deliveries, and taking the
chat out of a load balancer because a webhook receiver is down would.

Attachments (``api.attachment_routes``) are streamed between the HTTP connection
and the API's own store, chunk by chunk: never through the lanes, which would
copy every byte through a second process for nothing. The persister that owns a
channel checks a send's attachments in its own store (``persister.attachments``).

REST presence counts WebSocket connections only, and those live in the gateways:
the API asks one gateway per request (in turn, over its lane) with a
``PresenceLookup``; every gateway holds the whole host's presence (and with the
Redis bus asks its bridge for the other hosts'). Read markers and unread counts
are read and written in the store directly (``presence.unread``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chime_actors.api.attachment_sweeper import AttachmentSweeper, restamp_s
from chime_actors.api.exposition import exposition_registry, render
from chime_actors.api.http_server import HttpServer
from chime_actors.api.presence_routes import Caller
from chime_actors.api.routes import Readiness, make_handler, streams_body
from chime_actors.api.upload_budget import UploadBudget
from chime_actors.api.web import ClientConfig, WebClient
from chime_actors.auth import Authenticator, Identity, bearer_token
from chime_actors.config import AuthMode, BusBackend, Config
from chime_actors.errors import PresenceUnavailable, ProtocolError, StoreError
from chime_actors.gateway.rate_limit import KeyedBuckets
from chime_actors.handlers.before_store import BeforeStore
from chime_actors.handlers.registry import after_store_indexes
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry, MetricsSnapshot
from chime_actors.persister.link import PersistLink, next_token
from chime_actors.persister.sequencer import owner_index
from chime_actors.presence import unread
from chime_actors.presence.lookups import Lookups
from chime_actors.presence.messages import PresenceLookupResult
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.frames import is_user_id
from chime_actors.records import (
    API_ORIGIN,
    ChangeKind,
    ChangeRecord,
    PersistRecord,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.messages import ActorId, MetricsReport, RestartNotice, Wiring
from chime_actors.storage.attachments import AttachmentStore
from chime_actors.storage.factory import Storage
from chime_actors.storage.store import HistoryPage, annotated_history

log = get_logger(__name__)

STALE_AFTER_S = 3.0
PING_TIMEOUT_S = 2.0
# How often links fail what waited too long (as a gateway's).
MAINTENANCE_INTERVAL_S = 0.5
HANDLER_RESTART_WINDOW_S = 30.0


class ApiCore:
    """Serves the HTTP API; implements ``routes.ApiBackend``."""

    def __init__(
        self,
        actor_id: ActorId,
        config: Config,
        api_port: int,
        chat_port: int = 0,
        *,
        post: Callable[[Any, Any], None] | None = None,
        store: Storage,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare the API; nothing listens until :meth:`start`.

        Args:
            actor_id: who we are.
            config: the server's configuration.
            api_port: the port to bind (0: ``api.port``; on a restart, the first one's).
            chat_port: the chat port actually bound (0: ``chat.port``), for the web page.
            post: how to send to other actors (the router of its ``LoopActor``);
                without it (a core on its own, in tests) REST changes are unavailable.
            store: the storage of REST reads and attachments (unopened: :meth:`start`
                opens it).
            clock: monotonic seconds, for report ages, restarts, rates and link timeouts.
            wall_clock: seconds since the epoch, for the ages of uploads.
        """
        self.actor_id = actor_id
        self._config = config
        self._port = api_port or config.api.port
        self._clock = clock
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._store = store
        self._auth = Authenticator(config.auth)
        web = WebClient(
            ClientConfig(
                auth_mode=config.auth.mode.value,
                chat_port=chat_port or config.chat.port,
                max_content_chars=config.chat.max_content_chars,
                max_attachment_bytes=config.attachments.max_bytes,
            )
        )
        # Uploads are streamed to storage, never read whole (api.attachment_routes).
        self._server = HttpServer(make_handler(self, web), streams=streams_body)
        self._reports: dict[ActorId, tuple[float, MetricsReport]] = {}
        self._expected: set[str] = set()
        self._restarted_at: dict[str, float] = {}
        # Actor name ("handler 1") -> handler name, of the after_store handlers.
        self._handlers = {
            f"handler {n + 1}": config.handlers[i].name
            for n, i in enumerate(after_store_indexes(config))
        }
        self._exposition = exposition_registry(self._snapshots)
        # Without ``post`` (a core on its own, in tests) changes are unavailable.
        self._links: list[PersistLink] = []
        if post is not None:
            timeout_s = config.chat.ack_timeout_ms / 1000
            self._links = [
                PersistLink(API_ORIGIN, post, ack_timeout_s=timeout_s, clock=clock)
                for _ in range(config.persisters)
            ]
        # REST edits pass the before_store handlers, as a gateway's do.
        self._before_store = BeforeStore.from_config(
            config, self._submit_to_persister, self.registry
        )
        # limits.messages_per_10s per user, as a gateway counts them.
        self._rate = KeyedBuckets(config.limits.messages_per_10s, clock)
        self._upload_budget = UploadBudget(config.limits.upload_bytes_per_hour, clock)
        self._maintenance: asyncio.Task[None] | None = None
        ttl_s = config.attachments.unsent_ttl_s
        self._sweeper = (
            AttachmentSweeper(store, ttl_s, wall_clock=wall_clock) if ttl_s > 0 else None
        )
        self._sweeping: asyncio.Task[None] | None = None
        self.max_channels = config.chat.max_channels_per_connection
        self._lookups = Lookups(post or _nowhere)
        self._gateways: tuple[Any, ...] = ()
        self._next_gateway = 0

    async def start(self) -> int:
        """Open storage and bind the API port."""
        await self._store.open()
        await self._server.start(self._config.api.host, self._port)
        self._maintenance = asyncio.get_running_loop().create_task(self._maintain())
        if self._sweeper is not None:
            self._sweeping = asyncio.get_running_loop().create_task(self._sweeper.run())
        return self._server.port

    def handle(self, message: Any, sender: Any) -> None:
        """Thespian (and lane) messages, on the loop thread."""
        if isinstance(message, MetricsReport):
            self._reports[message.actor_id] = (self._clock(), message)
        elif isinstance(message, PersistResult):
            for link in self._links:
                if link.owns(message.batch_id):
                    link.on_result(message)
                    break
        elif isinstance(message, PresenceLookupResult):
            self._lookups.resolve(message)
        elif isinstance(message, RestartNotice):
            self.metrics.actor_restarts.labels(kind=message.actor_id.kind.value).inc()
            self._restarted_at[str(message.actor_id)] = self._clock()
        elif isinstance(message, Wiring):
            expected = {f"gateway {i + 1}" for i in range(len(message.gateways))}
            expected |= {f"persister {i + 1}" for i in range(len(message.persisters))}
            if self._config.bus.backend is BusBackend.REDIS:
                expected.add("redis-bridge")
            self._expected = expected
            for link, address in zip(self._links, message.persisters, strict=False):
                link.rewire(address)
            self._gateways = tuple(g for g in message.gateways if g is not None)

    async def stop(self) -> None:
        """Close the server and storage."""
        if self._maintenance is not None:
            self._maintenance.cancel()
        if self._sweeping is not None:
            self._sweeping.cancel()
            # Awaited: a delete in flight must not outlive the store's close.
            await asyncio.gather(self._sweeping, return_exceptions=True)
        await self._server.close()
        if self._before_store is not None:
            await self._before_store.close()
        for link in self._links:
            link.fail_all("api stopped")
        await self._store.close()

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            for link in self._links:
                link.expire()

    # --- ApiBackend -------------------------------------------------------------------

    async def readiness(self) -> Readiness:
        """Ready when storage answers and every actor reported recently."""
        checks: dict[str, bool] = {}
        try:
            await asyncio.wait_for(self._store.ping(), PING_TIMEOUT_S)
            checks["storage"] = True
        except (StoreError, TimeoutError):
            checks["storage"] = False
        now = self._clock()
        fresh = {
            str(actor_id)
            for actor_id, (seen, _) in self._reports.items()
            if now - seen <= STALE_AFTER_S
        }
        for name in sorted(self._expected):
            checks[name] = name in fresh
        checks["actors wired"] = bool(self._expected)
        ready = all(checks.values())
        for actor, handler in self._handlers.items():
            restarted = now - self._restarted_at.get(actor, -HANDLER_RESTART_WINDOW_S)
            checks[f"handler {handler}"] = (
                actor in fresh
                and restarted >= HANDLER_RESTART_WINDOW_S
                and not self._stuck(actor, handler)
            )
        return Readiness(ready=ready, checks=checks)

    def _stuck(self, actor: str, handler: str) -> bool:
        for actor_id, (_, report) in self._reports.items():
            if str(actor_id) == actor:
                return report.snapshot.value("chime_handler_stuck", handler) == 1
        return False

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
        """A page of stored messages, with reactions and reply counts (REST)."""
        return await annotated_history(
            self._store, channel_id, before=before, after=after, limit=limit, thread_id=thread_id
        )

    @property
    def max_content_chars(self) -> int:
        """``chat.max_content_chars``."""
        return self._config.chat.max_content_chars

    def writer(self, headers: Mapping[str, str], channel_id: str) -> str:
        """The user of a change: the Bearer token's, or (insecure) ``X-Chime-User``."""
        if self._auth.mode is AuthMode.INSECURE:
            user_id = headers.get("x-chime-user", "")
            if not is_user_id(user_id):
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    "an X-Chime-User header (1-64 of A-Z a-z 0-9 _ . @ : -) names the user",
                )
            return user_id
        token = bearer_token(headers)
        if token is None:
            raise ProtocolError(ErrorCode.UNAUTHORIZED, "a Bearer token is required")
        identity = self._auth.verify(token)
        if not identity.may_access(channel_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, "this token does not grant the channel")
        return identity.user_id

    def take_rate(self, user_id: str) -> float | None:
        """One change of ``user_id`` against ``limits.messages_per_10s``."""
        return self._rate.take(user_id)

    async def send(self, record: SendRecord) -> SendOutcome:
        """A send over REST: the same path as a gateway's (before_store, persister)."""
        return await self._submit(record)

    async def change(
        self,
        channel_id: str,
        message_id: str,
        user_id: str,
        kind: ChangeKind,
        *,
        content: str | None = None,
        emoji: str | None = None,
    ) -> SendOutcome:
        """A change, through the channel's persister (see the module docstring)."""
        record = ChangeRecord(
            token=next_token(),
            channel_id=channel_id,
            message_id=message_id,
            user_id=user_id,
            kind=kind,
            content=content,
            emoji=emoji,
        )
        return await self._submit(record)

    async def _submit(self, record: PersistRecord) -> SendOutcome:
        """Through the before_store handlers (sends and edits are judged as on a
        gateway), then to the channel's persister."""
        if not self._links:
            return SendOutcome(record.token, error_code=ErrorCode.UNAVAILABLE)
        if self._before_store is not None:
            return await self._before_store.submit(record)
        return await self._submit_to_persister(record)

    def _submit_to_persister(self, record: PersistRecord) -> asyncio.Future[SendOutcome]:
        link = self._links[owner_index(record.channel_id, len(self._links))]
        return link.submit(record)

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

    # --- AttachmentBackend --------------------------------------------------------------

    @property
    def attachments(self) -> AttachmentStore:
        """The store the API opened: uploads and downloads go straight to it."""
        return self._store

    @property
    def max_attachment_bytes(self) -> int:
        """``attachments.max_bytes``."""
        return self._config.attachments.max_bytes

    @property
    def upload_budget(self) -> UploadBudget:
        """``limits.upload_bytes_per_hour``, per user on this host."""
        return self._upload_budget

    @property
    def upload_restamp_s(self) -> float | None:
        """``attachment_sweeper.restamp_s`` of ``attachments.unsent_ttl_s``."""
        return restamp_s(self._config.attachments.unsent_ttl_s)

    # --- PresenceBackend ----------------------------------------------------------------

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """The token's ``sub`` (jwt mode) or ``X-Chime-User`` (insecure mode)."""
        if self._auth.mode is AuthMode.INSECURE:
            user = headers.get("x-chime-user") or None
            if user is not None and not is_user_id(user):
                # As for REST changes (``writer``): a header that names nobody.
                raise ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    "an X-Chime-User header (1-64 of A-Z a-z 0-9 _ . @ : -) names the user",
                )
            return Caller(user, Identity(user or ""))
        token = bearer_token(headers)
        if token is None:
            raise ProtocolError("unauthorized", "request not authorized: no Bearer token")
        identity = self._auth.verify(token)
        return Caller(identity.user_id, identity)

    async def presence_online(self, channel_id: str) -> list[str]:
        """Ask a gateway (each request the next one) who is online in the channel."""
        if not self._gateways:
            raise PresenceUnavailable("no gateway is wired")
        gateway = self._gateways[self._next_gateway % len(self._gateways)]
        self._next_gateway += 1
        return list(await self._lookups.ask(gateway, channel_id))

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        """Store a read marker (``presence.unread.mark_read``)."""
        await unread.mark_read(self._store, channel_id, user_id, message_id)

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        """Unread counts (``presence.unread.unread_counts``)."""
        return await unread.unread_counts(self._store, user_id, channel_ids)


def _nowhere(address: Any, message: Any) -> None:
    """The ``post`` of an API core that was given none (unit tests): drop it."""
