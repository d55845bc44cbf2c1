"""MemoryStore: the shared store contract plus its outage switches."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from chime_actors.errors import StoreError, StoreUnavailable
from chime_actors.storage import MemoryStore

# tests/ is not a package; the contract suite lives there so that the Cassandra
# integration tests can share it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from store_contract import (
    CHANNEL,
    StoreContract,
    StoreFactory,
    batch,
    delete,
)

from tests.attachment_contract import AttachmentContract, StorageFactory


class TestMemoryStoreContract(StoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return MemoryStore


class TestMemoryAttachmentContract(AttachmentContract):
    @pytest.fixture
    def make_store(self) -> StorageFactory:
        return MemoryStore


def test_fail_next_fails_exactly_that_many_calls() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        store.fail_next(2)
        with pytest.raises(StoreUnavailable):
            await store.append(batch(1, 2))
        with pytest.raises(StoreUnavailable):
            await store.ping()
        await store.ping()
        # The failed append stored nothing.
        assert await store.last_seq(CHANNEL) == 0
        await store.close()

    asyncio.run(main())


def test_set_available_switches_an_outage() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await store.append(batch(1, 1))
        store.set_available(False)
        for call in (
            store.ping(),
            store.history(CHANNEL),
            store.last_seq(CHANNEL),
            store.append(batch(2, 2)),
            store.unread_counts("alice", [CHANNEL], limit=10),
        ):
            with pytest.raises(StoreUnavailable):
                await call
        store.set_available(True)
        assert await store.last_seq(CHANNEL) == 1
        await store.close()

    asyncio.run(main())


def test_open_fails_during_an_outage() -> None:
    async def main() -> None:
        store = MemoryStore()
        store.set_available(False)
        with pytest.raises(StoreUnavailable):
            await store.open()
        store.set_available(True)
        await store.open()
        await store.ping()
        await store.close()

    asyncio.run(main())


def test_calls_on_a_closed_store_fail() -> None:
    async def main() -> None:
        store = MemoryStore()
        with pytest.raises(StoreError) as raised:
            await store.ping()
        assert not isinstance(raised.value, StoreUnavailable)

    asyncio.run(main())


def test_counts_appended_messages_per_channel() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        await store.append(batch(1, 3) + batch(1, 2, channel="random"))
        await store.append([delete(4, 1)])  # changes neither count nor uncount
        with pytest.raises(StoreError):
            await store.append(batch(4, 5))  # a failed batch counts nothing
        assert store.message_count(CHANNEL) == 3
        assert store.message_count("random") == 2
        assert store.message_count("empty") == 0
        await store.close()

    asyncio.run(main())
