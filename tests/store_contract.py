"""The behaviour every ``MessageStore`` must show, as a reusable test base class.

Use it by subclassing and providing a ``make_store`` fixture that returns a
factory of fresh, unopened stores::

    class TestSqliteStoreContract(StoreContract):
        @pytest.fixture
        def make_store(self, tmp_path: Path) -> StoreFactory:
            return lambda: SqliteStore(tmp_path / "chime.db")

Each test opens one store, runs an async scenario on a fresh event loop
(pytest-asyncio is not used) and always closes the store, so no thread or
connection outlives the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from chime_actors.errors import FencedOut, MessageNotFound, StoreError, StoreUnavailable
from chime_actors.ids import format_message_id
from chime_actors.records import ChangeKind, ChannelEvent, ChimeMessage, MessageChange, Metadata
from chime_actors.storage.store import MessageStore, ReactionMap

StoreFactory = Callable[[], MessageStore]
Scenario = Callable[[MessageStore], Awaitable[None]]

CHANNEL = "general"


def mid(seq: int) -> str:
    """Shorthand for the wire id of ``seq``."""
    return format_message_id(seq)


def created_at(seq: int) -> str:
    """A deterministic timestamp that grows with ``seq`` (one second apart)."""
    return f"2026-11-27T10:{seq // 60:02d}:{seq % 60:02d}.000Z"


def make_message(
    seq: int,
    *,
    channel: str = CHANNEL,
    user: str = "alice",
    content: str | None = None,
    thread_id: str | None = None,
    client_msg_id: str | None = None,
    metadata: Metadata = (),
    channel_name: str | None = None,
) -> ChimeMessage:
    """A message as the sequencer would hand it to ``append``."""
    return ChimeMessage(
        channel_id=channel,
        message_id=mid(seq),
        user_id=user,
        content=content if content is not None else f"message {seq}",
        created_at=created_at(seq),
        metadata=metadata,
        thread_id=thread_id,
        client_msg_id=client_msg_id,
        channel_name=channel_name,
    )


def edit(seq: int, message: ChimeMessage, content: str) -> MessageChange:
    """An edit of ``message`` by its author, at position ``seq``."""
    at = created_at(seq)
    edited = msgspec.structs.replace(message, content=content, edited_at=at)
    return MessageChange(
        message.channel_id,
        mid(seq),
        ChangeKind.EDIT,
        message.message_id,
        message.user_id,
        at,
        message=edited,
    )


def delete(seq: int, target: int, *, user: str = "alice", channel: str = CHANNEL) -> MessageChange:
    """A delete of message ``target`` at position ``seq``."""
    return MessageChange(channel, mid(seq), ChangeKind.DELETE, mid(target), user, created_at(seq))


def react(
    seq: int,
    target: int,
    emoji: str,
    user: str,
    *,
    add: bool = True,
    channel: str = CHANNEL,
) -> MessageChange:
    """A reaction added (or removed) on message ``target`` at position ``seq``."""
    kind = ChangeKind.REACTION_ADD if add else ChangeKind.REACTION_REMOVE
    return MessageChange(channel, mid(seq), kind, mid(target), user, created_at(seq), emoji=emoji)


def batch(
    first: int, last: int, *, channel: str = CHANNEL, user: str = "alice"
) -> list[ChimeMessage]:
    """Messages ``first..last`` (inclusive) of a channel, all sent by ``user``."""
    return [make_message(seq, channel=channel, user=user) for seq in range(first, last + 1)]


def seqs(events: tuple[ChannelEvent, ...]) -> list[int]:
    """The sequence numbers of ``events``, in their order."""
    return [event.seq for event in events]


def run_with_store(make_store: StoreFactory, scenario: Scenario) -> None:
    """Open a store, run ``scenario`` on it in a new event loop, close it."""

    async def main() -> None:
        store = make_store()
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(main())


class StoreContract:
    """Contract tests; a ``Test*`` subclass supplies the ``make_store`` fixture."""

    #: True when ``append`` refuses a sequence number stored by an earlier append
    #: and a failed batch stores nothing. Cassandra upserts, so its store sets
    #: False and the sequencer alone guarantees unique numbers there.
    atomic_append: bool = True

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError("subclasses provide a make_store fixture")

    # --- empty state, ping ------------------------------------------------------

    def test_empty_channel(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.ping()
            assert await store.last_seq(CHANNEL) == 0
            state = await store.load_channel_state(CHANNEL, dedupe_since=created_at(0))
            assert state.last_seq == 0
            assert dict(state.client_ids) == {}
            for page in (
                await store.history(CHANNEL),
                await store.history(CHANNEL, before=mid(5)),
                await store.history(CHANNEL, after=mid(0)),
                await store.history(CHANNEL, after=mid(0), before=mid(9)),
                await store.history(CHANNEL, thread_id=mid(1)),
            ):
                assert page.messages == ()
                assert page.has_more is False
            assert await store.events_range(CHANNEL, after_seq=0, up_to_seq=10) == ()
            assert dict(await store.reactions(CHANNEL, [mid(1)])) == {}
            assert await store.unread_counts("alice", [CHANNEL], limit=10) == {CHANNEL: 0}
            with pytest.raises(MessageNotFound):
                await store.get_message(CHANNEL, mid(1))

        run_with_store(make_store, scenario)

    # --- append -----------------------------------------------------------------

    def test_append_round_trips_every_field(self, make_store: StoreFactory) -> None:
        original = make_message(
            1,
            user="bob",
            content="héllo 👋 \"quoted\" 'single' \n newline",
            client_msg_id="c-1",
            metadata=(("z", "last"), ("a", "ünïcode"), ("empty", "")),
            channel_name="General",
        )
        reply = make_message(2, thread_id=mid(1))

        async def scenario(store: MessageStore) -> None:
            await store.append([original, reply])
            assert await store.get_message(CHANNEL, mid(1)) == original
            assert await store.get_message(CHANNEL, mid(2)) == reply
            page = await store.history(CHANNEL)
            assert page.messages == (original, reply)
            assert page.has_more is False

        run_with_store(make_store, scenario)

    def test_append_empty_batch_is_a_no_op(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append([])
            assert await store.last_seq(CHANNEL) == 0

        run_with_store(make_store, scenario)

    def test_last_seq_follows_appends(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 3))
            assert await store.last_seq(CHANNEL) == 3
            await store.append(batch(4, 4))
            assert await store.last_seq(CHANNEL) == 4
            assert (await store.load_channel_state(CHANNEL, dedupe_since="")).last_seq == 4

        run_with_store(make_store, scenario)

    def test_channels_are_independent(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            # One batch may span channels; each has its own sequence.
            await store.append(batch(1, 3) + batch(1, 2, channel="random"))
            assert await store.last_seq(CHANNEL) == 3
            assert await store.last_seq("random") == 2
            assert await store.last_seq("empty") == 0
            page = await store.history("random")
            assert seqs(page.messages) == [1, 2]
            assert {m.channel_id for m in page.messages} == {"random"}
            await store.append([delete(3, 1, channel="random")])
            assert (await store.get_message(CHANNEL, mid(1))).channel_id == CHANNEL

        run_with_store(make_store, scenario)

    def test_duplicate_seq_is_refused_and_the_batch_stores_nothing(
        self, make_store: StoreFactory
    ) -> None:
        if not self.atomic_append:
            pytest.skip("this store upserts: a taken seq is not refused")

        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 2))
            bad_batch = [
                make_message(3, client_msg_id="c-3"),
                make_message(2, content="overwrite?", client_msg_id="c-2"),
                make_message(4),
            ]
            with pytest.raises(StoreError) as raised:
                await store.append(bad_batch)
            # Not "try again later": two sequencers is a bug, not an outage.
            assert not isinstance(raised.value, StoreUnavailable)
            assert await store.last_seq(CHANNEL) == 2
            assert (await store.get_message(CHANNEL, mid(2))).content == "message 2"
            with pytest.raises(MessageNotFound):
                await store.get_message(CHANNEL, mid(3))
            state = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert dict(state.client_ids) == {}
            # The store is still healthy afterwards.
            await store.append(batch(3, 3))
            assert await store.last_seq(CHANNEL) == 3

        run_with_store(make_store, scenario)

    def test_duplicate_seq_inside_one_batch_is_refused(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            with pytest.raises(StoreError):
                await store.append([make_message(1), make_message(2), make_message(2)])
            assert await store.last_seq(CHANNEL) == 0
            assert (await store.history(CHANNEL)).messages == ()

        run_with_store(make_store, scenario)

    # --- dedupe state -----------------------------------------------------------

    def test_channel_state_has_client_ids_since_the_cutoff(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(
                [
                    make_message(1, user="alice", client_msg_id="old"),
                    make_message(2, user="alice", client_msg_id="c-1"),
                    make_message(3, user="bob", client_msg_id="c-1"),  # same id, other user
                    make_message(4, user="bob"),  # no client id: nothing to dedupe
                    make_message(1, channel="random", user="alice", client_msg_id="c-9"),
                ]
            )
            state = await store.load_channel_state(CHANNEL, dedupe_since=created_at(2))
            assert state.last_seq == 4
            assert dict(state.client_ids) == {
                ("alice", "c-1"): make_message(2, user="alice", client_msg_id="c-1"),
                ("bob", "c-1"): make_message(3, user="bob", client_msg_id="c-1"),
            }
            everything = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert set(everything.client_ids) == {
                ("alice", "old"),
                ("alice", "c-1"),
                ("bob", "c-1"),
            }
            later = await store.load_channel_state(CHANNEL, dedupe_since=created_at(5))
            assert dict(later.client_ids) == {}
            assert later.last_seq == 4

        run_with_store(make_store, scenario)

    def test_a_reused_client_id_points_at_the_newest_send(self, make_store: StoreFactory) -> None:
        # The sequencer only stores a reused key again once the old send left
        # the dedupe window; from then on the key means the new message.
        async def scenario(store: MessageStore) -> None:
            await store.append([make_message(1, client_msg_id="c-1")])
            await store.append([make_message(2, client_msg_id="c-1", content="again")])
            state = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert state.client_ids[("alice", "c-1")].message_id == mid(2)
            recent = await store.load_channel_state(CHANNEL, dedupe_since=created_at(2))
            assert recent.client_ids[("alice", "c-1")].content == "again"

        run_with_store(make_store, scenario)

    def test_channel_state_keeps_deleted_and_shows_edited_sends(
        self, make_store: StoreFactory
    ) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(
                [make_message(1, client_msg_id="c-1"), make_message(2, client_msg_id="c-2")]
            )
            await store.append([delete(3, 1), edit(4, make_message(2), "edited")])
            state = await store.load_channel_state(CHANNEL, dedupe_since="")
            assert state.last_seq == 4
            assert state.client_ids[("alice", "c-1")].message_id == mid(1)
            assert state.client_ids[("alice", "c-2")].content == "edited"

        run_with_store(make_store, scenario)

    # --- history ----------------------------------------------------------------

    def test_history_newest_page(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 5))
            page = await store.history(CHANNEL, limit=2)
            assert (seqs(page.messages), page.has_more) == ([4, 5], True)
            page = await store.history(CHANNEL, limit=5)
            assert (seqs(page.messages), page.has_more) == ([1, 2, 3, 4, 5], False)
            page = await store.history(CHANNEL, limit=100)
            assert (seqs(page.messages), page.has_more) == ([1, 2, 3, 4, 5], False)
            page = await store.history(CHANNEL)  # default limit 50
            assert seqs(page.messages) == [1, 2, 3, 4, 5]

        run_with_store(make_store, scenario)

    def test_history_before(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 5))
            page = await store.history(CHANNEL, before=mid(4), limit=2)
            assert (seqs(page.messages), page.has_more) == ([2, 3], True)
            page = await store.history(CHANNEL, before=mid(3), limit=2)
            assert (seqs(page.messages), page.has_more) == ([1, 2], False)
            page = await store.history(CHANNEL, before=mid(1), limit=2)
            assert (seqs(page.messages), page.has_more) == ([], False)
            # A cursor beyond the end is fine.
            page = await store.history(CHANNEL, before=mid(99), limit=3)
            assert (seqs(page.messages), page.has_more) == ([3, 4, 5], True)

        run_with_store(make_store, scenario)

    def test_history_after(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 5))
            page = await store.history(CHANNEL, after=mid(1), limit=2)
            assert (seqs(page.messages), page.has_more) == ([2, 3], True)
            page = await store.history(CHANNEL, after=mid(3), limit=2)
            assert (seqs(page.messages), page.has_more) == ([4, 5], False)
            page = await store.history(CHANNEL, after=mid(5), limit=2)
            assert (seqs(page.messages), page.has_more) == ([], False)
            # Resume from "nothing seen": the oldest first.
            page = await store.history(CHANNEL, after=mid(0), limit=3)
            assert (seqs(page.messages), page.has_more) == ([1, 2, 3], True)

        run_with_store(make_store, scenario)

    def test_history_between(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 6))
            page = await store.history(CHANNEL, after=mid(1), before=mid(6), limit=2)
            assert (seqs(page.messages), page.has_more) == ([2, 3], True)
            page = await store.history(CHANNEL, after=mid(1), before=mid(6), limit=4)
            assert (seqs(page.messages), page.has_more) == ([2, 3, 4, 5], False)
            page = await store.history(CHANNEL, after=mid(3), before=mid(5), limit=10)
            assert (seqs(page.messages), page.has_more) == ([4], False)
            page = await store.history(CHANNEL, after=mid(3), before=mid(4))
            assert (seqs(page.messages), page.has_more) == ([], False)
            page = await store.history(CHANNEL, after=mid(5), before=mid(2))
            assert (seqs(page.messages), page.has_more) == ([], False)

        run_with_store(make_store, scenario)

    def test_paging_visits_every_message_once(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 23))
            backward: list[int] = []
            page = await store.history(CHANNEL, limit=5)
            backward[:0] = seqs(page.messages)
            while page.has_more:
                page = await store.history(CHANNEL, before=mid(backward[0]), limit=5)
                backward[:0] = seqs(page.messages)
            assert backward == list(range(1, 24))

            forward: list[int] = []
            cursor = mid(0)
            while True:
                page = await store.history(CHANNEL, after=cursor, limit=5)
                forward += seqs(page.messages)
                if not page.has_more:
                    break
                cursor = page.messages[-1].message_id
            assert forward == list(range(1, 24))

        run_with_store(make_store, scenario)

    def test_history_rejects_bad_arguments(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            with pytest.raises(ValueError):
                await store.history(CHANNEL, limit=0)
            with pytest.raises(ValueError):
                await store.history(CHANNEL, before="not-an-id")
            with pytest.raises(ValueError):
                await store.history(CHANNEL, after="42")

        run_with_store(make_store, scenario)

    def test_history_of_a_thread(self, make_store: StoreFactory) -> None:
        root = mid(2)

        async def scenario(store: MessageStore) -> None:
            await store.append(
                [
                    make_message(1),
                    make_message(2),  # the root
                    make_message(3, thread_id=root),
                    make_message(4),
                    make_message(5, thread_id=mid(1)),  # another thread
                    make_message(6, thread_id=root),
                    make_message(7, thread_id=root),
                ]
            )
            page = await store.history(CHANNEL, thread_id=root)
            assert (seqs(page.messages), page.has_more) == ([2, 3, 6, 7], False)
            page = await store.history(CHANNEL, thread_id=root, limit=2)
            assert (seqs(page.messages), page.has_more) == ([6, 7], True)
            page = await store.history(CHANNEL, thread_id=root, before=mid(6), limit=2)
            assert (seqs(page.messages), page.has_more) == ([2, 3], False)
            page = await store.history(CHANNEL, thread_id=root, after=mid(2), limit=2)
            assert (seqs(page.messages), page.has_more) == ([3, 6], True)
            page = await store.history(CHANNEL, thread_id=mid(1))
            assert seqs(page.messages) == [1, 5]
            # The whole channel still holds every message.
            assert seqs((await store.history(CHANNEL)).messages) == [1, 2, 3, 4, 5, 6, 7]
            # A thread id that is not a message id matches nothing.
            assert (await store.history(CHANNEL, thread_id="nope")).messages == ()

        run_with_store(make_store, scenario)

    # --- deletes ----------------------------------------------------------------

    def test_deleted_messages_are_never_returned(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append([*batch(1, 3), make_message(4, thread_id=mid(1))])
            await store.append([delete(5, 2), delete(6, 4)])
            page = await store.history(CHANNEL, limit=2)
            # has_more counts neither deleted rows nor the changes' rows.
            assert (seqs(page.messages), page.has_more) == ([1, 3], False)
            page = await store.history(CHANNEL, after=mid(0), limit=1)
            assert (seqs(page.messages), page.has_more) == ([1], True)
            page = await store.history(CHANNEL, after=mid(1), limit=1)
            assert (seqs(page.messages), page.has_more) == ([3], False)
            page = await store.history(CHANNEL, before=mid(3), limit=5)
            assert seqs(page.messages) == [1]
            assert seqs((await store.history(CHANNEL, thread_id=mid(1))).messages) == [1]
            assert seqs(await store.events_range(CHANNEL, after_seq=0, up_to_seq=4)) == [1, 3]
            assert await store.events_range(CHANNEL, after_seq=4, up_to_seq=6) == (
                delete(5, 2),
                delete(6, 4),
            )
            for seq in (2, 5):  # neither a deleted message nor a change is a message
                with pytest.raises(MessageNotFound):
                    await store.get_message(CHANNEL, mid(seq))
            # The numbers stay taken: ids remain contiguous.
            assert await store.last_seq(CHANNEL) == 6
            if self.atomic_append:
                for taken in (make_message(4), make_message(6)):
                    with pytest.raises(StoreError):
                        await store.append([taken])

        run_with_store(make_store, scenario)

    def test_changes_of_messages_that_are_not_live_change_nothing(
        self, make_store: StoreFactory
    ) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 1))
            # Unknown targets (one far above the head) and another channel's.
            ghost = make_message(9)
            await store.append(
                [
                    edit(2, ghost, "x"),
                    delete(3, 9),
                    react(4, 9, "👍", "bob"),
                    delete(5, 1, channel="random"),
                ]
            )
            assert await store.last_seq(CHANNEL) == 4  # no row appeared at 9
            assert await store.get_message(CHANNEL, mid(1)) == make_message(1)
            assert seqs(await store.events_range(CHANNEL, after_seq=0, up_to_seq=9)) == [
                1,
                2,
                3,
                4,
            ]
            assert await store.last_seq("random") == 5
            await store.append([delete(6, 1)])
            await store.append([edit(7, make_message(1), "too late"), react(8, 1, "👍", "bob")])
            with pytest.raises(MessageNotFound):
                await store.get_message(CHANNEL, mid(1))
            assert (await store.history(CHANNEL)).messages == ()
            assert _plain(await store.reactions(CHANNEL, [mid(1)])) == {}

        run_with_store(make_store, scenario)

    # --- edits ------------------------------------------------------------------

    def test_edits_are_visible_everywhere(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 2))
            first = edit(3, make_message(1), "first edit")
            second = edit(4, make_message(1), "second edit")
            await store.append([first])
            await store.append([second])
            expected = msgspec.structs.replace(
                make_message(1), content="second edit", edited_at=created_at(4)
            )
            assert await store.get_message(CHANNEL, mid(1)) == expected
            assert (await store.history(CHANNEL)).messages[0] == expected
            got = await store.events_range(CHANNEL, after_seq=0, up_to_seq=4)
            assert got == (expected, make_message(2), first, second)
            untouched = await store.get_message(CHANNEL, mid(2))
            assert (untouched.content, untouched.edited_at) == ("message 2", None)

        run_with_store(make_store, scenario)

    def test_every_kind_of_change_round_trips(self, make_store: StoreFactory) -> None:
        reply = make_message(
            2,
            user="bob",
            thread_id=mid(1),
            client_msg_id="c-2",
            metadata=(("k", "v"),),
            channel_name="General",
        )
        changes = [
            edit(3, reply, "edited 👋"),
            react(4, 1, "🎉", "carol"),
            react(5, 1, "🎉", "carol", add=False),
            delete(6, 2, user="bob"),
        ]

        async def scenario(store: MessageStore) -> None:
            await store.append([make_message(1), reply])
            await store.append(changes)
            assert await store.events_range(CHANNEL, after_seq=2, up_to_seq=6) == tuple(changes)
            # A thread page shows its live replies, never the rows of changes.
            page = await store.history(CHANNEL, thread_id=mid(1))
            assert seqs(page.messages) == [1]

        run_with_store(make_store, scenario)

    def test_changes_of_one_batch_apply_in_order(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 2))
            await store.append(
                [
                    react(3, 1, "👍", "bob"),
                    react(4, 1, "👍", "bob", add=False),
                    react(5, 1, "🎉", "bob"),
                    edit(6, make_message(2), "edited"),
                    delete(7, 2),
                ]
            )
            assert _plain(await store.reactions(CHANNEL, [mid(1)])) == {mid(1): {"🎉": ("bob",)}}
            assert seqs((await store.history(CHANNEL)).messages) == [1]

        run_with_store(make_store, scenario)

    # --- gap filling ------------------------------------------------------------

    def test_events_range(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 6))
            got = await store.events_range(CHANNEL, after_seq=2, up_to_seq=4)
            assert got == tuple(batch(3, 4))
            assert seqs(await store.events_range(CHANNEL, after_seq=0, up_to_seq=1)) == [1]
            assert seqs(await store.events_range(CHANNEL, after_seq=5, up_to_seq=9)) == [6]
            assert await store.events_range(CHANNEL, after_seq=6, up_to_seq=9) == ()
            assert await store.events_range(CHANNEL, after_seq=4, up_to_seq=4) == ()
            assert await store.events_range("random", after_seq=0, up_to_seq=9) == ()
            await store.append([react(7, 6, "👍", "bob"), make_message(8)])
            assert seqs(await store.events_range(CHANNEL, after_seq=5, up_to_seq=9)) == [6, 7, 8]

        run_with_store(make_store, scenario)

    # --- reactions --------------------------------------------------------------

    def test_reactions(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 3) + batch(1, 1, channel="random"))
            await store.append(
                [
                    react(4, 1, "👍", "carol"),
                    react(5, 1, "👍", "alice"),
                    react(6, 1, "👍", "alice"),  # idempotent
                    react(7, 1, "🎉", "bob"),
                    react(8, 2, "👍", "bob"),
                    react(2, 1, "👍", "zed", channel="random"),
                ]
            )
            got = await store.reactions(CHANNEL, [mid(1), mid(2), mid(3), mid(9)])
            assert _plain(got) == {
                mid(1): {"🎉": ("bob",), "👍": ("alice", "carol")},
                mid(2): {"👍": ("bob",)},
            }
            assert list(got[mid(1)]) == sorted(["👍", "🎉"])  # code point order
            assert _plain(await store.reactions(CHANNEL, [mid(2)])) == {mid(2): {"👍": ("bob",)}}
            assert _plain(await store.reactions(CHANNEL, [])) == {}

            await store.append(
                [
                    react(9, 1, "👍", "alice", add=False),
                    react(10, 1, "👍", "alice", add=False),  # idempotent
                    react(11, 2, "👍", "bob", add=False),
                    react(12, 3, "👀", "nobody", add=False),  # never added
                ]
            )
            assert _plain(await store.reactions(CHANNEL, [mid(1), mid(2), mid(3)])) == {
                mid(1): {"🎉": ("bob",), "👍": ("carol",)},
            }
            assert _plain(await store.reactions("random", [mid(1)])) == {mid(1): {"👍": ("zed",)}}

        run_with_store(make_store, scenario)

    def test_a_delete_drops_the_reactions(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 1))
            await store.append([react(2, 1, "👍", "alice")])
            await store.append([delete(3, 1)])
            assert _plain(await store.reactions(CHANNEL, [mid(1)])) == {}

        run_with_store(make_store, scenario)

    def test_reactions_for_many_messages(self, make_store: StoreFactory) -> None:
        # More ids than one SQL statement may bind.
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 1200))
            await store.append(
                [react(1200 + i, seq, "👍", "alice") for i, seq in enumerate((1, 600, 1200), 1)]
            )
            got = await store.reactions(CHANNEL, [mid(seq) for seq in range(1, 1201)])
            assert sorted(got) == [mid(1), mid(600), mid(1200)]

        run_with_store(make_store, scenario)

    # --- threads ----------------------------------------------------------------

    def test_reply_counts(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(
                [
                    make_message(1),
                    make_message(2, thread_id=mid(1)),
                    make_message(3, thread_id=mid(1)),
                    make_message(4, thread_id=mid(1)),
                    make_message(5, thread_id=mid(5)),  # names itself: no reply
                    make_message(6, thread_id=mid(5)),
                    make_message(7, thread_id=mid(1), channel="random"),
                ]
            )
            await store.append([delete(7, 3), edit(8, make_message(4, thread_id=mid(1)), "e")])
            ids = [mid(seq) for seq in range(1, 9)]
            assert dict(await store.reply_counts(CHANNEL, ids)) == {mid(1): 2, mid(5): 1}
            assert dict(await store.reply_counts(CHANNEL, [])) == {}
            assert dict(await store.reply_counts("random", [mid(1)])) == {mid(1): 1}
            many = [mid(seq) for seq in range(1, 700)]  # more than one statement binds
            assert dict(await store.reply_counts(CHANNEL, many)) == {mid(1): 2, mid(5): 1}

        run_with_store(make_store, scenario)

    # --- read markers -----------------------------------------------------------

    def test_read_markers(self, make_store: StoreFactory) -> None:
        # A marker is read back only through the unread counts it leaves.
        async def unread(store: MessageStore, user_id: str) -> dict[str, int]:
            return await store.unread_counts(user_id, [CHANNEL, "random"], limit=100)

        async def scenario(store: MessageStore) -> None:
            await store.append(
                [*batch(1, 12, user="carol"), *batch(1, 8, channel="random", user="carol")]
            )
            await store.set_read_marker(CHANNEL, "alice", mid(3))
            await store.set_read_marker(CHANNEL, "bob", mid(1))
            await store.set_read_marker("random", "alice", mid(7))
            assert await unread(store, "alice") == {CHANNEL: 9, "random": 1}
            assert await unread(store, "bob") == {CHANNEL: 11, "random": 8}
            await store.set_read_marker(CHANNEL, "alice", mid(12))
            assert await unread(store, "alice") == {CHANNEL: 0, "random": 1}
            # Never backwards: another device reporting an older position loses.
            await store.set_read_marker(CHANNEL, "alice", mid(5))
            assert await unread(store, "alice") == {CHANNEL: 0, "random": 1}

        run_with_store(make_store, scenario)

    # --- channel handlers -------------------------------------------------------

    def test_channel_ids_lists_channels_with_messages(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            assert await store.channel_ids() == ()
            await store.append([*batch(1, 2), *batch(1, 1, channel="b:2")])
            await store.set_read_marker("no-messages", "alice", mid(1))
            assert await store.channel_ids() == ("b:2", CHANNEL)

        run_with_store(make_store, scenario)

    def test_handler_cursors_only_move_forward(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            assert dict(await store.handler_cursors("hook")) == {}
            await store.save_handler_cursors("hook", {CHANNEL: 3, "other": 1, "*": 0})
            await store.save_handler_cursors("bot", {CHANNEL: 9})
            await store.save_handler_cursors("hook", {})
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 3, "other": 1, "*": 0}
            await store.save_handler_cursors("hook", {CHANNEL: 2, "other": 5})
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 3, "other": 5, "*": 0}
            assert dict(await store.handler_cursors("bot")) == {CHANNEL: 9}

        run_with_store(make_store, scenario)

    def test_a_fenced_cursor_write_applies_only_under_the_stored_fence(
        self, make_store: StoreFactory
    ) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.save_handler_cursors("hook", {CHANNEL: 3})  # one host, no lease
            await store.claim_handler_fence("hook", 4)
            await store.claim_handler_fence("hook", 4)  # a repeated claim holds
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 3}
            await store.save_handler_cursors("hook", {CHANNEL: 5, "*": 0}, fence=4)
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 5, "*": 0}
            # A newer holder claims: the old one's writes no longer land.
            await store.claim_handler_fence("hook", 7)
            with pytest.raises(FencedOut) as refused:
                await store.save_handler_cursors("hook", {CHANNEL: 9, "other": 2}, fence=4)
            assert refused.value.fence == 7
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 5, "*": 0}
            # Nor can it claim back with its old fence.
            with pytest.raises(FencedOut) as stale:
                await store.claim_handler_fence("hook", 6)
            assert stale.value.fence == 7
            await store.save_handler_cursors("hook", {CHANNEL: 8}, fence=7)
            await store.save_handler_cursors("hook", {}, fence=4)  # nothing to write
            # Another handler's fence is its own.
            await store.claim_handler_fence("bot", 1)
            await store.save_handler_cursors("bot", {CHANNEL: 1}, fence=1)
            assert dict(await store.handler_cursors("hook")) == {CHANNEL: 8, "*": 0}
            assert dict(await store.handler_cursors("bot")) == {CHANNEL: 1}

        run_with_store(make_store, scenario)

    def test_unread_counts_live_messages_after_the_marker(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 25, user="carol"))
            await store.append(batch(1, 3, channel="quiet", user="carol"))
            # Changes take numbers of their own (26, 27): they are not messages to read.
            await store.append([delete(26, 12), delete(27, 4)])  # 4: before the marker
            await store.set_read_marker(CHANNEL, "alice", mid(10))
            await store.set_read_marker("quiet", "alice", mid(3))
            counts = await store.unread_counts("alice", [CHANNEL, "quiet", "empty"], limit=100)
            assert counts == {CHANNEL: 14, "quiet": 0, "empty": 0}
            # No marker: every live message counts; the limit caps every count.
            assert await store.unread_counts("bob", [CHANNEL, "quiet"], limit=100) == {
                CHANNEL: 23,
                "quiet": 3,
            }
            assert await store.unread_counts("bob", [CHANNEL, "quiet"], limit=5) == {
                CHANNEL: 5,
                "quiet": 3,
            }
            assert await store.unread_counts("alice", [], limit=5) == {}

        run_with_store(make_store, scenario)

    def test_the_readers_own_messages_are_never_unread(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            # 1-10: alice and carol in turn (carol's are the even ones), then
            # 11-20 alice alone, then 21-23 carol.
            await store.append(
                [
                    make_message(seq, user="carol" if seq % 2 == 0 else "alice")
                    for seq in range(1, 11)
                ]
                + batch(11, 20)
                + batch(21, 23, user="carol")
            )
            counts = await store.unread_counts("alice", [CHANNEL], limit=100)
            assert counts == {CHANNEL: 8}  # carol's 5 + 3
            assert await store.unread_counts("carol", [CHANNEL], limit=100) == {CHANNEL: 15}
            await store.set_read_marker(CHANNEL, "alice", mid(4))
            assert await store.unread_counts("alice", [CHANNEL], limit=100) == {CHANNEL: 6}
            # The limit counts others' messages: alice's ten in a row do not use it up.
            assert await store.unread_counts("alice", [CHANNEL], limit=4) == {CHANNEL: 4}
            await store.set_read_marker(CHANNEL, "alice", mid(10))
            assert await store.unread_counts("alice", [CHANNEL], limit=2) == {CHANNEL: 2}
            assert await store.unread_counts("alice", [CHANNEL], limit=100) == {CHANNEL: 3}

        run_with_store(make_store, scenario)

    # --- concurrency ------------------------------------------------------------

    def test_concurrent_calls_on_one_store(self, make_store: StoreFactory) -> None:
        async def scenario(store: MessageStore) -> None:
            await store.append(batch(1, 10))
            writes = [store.append(batch(seq, seq, channel=f"c{seq}")) for seq in range(1, 21)]
            reads = [store.history(CHANNEL, limit=3) for _ in range(20)]
            await asyncio.gather(*writes)
            pages = await asyncio.gather(*reads)
            assert all(seqs(page.messages) == [8, 9, 10] for page in pages)
            assert [await store.last_seq(f"c{seq}") for seq in range(1, 21)] == list(range(1, 21))

        run_with_store(make_store, scenario)


def _plain(reactions: ReactionMap) -> dict[str, dict[str, tuple[str, ...]]]:
    """The nested mappings as plain dicts, for equality checks."""
    return {message_id: dict(by_emoji) for message_id, by_emoji in reactions.items()}
