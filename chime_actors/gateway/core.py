"""The gateway process's core: the WebSocket server and its lightweight actors.

``GatewayActor`` (a Thespian process actor) hosts one ``GatewayCore`` on a uvloop
loop. Every gateway listens on the same chat port with ``SO_REUSEPORT``: the
kernel spreads new connections over the gateways, and when one dies the others
keep accepting. The accept loop (websockets' server) creates a ``ConnectionActor``
per socket; channels with local subscribers get a ``ChannelActor``.

Messages in (from Thespian, on the loop thread): ``Wiring`` (peer addresses),
``PersistResult`` (acks for this gateway's sends), ``Deliveries`` (every durable
message of every channel, once per gateway: from this host's persisters, and from
other hosts through the Redis bridge), ``Resync`` (the bridge's subscription was
down: catch up from storage), ``Drain`` (shutdown). Out to the bridge:
``Interest`` when a channel gains its first or loses its last local subscriber.
Presence and typing (``chime_actors.presence``) go to and from the other
gateways, the bridge and the API on lanes; the ``PresenceHub`` does all of it,
this core only hooks it to joins, activations and leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import websockets
from msgspec.structs import replace
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

from chime_actors.auth import Authenticator, bearer_token
from chime_actors.bus.messages import Interest, InterestSnapshot, Resync
from chime_actors.config import BusBackend, Config
from chime_actors.errors import StoreError
from chime_actors.gateway.admission import Admission
from chime_actors.gateway.channel_actor import (
    CatchUp,
    ChannelActor,
    ChannelStats,
    InjectFault,
    JoinResult,
    Leave,
    Publish,
)
from chime_actors.gateway.connection_actor import ConnectionActor, Member
from chime_actors.gateway.keepalive import Keepalive
from chime_actors.gateway.outbox import FlushQueue
from chime_actors.gateway.rate_limit import MessageRate
from chime_actors.gateway.ws_connection import GatewayConnection
from chime_actors.handlers.before_store import BeforeStore
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.link import PersistLink
from chime_actors.persister.redis_ids import MULTI_HOST_HOLD_MAX_S
from chime_actors.persister.sequencer import owner_index
from chime_actors.presence import unread
from chime_actors.presence.hub import PRESENCE_MESSAGES, PresenceHub
from chime_actors.protocol.codes import CloseCode
from chime_actors.records import (
    ChangeRecord,
    ChannelEvent,
    Deliveries,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.loop_lag import LoopLag
from chime_actors.runtime.messages import ActorId, Drain, Drained, Wiring
from chime_actors.runtime.metrics_reporter import MetricsReporter
from chime_actors.storage.store import HistoryPage, MessageStore, annotated_history

log = get_logger(__name__)

MAINTENANCE_INTERVAL_S = 0.5
DRAIN_ACK_TIMEOUT_S = 10.0


def bind_chat_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket with ``SO_REUSEPORT``, shared by every gateway."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class GatewayCore:
    """One gateway: connections, channels, links to the persisters."""

    def __init__(
        self,
        actor_id: ActorId,
        config: Config,
        chat_port: int,
        post: Any,
        supervisor: Any,
        *,
        store: MessageStore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """A gateway; nothing listens until :meth:`start`.

        Args:
            actor_id: who we are.
            config: the server's configuration.
            chat_port: the chat port every gateway shares (``SO_REUSEPORT``).
            post: how to send to other actors.
            supervisor: the supervisor's address.
            store: the storage channels and history read (unopened: :meth:`start`
                opens it).
            clock: monotonic seconds, for rate limits, admission and the persist links.
        """
        self.actor_id = actor_id
        self.config = config
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self.fault_injection = config.testing.fault_injection
        self.authenticator = Authenticator(config.auth)
        self.message_rate = MessageRate(config.limits.messages_per_10s, clock)
        # Every connection's outbox is flushed from this one queue (one callback a turn).
        self.flush_queue = FlushQueue(
            observe=self.metrics.delivery_step.labels(step="flush").observe
        )
        self._observe_fanout = self.metrics.delivery_step.labels(step="fanout").observe
        self._loop_lag = LoopLag(self.metrics.loop_lag.observe)
        self._chat_port = chat_port
        self._post = post
        self._supervisor = supervisor
        self._reporter = MetricsReporter(actor_id, self.registry, post, self._refresh_gauges)
        self._redis_bridge: Any = None
        self._multi_host = config.bus.backend is BusBackend.REDIS
        self.presence = PresenceHub(actor_id.index, post, multi_host=self._multi_host)
        self._store = store
        self._links = [
            PersistLink(
                actor_id.index,
                post,
                ack_timeout_s=config.chat.ack_timeout_ms / 1000,
                clock=clock,
            )
            for _ in range(config.persisters)
        ]
        # before_store handlers judge each send before its link sees it (None: none
        # configured, and the send path is as without handlers).
        self._before_store = BeforeStore.from_config(
            config, self._submit_to_persister, self.registry
        )
        self._channels: dict[str, ChannelActor] = {}
        self._channel_stats = ChannelStats()
        self._gap_fills_reported = 0
        self._caught_up_reported = 0
        self._connections: set[ConnectionActor] = set()
        self._server: Server | None = None
        # The one keepalive timer of every connection (made on the loop, in start()).
        self._keepalive: Keepalive | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        # SO_REUSEPORT spreads accepts evenly, so each gateway holds its share
        # of the server's cap (docs/operations.md, "Limits").
        share = -(-config.chat.max_connections // max(1, config.workers))
        self._admission = Admission(
            replace(config, chat=replace(config.chat, max_connections=share)),
            open_connections=lambda: len(self._connections),
            clock=clock,
        )

    # --- ActorCore ----------------------------------------------------------------

    async def start(self) -> int:
        """Open storage and start accepting on the shared chat port."""
        await self._store.open()
        chat = self.config.chat
        sock = bind_chat_socket(chat.host, self._chat_port)
        loop = asyncio.get_running_loop()
        # One sweep pings every idle connection every chat.heartbeat_ms and closes
        # those that miss two pongs (gateway/keepalive.py); websockets' own
        # keepalive (a task and a future per connection) is off.
        self._keepalive = Keepalive(chat.heartbeat_ms / 1000, loop.time)
        self._server = await websockets.serve(
            self._accept,
            sock=sock,
            process_request=self._admit,
            create_connection=GatewayConnection,
            max_size=chat.max_frame_bytes,
            max_queue=16,
            # Per-connection zlib contexts cost ~100 KB each; chat frames are
            # small, so compression is off (see docs/performance.md).
            compression=None,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=5,
        )
        self._loop_lag.start()
        self._tasks = [
            loop.create_task(self._keepalive.run(), name="gateway-keepalive"),
            loop.create_task(self._maintain(), name="gateway-maintenance"),
            loop.create_task(self._reporter.run(), name="gateway-metrics"),
        ]
        port: int = sock.getsockname()[1]
        return port

    def handle(self, message: Any, sender: Any) -> None:
        """Thespian messages, on the loop thread."""
        if isinstance(message, Deliveries):
            self._on_deliveries(message.messages)
        elif isinstance(message, PersistResult):
            for link in self._links:
                if link.owns(message.batch_id):
                    link.on_result(message)
                    break
        elif isinstance(message, PRESENCE_MESSAGES):
            self.presence.handle(message, sender)
        elif isinstance(message, Wiring):
            self._rewire(message)
        elif isinstance(message, Resync):
            for channel_id in message.channels:
                channel = self._channels.get(channel_id)
                if channel is not None:
                    channel.tell(CatchUp())
        elif isinstance(message, Drain):
            asyncio.get_running_loop().create_task(self._drain(sender))
        else:
            log.warning("gateway ignored unknown message", kind=type(message).__name__)

    def _rewire(self, wiring: Wiring) -> None:
        for index, (link, address) in enumerate(zip(self._links, wiring.persisters, strict=False)):
            changed = address is not None and address != link.address
            link.rewire(address)
            if changed:
                # A new persister (after a restart) may follow one that stored
                # messages and died before delivering them.
                self._catch_up_owned_by(index)
        self._reporter.set_api(wiring.api)
        if wiring.redis_bridge is not None and wiring.redis_bridge != self._redis_bridge:
            # A new (or restarted) bridge knows nothing of our channels.
            self._redis_bridge = wiring.redis_bridge
            self._tell_bridge(InterestSnapshot(self.actor_id.index, tuple(sorted(self._channels))))
        self._redis_bridge = wiring.redis_bridge
        self.presence.rewire(wiring)

    def _catch_up_owned_by(self, index: int) -> None:
        """A persister was replaced: its channels may have stored-but-undelivered tails."""
        for channel_id, channel in self._channels.items():
            if owner_index(channel_id, len(self._links)) == index:
                channel.tell(CatchUp())

    async def stop(self) -> None:
        """Close everything (after ``Drain``, or when the process is told to exit)."""
        for task in self._tasks:
            task.cancel()
        self._loop_lag.stop()
        self.presence.stop()
        if self._server is not None:
            self._server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 10)
        for channel in list(self._channels.values()):
            await channel.stop()
        if self._before_store is not None:
            await self._before_store.close()
        for link in self._links:
            link.fail_all("gateway stopped")
        await self._store.close()

    # --- GatewayServices (for ConnectionActor) ------------------------------------

    def submit_send(self, record: SendRecord | ChangeRecord) -> asyncio.Future[SendOutcome]:
        """Route a send (or a change) to the persister that sequences its channel.

        Sends and edits pass the before_store handlers first (handlers/before_store.py).
        """
        if self._before_store is not None:
            return self._before_store.submit(record)
        return self._submit_to_persister(record)

    def _submit_to_persister(
        self, record: SendRecord | ChangeRecord
    ) -> asyncio.Future[SendOutcome]:
        link = self._links[owner_index(record.channel_id, len(self._links))]
        return link.submit(record)

    async def join_channel(
        self,
        channel_id: str,
        subscriber: Member,
        resume_after: str | None,
        *,
        deferred: bool = False,
    ) -> JoinResult:
        """Subscribe ``subscriber`` to the channel's local fan-out (see ``Join``).

        Its presence counts from its activation (``activate_channel``, or at once
        when not ``deferred``) until it leaves.
        """
        channel = self._channels.get(channel_id)
        if channel is None or channel.stopped:
            channel = ChannelActor(
                channel_id,
                self._store,
                max_resume_messages=self.config.chat.max_resume_messages,
                on_stopped=self._channel_stopped,
                stats=self._channel_stats,
                observe_step=self._observe_fanout,
                hold_max_s=MULTI_HOST_HOLD_MAX_S if self._multi_host else 0.0,
            )
            self._channels[channel_id] = channel
            channel.start()
            self._tell_bridge(Interest(self.actor_id.index, channel_id, subscribed=True))
        self.presence.register(channel_id, subscriber)
        result = await channel.join(subscriber, resume_after, deferred=deferred)
        if not deferred:
            self.presence.activate(channel_id, subscriber.connection_id)
        return result

    async def activate_channel(self, channel_id: str, connection_id: str) -> JoinResult:
        """Start delivery to a subscriber that joined ``deferred``."""
        channel = self._channels.get(channel_id)
        if channel is None:
            raise StoreError(f"channel {channel_id} is not joined")
        result = await channel.activate(connection_id)
        # After its ``connected``/``subscribed``: presence_changed never precedes it.
        self.presence.activate(channel_id, connection_id)
        return result

    def leave_channel(self, channel_id: str, connection_id: str) -> None:
        """Unsubscribe; the channel actor stops itself when its last member leaves."""
        self.presence.leave(channel_id, connection_id)
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.tell(Leave(connection_id))

    def inject_channel_fault(self, channel_id: str) -> None:
        """Fault injection for tests: make the channel's handler raise once."""
        channel = self._channels.get(channel_id)
        if channel is not None:
            channel.tell(InjectFault())

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        """Read a page of stored messages, with their reactions and reply counts."""
        return await annotated_history(
            self._store, channel_id, before=before, after=after, limit=limit, thread_id=thread_id
        )

    def typing(self, channel_id: str, user_id: str) -> None:
        """A subscriber typed: throttled, then fanned out (``PresenceHub.typing``)."""
        self.presence.typing(channel_id, user_id)

    async def presence_online(self, channel_id: str) -> list[str]:
        """Who is online in the channel (raises ``PresenceUnavailable``)."""
        return await self.presence.online(channel_id)

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        """Store a read marker (``presence.unread.mark_read``)."""
        await unread.mark_read(self._store, channel_id, user_id, message_id)

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        """Unread counts for ``connected`` (``presence.unread.unread_counts``)."""
        return await unread.unread_counts(self._store, user_id, channel_ids)

    # --- internals ----------------------------------------------------------------

    def _admit(self, websocket: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request``: refuse before the upgrade (admission.py)."""
        peer = websocket.remote_address
        refusal = self._admission.check(str(peer[0]) if peer else "", request.headers.get_all)
        if refusal is None:
            return None
        self.metrics.connects_refused.labels(status=str(refusal.status)).inc()
        response = websocket.respond(refusal.status, refusal.reason + "\n")
        if refusal.retry_after_s is not None:
            response.headers["Retry-After"] = str(refusal.retry_after_s)
        return response

    async def _accept(self, websocket: ServerConnection) -> None:
        """The accept loop's handler: one ConnectionActor per socket."""
        if self._draining:
            await websocket.close(CloseCode.GOING_AWAY, "server shutting down")
            return
        query = parse_qs(urlsplit(websocket.request.path).query) if websocket.request else {}
        user_ids = query.get("userId")
        tokens = query.get("token")
        token = tokens[0] if tokens else None
        if token is None and websocket.request is not None:
            token = bearer_token(
                {"authorization": websocket.request.headers.get("Authorization", "")}
            )
        # Always ours: websockets.serve(create_connection=GatewayConnection).
        assert isinstance(websocket, GatewayConnection) and self._keepalive is not None
        # Read: the headers (and the token) need not stay for the connection's life.
        websocket.release_handshake()
        actor = ConnectionActor(
            websocket,
            self,
            query_user_id=user_ids[0] if user_ids else None,
            transport_token=token,
        )
        self._connections.add(actor)
        self._keepalive.add(websocket)
        try:
            await actor.run()
        finally:
            self._keepalive.discard(websocket)
            self._connections.discard(actor)

    def _channel_stopped(self, channel_id: str) -> None:
        channel = self._channels.get(channel_id)
        if channel is not None and channel.stopped:
            del self._channels[channel_id]
            self._tell_bridge(Interest(self.actor_id.index, channel_id, subscribed=False))

    def _tell_bridge(self, message: Any) -> None:
        if self._redis_bridge is not None:
            self._post(self._redis_bridge, message)

    def _on_deliveries(self, messages: tuple[ChannelEvent, ...]) -> None:
        by_channel: dict[str, list[ChannelEvent]] = defaultdict(list)
        for message in messages:
            if message.channel_id in self._channels:
                by_channel[message.channel_id].append(message)
        for channel_id, channel_messages in by_channel.items():
            self._channels[channel_id].tell(Publish(tuple(channel_messages)))

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            for link in self._links:
                link.expire()

    def _refresh_gauges(self) -> None:
        queue_depth = self.metrics.queue_depth
        queue_depth.labels(queue="persist_link").set(sum(link.pending for link in self._links))
        queue_depth.labels(queue="channels").set(len(self._channels))
        queue_depth.labels(queue="held_connections").set(self.flush_queue.held)
        stats = self._channel_stats
        self.metrics.gap_fills.inc(stats.gap_filled - self._gap_fills_reported)
        self._gap_fills_reported = stats.gap_filled
        self.metrics.caught_up.inc(stats.caught_up - self._caught_up_reported)
        self._caught_up_reported = stats.caught_up

    async def _drain(self, reply_to: Any) -> None:
        """Stop accepting, settle owed acks, close every client with 1001."""
        self._draining = True
        if self._server is not None:
            self._server.close(close_connections=False)
        deadline = time.monotonic() + DRAIN_ACK_TIMEOUT_S
        while time.monotonic() < deadline and any(c.owed_acks for c in self._connections):
            await asyncio.sleep(0.02)
        for connection in list(self._connections):
            connection.close_after_queued(CloseCode.GOING_AWAY, "server shutting down")
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 10)
        log.info("gateway drained", actor=str(self.actor_id))
        self._post(reply_to, Drained(self.actor_id))
