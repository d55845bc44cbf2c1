"""The ``RedisBridgeActor``'s core: this host's one path to the other hosts.

* Out: persisters send it every ``Deliveries`` they produce; it publishes them, one
  publication per channel per batch, pipelined, on the publish connection.
* In: it subscribes (on its own connection) to ``channel:<id>`` for exactly the
  channels that have subscribers in some local gateway (gateways report
  ``Interest``), and forwards what other hosts publish to the local gateways as
  ``Deliveries`` (what its own host published is skipped: the gateways had it from
  the persister).
* Faults: a lost connection is retried with exponential backoff and jitter; after
  a reconnect it subscribes to everything again and sends ``Resync`` so gateways
  read from storage whatever was published while it was away. Nothing acked is
  lost: a message is stored before it is published.

Bounded: the publish queue holds at most ``MAX_PUBLISH_BATCHES``; past it a batch
is dropped (counted), which remote gateways repair by gap fill.

Presence and typing across hosts (``presence.redis_presence.HostPresence``): the
bridge subscribes to each wanted channel's ``presence:<id>`` topic beside its
message topic, reads the channel's presence from Redis right after subscribing,
and hands presence events to ``HostPresence``; everything else of it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from chime_actors.bus.codec import channel_of, decode_publication, encode_publication, topic_for
from chime_actors.bus.messages import Interest, InterestSnapshot, Resync
from chime_actors.config import Config, RedisConfig
from chime_actors.errors import BusError
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.presence.codec import is_presence_topic, presence_topic
from chime_actors.presence.redis_presence import BRIDGE_MESSAGES, HostPresence
from chime_actors.records import ChannelEvent, Deliveries
from chime_actors.runtime.messages import ActorId, Wiring
from chime_actors.runtime.metrics_reporter import MetricsReporter

log = get_logger(__name__)

MAX_PUBLISH_BATCHES = 1024
FIRST_BACKOFF_S = 0.1
# Capped at 2 s: after an outage the subscription (and so cross-host fan-out) is
# back at most ~2 s after Redis is (measured 4.8 s with a 5 s cap, after a 5 s
# outage, tests/integration/test_backend_faults.py); a refused connect is cheap.
MAX_BACKOFF_S = 2.0
POLL_S = 0.05
REDIS_TIMEOUT_S = 5.0


def redis_client(config: RedisConfig) -> redis_asyncio.Redis:
    """A Redis client for ``config`` with timeouts on every operation and no retries.

    redis-py retries a failed command by default (10 times, backing off up to 1 s:
    about 5 s in all) and, on a Pub/Sub connection, silently reconnects and
    resubscribes. Both hide an outage from Chime: a persister's id reservation
    would block past the gateway's ack timeout and then succeed once Redis is back,
    storing sends that had already been answered ``unavailable``; and the bridge
    would never learn that its subscription was down, so it would not ``Resync``.
    So a command fails at once and the callers decide: the persister answers
    ``unavailable``, the bridge reconnects with its own backoff and resyncs.
    """
    return redis_asyncio.Redis(
        host=config.host,
        port=config.port,
        username=config.username,
        password=config.password,
        db=config.db,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def topics(channels: Any) -> list[str]:
    """The topics of ``channels``: messages and presence, for each."""
    return [t for c in sorted(channels) for t in (topic_for(c), presence_topic(c))]


def backoff_delays() -> Any:
    """Exponential backoff with jitter: 0.1 s doubling to 2 s."""
    delay = FIRST_BACKOFF_S
    while True:
        yield random.uniform(delay / 2, delay)
        delay = min(MAX_BACKOFF_S, delay * 2)


class RedisBridgeCore:
    """Publishes this host's messages and subscribes to other hosts' for it."""

    def __init__(
        self,
        actor_id: ActorId,
        config: Config,
        post: Any,
        *,
        connect: Callable[[], redis_asyncio.Redis],
    ) -> None:
        """A bridge; nothing connects until :meth:`start`.

        Args:
            actor_id: who we are.
            config: the server's configuration.
            post: how to send to other actors.
            connect: makes a new Redis client (``redis_client``), one per
                connection and reconnection, of the bridge and of its presence.
        """
        self.actor_id = actor_id
        self.origin = uuid.uuid4().hex
        self.registry = MetricsRegistry()
        self.metrics = ChimeMetrics.register(self.registry)
        self._connect = connect
        self._post = post
        self._gateways: tuple[Any, ...] = ()
        self._reporter = MetricsReporter(actor_id, self.registry, post, self._refresh_gauges)
        self._interest: dict[int, set[str]] = defaultdict(set)
        self._publish_queue: asyncio.Queue[Deliveries] = asyncio.Queue(MAX_PUBLISH_BATCHES)
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False
        self.presence = HostPresence(self.origin, config, post, self.metrics, connect)

    # --- ActorCore ------------------------------------------------------------------

    async def start(self) -> int:
        """Start the publish and subscribe loops (they connect, and reconnect, alone)."""
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_loop(), name="redis-publish"),
            loop.create_task(self._subscribe_loop(), name="redis-subscribe"),
            loop.create_task(self._reporter.run(), name="redis-metrics"),
        ]
        self.presence.start()
        return 0

    def handle(self, message: Any, sender: Any) -> None:
        """Thespian messages, on the loop thread."""
        if isinstance(message, Deliveries):
            try:
                self._publish_queue.put_nowait(message)
            except asyncio.QueueFull:
                self.metrics.errors.labels(code="bus_overflow").inc()
                log.warning("publish queue full; batch dropped", messages=len(message.messages))
        elif isinstance(message, Interest):
            channels = self._interest[message.gateway_index]
            if message.subscribed:
                channels.add(message.channel_id)
            else:
                channels.discard(message.channel_id)
        elif isinstance(message, InterestSnapshot):
            self._interest[message.gateway_index] = set(message.channels)
        elif isinstance(message, BRIDGE_MESSAGES):
            self.presence.handle(message, sender)
        elif isinstance(message, Wiring):
            self._gateways = tuple(g for g in message.gateways if g is not None)
            self._reporter.set_api(message.api)
            self.presence.rewire(message)
        else:
            log.warning("bridge ignored unknown message", kind=type(message).__name__)

    async def stop(self) -> None:
        """Stop both loops and close the connections."""
        await self.presence.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- internals ------------------------------------------------------------------

    def wanted_channels(self) -> set[str]:
        """Channels some local gateway has subscribers in."""
        wanted: set[str] = set()
        for channels in self._interest.values():
            wanted |= channels
        return wanted

    async def _publish_loop(self) -> None:
        client = self._connect()
        delays = backoff_delays()
        try:
            while True:
                batch = await self._publish_queue.get()
                by_channel: dict[str, list[ChannelEvent]] = defaultdict(list)
                for message in batch.messages:
                    by_channel[message.channel_id].append(message)
                while True:
                    try:
                        async with client.pipeline(transaction=False) as pipe:
                            for channel_id, messages in by_channel.items():
                                pipe.publish(
                                    topic_for(channel_id), encode_publication(self.origin, messages)
                                )
                            await pipe.execute()
                        delays = backoff_delays()
                        break
                    except (RedisError, OSError) as exc:
                        self.metrics.errors.labels(code="bus_unavailable").inc()
                        delay = next(delays)
                        log.warning("redis publish failed; retrying", error=str(exc), delayS=delay)
                        await asyncio.sleep(delay)
        finally:
            await client.aclose()

    async def _subscribe_loop(self) -> None:
        delays = backoff_delays()
        first = True
        while True:
            client = self._connect()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            subscribed: set[str] = set()
            try:
                await client.ping()
                # A placeholder keeps the connection in subscribe mode even before
                # any channel has local subscribers.
                await pubsub.subscribe("chime:bridge:" + self.origin)
                self.connected = True
                wanted = self.wanted_channels()
                if wanted:
                    await pubsub.subscribe(*topics(wanted))
                    subscribed = set(wanted)
                    # Presence published while we were away: read it whole.
                    await self.presence.load(subscribed)
                if not first:
                    log.info("redis subscription restored", channels=len(subscribed))
                if subscribed:
                    # Whatever was published before this subscription existed
                    # (Redis was down, or a gateway joined before we connected)
                    # is read from storage.
                    self._send_to_gateways(Resync(tuple(sorted(subscribed))))
                first = False
                delays = backoff_delays()
                await self._receive(pubsub, subscribed)
            except (RedisError, OSError) as exc:
                self.connected = False
                self.metrics.errors.labels(code="bus_unavailable").inc()
                delay = next(delays)
                log.warning("redis subscription lost; reconnecting", error=str(exc), delayS=delay)
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def _receive(self, pubsub: Any, subscribed: set[str]) -> None:
        while True:
            wanted = self.wanted_channels()
            new = wanted - subscribed
            gone = subscribed - wanted
            if new:
                await pubsub.subscribe(*topics(new))
                subscribed |= new
                await self.presence.load(new)
                # Anything published between the gateway's join and this
                # subscription is caught up from storage.
                self._send_to_gateways(Resync(tuple(sorted(new))))
            if gone:
                await pubsub.unsubscribe(*topics(gone))
                subscribed -= gone
                self.presence.forget(gone)
            batch: list[ChannelEvent] = []
            message = await pubsub.get_message(timeout=POLL_S)
            while message is not None:
                if message.get("type") == "message":
                    self._collect(message, batch)
                if len(batch) >= 1000:
                    break
                message = await pubsub.get_message(timeout=0)
            if batch:
                self._send_to_gateways(Deliveries(tuple(batch)))

    def _collect(self, message: dict[str, Any], batch: list[ChannelEvent]) -> None:
        if is_presence_topic(message["channel"]):
            self.presence.on_publication(message["channel"], message["data"])
            return
        try:
            channel_of(message["channel"])
            origin, messages = decode_publication(message["data"])
        except BusError as exc:
            self.metrics.errors.labels(code="bus_bad_payload").inc()
            log.warning("ignored a malformed publication", error=str(exc))
            return
        if origin != self.origin:
            batch.extend(messages)

    def _send_to_gateways(self, message: Any) -> None:
        for gateway in self._gateways:
            self._post(gateway, message)

    def _refresh_gauges(self) -> None:
        self.metrics.queue_depth.labels(queue="redis_publish").set(self._publish_queue.qsize())
