"""Tests for chime_actors.persister.writer: PersistWriter over a MemoryStore."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from chime_actors.ids import format_message_id
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister import writer as writer_module
from chime_actors.persister.writer import PersistWriter
from chime_actors.records import (
    ChangeKind,
    ChangeRecord,
    ChannelEvent,
    Deliveries,
    PersistBatch,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.storage import MemoryStore
from tests.support.polling import until
from tests.support.posts import PostLog

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
GATEWAYS = ("gateway-1", "gateway-2")


class CountingStore(MemoryStore):
    """A MemoryStore that counts appends and can raise a bug (not a StoreError)."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []
        self.crash_next = False

    async def append(self, messages: Sequence[ChannelEvent]) -> None:
        if self.crash_next:
            self.crash_next = False
            raise RuntimeError("store bug")
        await super().append(messages)
        self.appends.append(len(messages))


class Posts(PostLog):
    """The writer's ``post``, with the two views the tests read."""

    def results(self, address: Any) -> list[PersistResult]:
        return self.of(PersistResult, to=address)

    def deliveries(self, address: Any) -> list[Deliveries]:
        return self.of(Deliveries, to=address)


def rec(token: int, channel: str = "general", client_msg_id: str | None = None) -> SendRecord:
    return SendRecord(
        token=token,
        channel_id=channel,
        user_id="alice",
        content=f"m{token}",
        client_msg_id=client_msg_id,
    )


def change(
    token: int,
    kind: ChangeKind,
    target: int,
    *,
    user: str = "alice",
    content: str | None = None,
    emoji: str | None = None,
    retried: bool = False,
) -> ChangeRecord:
    return ChangeRecord(
        token=token,
        channel_id="general",
        message_id=format_message_id(target),
        user_id=user,
        kind=kind,
        content=content,
        emoji=emoji,
        retried=retried,
    )


def batch(batch_id: int, *records: SendRecord | ChangeRecord, gateway: int = 1) -> PersistBatch:
    return PersistBatch(batch_id, gateway, records)


def ids(outcomes: Sequence[SendOutcome]) -> list[int | None]:
    return [o.message.seq if o.message is not None else None for o in outcomes]


Scenario = Callable[[PersistWriter, CountingStore, Posts], Awaitable[None]]


def run(scenario: Scenario, *, start: bool = True, **options: Any) -> None:
    """Run ``scenario`` with an open store and a writer (given ``options``); close both."""

    async def main() -> None:
        store = CountingStore()
        await store.open()
        posts = Posts()
        writer = PersistWriter(
            store, posts, ChimeMetrics.register(MetricsRegistry()), clock=lambda: NOW, **options
        )
        writer.set_gateways(GATEWAYS)
        if start:
            writer.start()
        try:
            await scenario(writer, store, posts)
        finally:
            await writer.stop()
            await store.close()

    asyncio.run(main())


def test_batch_is_acked_and_delivered_to_every_gateway() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(10, rec(1), rec(2)), "reply")
        await until(lambda: len(posts.sent) == 3, interval=0)
        (result,) = posts.results("reply")
        assert result.batch_id == 10
        assert [o.token for o in result.outcomes] == [1, 2]
        assert ids(result.outcomes) == [1, 2]
        assert all(o.error_code is None and not o.duplicate for o in result.outcomes)
        messages = tuple(o.message for o in result.outcomes)
        for gateway in GATEWAYS:
            assert posts.deliveries(gateway) == [Deliveries(messages)]  # type: ignore[arg-type]
        # Durable before it was acked.
        page = await store.history("general")
        assert page.messages == messages
        assert page.messages[0].created_at == "2026-11-27T10:00:00.000Z"

    run(scenario)


def test_queued_batches_are_written_in_one_group_commit() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        # Submitted before the write loop first runs: all three are queued.
        writer.submit(batch(1, rec(1), gateway=1), "reply-1")
        writer.submit(batch(2, rec(2, "random"), gateway=2), "reply-2")
        writer.submit(batch(3, rec(3), gateway=1), "reply-3")
        assert writer.queue_depth == 3
        await until(lambda: len(posts.results("reply-3")) == 1, interval=0)
        assert store.appends == [3]
        assert ids(posts.results("reply-1")[0].outcomes) == [1]
        assert ids(posts.results("reply-2")[0].outcomes) == [1]
        assert ids(posts.results("reply-3")[0].outcomes) == [2]
        for gateway in GATEWAYS:
            (deliveries,) = posts.deliveries(gateway)
            assert [(m.channel_id, m.seq) for m in deliveries.messages] == [
                ("general", 1),
                ("random", 1),
                ("general", 2),
            ]

    run(scenario)


def test_group_commit_is_bounded() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        for n in range(1, 4):
            writer.submit(batch(n, rec(n)), f"reply-{n}")
        await until(lambda: len(posts.results("reply-3")) == 1, interval=0)
        assert store.appends == [2, 1]

    run(scenario, max_records_per_write=2)


def test_store_failure_answers_unavailable_and_keeps_ids_contiguous() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        store.fail_next(1)  # the append of the next write
        writer.submit(batch(2, rec(2), rec(3)), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        failed = posts.results("reply")[1]
        assert [o.error_code for o in failed.outcomes] == ["unavailable", "unavailable"]
        assert all(o.message is None for o in failed.outcomes)
        assert len(posts.deliveries(GATEWAYS[0])) == 1  # nothing delivered for the failure
        writer.submit(batch(3, rec(4)), "reply")
        await until(lambda: len(posts.results("reply")) == 3, interval=0)
        assert ids(posts.results("reply")[2].outcomes) == [2]
        assert [m.seq for m in (await store.history("general")).messages] == [1, 2]

    run(scenario)


def test_load_failure_answers_unavailable() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        store.fail_next(1)  # load_channel_state
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        (outcome,) = posts.results("reply")[0].outcomes
        assert outcome.error_code == "unavailable"
        assert store.appends == []
        writer.submit(batch(2, rec(2)), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        assert ids(posts.results("reply")[1].outcomes) == [1]

    run(scenario)


def test_duplicate_of_a_stored_message_is_acked_while_storage_is_down() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1, client_msg_id="c-1")), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        original = posts.results("reply")[0].outcomes[0].message
        store.set_available(False)
        writer.submit(batch(2, rec(2, client_msg_id="c-1"), rec(3, client_msg_id="c-2")), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        dup, new = posts.results("reply")[1].outcomes
        assert original is not None and dup.message is not None
        # Acked as the original: its id and time (the cache keeps no content).
        assert (dup.token, dup.duplicate) == (2, True)
        assert (dup.message.message_id, dup.message.created_at, dup.message.client_msg_id) == (
            original.message_id,
            original.created_at,
            original.client_msg_id,
        )
        assert new.error_code == "unavailable"
        assert len(posts.deliveries(GATEWAYS[0])) == 1  # duplicates are never re-delivered

    run(scenario)


def test_duplicate_only_write_touches_no_storage() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1, client_msg_id="c-1")), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        store.set_available(False)
        writer.submit(batch(2, rec(2, client_msg_id="c-1")), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        (outcome,) = posts.results("reply")[1].outcomes
        assert outcome.duplicate and outcome.message is not None
        assert outcome.message.seq == 1

    run(scenario)


def test_repeat_within_one_write_shares_its_fate() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")  # loads the channel
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        writer.submit(batch(2, rec(2, client_msg_id="c-1"), rec(3, client_msg_id="c-1")), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        first, repeat = posts.results("reply")[1].outcomes
        assert first.message is not None and not first.duplicate
        assert repeat == SendOutcome(3, message=first.message, duplicate=True)
        store.fail_next(1)
        writer.submit(batch(3, rec(4, client_msg_id="c-9"), rec(5, client_msg_id="c-9")), "reply")
        await until(lambda: len(posts.results("reply")) == 3, interval=0)
        outcomes = posts.results("reply")[2].outcomes
        assert [o.error_code for o in outcomes] == ["unavailable", "unavailable"]

    run(scenario)


def test_restarted_writer_dedupes_from_storage() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        metrics = ChimeMetrics.register(MetricsRegistry())
        for attempt in (1, 2):
            posts = Posts()
            writer = PersistWriter(store, posts, metrics, clock=lambda: NOW)
            writer.start()
            writer.submit(batch(attempt, rec(attempt, client_msg_id="c-1")), "reply")
            await writer.stop()  # drains the inbox first
            (outcome,) = posts.results("reply")[0].outcomes
            assert outcome.message is not None and outcome.message.seq == 1
            assert outcome.duplicate is (attempt == 2)
        assert store.message_count("general") == 1
        await store.close()

    asyncio.run(main())


def test_full_inbox_answers_unavailable_at_once() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        for n in range(writer_module.INBOX_BATCHES):
            writer.submit(batch(n, rec(n)), "queued")
        assert posts.sent == []
        writer.submit(batch(99_999, rec(99_999), rec(100_000)), "late")
        assert posts.sent == [
            (
                "late",
                PersistResult(
                    99_999,
                    (
                        SendOutcome(99_999, error_code="unavailable", error_message=_OVERLOADED),
                        SendOutcome(100_000, error_code="unavailable", error_message=_OVERLOADED),
                    ),
                ),
            )
        ]
        assert writer.queue_depth == writer_module.INBOX_BATCHES
        writer.start()  # stop() then drains the queued batches

    run(scenario, start=False)


_OVERLOADED = "persister overloaded"


def test_store_bug_answers_unavailable_and_gives_the_ids_back() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        store.crash_next = True
        writer.submit(batch(2, rec(2)), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        (outcome,) = posts.results("reply")[1].outcomes
        assert outcome.error_code == "unavailable"
        assert outcome.error_message == "internal error while storing"
        # The writer goes on, and the failed id is reused: no gap.
        writer.submit(batch(3, rec(3)), "reply")
        await until(lambda: len(posts.results("reply")) == 3, interval=0)
        assert ids(posts.results("reply")[2].outcomes) == [2]
        assert [m.seq for m in (await store.history("general")).messages] == [1, 2]

    run(scenario)


def test_message_ids_are_the_wire_format() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        message = posts.results("reply")[0].outcomes[0].message
        assert message is not None and message.message_id == format_message_id(1)

    run(scenario)


def test_stop_without_start_is_a_no_op() -> None:
    run(lambda writer, store, posts: asyncio.sleep(0), start=False)


# --- changes (edits, deletes, reactions) ----------------------------------------------


def test_changes_are_checked_numbered_stored_and_delivered_with_the_sends() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1), rec(2)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        writer.submit(
            batch(
                2,
                change(3, ChangeKind.EDIT, 1, content="edited"),
                rec(4),
                change(5, ChangeKind.REACTION_ADD, 2, user="bob", emoji="👍"),
                change(6, ChangeKind.DELETE, 2),
            ),
            "reply",
        )
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        outcomes = posts.results("reply")[1].outcomes
        assert [o.error_code for o in outcomes] == [None] * 4
        edit, message, reaction, delete = outcomes
        assert edit.change is not None and edit.change.event_id == format_message_id(3)
        assert edit.change.message is not None
        assert (edit.change.message.content, edit.change.message.edited_at) == (
            "edited",
            "2026-11-27T10:00:00.000Z",
        )
        assert ids([message]) == [4]
        assert reaction.change is not None and reaction.change.seq == 5
        assert delete.change is not None and delete.change.seq == 6
        # One group commit, delivered in the channel's order.
        assert store.appends == [2, 4]
        (_, deliveries) = posts.deliveries(GATEWAYS[0])
        assert [e.seq for e in deliveries.messages] == [3, 4, 5, 6]
        assert (await store.history("general")).messages[0].content == "edited"
        assert [m.seq for m in (await store.history("general")).messages] == [1, 4]

    run(scenario)


def test_refused_changes_take_no_id() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        writer.submit(
            batch(
                2,
                change(2, ChangeKind.EDIT, 1, user="mallory", content="mine now"),
                change(3, ChangeKind.DELETE, 1, user="mallory"),
                change(4, ChangeKind.EDIT, 9, content="nothing there"),
                change(5, ChangeKind.REACTION_ADD, 9, emoji="👍"),
                change(6, ChangeKind.DELETE, 1),
                change(7, ChangeKind.EDIT, 1, content="after the delete"),
            ),
            "reply",
        )
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        outcomes = posts.results("reply")[1].outcomes
        codes = [o.error_code for o in outcomes]
        assert codes == ["forbidden", "forbidden", "not_found", "not_found", None, "not_found"]
        assert outcomes[4].change is not None and outcomes[4].change.seq == 2
        assert await store.last_seq("general") == 2
        # The refusals are only the requester's business: nothing else is delivered.
        (_, deliveries) = posts.deliveries(GATEWAYS[0])
        assert [e.seq for e in deliveries.messages] == [2]

    run(scenario)


def test_reactions_are_idempotent() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        add = ChangeKind.REACTION_ADD
        remove = ChangeKind.REACTION_REMOVE
        writer.submit(
            batch(2, change(2, add, 1, emoji="👍"), change(3, add, 1, emoji="👍")), "reply"
        )
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        writer.submit(batch(3, change(4, add, 1, emoji="👍")), "reply")
        await until(lambda: len(posts.results("reply")) == 3, interval=0)
        writer.submit(
            batch(
                4,
                change(5, remove, 1, emoji="👍"),
                change(6, remove, 1, emoji="👍"),
                change(7, remove, 1, emoji="🎉"),
            ),
            "reply",
        )
        await until(lambda: len(posts.results("reply")) == 4, interval=0)
        done = [o for r in posts.results("reply")[1:] for o in r.outcomes]
        assert all(o.error_code is None for o in done)
        # Only the first add and the first remove changed anything.
        assert [o.change.seq if o.change else None for o in done] == [2, None, None, 3, None, None]
        assert await store.last_seq("general") == 3
        assert dict(await store.reactions("general", [format_message_id(1)])) == {}

    run(scenario)


def test_a_retried_delete_of_a_message_already_gone_is_done() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        writer.submit(batch(2, change(2, ChangeKind.DELETE, 1)), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        # The first attempt landed, its answer was lost with its persister.
        writer.submit(batch(3, change(3, ChangeKind.DELETE, 1, retried=True)), "reply")
        writer.submit(batch(4, change(4, ChangeKind.DELETE, 1)), "reply")
        await until(lambda: len(posts.results("reply")) == 4, interval=0)
        (retried,) = posts.results("reply")[2].outcomes
        assert (retried.error_code, retried.change) == (None, None)
        assert posts.results("reply")[3].outcomes[0].error_code == "not_found"
        assert await store.last_seq("general") == 2

    run(scenario)


def test_a_change_whose_check_cannot_read_storage_is_unavailable() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        store.fail_next(1)  # the check's read of the message
        writer.submit(batch(2, change(2, ChangeKind.EDIT, 1, content="x"), rec(3)), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        edit, send = posts.results("reply")[1].outcomes
        assert edit.error_code == "unavailable"
        assert ids([send]) == [2]

    run(scenario)


def test_a_failed_write_answers_changes_unavailable_and_gives_their_ids_back() -> None:
    async def scenario(writer: PersistWriter, store: CountingStore, posts: Posts) -> None:
        writer.submit(batch(1, rec(1)), "reply")
        await until(lambda: len(posts.results("reply")) == 1, interval=0)
        store.crash_next = True
        writer.submit(batch(2, change(2, ChangeKind.EDIT, 1, content="x")), "reply")
        await until(lambda: len(posts.results("reply")) == 2, interval=0)
        assert posts.results("reply")[1].outcomes[0].error_code == "unavailable"
        writer.submit(batch(3, change(3, ChangeKind.EDIT, 1, content="y")), "reply")
        await until(lambda: len(posts.results("reply")) == 3, interval=0)
        (edit,) = posts.results("reply")[2].outcomes
        assert edit.change is not None and edit.change.seq == 2

    run(scenario)
