"""Tests for chime_actors.api.attachment_sweeper over a MemoryStore, on a fake wall clock,
and for the persister's side of the same rule (persister.attachments)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

from chime_actors.api.attachment_sweeper import (
    AttachmentSweeper,
    cutoff,
    grace_s,
    interval_s,
    restamp_s,
)
from chime_actors.api.http_server import BODY_IDLE_TIMEOUT_S
from chime_actors.errors import StoreUnavailable
from chime_actors.persister.attachments import check_attachments
from chime_actors.records import Attachment, SendRecord, format_timestamp
from chime_actors.storage import MemoryStore
from chime_actors.storage.attachments import StoredAttachment, upload_stub
from tests.store_contract import delete, make_message

DAY_S = 24 * 3600.0
NOW_S = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()


def uploaded_ago(seconds: float, name: str, owner: str = "alice") -> StoredAttachment:
    return StoredAttachment(
        attachment_id=name.ljust(32, "0"),
        owner=owner,
        filename=f"{name}.txt",
        content_type="text/plain",
        size=3,
        sha256="0" * 64,
        chunks=1,
        created_at=format_timestamp(datetime.fromtimestamp(NOW_S - seconds, UTC)),
    )


async def stored(store: MemoryStore, *files: StoredAttachment) -> None:
    for file in files:
        await store.save_attachment_chunk(file.attachment_id, 0, b"abc")
        await store.finish_attachment(file)


async def listing(store: MemoryStore, seq: int, file: StoredAttachment) -> None:
    message = msgspec.structs.replace(make_message(seq), attachments=(file.ref,))
    await store.append([message])


def exists(store: MemoryStore, file: StoredAttachment) -> bool:
    return bool(asyncio.run(store.get_attachments([file.attachment_id])))


def test_the_grace_and_the_interval_follow_the_ttl() -> None:
    assert (grace_s(DAY_S), interval_s(DAY_S)) == (600.0, 3600.0)
    assert (grace_s(2.0), interval_s(2.0)) == (2.0, 0.5)
    assert (restamp_s(DAY_S), restamp_s(2.0), restamp_s(0)) == (DAY_S / 2, 1.0, None)
    # An upload waits at most 30 s for its body's next bytes (the HTTP server's
    # idle timeout), and its stub is then at most restamp_s + 30 s old: still
    # younger than what a sweep takes for any TTL from 20 s.
    for ttl_s in (20.0, 60.0, 600.0, DAY_S):
        restamp = restamp_s(ttl_s)
        assert restamp is not None
        assert restamp + BODY_IDLE_TIMEOUT_S <= ttl_s + grace_s(ttl_s)
    assert cutoff(NOW_S, 90.0) == "2026-12-02T11:58:30.000Z"


def test_files_no_live_message_lists_are_deleted_past_the_ttl_and_the_grace() -> None:
    store = MemoryStore()
    old_unsent = uploaded_ago(DAY_S + 601, "aa")
    in_grace = uploaded_ago(DAY_S + 599, "bb")
    young = uploaded_ago(60, "cc")
    old_sent = uploaded_ago(DAY_S + 601, "dd")
    old_deleted = uploaded_ago(DAY_S + 601, "ee")

    async def scenario() -> int:
        await store.open()
        await stored(store, old_unsent, in_grace, young, old_sent, old_deleted)
        await listing(store, 1, old_sent)
        await listing(store, 2, old_deleted)
        await store.append([delete(3, 2)])  # its only message is deleted
        sweeper = AttachmentSweeper(store, DAY_S, wall_clock=lambda: NOW_S, page=2)
        return await sweeper.sweep()

    assert asyncio.run(scenario()) == 2
    assert not exists(store, old_unsent) and not exists(store, old_deleted)
    assert exists(store, in_grace) and exists(store, young) and exists(store, old_sent)
    assert store.chunk_count() == 3  # the deleted files' chunks went with them


def test_an_upload_never_finished_is_swept_with_its_chunks_once_old() -> None:
    store = MemoryStore()

    def stub(seconds_ago: float, name: str) -> StoredAttachment:
        created = format_timestamp(datetime.fromtimestamp(NOW_S - seconds_ago, UTC))
        return upload_stub(
            name.ljust(32, "0"),
            owner="alice",
            filename="big.bin",
            content_type="application/octet-stream",
            max_bytes=3 * 1024 * 1024,
            created_at=created,
        )

    crashed, running = stub(DAY_S + 601, "aa"), stub(30, "bb")

    async def scenario() -> int:
        await store.open()
        for upload in (crashed, running):
            await store.begin_attachment(upload)
            await store.save_attachment_chunk(upload.attachment_id, 0, b"x" * 10)
            await store.save_attachment_chunk(upload.attachment_id, 1, b"y" * 10)
        return await AttachmentSweeper(store, DAY_S, wall_clock=lambda: NOW_S).sweep()

    assert asyncio.run(scenario()) == 1
    assert store.chunk_count() == 2  # the running upload's two
    listed = asyncio.run(store.scan_attachments(None, 10))[0]
    assert [a.attachment_id for a in listed] == [running.attachment_id]


@pytest.mark.parametrize("failure", [StoreUnavailable("storage down"), KeyError("a bug")])
def test_a_failed_sweep_is_retried_at_the_next_interval(failure: Exception) -> None:
    class FlakyStore(MemoryStore):
        failures = 1

        async def scan_attachments(
            self, after: str | None, limit: int
        ) -> tuple[tuple[StoredAttachment, ...], str | None]:
            if self.failures:
                self.failures -= 1
                raise failure
            return await super().scan_attachments(after, limit)

    store = FlakyStore()
    old = uploaded_ago(DAY_S + 601, "aa")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError  # stop the loop after two sweeps

    async def scenario() -> None:
        await store.open()
        await stored(store, old)
        sweeper = AttachmentSweeper(store, DAY_S, wall_clock=lambda: NOW_S, sleep=sleep)
        with pytest.raises(asyncio.CancelledError):
            await sweeper.run()

    asyncio.run(scenario())
    assert slept == [3600.0, 3600.0, 3600.0]
    assert not exists(store, old)  # the second sweep deleted it


def test_a_send_may_list_an_old_file_only_while_a_live_message_lists_it() -> None:
    store = MemoryStore()
    old_unsent = uploaded_ago(DAY_S + 1, "aa")
    old_sent = uploaded_ago(DAY_S + 1, "bb")
    young = uploaded_ago(60, "cc")
    expired_before = cutoff(NOW_S, DAY_S)

    def send(token: int, file: StoredAttachment) -> tuple[int, SendRecord]:
        record = SendRecord(token, "general", "alice", "see", attachments=(file.attachment_id,))
        return (0, record)

    async def scenario() -> None:
        await store.open()
        await stored(store, old_unsent, old_sent, young)
        await listing(store, 1, old_sent)
        entries = [send(1, old_unsent), send(2, old_sent), send(3, young)]
        kept, refused, listed = await check_attachments(
            store, entries, expired_before=expired_before
        )
        assert [record.token for _, record in kept] == [2, 3]
        assert refused[(0, 1)].error_code == "bad_request"
        assert refused[(0, 1)].error_message == (
            f"no attachment {old_unsent.attachment_id} uploaded by alice"
        )
        assert set(listed) == {old_sent.attachment_id, young.attachment_id}
        assert listed[young.attachment_id] == Attachment(
            young.attachment_id, "cc.txt", "text/plain", 3
        )
        # Without a TTL any age is fine.
        kept, refused, _ = await check_attachments(store, entries)
        assert len(kept) == 3 and not refused

    asyncio.run(scenario())
