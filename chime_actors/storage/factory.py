"""Build the configured store: a ``MessageStore`` that is an ``AttachmentStore`` too."""

from __future__ import annotations

from typing import Protocol

from chime_actors.config import Config, StorageBackend
from chime_actors.errors import ConfigError
from chime_actors.storage.attachments import AttachmentStore
from chime_actors.storage.sqlite_store import SqliteStore
from chime_actors.storage.store import MessageStore


class Storage(MessageStore, AttachmentStore, Protocol):
    """Both interfaces, as every backend implements them on one connection.

    One object per process: the messages and the files of a deployment live in
    the same database (docs/protocol.md: "stored in the configured backend").
    """


def make_store(config: Config, *, create_schema: bool = False) -> Storage:
    """A new, unopened store for ``config.storage`` (each process opens its own).

    ``create_schema``: whether opening creates missing tables (Cassandra; SQLite
    always does, which is safe across processes).
    """
    if config.storage.backend is StorageBackend.SQLITE:
        sqlite = config.storage.sqlite
        return SqliteStore(sqlite.path, synchronous=sqlite.synchronous.value)
    if config.storage.backend is StorageBackend.CASSANDRA:
        # Imported here: the driver is slow to import and SQLite needs none of it.
        from chime_actors.storage.cassandra_store import CassandraStore

        return CassandraStore(config.storage.cassandra, create_schema=create_schema)
    raise ConfigError("storage.backend", f"{config.storage.backend} is not available yet")


async def init_storage(config: Config) -> None:
    """Create the configured store's schema (idempotent): ``chime db init``."""
    store = make_store(config, create_schema=True)
    await store.open()
    await store.close()
