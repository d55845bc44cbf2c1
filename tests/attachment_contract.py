"""The behaviour every ``AttachmentStore`` must show, as a reusable test base class.

Like ``store_contract.StoreContract``: subclass it and provide a ``make_store``
fixture returning a factory of fresh, unopened stores (each implementation is a
``MessageStore`` too, and the index of which channels list a file is written by
``append``, so both interfaces are exercised together).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping

import msgspec
import orjson
import pytest

from chime_actors.api import attachment_routes
from chime_actors.api.http_server import HttpRequest
from chime_actors.api.presence_routes import Caller
from chime_actors.api.upload_budget import UploadBudget
from chime_actors.auth import Identity
from chime_actors.errors import StoreError
from chime_actors.ids import new_attachment_id
from chime_actors.records import Attachment, MessageChange
from chime_actors.storage.attachments import (
    CHUNK_BYTES,
    StoredAttachment,
    read_attachment,
    upload_stub,
)
from chime_actors.storage.factory import Storage
from tests.store_contract import CHANNEL, delete, edit, make_message, mid, seqs

StorageFactory = Callable[[], Storage]
Scenario = Callable[[Storage], Awaitable[None]]

OTHER = "random"


def run_with(make_store: StorageFactory, scenario: Scenario) -> None:
    """Open a store, run ``scenario`` on it in a new event loop, close it."""

    async def main() -> None:
        store = make_store()
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


def record(attachment_id: str, *, chunks: int, size: int, owner: str = "alice") -> StoredAttachment:
    return StoredAttachment(
        attachment_id=attachment_id,
        owner=owner,
        filename="f é.txt",
        content_type="text/plain; charset=utf-8",
        size=size,
        sha256="0" * 64,
        chunks=chunks,
        created_at="2026-11-27T10:00:00.000Z",
    )


async def read_all(store: Storage, attachment: StoredAttachment) -> bytes:
    return b"".join([chunk async for chunk in read_attachment(store, attachment)])


class UploadBackend:
    """``attachment_routes.AttachmentBackend`` over a real store, for one user."""

    def __init__(self, store: Storage, user: str, max_bytes: int) -> None:
        self._store = store
        self._user = user
        self._max = max_bytes
        self._budget = UploadBudget(0, time.monotonic)  # the budget has tests of its own

    @property
    def attachments(self) -> Storage:
        return self._store

    @property
    def max_attachment_bytes(self) -> int:
        return self._max

    @property
    def upload_budget(self) -> UploadBudget:
        return self._budget

    @property
    def upload_restamp_s(self) -> float | None:
        return None  # the sweep has tests of its own

    def caller(self, headers: Mapping[str, str]) -> Caller:
        return Caller(self._user, Identity(self._user))


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
    """``data`` as an HTTP body arrives: in pieces."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


class AttachmentContract:
    """Contract tests; a ``Test*`` subclass supplies the ``make_store`` fixture."""

    @pytest.fixture
    def make_store(self) -> StorageFactory:
        raise NotImplementedError("subclasses provide a make_store fixture")

    def test_chunks_become_a_file_only_once_finished(self, make_store: StorageFactory) -> None:
        attachment_id = new_attachment_id()
        parts = [b"a" * 10, b"\x00\xff" * 5, b"z"]

        async def scenario(store: Storage) -> None:
            for index, part in enumerate(parts):
                await store.save_attachment_chunk(attachment_id, index, part)
            assert await store.get_attachments([attachment_id]) == {}
            finished = record(attachment_id, chunks=3, size=sum(map(len, parts)))
            await store.finish_attachment(finished)
            assert await store.get_attachments([attachment_id, new_attachment_id()]) == {
                attachment_id: finished
            }
            assert await store.attachment_chunk(attachment_id, 1) == parts[1]
            assert await read_all(store, finished) == b"".join(parts)
            assert await store.attachment_channels(attachment_id) == ()

        run_with(make_store, scenario)

    def test_unknown_ids_and_no_ids_find_nothing(self, make_store: StorageFactory) -> None:
        async def scenario(store: Storage) -> None:
            assert await store.get_attachments([]) == {}
            assert await store.get_attachments([new_attachment_id()]) == {}
            with pytest.raises(StoreError):
                await store.attachment_chunk(new_attachment_id(), 0)
            assert await store.attachment_channels(new_attachment_id()) == ()

        run_with(make_store, scenario)

    def test_discard_drops_the_chunks_of_an_unfinished_upload(
        self, make_store: StorageFactory
    ) -> None:
        attachment_id = new_attachment_id()

        async def scenario(store: Storage) -> None:
            await store.save_attachment_chunk(attachment_id, 0, b"x")
            await store.save_attachment_chunk(attachment_id, 1, b"y")
            await store.discard_attachment(attachment_id, 2)
            for index in (0, 1):
                with pytest.raises(StoreError):
                    await store.attachment_chunk(attachment_id, index)

        run_with(make_store, scenario)

    def test_a_lost_chunk_fails_the_read(self, make_store: StorageFactory) -> None:
        attachment_id = new_attachment_id()

        async def scenario(store: Storage) -> None:
            await store.save_attachment_chunk(attachment_id, 0, b"abc")
            # The record claims more than is stored: the read must not pass it off as whole.
            await store.finish_attachment(record(attachment_id, chunks=1, size=4))
            with pytest.raises(StoreError):
                await read_all(store, record(attachment_id, chunks=1, size=4))
            with pytest.raises(StoreError):
                await read_all(store, record(attachment_id, chunks=2, size=3))

        run_with(make_store, scenario)

    def test_messages_keep_their_attachments_everywhere_they_are_read(
        self, make_store: StorageFactory
    ) -> None:
        files = (
            Attachment(new_attachment_id(), "a.pdf", "application/pdf", 10),
            Attachment(new_attachment_id(), 'ü "q".txt', "text/plain", 1),
        )
        root = msgspec.structs.replace(make_message(1, client_msg_id="c-1"), attachments=files)
        reply = msgspec.structs.replace(make_message(2, thread_id=mid(1)), attachments=files[1:])
        plain = make_message(3)

        async def scenario(store: Storage) -> None:
            await store.append([root, reply, plain])
            assert await store.get_message(CHANNEL, mid(1)) == root
            assert (await store.history(CHANNEL)).messages == (root, reply, plain)
            assert (await store.history(CHANNEL, thread_id=mid(1))).messages == (root, reply)
            assert await store.events_range(CHANNEL, after_seq=0, up_to_seq=3) == (
                root,
                reply,
                plain,
            )
            state = await store.load_channel_state(CHANNEL, dedupe_since="2000-01-01T00:00:00.000Z")
            assert state.client_ids[("alice", "c-1")].attachments == files
            # An edit keeps them, in storage and in the change a replay carries.
            await store.append([edit(4, root, "edited")])
            edited = await store.get_message(CHANNEL, mid(1))
            assert (edited.content, edited.attachments) == ("edited", files)
            (change,) = await store.events_range(CHANNEL, after_seq=3, up_to_seq=4)
            assert isinstance(change, MessageChange) and change.message is not None
            assert change.message.attachments == files

        run_with(make_store, scenario)

    def test_an_upload_in_progress_is_a_stub_nobody_finds_but_the_scan(
        self, make_store: StorageFactory
    ) -> None:
        finished, abandoned, discarded = (new_attachment_id() for _ in range(3))

        def stub_of(attachment_id: str) -> StoredAttachment:
            return upload_stub(
                attachment_id,
                owner="alice",
                filename="f.bin",
                content_type="application/octet-stream",
                max_bytes=2 * CHUNK_BYTES + 1,
                created_at="2026-11-27T09:00:00.000Z",
            )

        async def scenario(store: Storage) -> None:
            for attachment_id in (finished, abandoned, discarded):
                await store.begin_attachment(stub_of(attachment_id))
                await store.save_attachment_chunk(attachment_id, 0, b"part")
            assert stub_of(abandoned).in_progress and stub_of(abandoned).chunks == 3
            assert await store.get_attachments([finished, abandoned, discarded]) == {}
            done = record(finished, chunks=1, size=4)
            await store.finish_attachment(done)  # replaces the stub
            await store.discard_attachment(discarded, 1)
            assert await store.get_attachments([finished, abandoned, discarded]) == {finished: done}
            scanned = {a.attachment_id: a for a in (await store.scan_attachments(None, 10_000))[0]}
            assert scanned[finished] == done
            assert scanned[abandoned] == stub_of(abandoned)
            assert discarded not in scanned
            with pytest.raises(StoreError):
                await store.attachment_chunk(discarded, 0)
            # What the sweeper does with an abandoned one: record and chunks go.
            assert await store.delete_unlisted_attachment(scanned[abandoned])
            with pytest.raises(StoreError):
                await store.attachment_chunk(abandoned, 0)
            after = {a.attachment_id for a in (await store.scan_attachments(None, 10_000))[0]}
            assert abandoned not in after and finished in after

        run_with(make_store, scenario)

    def test_a_scan_pages_through_every_record_once(self, make_store: StorageFactory) -> None:
        ids = sorted(new_attachment_id() for _ in range(5))

        async def scenario(store: Storage) -> None:
            for attachment_id in ids:
                await store.finish_attachment(record(attachment_id, chunks=0, size=0))
            seen: list[str] = []
            cursor: str | None = None
            pages = 0
            while True:
                page, cursor = await store.scan_attachments(cursor, 2)
                assert len(page) <= 2
                seen += [found.attachment_id for found in page]
                pages += 1
                if cursor is None:
                    break
                assert pages < 1000, "the scan never ends"
            assert len(seen) == len(set(seen)), "a record seen twice"
            assert set(ids) <= set(seen)
            (mine,) = [
                found
                for found in (await store.scan_attachments(None, 10_000))[0]
                if found.attachment_id == ids[0]
            ]
            assert mine == record(ids[0], chunks=0, size=0)

        run_with(make_store, scenario)

    def test_only_a_file_no_live_message_lists_is_deleted(self, make_store: StorageFactory) -> None:
        listed, unlisted, orphaned = (new_attachment_id() for _ in range(3))

        async def scenario(store: Storage) -> None:
            for attachment_id in (listed, unlisted, orphaned):
                await store.save_attachment_chunk(attachment_id, 0, b"one")
                await store.save_attachment_chunk(attachment_id, 1, b"two")
                await store.finish_attachment(record(attachment_id, chunks=2, size=6))
            files = {
                a: Attachment(a, "f.txt", "text/plain", 6) for a in (listed, unlisted, orphaned)
            }
            kept = msgspec.structs.replace(make_message(1), attachments=(files[listed],))
            gone = msgspec.structs.replace(make_message(2), attachments=(files[orphaned],))
            await store.append([kept, gone])
            await store.append([delete(3, 2)])  # the only message listing ``orphaned``

            assert not await store.delete_unlisted_attachment(record(listed, chunks=2, size=6))
            assert await read_all(store, record(listed, chunks=2, size=6)) == b"onetwo"
            for attachment_id in (unlisted, orphaned):
                assert await store.delete_unlisted_attachment(
                    record(attachment_id, chunks=2, size=6)
                )
                assert await store.get_attachments([attachment_id]) == {}
                for index in (0, 1):
                    with pytest.raises(StoreError):
                        await store.attachment_chunk(attachment_id, index)
                # Gone already: nothing to delete.
                assert not await store.delete_unlisted_attachment(
                    record(attachment_id, chunks=2, size=6)
                )

        run_with(make_store, scenario)

    def test_channels_listing_a_file_follow_appends_and_deletes(
        self, make_store: StorageFactory
    ) -> None:
        shared = Attachment(new_attachment_id(), "s.txt", "text/plain", 1)
        first = msgspec.structs.replace(make_message(1), attachments=(shared,))
        second = msgspec.structs.replace(make_message(2), attachments=(shared,))
        elsewhere = msgspec.structs.replace(make_message(1, channel=OTHER), attachments=(shared,))

        async def scenario(store: Storage) -> None:
            await store.append([first, second, elsewhere])
            assert await store.attachment_channels(shared.attachment_id) == (CHANNEL, OTHER)
            await store.append([delete(3, 1)])
            # Message 2 still lists it in CHANNEL.
            assert await store.attachment_channels(shared.attachment_id) == (CHANNEL, OTHER)
            await store.append([delete(2, 1, channel=OTHER)])
            assert await store.attachment_channels(shared.attachment_id) == (CHANNEL,)
            await store.append([delete(4, 2)])
            assert await store.attachment_channels(shared.attachment_id) == ()
            assert seqs((await store.history(CHANNEL)).messages) == []

        run_with(make_store, scenario)

    def test_an_upload_larger_than_a_chunk_is_split_and_read_back_identical(
        self, make_store: StorageFactory
    ) -> None:
        data = os.urandom(2 * CHUNK_BYTES + 12345)

        async def scenario(store: Storage) -> None:
            backend = UploadBackend(store, "alice", max_bytes=3 * CHUNK_BYTES)
            request = HttpRequest(
                "POST",
                attachment_routes.UPLOAD_PATH,
                query={"filename": "big.bin"},
                headers={"content-type": "application/octet-stream"},
                body_stream=pieces(data),
            )
            response = await attachment_routes.upload(backend, request)
            assert response.status == 201
            body = orjson.loads(response.body)
            assert body["sha256"] == hashlib.sha256(data).hexdigest()
            assert body["size"] == len(data)
            stored = (await store.get_attachments([body["attachmentId"]]))[body["attachmentId"]]
            assert (stored.owner, stored.chunks, stored.size) == ("alice", 3, len(data))
            sizes = [len(await store.attachment_chunk(stored.attachment_id, i)) for i in range(3)]
            assert sizes == [CHUNK_BYTES, CHUNK_BYTES, 12345]
            back = await read_all(store, stored)
            assert hashlib.sha256(back).hexdigest() == hashlib.sha256(data).hexdigest()

        run_with(make_store, scenario)
