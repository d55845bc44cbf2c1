"""``HostPresence``: a host's presence on the Redis bus (inside the Redis bridge).

Out: the bridge replicates every local gateway's presence (``GatewayReplicas``,
the same snapshots and deltas the gateways send each other) and so knows the
*host's* presence: a user is online here while any local gateway holds them.
Each change of that (first gateway in, last out) is written to Redis and
published, one ``MULTI`` per batch::

    HSET chime:online:<channel> <host>|<user> <seq>     (HDEL when offline)
    SADD chime:host-channels:<host> <channel>           (what to reap when it dies)
    HSET chime:host-seq <host> <seq>
    PUBLISH presence:<channel> {"origin", "seq", "kind": "presence", ...}

Typing is only published. In: what other hosts publish on the presence topics of
the channels this host has subscribers in (the bridge subscribes to them with
the message topics) goes to the local gateways as ``RemotePresence``,
``RemoteHostState`` and ``TypingEvent``; when a channel is first subscribed its
state is read from Redis (``RemoteChannels``) and the events already in that
read are skipped by their ``seq``.

Liveness: every ``presence.ttl_s / 4`` the bridge sets ``chime:host:<host>`` with
a lifetime of ``ttl_s / 2`` (``chime:hosts`` lists every host), and in the same
script checks the others: a host whose key is gone is dead. Its entries are
reaped from Redis (whoever finds it first), and every bridge that told its
gateways about that host tells them ``HostsGone``: its users are offline within
``ttl_s / 2 + ttl_s / 4`` of its last refresh, inside ``presence.ttl_s``. A host
that finds its *own* key gone (Redis lost it, or the host stalled past the
lifetime) may have been reaped: it writes its whole state again and publishes
it per channel (``state`` events). So does a host whose writes failed for too
long (Redis down): it keeps at most ``MAX_PENDING`` changes, then resyncs.

Lookups (``PresenceLookup`` from a gateway) read a channel's entries of the
other live hosts from Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import RedisError

from chime_actors.config import Config
from chime_actors.errors import BusError
from chime_actors.logs import get_logger
from chime_actors.metrics import ChimeMetrics
from chime_actors.presence.codec import (
    PresenceEvent,
    StateEvent,
    TypingPublication,
    channel_of_presence_topic,
    decode_event,
    encode_event,
    presence_topic,
)
from chime_actors.presence.messages import (
    HostsGone,
    PresenceDelta,
    PresenceLookup,
    PresenceLookupResult,
    PresenceResync,
    PresenceSnapshot,
    RemoteChannels,
    RemoteHostState,
    RemotePresence,
    TypingEvent,
)
from chime_actors.presence.replicas import GatewayReplicas
from chime_actors.presence.table import PresenceChange, PresenceTable
from chime_actors.runtime.messages import Wiring

log = get_logger(__name__)

BRIDGE_MESSAGES = (PresenceSnapshot, PresenceDelta, TypingEvent, PresenceLookup)
"""What ``HostPresence.handle`` takes from the gateways."""

MAX_PENDING = 10_000
"""Changes kept while Redis refuses writes; past it they are dropped for a resync."""

HOSTS_KEY = "chime:hosts"
HOST_SEQ_KEY = "chime:host-seq"
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0


def online_key(channel_id: str) -> str:
    """The hash of a channel's ``<host>|<user>`` entries."""
    return "chime:online:" + channel_id


def alive_key(host: str) -> str:
    """A host's liveness key (a lifetime of ``presence.ttl_s / 2``)."""
    return "chime:host:" + host


def host_channels_key(host: str) -> str:
    """The channels a host has (had) entries in."""
    return "chime:host-channels:" + host


# ARGV: me, lifetime (ms), then the other hosts this bridge knows of.
# Returns {did my key exist, hosts reaped now, known hosts whose key is gone}.
_HEARTBEAT = """
local me = ARGV[1]
local existed = redis.call('EXISTS', 'chime:host:' .. me)
redis.call('SET', 'chime:host:' .. me, '1', 'PX', ARGV[2])
redis.call('SADD', 'chime:hosts', me)
local reaped = {}
for _, h in ipairs(redis.call('SMEMBERS', 'chime:hosts')) do
  if h ~= me and redis.call('EXISTS', 'chime:host:' .. h) == 0 then
    local prefix = h .. '|'
    for _, c in ipairs(redis.call('SMEMBERS', 'chime:host-channels:' .. h)) do
      local key = 'chime:online:' .. c
      for _, f in ipairs(redis.call('HKEYS', key)) do
        if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', key, f) end
      end
    end
    redis.call('DEL', 'chime:host-channels:' .. h)
    redis.call('HDEL', 'chime:host-seq', h)
    redis.call('SREM', 'chime:hosts', h)
    table.insert(reaped, h)
  end
end
local gone = {}
for i = 3, #ARGV do
  if redis.call('EXISTS', 'chime:host:' .. ARGV[i]) == 0 then table.insert(gone, ARGV[i]) end
end
return {existed, reaped, gone}
"""

# ARGV: me, then channels. Returns {host-seq as a flat list, per channel the
# "<host>|<user>" entries of the other hosts that are alive}.
_LOAD = """
local me = ARGV[1]
local alive = {}
local out = {}
for i = 2, #ARGV do
  local entries = {}
  for _, f in ipairs(redis.call('HKEYS', 'chime:online:' .. ARGV[i])) do
    local h = string.match(f, '^([^|]*)|')
    if h and h ~= me then
      if alive[h] == nil then alive[h] = redis.call('EXISTS', 'chime:host:' .. h) end
      if alive[h] == 1 then table.insert(entries, f) end
    end
  end
  table.insert(out, entries)
end
return {redis.call('HGETALL', 'chime:host-seq'), out}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class HostPresence:
    """This host's presence in Redis, and the other hosts' for the local gateways.

    Args:
        host: this bridge's id (``RedisBridgeCore.origin``), new at every start.
        config: ``presence.ttl_s`` and the Redis to use.
        post: ``post(address, message)`` (lanes).
        metrics: counts Redis failures as ``errors{code="presence_unavailable"}``.
        connect: makes a Redis client (``bus.redis_bridge.redis_client``).
    """

    def __init__(
        self,
        host: str,
        config: Config,
        post: Callable[[Any, Any], None],
        metrics: ChimeMetrics,
        connect: Callable[[], Any],
    ) -> None:
        self.host = host
        self._ttl_s = config.presence.ttl_s
        self._post = post
        self._metrics = metrics
        self._connect = connect
        self._table = PresenceTable()
        self._replicas = GatewayReplicas(self._table)
        self._gateways: tuple[Any, ...] = ()
        self._pending: list[tuple[str, str, bool | None]] = []
        self._wake = asyncio.Event()
        self._alive = asyncio.Event()
        self._resync = False
        self._seq = 0
        self._known: set[str] = set()
        # channel -> host -> that host's seq when the channel was read from Redis
        self._read_at: dict[str, dict[str, int]] = {}
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._answering: set[asyncio.Task[None]] = set()

    # --- life -----------------------------------------------------------------------

    def start(self) -> list[asyncio.Task[None]]:
        """Start the heartbeat and the writer (they connect, and reconnect, alone)."""
        self._client = self._connect()
        self._scripts = {
            "heartbeat": self._client.register_script(_HEARTBEAT),
            "load": self._client.register_script(_LOAD),
        }
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._heartbeat_loop(), name="presence-heartbeat"),
            loop.create_task(self._write_loop(), name="presence-writer"),
        ]
        return self._tasks

    async def close(self) -> None:
        """Stop; try (briefly) to write what is pending and to say this host is gone."""
        tasks = [*self._tasks, *self._answering]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is None:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                if self._pending:
                    await self._write(self._pending)
                # The others see this host gone at their next heartbeat.
                await self._client.delete(alive_key(self.host))
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    # --- from the gateways ------------------------------------------------------------

    def rewire(self, wiring: Wiring) -> None:
        """A gateway that died takes its users offline here (and so in Redis)."""
        self._gateways = tuple(g for g in wiring.gateways if g is not None)
        changes, _ = self._replicas.rewire(wiring.gateways, wiring.generation)
        self._queue(changes)

    def handle(self, message: Any, sender: Any) -> None:
        """One of ``BRIDGE_MESSAGES``."""
        if isinstance(message, PresenceDelta):
            changes, resync = self._replicas.on_delta(message)
            self._queue(changes)
            if resync:
                self._post(sender, PresenceResync())
        elif isinstance(message, PresenceSnapshot):
            self._queue(self._replicas.on_snapshot(message))
        elif isinstance(message, TypingEvent):
            self._enqueue((message.channel_id, message.user_id, None))
        elif isinstance(message, PresenceLookup):
            task = asyncio.get_running_loop().create_task(self._answer(message, sender))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    # --- from Redis (called by the bridge's subscription) ---------------------------

    async def load(self, channels: Iterable[str]) -> None:
        """Read the other hosts' state of newly subscribed ``channels`` for the gateways.

        Called right after the subscription to their presence topics, so an
        event published later is received, and one in this read is skipped.

        Raises:
            RedisError: Redis failed (the subscription reconnects and loads again).
        """
        wanted = sorted(set(channels))
        if not wanted:
            return
        seqs, per_channel = await self._run_load(wanted)
        states: list[tuple[str, tuple[tuple[str, str], ...]]] = []
        for channel_id, entries in zip(wanted, per_channel, strict=True):
            self._read_at[channel_id] = seqs
            self._known.update(host for host, _ in entries)
            states.append((channel_id, entries))
        self._to_gateways(RemoteChannels(tuple(states)))

    def forget(self, channels: Iterable[str]) -> None:
        """No local subscriber left: drop the other hosts' state of ``channels``."""
        gone = sorted(set(channels))
        for channel_id in gone:
            self._read_at.pop(channel_id, None)
        if gone:
            self._to_gateways(RemoteChannels(tuple((c, ()) for c in gone)))

    def on_publication(self, topic: Any, data: Any) -> None:
        """An event on a presence topic."""
        try:
            channel_id = channel_of_presence_topic(topic)
            event = decode_event(data)
        except BusError as exc:
            self._metrics.errors.labels(code="bus_bad_payload").inc()
            log.warning("ignored a malformed presence event", error=str(exc))
            return
        if event.origin == self.host:
            return
        if isinstance(event, TypingPublication):
            self._to_gateways(TypingEvent(channel_id, event.user_id))
            return
        if event.seq <= self._read_at.get(channel_id, {}).get(event.origin, 0):
            return  # already in the state read when the channel was subscribed
        self._known.add(event.origin)
        if isinstance(event, PresenceEvent):
            change = (event.origin, channel_id, event.user_id, event.online)
            self._to_gateways(RemotePresence((change,)))
        else:
            self._to_gateways(RemoteHostState(event.origin, channel_id, event.users))

    # --- internals --------------------------------------------------------------------

    def _to_gateways(self, message: Any) -> None:
        for gateway in self._gateways:
            self._post(gateway, message)

    def _queue(self, changes: Iterable[PresenceChange]) -> None:
        for change in changes:
            self._enqueue((change.channel_id, change.user_id, change.online))

    def _enqueue(self, op: tuple[str, str, bool | None]) -> None:
        if self._resync:
            return  # the resync writes the whole state
        if len(self._pending) >= MAX_PENDING:
            log.warning("presence: Redis refused writes too long; will resync the host")
            self._pending.clear()
            self._resync = True
        else:
            self._pending.append(op)
        self._wake.set()

    async def _heartbeat_loop(self) -> None:
        interval = self._ttl_s / 4
        lifetime_ms = max(1, int(self._ttl_s * 1000 / 2))
        beaten = False
        while True:
            try:
                existed, _reaped, gone = await self._scripts["heartbeat"](
                    keys=[], args=[self.host, lifetime_ms, *sorted(self._known)]
                )
                if beaten and not int(existed):
                    # Declared dead meanwhile (and maybe reaped): write it all again.
                    log.warning("presence: this host's liveness key had expired; resyncing")
                    self._pending.clear()
                    self._resync = True
                    self._wake.set()
                beaten = True
                self._alive.set()
                hosts = tuple(sorted(_text(h) for h in gone))
                if hosts:
                    log.info("presence: hosts gone", hosts=list(hosts))
                    self._known.difference_update(hosts)
                    for seqs in self._read_at.values():
                        for host in hosts:
                            seqs.pop(host, None)
                    self._to_gateways(HostsGone(hosts))
            except (RedisError, OSError) as exc:
                self._metrics.errors.labels(code="presence_unavailable").inc()
                log.warning("presence heartbeat failed", error=str(exc))
            await asyncio.sleep(interval)

    async def _write_loop(self) -> None:
        await self._alive.wait()
        delay = FIRST_BACKOFF_S
        while True:
            if not self._pending and not self._resync:
                self._wake.clear()
                await self._wake.wait()
            batch: list[tuple[str, str, bool | None]] = []
            try:
                if self._resync:
                    self._resync = False
                    self._pending.clear()
                    await self._write_state()
                batch, self._pending = self._pending, []
                if batch:
                    await self._write(batch)
                delay = FIRST_BACKOFF_S
            except (RedisError, OSError) as exc:
                self._metrics.errors.labels(code="presence_unavailable").inc()
                log.warning("presence write failed; retrying", error=str(exc), delayS=delay)
                if batch and not self._resync:
                    self._pending[:0] = batch
                    if len(self._pending) > MAX_PENDING:
                        self._pending.clear()
                        self._resync = True
                elif not batch:
                    self._resync = True  # the state write itself failed
                await asyncio.sleep(delay)
                delay = min(MAX_BACKOFF_S, delay * 2)

    async def _write(self, batch: list[tuple[str, str, bool | None]]) -> None:
        """One ``MULTI``: the entries, the host's seq and the publications, in order."""
        seq = self._seq
        async with self._client.pipeline(transaction=True) as pipe:
            for channel_id, user_id, online in batch:
                topic = presence_topic(channel_id)
                if online is None:
                    pipe.publish(topic, encode_event(TypingPublication(self.host, user_id)))
                    continue
                seq += 1
                field = f"{self.host}|{user_id}"
                if online:
                    pipe.hset(online_key(channel_id), field, seq)
                    pipe.sadd(host_channels_key(self.host), channel_id)
                else:
                    pipe.hdel(online_key(channel_id), field)
                pipe.publish(topic, encode_event(PresenceEvent(self.host, seq, user_id, online)))
            if seq != self._seq:
                pipe.hset(HOST_SEQ_KEY, self.host, seq)
            await pipe.execute()
        self._seq = seq

    async def _write_state(self) -> None:
        """Write this host's whole state and publish it per channel (``state`` events)."""
        client = self._client
        held = set(await client.smembers(host_channels_key(self.host)))
        channels = {_text(c) for c in held} | set(self._table.channels())
        prefix = self.host + "|"
        ours: dict[str, set[str]] = {}
        for channel_id in channels:
            fields = await client.hkeys(online_key(channel_id))
            ours[channel_id] = {f for f in map(_text, fields) if f.startswith(prefix)}
        seq = self._seq + 1
        async with client.pipeline(transaction=True) as pipe:
            pipe.delete(host_channels_key(self.host))
            for channel_id in sorted(channels):
                users = self._table.online(channel_id)
                wanted = {prefix + user for user in users}
                stale = ours[channel_id] - wanted
                if stale:
                    pipe.hdel(online_key(channel_id), *sorted(stale))
                if wanted:
                    pipe.hset(online_key(channel_id), mapping=dict.fromkeys(sorted(wanted), seq))
                    pipe.sadd(host_channels_key(self.host), channel_id)
                state = StateEvent(self.host, seq, tuple(users))
                pipe.publish(presence_topic(channel_id), encode_event(state))
            pipe.hset(HOST_SEQ_KEY, self.host, seq)
            await pipe.execute()
        self._seq = seq
        log.info("presence: host state written again", channels=len(channels))

    async def _run_load(
        self, channels: list[str]
    ) -> tuple[dict[str, int], list[tuple[tuple[str, str], ...]]]:
        flat, per_channel = await self._scripts["load"](keys=[], args=[self.host, *channels])
        seqs = {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        entries: list[tuple[tuple[str, str], ...]] = []
        for fields in per_channel:
            pairs = []
            for field in map(_text, fields):
                host, _, user_id = field.partition("|")
                pairs.append((host, user_id))
            entries.append(tuple(sorted(pairs)))
        return seqs, entries

    async def _answer(self, lookup: PresenceLookup, sender: Any) -> None:
        users: tuple[str, ...] | None
        try:
            _, (entries,) = await self._run_load([lookup.channel_id])
            users = tuple(sorted({user_id for _, user_id in entries}))
        except (RedisError, OSError) as exc:
            self._metrics.errors.labels(code="presence_unavailable").inc()
            log.warning("presence lookup failed", error=str(exc))
            users = None
        self._post(sender, PresenceLookupResult(lookup.token, users))
