"""What every host stores in a handler's channels, live from Redis Pub/Sub (``bus.backend: redis``).

The persisters of a host deliver only to the handler process of that host, but
the host holding a handler's lease must see every host's messages. So while it
holds the lease the handler process subscribes, on a connection of its own, to
the topics of its channels (``PSUBSCRIBE channel:<glob>``, ``bus/codec.py``) and
offers what arrives to its worker like a ``Deliveries``. Its own host's
publications come twice (directly and through Redis); the worker drops the
repeat. Pub/Sub loses what is published while the connection is down, so after
every (re)subscription the worker compares every channel with storage
(``on_subscribed``): a message is stored before it is published.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from chime_actors.bus.codec import TOPIC_PREFIX, decode_publication
from chime_actors.bus.redis_bridge import backoff_delays, redis_client
from chime_actors.config import RedisConfig
from chime_actors.errors import BusError
from chime_actors.logs import get_logger
from chime_actors.records import ChannelEvent

log = get_logger(__name__)

POLL_S = 0.05
MAX_BATCH = 1000


def feed_patterns(globs: Iterable[str]) -> list[str]:
    """Redis patterns covering the topics of channels matching ``globs`` (``fnmatch``).

    ``*`` and ``?`` mean the same in both; a bracket set is spelled differently
    (``[!a]`` is ``[^a]`` in Redis), so a glob is cut at its first ``[`` and ends
    in ``*`` there: a wider subscription, narrowed again by the worker's own
    ``channel_matches``.
    """
    patterns = {TOPIC_PREFIX + (g if "[" not in g else g[: g.index("[")] + "*") for g in globs}
    if TOPIC_PREFIX + "*" in patterns:
        return [TOPIC_PREFIX + "*"]
    return sorted(patterns)


class RedisFeed:
    """Subscribes to a handler's channel topics and hands their events over."""

    def __init__(
        self,
        config: RedisConfig,
        globs: Sequence[str],
        offer: Callable[[Sequence[ChannelEvent]], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        self._config = config
        self._patterns = feed_patterns(globs)
        self._offer = offer
        self._on_subscribed = on_subscribed
        self.subscribed = False

    async def run(self) -> None:
        """Subscribe, hand events over, reconnect with backoff; until cancelled."""
        delays = backoff_delays()
        while True:
            client = redis_client(self._config)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(*self._patterns)
                self.subscribed = True
                delays = backoff_delays()
                self._on_subscribed()
                await self._receive(pubsub)
            except (RedisError, OSError) as exc:
                delay = next(delays)
                log.warning("handler feed lost; reconnecting", error=str(exc), delayS=delay)
                await asyncio.sleep(delay)
            finally:
                self.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def _receive(self, pubsub: Any) -> None:
        while True:
            batch: list[ChannelEvent] = []
            message = await pubsub.get_message(timeout=POLL_S)
            while message is not None:
                if message.get("type") == "pmessage":
                    batch.extend(_events(message["data"]))
                if len(batch) >= MAX_BATCH:
                    break
                message = await pubsub.get_message(timeout=0)
            if batch:
                self._offer(batch)


def _events(payload: Any) -> tuple[ChannelEvent, ...]:
    try:
        _, events = decode_publication(payload)
    except BusError as exc:
        log.warning("handler feed ignored a malformed publication", error=str(exc))
        return ()
    return events
