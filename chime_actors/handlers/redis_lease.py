"""An ``after_store`` handler's lease in Redis (``bus.backend: redis``), see ``handlers/lease.py``.

Keys (docs/architecture.md, "Redis key layout"; handler names are letters,
digits, ``_`` and ``-``, so they need no escaping):

* ``chime:handler-lease:<name>``: the holder's token, with the lease's ttl
  (``PX``). Taken only when absent (or already the caller's), renewed and
  deleted only by the token it holds: each is one Lua script, so the check and
  the change are atomic.
* ``chime:handler-fence:<name>``: the fence counter, no ttl: ``INCR`` at every
  acquisition, raised first to the caller's floor (storage knew a higher fence:
  Redis lost the counter).
"""

from __future__ import annotations

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from chime_actors.errors import BusUnavailable
from chime_actors.handlers.lease import Attempt

LEASE_PREFIX = "chime:handler-lease:"
FENCE_PREFIX = "chime:handler-fence:"

# KEYS[1] = the lease, KEYS[2] = the fence counter; ARGV[1] = token, ARGV[2] = ttl ms,
# ARGV[3] = the floor. Returns {fence, 0} when taken, {0, pttl} when another holds it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return {0, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local fence = redis.call('INCR', KEYS[2])
if fence <= tonumber(ARGV[3]) then
  fence = tonumber(ARGV[3]) + 1
  redis.call('SET', KEYS[2], fence)
end
return {fence, 0}
"""

# KEYS[1] = the lease; ARGV[1] = token, ARGV[2] = ttl ms. 1 when renewed.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] = the lease; ARGV[1] = token. 1 when it was ours and is gone.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(handler: str) -> str:
    """The key holding ``handler``'s lease."""
    return LEASE_PREFIX + handler


def fence_key(handler: str) -> str:
    """The key counting ``handler``'s fences."""
    return FENCE_PREFIX + handler


class RedisLease:
    """``Lease`` of one handler in Redis; Redis failures are ``BusUnavailable``."""

    def __init__(self, client: redis_asyncio.Redis, handler: str) -> None:
        self._client = client
        self._keys = [lease_key(handler), fence_key(handler)]
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def acquire(self, token: str, ttl_ms: int, floor: int) -> Attempt:
        """See ``Lease.acquire``."""
        try:
            fence, pttl = await self._acquire(keys=self._keys, args=[token, ttl_ms, floor])
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc
        if int(fence) > 0:
            return Attempt(int(fence))
        # PTTL is -1 for a key without a ttl (set by hand): unknown.
        return Attempt(None, max(0, int(pttl)) / 1000)

    async def renew(self, token: str, ttl_ms: int) -> bool:
        """See ``Lease.renew``."""
        try:
            return int(await self._renew(keys=self._keys[:1], args=[token, ttl_ms])) == 1
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    async def release(self, token: str) -> bool:
        """See ``Lease.release``."""
        try:
            return int(await self._release(keys=self._keys[:1], args=[token])) == 1
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
