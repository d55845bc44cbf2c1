"""Build the configured ``MessageStore``."""

from __future__ import annotations

from chime_actors.config import Config, StorageBackend
from chime_actors.errors import ConfigError
from chime_actors.storage.sqlite_store import SqliteStore
from chime_actors.storage.store import MessageStore


def make_store(config: Config) -> MessageStore:
    """A new, unopened store for ``config.storage`` (each process opens its own)."""
    if config.storage.backend is StorageBackend.SQLITE:
        return SqliteStore(config.storage.sqlite.path)
    if config.storage.backend is StorageBackend.CASSANDRA:
        # Imported here: the driver is slow to import and SQLite needs none of it.
        from chime_actors.storage.cassandra_store import CassandraStore

        return CassandraStore(config.storage.cassandra)
    raise ConfigError("storage.backend", f"{config.storage.backend} is not available yet")
