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

The counter key of a channel is created from storage's last id (a fresh Redis, or
one that lost its data, never hands out an id already stored).

Idempotency across hosts: ``SET chime:cmid:... NX EX 600`` claims a client message
id before the write; the claim becomes ``<messageId>|<createdAt>`` once stored. If
the write fails, the claim becomes ``unknown:<messageId>``, not free: a write whose
answer was lost (a connection reset mid-write) may still have been applied, so
whoever retries must first look in storage for that message id (``Claim.unknown``)
before storing again. The id, not the store's client-id index, is what is looked
up, because a write cut off half-way may have stored the message row and not its
index row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from chime_actors.errors import BusUnavailable

SEQ_KEY = "chime:seq:{channel}"
CMID_KEY = "chime:cmid:{channel}:{user}:{cmid}"
CMID_TTL_S = 600
PENDING = b"pending"
UNKNOWN = "unknown:"

# KEYS[1] = counter; ARGV[1] = how many ids. Returns the last id of the range, or
# -1 when the counter does not exist yet (the caller seeds it from storage).
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
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
        self._take_over = client.register_script(_TAKE_OVER)

    async def close(self) -> None:
        """Close the Redis connection pool."""
        await self._client.aclose()

    async def reserve(self, counts: Mapping[str, int]) -> dict[str, int]:
        """For each channel, the first id of a fresh contiguous range of ``count`` ids.

        One round trip for every channel of the batch (a pipeline of the reserve
        script); a channel whose counter does not exist yet is seeded from
        storage first, then reserved.
        """
        if not counts:
            return {}
        channels = list(counts)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel_id in channels:
                    key = SEQ_KEY.format(channel=channel_id)
                    # Queued, not run: a pipeline sends every command at execute().
                    await self._reserve(keys=[key], args=[counts[channel_id]], client=pipe)
                lasts = [int(last) for last in await pipe.execute()]
            firsts: dict[str, int] = {}
            for channel_id, last in zip(channels, lasts, strict=True):
                count = counts[channel_id]
                if last < 0:
                    key = SEQ_KEY.format(channel=channel_id)
                    floor = await self._last_stored_seq(channel_id)
                    await self._client.set(key, floor, nx=True)
                    last = int(await self._client.incrby(key, count))
                firsts[channel_id] = last - count + 1
            return firsts
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    async def claim(self, keys: Sequence[tuple[str, str, str]]) -> list[Claim]:
        """Claim ``(channel, user, clientMsgId)`` keys, in one round trip."""
        if not keys:
            return []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for channel_id, user_id, cmid in keys:
                    pipe.set(_cmid_key(channel_id, user_id, cmid), PENDING, nx=True, ex=CMID_TTL_S)
                won = await pipe.execute()
            lost = [k for k, ok in zip(keys, won, strict=True) if not ok]
            values: list[bytes | str | None] = []
            if lost:
                values = await self._client.mget([_cmid_key(*k) for k in lost])
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc
        found = dict(zip(lost, values, strict=True))
        claims = []
        for key, ok in zip(keys, won, strict=True):
            if ok:
                claims.append(Claim(won=True))
                continue
            raw = found.get(key)
            value = raw.decode() if isinstance(raw, bytes) else raw
            if value and value.startswith(UNKNOWN):
                claims.append(Claim(False, message_id=value[len(UNKNOWN) :], unknown=True))
            elif not value or "|" not in value:
                claims.append(Claim(won=False))  # another host is storing it now
            else:
                message_id, created_at = value.split("|", 1)
                claims.append(Claim(False, message_id, created_at))
        return claims

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
                        _cmid_key(channel_id, user_id, cmid),
                        f"{message_id}|{created_at}",
                        ex=CMID_TTL_S,
                    )
                for channel_id, user_id, cmid, message_id in failed:
                    pipe.set(
                        _cmid_key(channel_id, user_id, cmid),
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
                        keys=[_cmid_key(channel_id, user_id, cmid)],
                        args=[UNKNOWN + message_id, CMID_TTL_S],
                    )
                )
                for channel_id, user_id, cmid, message_id in claims
            ]
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc


def _cmid_key(channel_id: str, user_id: str, cmid: str) -> str:
    return CMID_KEY.format(channel=channel_id, user=user_id, cmid=cmid)
