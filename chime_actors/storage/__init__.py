"""Durable storage behind the small ``MessageStore`` interface.

``SqliteStore`` is the embedded default (one WAL file), ``CassandraStore`` the
production store, ``MemoryStore`` the fake for unit tests; all pass the contract
suite in ``tests/store_contract.py`` (Cassandra except what its
``atomic_append = False`` names).

``CassandraStore`` is imported on first use: the driver takes about half a second
to import, which a server on SQLite should not pay in every process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chime_actors.storage.memory_store import MemoryStore
from chime_actors.storage.sqlite_store import SqliteStore
from chime_actors.storage.store import ChannelState, HistoryPage, MessageStore

if TYPE_CHECKING:
    from chime_actors.storage.cassandra_store import CassandraStore

__all__ = [
    "CassandraStore",
    "ChannelState",
    "HistoryPage",
    "MemoryStore",
    "MessageStore",
    "SqliteStore",
]


def __getattr__(name: str) -> Any:
    if name == "CassandraStore":
        from chime_actors.storage.cassandra_store import CassandraStore

        return CassandraStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
