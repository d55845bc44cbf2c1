"""Ids and idempotency shared by every host, kept in Redis (``bus.backend: redis``).

One host sequences a channel by owning its persister (``owner_index``), but with
several hosts each has such a persister. So ids come from Redis instead: a batch
reserves a contiguous range with one ``INCRBY`` per channel (one round trip per
batch for all its channels, pipelined; no database round trip, no lease to
expire). Ids stay unique and increasing across hosts; the order in which two
hosts' batches finish storing may differ from id order, which each gateway's
ChannelActor puts right (it holds a later id back until the earlier ones arrive
or are found in storage).

A range whose write fails is lost, not given back (another host may already hold
the next one), so ids are contiguous except after a failed write; gateways wait a
short, bounded time for such a hole before moving on.

Redis may be behind storage: restarted from an old snapshot, failed over to a
replica that had not caught up, a key evicted or set by hand. An id at or below
one storage holds would overwrite a stored message (Cassandra writes are
upserts), so every reservation carries the caller's *floor* per channel (the
highest id it knows to be stored: read from storage when it first used the
channel, then advanced by its own writes) and the reserve script raises the
counter to the floor before it increments, atomically. A counter found missing
or below its floor shows that Redis lost data, and then the floor itself may be
stale (other hosts' writes): every channel of the batch is checked against
storage, a range not above it is replaced by a fresh one, and the caller is told
(``Reservation.redis_lost_data``) to re-read the floors of all other channels.
docs/architecture.md states what this guarantees and what it cannot.

A write's claims (below) and reservations go in one round trip
(``claim_and_reserve``: one script claims the client ids, then reserves each
channel's range for the claims it won plus what needs no claim).

Idempotency across hosts: ``SET chime:cmid:... NX EX 600`` claims a client message
id before the write; the claim becomes ``<messageId>|<createdAt>`` once stored. If
the write fails, the claim becomes ``unknown:<messageId>``, not free: a write whose
answer was lost (a connection reset mid-write) may still have been applied, so
whoever retries must first look in storage for that message id (``Claim.unknown``)
before storing again. The id, not the store's client-id index, is what is looked
up, because a write cut off half-way may have stored the message row and not its
index row.

Key layout (``seq_key``, ``cmid_key``): channel and user ids may contain ``:``,
the separator, so each part of a key made of several ids is escaped
(``escape_part``) and no two ``(channel, user, clientMsgId)`` share a claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from chime_actors.errors import BusUnavailable

SEQ_PREFIX = "chime:seq:"
CMID_PREFIX = "chime:cmid:"
CMID_TTL_S = 600
PENDING = b"pending"
UNKNOWN = "unknown:"
# How long a reader (a gateway's ChannelActor, a handler's after-store worker)
# holds a message back behind a hole in these ids before moving on: a hole is
# a range lost to a failed write, or one another host has not finished storing.
# Here, with the ids that make the holes, so both readers share it.
MULTI_HOST_HOLD_MAX_S = 1.0

# How the reserve script found a counter.
_ABOVE_FLOOR = 0
_RAISED = 1
_MISSING = 2
_NOTHING = 3  # claim-and-reserve: every claim of the channel was lost, no range

# KEYS[1] = a channel's counter; ARGV[1] = how many ids; ARGV[2] = the floor (no id
# at or below it may be handed out); ARGV[3] = '1' to create a missing counter.
# Returns {last id of the range, how}: how 0 = the counter was at or above the
# floor, 1 = it was below and was raised to the floor first, 2 = it is missing and
# was left alone (the caller reads storage first; last is -1).
_RESERVE = """
local current = redis.call('GET', KEYS[1])
if not current and ARGV[3] ~= '1' then return {-1, 2} end
local how = 0
if tonumber(current or '0') < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[2])
  how = 1
end
return {redis.call('INCRBY', KEYS[1], ARGV[1]), how}
"""


# A write's claims and reservations in one round trip. KEYS = the C channels'
# counters, then the N client-id claims. ARGV[1] = C, ARGV[2] = the claims' ttl,
# then per channel its count of ids needed besides the claims (sends without a
# client id, changes) and its floor, then per claim the (1-based) channel it is
# of. Each claim is SET NX; a won one adds an id to its channel, a lost one
# returns what the key holds. Then each channel reserves as ``_RESERVE`` (never
# creating a missing counter). Returns {{last, how} per channel, per claim 1 or
# the value found}; how 3: nothing to reserve.
_CLAIM_AND_RESERVE = """
local c = tonumber(ARGV[1])
local counts = {}
for i = 1, c do counts[i] = tonumber(ARGV[1 + 2 * i]) end
local claims = {}
for j = 1, #KEYS - c do
  local channel = tonumber(ARGV[2 + 2 * c + j])
  if redis.call('SET', KEYS[c + j], 'pending', 'NX', 'EX', ARGV[2]) then
    claims[j] = 1
    counts[channel] = counts[channel] + 1
  else
    claims[j] = redis.call('GET', KEYS[c + j]) or ''
  end
end
local ranges = {}
for i = 1, c do
  if counts[i] == 0 then
    ranges[i] = {0, 3}
  else
    local current = redis.call('GET', KEYS[i])
    if not current then
      ranges[i] = {-1, 2}
    else
      local how = 0
      if tonumber(current) < tonumber(ARGV[2 + 2 * i]) then
        redis.call('SET', KEYS[i], ARGV[2 + 2 * i])
        how = 1
      end
      ranges[i] = {redis.call('INCRBY', KEYS[i], counts[i]), how}
    end
  end
end
return {ranges, claims}
"""


# KEYS[1] = a client-id claim; ARGV[1] = the unknown value read, ARGV[2] = ttl. Turns
# that unknown claim into a pending one of ours, atomically (two hosts may retry).
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[2])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """What Redis knows of a client message id.

    ``won``: this host claimed it and must store the message. Otherwise
    ``message_id``/``created_at`` name the stored original, or both are None when
    another host is storing it right now.
    """

    won: bool
    message_id: str | None = None
    created_at: str | None = None
    # An earlier write of it failed: it may or may not be stored; look in storage.
    unknown: bool = False


@dataclass(frozen=True, slots=True)
class Reservation:
    """The id ranges of one batch.

    ``firsts``: per channel, the first id of its range. ``redis_lost_data``: a
    counter was missing or behind what storage or the caller knew, so Redis lost
    data; every floor not checked against storage by this reservation (the
    channels not in ``firsts``) may be stale and must be re-read before use.
    """

    firsts: dict[str, int]
    redis_lost_data: bool


class RedisIds:
    """Reserves id ranges and claims client message ids in Redis."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        last_stored_seq: Callable[[str], Awaitable[int]],
    ) -> None:
        self._client = client
        self._last_stored_seq = last_stored_seq
        self._reserve = client.register_script(_RESERVE)
        self._claim_and_reserve = client.register_script(_CLAIM_AND_RESERVE)
        self._take_over = client.register_script(_TAKE_OVER)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()

    async def reserve(self, counts: Mapping[str, int], floors: Mapping[str, int]) -> Reservation:
        """For each channel, a fresh contiguous range of ``count`` ids above its floor.

        ``floors``: per channel, the highest id the caller knows to be stored (0
        when it knows none). Normally one round trip for every channel of the
        batch (a pipeline of the reserve script). A missing counter is created
        from storage's last id; when Redis is seen to have lost data, every
        channel of the batch is checked against storage and given a range above
        it (see the module docstring).
        """
        if not counts:
            return Reservation({}, redis_lost_data=False)
        floor = {channel_id: floors.get(channel_id, 0) for channel_id in counts}
        try:
            found = await self._run_reserve(counts, floor, create=False)
            return await self._complete(counts, floor, found)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    async def claim_and_reserve(
        self,
        keys: Sequence[tuple[str, str, str]],
        counts: Mapping[str, int],
        floors: Mapping[str, int],
    ) -> tuple[list[Claim], Reservation]:
        """``claim`` the keys, then ``reserve`` for what they won, in one round trip.

        ``counts``: per channel, the ids needed besides the claims (sends without
        a client id, changes); each won claim adds one to its channel. Only a
        missing counter or lost Redis data cost further round trips (as in
        ``reserve``).
        """
        channels = list(dict.fromkeys([*counts, *(k[0] for k in keys)]))
        if not channels:
            return [], Reservation({}, redis_lost_data=False)
        index = {channel_id: i for i, channel_id in enumerate(channels, start=1)}
        floor = {channel_id: floors.get(channel_id, 0) for channel_id in channels}
        args: list[int | str] = [len(channels), CMID_TTL_S]
        for channel_id in channels:
            args += [counts.get(channel_id, 0), floor[channel_id]]
        args += [index[k[0]] for k in keys]
        try:
            ranges, values = await self._claim_and_reserve(
                keys=[seq_key(c) for c in channels] + [cmid_key(*k) for k in keys], args=args
            )
            claims = [Claim(won=True) if v == 1 else _lost_claim(v) for v in values]
            total = dict.fromkeys(channels, 0)
            total.update(counts)
            for key, claim in zip(keys, claims, strict=True):
                total[key[0]] += claim.won
            found = {
                channel_id: (int(last), int(how))
                for channel_id, (last, how) in zip(channels, ranges, strict=True)
                if int(how) != _NOTHING
            }
            needed = {c: total[c] for c in found}
            reservation = await self._complete(needed, floor, found)
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc
        return claims, reservation

    async def _complete(
        self,
        counts: Mapping[str, int],
        floor: Mapping[str, int],
        found: Mapping[str, tuple[int, int]],
    ) -> Reservation:
        """The reservation from the reserve script's answers (``found``).

        A missing counter is created above storage's last id; when Redis is
        seen to have lost data, every channel is checked against storage and
        given a fresh range above it (see the module docstring).
        """
        firsts = {c: last - counts[c] + 1 for c, (last, how) in found.items() if how != _MISSING}
        missing = [c for c, (_, how) in found.items() if how == _MISSING]
        stored = await self._stored(missing)
        lost = any(how == _RAISED for _, how in found.values()) or any(
            max(floor[c], stored[c]) > 0 for c in missing
        )
        if lost:
            # The floors may be stale (other hosts' writes since): storage says.
            stored.update(await self._stored(firsts))
        again = {
            c: max(floor[c], last)
            for c, last in stored.items()
            if c not in firsts or firsts[c] <= last
        }
        if again:
            renewed = await self._run_reserve(counts, again, create=True)
            for channel_id, (last, _) in renewed.items():
                firsts[channel_id] = last - counts[channel_id] + 1
        return Reservation(firsts, redis_lost_data=lost)

    async def _run_reserve(
        self, counts: Mapping[str, int], floors: Mapping[str, int], *, create: bool
    ) -> dict[str, tuple[int, int]]:
        """``{channel: (last id, how)}`` of the reserve script for each of ``floors``."""
        channels = list(floors)
        async with self._client.pipeline(transaction=False) as pipe:
            for channel_id in channels:
                # Queued, not run: a pipeline sends every command at execute().
                await self._reserve(
                    keys=[seq_key(channel_id)],
                    args=[counts[channel_id], floors[channel_id], "1" if create else "0"],
                    client=pipe,
                )
            answers = await pipe.execute()
        return {
            channel_id: (int(last), int(how))
            for channel_id, (last, how) in zip(channels, answers, strict=True)
        }

    async def _stored(self, channels: Iterable[str]) -> dict[str, int]:
        """Storage's last id of each channel, read concurrently (``StoreError`` passes)."""
        wanted = list(channels)
        lasts = await asyncio.gather(*(self._last_stored_seq(c) for c in wanted))
        return dict(zip(wanted, lasts, strict=True))

    async def claim(self, keys: Sequence[tuple[str, str, str]]) -> list[Claim]:
        """Claim ``(channel, user, clientMsgId)`` keys, in one round trip."""
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel_id, user_id, cmid in keys:
                    pipe.set(cmid_key(channel_id, user_id, cmid), PENDING, nx=True, ex=CMID_TTL_S)
                won = await pipe.execute()
            lost = [k for k, ok in zip(keys, won, strict=True) if not ok]
            values: list[bytes | str | None] = []
            if lost:
                values = await self._client.mget([cmid_key(*k) for k in lost])
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc
        found = dict(zip(lost, values, strict=True))
        return [
            Claim(won=True) if ok else _lost_claim(found.get(key))
            for key, ok in zip(keys, won, strict=True)
        ]

    async def settle(
        self,
        stored: Sequence[tuple[str, str, str, str, str]],
        failed: Sequence[tuple[str, str, str, str]],
    ) -> None:
        """Record stored claims (``channel, user, cmid, messageId, createdAt``).

        Failed ones (``channel, user, cmid, messageId``) become ``unknown`` with the
        id the failed write used (see the module docstring).
        """
        if not stored and not failed:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel_id, user_id, cmid, message_id, created_at in stored:
                    pipe.set(
                        cmid_key(channel_id, user_id, cmid),
                        f"{message_id}|{created_at}",
                        ex=CMID_TTL_S,
                    )
                for channel_id, user_id, cmid, message_id in failed:
                    pipe.set(
                        cmid_key(channel_id, user_id, cmid),
                        UNKNOWN + message_id,
                        xx=True,
                        ex=CMID_TTL_S,
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    async def take_over(self, claims: Sequence[tuple[str, str, str, str]]) -> list[bool]:
        """Claim ``unknown`` keys (``channel, user, cmid, messageId``) storage lacks.

        True where the claim is now ours; False where another host took it first.
        """
        if not claims:
            return []
        script = self._take_over
        try:
            return [
                bool(
                    await script(
                        keys=[cmid_key(channel_id, user_id, cmid)],
                        args=[UNKNOWN + message_id, CMID_TTL_S],
                    )
                )
                for channel_id, user_id, cmid, message_id in claims
            ]
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc


def _lost_claim(raw: bytes | str | None) -> Claim:
    """What a claim that was not won holds: the original, ``unknown``, or pending."""
    value = raw.decode() if isinstance(raw, bytes) else raw
    if value and value.startswith(UNKNOWN):
        return Claim(False, message_id=value[len(UNKNOWN) :], unknown=True)
    if not value or "|" not in value:
        return Claim(won=False)  # another host is storing it now
    message_id, created_at = value.split("|", 1)
    return Claim(False, message_id, created_at)


def escape_part(part: str) -> str:
    """``part`` with ``%`` written ``%25`` and ``:`` written ``%3A``: it has no ``:``.

    ``%`` is escaped too, so the escape is reversible and distinct parts stay
    distinct: parts joined by ``:`` name exactly one tuple. Ids with neither
    character (most) are left as they are, so keys stay readable and the same
    as before the escape existed.
    """
    return part.replace("%", "%25").replace(":", "%3A")


def seq_key(channel_id: str) -> str:
    """The id counter of a channel: ``chime:seq:<channelId>``.

    The channel id is all of the key after the prefix, so two channels never
    share a counter, ``:`` or not. It is deliberately not escaped: the key stays
    the one earlier versions used, so old and new hosts share one counter
    during a rolling upgrade (two counters for one channel would hand out the
    same ids twice).
    """
    return SEQ_PREFIX + channel_id


def cmid_key(channel_id: str, user_id: str, cmid: str) -> str:
    """The client-id claim of a send: ``chime:cmid:<channel>:<user>:<clientMsgId>``.

    Each part is escaped (``escape_part``): user ``b:c`` in channel ``a`` and
    user ``c`` in channel ``a:b`` get ``chime:cmid:a:b%3Ac:...`` and
    ``chime:cmid:a%3Ab:c:...``.
    """
    return CMID_PREFIX + ":".join(escape_part(p) for p in (channel_id, user_id, cmid))
