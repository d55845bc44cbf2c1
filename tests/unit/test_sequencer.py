"""Tests for chime_actors.persister.sequencer: pure, no event loop, a fake clock."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from chime_actors.ids import format_message_id
from chime_actors.persister.changes import ChangeDraft
from chime_actors.persister.sequencer import (
    CHANNEL_OVERHEAD_BYTES,
    Assigned,
    Changed,
    Duplicate,
    Plan,
    Sequencer,
    owner_index,
)
from chime_actors.records import ChangeKind, ChangeRecord, ChimeMessage, SendRecord

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


class FakeClock:
    """A settable wall clock."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def rec(
    token: int, channel: str = "general", client_msg_id: str | None = None, user: str = "alice"
) -> SendRecord:
    return SendRecord(
        token=token,
        channel_id=channel,
        user_id=user,
        content=f"hello {token}",
        client_msg_id=client_msg_id,
    )


def stored(seq: int, channel: str = "general", client_msg_id: str | None = None) -> ChimeMessage:
    return ChimeMessage(
        channel_id=channel,
        message_id=format_message_id(seq),
        user_id="alice",
        content=f"old {seq}",
        created_at="2026-11-27T09:59:00.000Z",
        client_msg_id=client_msg_id,
    )


def ack_view(message: ChimeMessage) -> ChimeMessage:
    """What the dedupe cache keeps of a message: what its ack needs."""
    return msgspec.structs.replace(
        message, content="", metadata=(), thread_id=None, channel_name=None
    )


def make(clock: FakeClock | None = None, ttl: float = 600.0, *channels: str) -> Sequencer:
    seq = Sequencer(clock or FakeClock(), dedupe_ttl_s=ttl)
    for channel in channels or ("general",):
        seq.load(channel, 0, {})
    return seq


def seqs(plan: Plan) -> list[int]:
    return [message.seq for message in plan.new_messages]


# --- numbering --------------------------------------------------------------------


def test_ids_are_contiguous_from_the_loaded_last_seq() -> None:
    seq = Sequencer(FakeClock())
    seq.load("general", 41, {})
    plan = seq.plan([(1, rec(1)), (1, rec(2)), (2, rec(3))])
    assert seqs(plan) == [42, 43, 44]
    assert all(isinstance(item, Assigned) for item in plan.items)
    assert [item.origin for item in plan.items] == [1, 1, 2]
    seq.commit(plan)
    assert seqs(seq.plan([(1, rec(4))])) == [45]


def test_message_carries_the_record_and_the_clock_time() -> None:
    seq = make()
    record = SendRecord(
        token=7,
        channel_id="general",
        user_id="bob",
        content="hi",
        metadata=(("k", "v"),),
        thread_id=format_message_id(1),
        client_msg_id="c-1",
    )
    (message,) = seq.plan([(3, record)]).new_messages
    assert message == ChimeMessage(
        channel_id="general",
        message_id=format_message_id(1),
        user_id="bob",
        content="hi",
        created_at="2026-11-27T10:00:00.000Z",
        metadata=(("k", "v"),),
        thread_id=format_message_id(1),
        client_msg_id="c-1",
    )


def test_channels_are_numbered_independently() -> None:
    seq = make(None, 600.0, "a", "b")
    plan = seq.plan([(1, rec(1, "a")), (1, rec(2, "b")), (1, rec(3, "a"))])
    assert [(m.channel_id, m.seq) for m in plan.new_messages] == [("a", 1), ("b", 1), ("a", 2)]
    assert dict(plan.previous_last_seq) == {"a": 0, "b": 0}


def test_rollback_gives_the_ids_back() -> None:
    seq = make(None, 600.0, "a", "b")
    seq.commit(seq.plan([(1, rec(1, "a"))]))
    failed = seq.plan([(1, rec(2, "a")), (1, rec(3, "b"))])
    seq.rollback(failed)
    retry = seq.plan([(1, rec(2, "a")), (1, rec(3, "b"))])
    assert [(m.channel_id, m.seq) for m in retry.new_messages] == [("a", 2), ("b", 1)]


def test_rollback_forgets_client_ids_of_the_failed_plan() -> None:
    seq = make()
    seq.rollback(seq.plan([(1, rec(1, client_msg_id="c-1"))]))
    again = seq.plan([(1, rec(2, client_msg_id="c-1"))])
    assert isinstance(again.items[0], Assigned)
    assert again.items[0].message.seq == 1


def test_rollback_of_a_forgotten_channel_is_harmless() -> None:
    seq = make()
    plan = seq.plan([(1, rec(1))])
    seq.forget("general")
    seq.rollback(plan)
    assert not seq.is_loaded("general")


def test_is_loaded_load_and_forget() -> None:
    seq = Sequencer(FakeClock())
    assert not seq.is_loaded("general")
    seq.load("general", 3, {})
    assert seq.is_loaded("general")
    seq.forget("general")
    seq.forget("general")  # twice is fine
    assert not seq.is_loaded("general")


def test_last_seq_follows_plans_and_rollbacks() -> None:
    seq = Sequencer(FakeClock())
    seq.load("general", 7, {})
    plan = seq.plan([(0, rec(1)), (0, rec(2))])
    assert seq.last_seq("general") == 9
    seq.rollback(plan)
    assert seq.last_seq("general") == 7


def test_forget_all_keeps_only_the_given_channels() -> None:
    seq = make(None, 600.0, "a", "b", "c")
    seq.forget_all(keep={"b"})
    assert [seq.is_loaded(c) for c in ("a", "b", "c")] == [False, True, False]
    seq.forget_all()
    assert not seq.is_loaded("b")


def test_plan_of_an_unloaded_channel_is_a_caller_bug() -> None:
    with pytest.raises(KeyError):
        Sequencer(FakeClock()).plan([(1, rec(1))])


# --- idempotency ------------------------------------------------------------------


def test_repeat_of_a_committed_send_is_a_duplicate() -> None:
    seq = make()
    first = seq.plan([(1, rec(1, client_msg_id="c-1"))])
    seq.commit(first)
    again = seq.plan([(2, rec(9, client_msg_id="c-1"))])
    (item,) = again.items
    assert isinstance(item, Duplicate)
    assert item.message == ack_view(first.new_messages[0])
    assert item.origin == 2
    assert not item.in_plan
    assert again.new_messages == ()
    assert dict(again.previous_last_seq) == {}


def test_repeat_within_one_plan_shares_the_plan() -> None:
    seq = make()
    plan = seq.plan([(1, rec(1, client_msg_id="c-1")), (1, rec(2, client_msg_id="c-1"))])
    first, second = plan.items
    assert isinstance(first, Assigned)
    assert isinstance(second, Duplicate)
    assert second.in_plan
    assert second.message == first.message
    assert seqs(plan) == [1]


def test_client_ids_are_per_user_and_per_channel() -> None:
    seq = make(None, 600.0, "a", "b")
    seq.commit(seq.plan([(1, rec(1, "a", "c-1", user="alice"))]))
    plan = seq.plan([(1, rec(2, "a", "c-1", user="bob")), (1, rec(3, "b", "c-1", user="alice"))])
    assert all(isinstance(item, Assigned) for item in plan.items)


def test_sends_without_client_id_are_never_duplicates() -> None:
    seq = make()
    seq.commit(seq.plan([(1, rec(1))]))
    assert seqs(seq.plan([(1, rec(2)), (1, rec(3))])) == [2, 3]


def test_loaded_client_ids_dedupe_after_a_restart() -> None:
    old = stored(5, client_msg_id="c-5")
    seq = Sequencer(FakeClock())
    seq.load("general", 5, {("alice", "c-5"): old})
    plan = seq.plan([(1, rec(1, client_msg_id="c-5")), (1, rec(2, client_msg_id="c-6"))])
    dup, new = plan.items
    assert isinstance(dup, Duplicate) and dup.message == ack_view(old) and not dup.in_plan
    assert isinstance(new, Assigned) and new.message.seq == 6


def test_dedupe_expires_after_the_ttl() -> None:
    clock = FakeClock()
    seq = make(clock, 60.0)
    seq.commit(seq.plan([(1, rec(1, client_msg_id="c-1"))]))
    clock.advance(59.9)
    assert isinstance(seq.plan([(1, rec(2, client_msg_id="c-1"))]).items[0], Duplicate)
    clock.advance(0.1)
    late = seq.plan([(1, rec(3, client_msg_id="c-1"))])
    assert isinstance(late.items[0], Assigned)
    assert seqs(late) == [2]


def test_loaded_client_ids_expire_too() -> None:
    clock = FakeClock()
    seq = Sequencer(clock, dedupe_ttl_s=60.0)
    seq.load("general", 1, {("alice", "c-1"): stored(1, client_msg_id="c-1")})
    clock.advance(60)
    assert isinstance(seq.plan([(1, rec(1, client_msg_id="c-1"))]).items[0], Assigned)


def test_dedupe_since_is_the_clock_minus_the_ttl() -> None:
    clock = FakeClock()
    seq = Sequencer(clock, dedupe_ttl_s=600.0)
    assert seq.dedupe_since() == "2026-11-27T09:50:00.000Z"
    clock.advance(1.5)
    assert seq.dedupe_since() == "2026-11-27T09:50:01.500Z"


def test_dedupe_memory_is_bounded_per_channel() -> None:
    seq = Sequencer(FakeClock(), max_dedupe_per_channel=2)
    seq.load("general", 0, {})
    for token in (1, 2, 3):
        seq.commit(seq.plan([(1, rec(token, client_msg_id=f"c-{token}"))]))
    plan = seq.plan(
        [
            (1, rec(11, client_msg_id="c-1")),  # forgotten early: the oldest
            (1, rec(12, client_msg_id="c-2")),
            (1, rec(13, client_msg_id="c-3")),
        ]
    )
    assert [type(item) for item in plan.items] == [Assigned, Duplicate, Duplicate]


# --- ownership --------------------------------------------------------------------


def test_owner_index_is_stable_and_in_range() -> None:
    # crc32 is fixed by zlib: the same answer in every process and after restarts.
    assert owner_index("general", 4) == owner_index("general", 4)
    assert owner_index("general", 1) == 0
    indexes = {owner_index(f"channel-{n}", 4) for n in range(200)}
    assert indexes == {0, 1, 2, 3}


def test_owner_index_known_values() -> None:
    # Pinned: changing the hash would move channels between persisters on upgrade.
    assert owner_index("general", 7) == 4
    assert owner_index("random", 7) == 0
    assert owner_index("ops", 7) == 0


# --- memory across channels -------------------------------------------------------------


def test_the_cache_keeps_no_content_whatever_its_size() -> None:
    seq = make()
    big = msgspec.structs.replace(rec(1, client_msg_id="c-1"), content="😀" * 4000)
    seq.commit(seq.plan([(1, big)]))
    (dup,) = seq.plan([(1, rec(2, client_msg_id="c-1"))]).items
    assert isinstance(dup, Duplicate) and dup.message.content == ""
    assert seq.memory_bytes < 2000


def test_server_made_keys_are_not_remembered_after_commit() -> None:
    seq = make()
    before = seq.memory_bytes
    seq.commit(seq.plan([(1, rec(1, client_msg_id="~chime:" + "a" * 32))]))
    assert seq.memory_bytes == before


def test_a_sender_touching_many_channels_cannot_grow_memory_past_the_bound() -> None:
    """The least recently used channels are forgotten whole; they reload on next use."""
    seq = Sequencer(FakeClock(), max_bytes=200_000, max_channels=50)
    for n in range(2_000):
        channel = f"c{n}"
        seq.load(channel, 0, {})
        seq.commit(seq.plan([(1, rec(n, channel, f"m-{n}"))]))
        assert seq.memory_bytes <= 200_000 + 5_000  # the current channel may overshoot
        assert seq.loaded_channels <= 50
    assert seq.is_loaded("c1999") and not seq.is_loaded("c0")


def test_a_forgotten_channel_dedupes_again_once_reloaded() -> None:
    seq = Sequencer(FakeClock(), max_channels=1)
    seq.load("a", 0, {})
    first = seq.plan([(1, rec(1, "a", "c-1"))])
    seq.commit(first)
    seq.load("b", 0, {})
    seq.commit(seq.plan([(1, rec(2, "b", "c-2"))]))
    assert not seq.is_loaded("a")
    # The writer reloads "a" from the store, whose client ids include c-1.
    seq.load("a", 1, {("alice", "c-1"): first.new_messages[0]})
    (dup,) = seq.plan([(1, rec(3, "a", "c-1"))]).items
    assert isinstance(dup, Duplicate)


def test_the_entry_estimate_is_not_below_what_python_spends() -> None:
    """``entry_bytes`` is what the bound counts: measure what an entry really costs."""
    seq = make()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        n = 2_000
        for token in range(n):
            seq.commit(seq.plan([(1, rec(token, client_msg_id=f"client-{token:08d}"))]))
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    per_entry = (used - start) / n
    estimated = (seq.memory_bytes - CHANNEL_OVERHEAD_BYTES) / n
    assert per_entry <= estimated * 1.25, (per_entry, estimated)


# --- changes ------------------------------------------------------------------------


def test_changes_take_ids_of_their_own_and_give_them_back() -> None:
    sequencer = make()
    target = stored(1)
    sequencer.load("general", 1, {})
    edit = ChangeDraft(
        ChangeRecord(9, "general", target.message_id, "alice", ChangeKind.EDIT, content="new"),
        target,
    )
    plan = sequencer.plan([(1, rec(1)), (1, edit), (1, rec(2))])
    assert [event.seq for event in plan.new_events] == [2, 3, 4]
    assert seqs(plan) == [2, 4]
    changed = plan.items[1]
    assert isinstance(changed, Changed)
    assert changed.change.event_id == format_message_id(3)
    assert changed.change.message == msgspec.structs.replace(
        target, content="new", edited_at="2026-11-27T10:00:00.000Z"
    )
    sequencer.rollback(plan)
    assert [event.seq for event in sequencer.plan([(1, edit)]).new_events] == [2]
