"""Where the real adapters are built: storage, Redis ids, leases and feeds.

The cores (``gateway.core``, ``persister.core``, ``api.core``, ``handlers.core``,
``bus.redis_bridge``) receive their adapters and build none, so each can run in a
unit test on fakes. A process actor calls the one function here of its kind and
hands what it returns to its core: the configuration decides the adapters in this
module only (``tests/unit/test_layering.py`` checks that no core calls a factory).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from redis import asyncio as redis_asyncio

from chime_actors.bus.redis_bridge import redis_client
from chime_actors.config import BusBackend, Config
from chime_actors.handlers.core import FeedFactory
from chime_actors.handlers.lease import ClosableLease
from chime_actors.handlers.redis_feed import RedisFeed
from chime_actors.handlers.redis_lease import RedisLease
from chime_actors.handlers.registry import after_store_indexes
from chime_actors.persister.redis_ids import RedisIds
from chime_actors.storage.factory import Storage, make_store


@dataclass(frozen=True, slots=True)
class GatewayAdapters:
    """A gateway's adapters.

    Attributes:
        store: where channels and history are read (unopened: the core opens it).
    """

    store: Storage


@dataclass(frozen=True, slots=True)
class ApiAdapters:
    """The API's adapters.

    Attributes:
        store: REST reads, read markers and attachments (unopened).
    """

    store: Storage


@dataclass(frozen=True, slots=True)
class PersisterAdapters:
    """A persister's adapters.

    Attributes:
        store: where messages are written and attachments checked (unopened).
        ids: the ids and client-id claims shared by every host (Redis), or None
            with the local bus (one host: the persister numbers alone).
    """

    store: Storage
    ids: RedisIds | None


@dataclass(frozen=True, slots=True)
class HandlerAdapters:
    """An ``after_store`` handler process's adapters.

    Attributes:
        store: cursors, fences and the scans of missed messages (unopened).
        lease: the handler's lease shared by every host, or None with the local
            bus (one host: the process holds from its start).
        feed: makes the subscription to every host's publications of a hold, or
            None with the local bus.
    """

    store: Storage
    lease: ClosableLease | None
    feed: FeedFactory | None


@dataclass(frozen=True, slots=True)
class BridgeAdapters:
    """The Redis bridge's adapters.

    Attributes:
        connect: makes a new Redis client (one per connection and reconnection).
    """

    connect: Callable[[], redis_asyncio.Redis]


def _multi_host(config: Config) -> bool:
    return config.bus.backend is BusBackend.REDIS


def gateway_adapters(config: Config) -> GatewayAdapters:
    """The configured store, for a gateway."""
    return GatewayAdapters(store=make_store(config))


def api_adapters(config: Config) -> ApiAdapters:
    """The configured store, for the API."""
    return ApiAdapters(store=make_store(config))


def persister_adapters(config: Config) -> PersisterAdapters:
    """The configured store and, with ``bus.backend: redis``, Redis's ids over it."""
    store = make_store(config)
    ids = None
    if _multi_host(config):
        # A missing counter is created from storage's last id (persister.redis_ids).
        ids = RedisIds(redis_client(config.bus.redis), store.last_seq)
    return PersisterAdapters(store=store, ids=ids)


def handler_adapters(config: Config, index: int) -> HandlerAdapters:
    """The adapters of ``handler index`` (1-based, over the ``after_store`` handlers).

    With ``bus.backend: redis``: the handler's Redis lease and its Redis feed.
    """
    store = make_store(config)
    if not _multi_host(config):
        return HandlerAdapters(store=store, lease=None, feed=None)
    name = config.handlers[after_store_indexes(config)[index - 1]].name
    return HandlerAdapters(
        store=store,
        lease=RedisLease(redis_client(config.bus.redis), name),
        feed=functools.partial(RedisFeed, config.bus.redis),
    )


def bridge_adapters(config: Config) -> BridgeAdapters:
    """Clients of ``bus.redis``, for the bridge (and its presence)."""
    return BridgeAdapters(connect=functools.partial(redis_client, config.bus.redis))
