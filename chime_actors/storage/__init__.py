"""Durable storage behind the small ``MessageStore`` interface.

``SqliteStore`` is the embedded default (one WAL file), ``MemoryStore`` the fake
for unit tests; both pass the contract suite in ``tests/store_contract.py``.
"""

from chime_actors.storage.memory_store import MemoryStore
from chime_actors.storage.sqlite_store import SqliteStore
from chime_actors.storage.store import ChannelState, HistoryPage, MessageStore

__all__ = ["ChannelState", "HistoryPage", "MemoryStore", "MessageStore", "SqliteStore"]
