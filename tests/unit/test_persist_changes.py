"""Tests for chime_actors.persister.changes: checks of edits, deletes and reactions."""

from __future__ import annotations

import asyncio

from chime_actors.ids import format_message_id
from chime_actors.persister.changes import ChangeDraft, check_changes
from chime_actors.records import ChangeKind, ChangeRecord, ChimeMessage, MessageChange, SendOutcome
from chime_actors.storage import MemoryStore

CHANNEL = "general"
M1, M2 = format_message_id(1), format_message_id(2)


def record(
    token: int,
    kind: ChangeKind,
    target: str = M1,
    *,
    user: str = "alice",
    content: str | None = None,
    emoji: str | None = None,
    retried: bool = False,
) -> ChangeRecord:
    return ChangeRecord(token, CHANNEL, target, user, kind, content, emoji, retried)


def check(*records: ChangeRecord) -> list[SendOutcome | ChangeDraft]:
    async def main() -> list[SendOutcome | ChangeDraft]:
        store = MemoryStore()
        await store.open()
        await store.append(
            [
                ChimeMessage(CHANNEL, M1, "alice", "hi", "2026-11-27T10:00:00.000Z"),
                MessageChange(CHANNEL, M2, ChangeKind.REACTION_ADD, M1, "bob", "t", emoji="👍"),
            ]
        )
        answers = await check_changes(store, [(1, r) for r in records])
        return [answers[(1, r.token)] for r in records]

    return asyncio.run(main())


def codes(answers: list[SendOutcome | ChangeDraft]) -> list[str | None]:
    return ["draft" if isinstance(a, ChangeDraft) else a.error_code for a in answers]


def test_author_only_for_edits_and_deletes_anyone_for_reactions() -> None:
    answers = check(
        record(1, ChangeKind.EDIT, user="bob", content="x"),
        record(2, ChangeKind.DELETE, user="bob"),
        record(3, ChangeKind.REACTION_ADD, user="carol", emoji="👍"),
        record(4, ChangeKind.EDIT, content="x"),
    )
    assert codes(answers) == ["forbidden", "forbidden", "draft", "draft"]


def test_unknown_messages_and_positions_of_changes_are_not_found() -> None:
    answers = check(
        record(1, ChangeKind.EDIT, format_message_id(9), content="x"),
        record(2, ChangeKind.REACTION_ADD, M2, emoji="👍"),  # M2 is a change, not a message
    )
    assert codes(answers) == ["not_found", "not_found"]


def test_reactions_already_there_or_gone_change_nothing() -> None:
    answers = check(
        record(1, ChangeKind.REACTION_ADD, user="bob", emoji="👍"),  # there already
        record(2, ChangeKind.REACTION_REMOVE, user="carol", emoji="👍"),  # never added
        record(3, ChangeKind.REACTION_REMOVE, user="bob", emoji="👍"),
        record(4, ChangeKind.REACTION_REMOVE, user="bob", emoji="👍"),  # gone by now
        record(5, ChangeKind.REACTION_ADD, user="bob", emoji="👍"),  # back again
    )
    assert codes(answers) == [None, None, "draft", None, "draft"]
    assert all(a.change is None for a in answers if isinstance(a, SendOutcome))


def test_changes_of_one_write_see_the_ones_before_them() -> None:
    answers = check(
        record(1, ChangeKind.EDIT, content="first"),
        record(2, ChangeKind.EDIT, content="second"),
        record(3, ChangeKind.DELETE),
        record(4, ChangeKind.REACTION_ADD, emoji="🎉"),
        record(5, ChangeKind.DELETE),
        record(6, ChangeKind.DELETE, retried=True),
    )
    assert codes(answers) == ["draft", "draft", "draft", "not_found", "not_found", None]
    second = answers[1]
    assert isinstance(second, ChangeDraft) and second.target.content == "first"
