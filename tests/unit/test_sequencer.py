"""Tests for chime_actors.persister.sequencer: pure, no event loop, a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chime_actors.ids import format_message_id
from chime_actors.persister import sequencer as sequencer_module
from chime_actors.persister.sequencer import (
    Assigned,
    Duplicate,
    Plan,
    Sequencer,
    owner_index,
)
from chime_actors.records import ChimeMessage, SendRecord

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
    assert item.message == first.new_messages[0]
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
    assert isinstance(dup, Duplicate) and dup.message == old and not dup.in_plan
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


def test_dedupe_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer_module, "MAX_DEDUPE_PER_CHANNEL", 2)
    seq = make()
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
