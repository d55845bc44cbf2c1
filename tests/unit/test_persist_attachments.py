"""Tests for chime_actors.persister.attachments, through a PersistWriter over a MemoryStore.

A send's attachments are checked where it is stored: each must be a finished
upload of the sender; else ``bad_request``, and the send takes no id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from chime_actors.ids import new_attachment_id
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.writer import PersistWriter
from chime_actors.records import Deliveries, PersistBatch, PersistResult, SendRecord
from chime_actors.storage import MemoryStore
from chime_actors.storage.attachments import StoredAttachment
from tests.support.posts import PostLog

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


class LookupCountingStore(MemoryStore):
    """A MemoryStore that counts ``get_attachments`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def get_attachments(
        self, attachment_ids: Sequence[str]
    ) -> Mapping[str, StoredAttachment]:
        self.lookups += 1
        return await super().get_attachments(attachment_ids)


class Posts(PostLog):
    def results(self) -> list[PersistResult]:
        return self.of(PersistResult, to="reply")

    def deliveries(self) -> list[Deliveries]:
        return self.of(Deliveries, to="gateway")


Scenario = Callable[[PersistWriter, LookupCountingStore, Posts], Awaitable[None]]


def run(scenario: Scenario, *, with_attachments: bool = True) -> None:
    async def main() -> None:
        store = LookupCountingStore()
        await store.open()
        posts = Posts()
        writer = PersistWriter(
            store,
            posts,
            ChimeMetrics.register(MetricsRegistry()),
            clock=lambda: NOW,
            attachments=store if with_attachments else None,
        )
        writer.set_gateways(("gateway",))
        writer.start()
        try:
            await scenario(writer, store, posts)
        finally:
            await writer.stop()
            await store.close()

    asyncio.run(main())


async def upload(store: MemoryStore, owner: str, data: bytes = b"data") -> StoredAttachment:
    attachment_id = new_attachment_id()
    await store.save_attachment_chunk(attachment_id, 0, data)
    stored = StoredAttachment(
        attachment_id, owner, "f.txt", "text/plain", len(data), "0" * 64, 1, "t"
    )
    await store.finish_attachment(stored)
    return stored


def send(token: int, *attachments: str, user: str = "alice") -> SendRecord:
    return SendRecord(
        token=token,
        channel_id="general",
        user_id=user,
        content=f"m{token}",
        client_msg_id=f"c-{token}",
        attachments=attachments,
    )


async def answered(posts: Posts, count: int) -> list[PersistResult]:
    async with asyncio.timeout(5):
        while len(posts.results()) < count:
            await asyncio.sleep(0)
    return posts.results()


def test_a_send_listing_its_senders_uploads_is_stored_with_them() -> None:
    async def scenario(writer: PersistWriter, store: LookupCountingStore, posts: Posts) -> None:
        first, second = await upload(store, "alice"), await upload(store, "alice", b"xy")
        writer.submit(
            PersistBatch(1, 1, (send(1, second.attachment_id, first.attachment_id),)), "reply"
        )
        ((outcome,),) = [r.outcomes for r in await answered(posts, 1)]
        assert outcome.message is not None
        assert outcome.message.attachments == (second.ref, first.ref)
        (delivered,) = posts.deliveries()
        assert delivered.messages == (outcome.message,)
        stored = await store.get_message("general", outcome.message.message_id)
        assert stored.attachments == (second.ref, first.ref)
        assert await store.attachment_channels(first.attachment_id) == ("general",)

    run(scenario)


def test_another_users_or_an_unknown_attachment_is_bad_request_and_takes_no_id() -> None:
    async def scenario(writer: PersistWriter, store: LookupCountingStore, posts: Posts) -> None:
        mine, bobs = await upload(store, "alice"), await upload(store, "bob")
        records = (
            send(1, mine.attachment_id, bobs.attachment_id),
            send(2, new_attachment_id()),
            send(3, mine.attachment_id),
            send(4),
        )
        writer.submit(PersistBatch(1, 1, records), "reply")
        (result,) = await answered(posts, 1)
        refused, unknown, fine, plain = result.outcomes
        for outcome in (refused, unknown):
            assert outcome.error_code == "bad_request" and outcome.message is None
            assert "no attachment" in outcome.error_message
        # The refusals took no ids: the others are 1 and 2, contiguous.
        assert fine.message is not None and fine.message.seq == 1
        assert plain.message is not None and plain.message.seq == 2
        assert plain.message.attachments == ()
        (delivered,) = posts.deliveries()
        assert [m.seq for m in delivered.messages] == [1, 2]
        # Bob's file was not granted to the channel by the refused send.
        assert await store.attachment_channels(bobs.attachment_id) == ()

    run(scenario)


def test_writes_without_attachments_never_look_any_up() -> None:
    async def scenario(writer: PersistWriter, store: LookupCountingStore, posts: Posts) -> None:
        writer.submit(PersistBatch(1, 1, (send(1), send(2))), "reply")
        await answered(posts, 1)
        assert store.lookups == 0
        mine = await upload(store, "alice")
        writer.submit(PersistBatch(2, 1, (send(3, mine.attachment_id), send(4))), "reply")
        await answered(posts, 2)
        assert store.lookups == 1  # one lookup for the whole write

    run(scenario)


def test_storage_failing_the_lookup_answers_unavailable_for_those_sends_only() -> None:
    async def scenario(writer: PersistWriter, store: LookupCountingStore, posts: Posts) -> None:
        mine = await upload(store, "alice")
        writer.submit(PersistBatch(1, 1, (send(1),)), "reply")  # loads the channel
        await answered(posts, 1)
        store.fail_next(1)  # the lookup of the next write
        writer.submit(PersistBatch(2, 1, (send(2, mine.attachment_id), send(3))), "reply")
        (_, result) = await answered(posts, 2)
        failed, stored = result.outcomes
        assert failed.error_code == "unavailable" and failed.message is None
        assert stored.message is not None and stored.message.seq == 2

    run(scenario)


def test_a_persister_without_an_attachment_store_refuses_attachments() -> None:
    async def scenario(writer: PersistWriter, store: LookupCountingStore, posts: Posts) -> None:
        mine = await upload(store, "alice")
        writer.submit(PersistBatch(1, 1, (send(1, mine.attachment_id),)), "reply")
        ((outcome,),) = [r.outcomes for r in await answered(posts, 1)]
        assert outcome.error_code == "bad_request"

    run(scenario, with_attachments=False)
