"""Checking changes (edits, deletes, reactions) against storage before they are numbered.

The persister that owns a channel checks every ``ChangeRecord`` of a write before
its sequencer numbers anything, so a refused change takes no id:

=====================================  ==============================================
the message is unknown or deleted      ``not_found`` (a change's own id is no message)
an edit or delete by someone else      ``forbidden``: only the author may
a reaction added that is there         done, nothing stored or broadcast: adding
already, or removed that is not        twice is adding once
a delete ``retried`` after its first   done: the first attempt may have deleted it
persister died, of a message gone now
storage fails reading the message      ``unavailable``: nothing was changed
=====================================  ==============================================

Several changes of one message in one write are checked in order, each against
the state the ones before it leave (an edit after a delete is ``not_found``).
Only this persister writes the channel on this host, so the state read here
holds until the write. With several hosts two persisters may check the same
reaction at once and both store it: the reaction is there once, broadcast twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from chime_actors.errors import MessageNotFound, StoreError
from chime_actors.logs import get_logger
from chime_actors.protocol.codes import ErrorCode
from chime_actors.records import ChangeKind, ChangeRecord, ChimeMessage, SendOutcome
from chime_actors.storage.store import MessageStore

log = get_logger(__name__)

_REACTIONS = (ChangeKind.REACTION_ADD, ChangeKind.REACTION_REMOVE)

# (origin, token): which sender's which record.
RecordKey = tuple[int, int]
_Target = tuple[str, str]  # (channel_id, message_id)


@dataclass(frozen=True, slots=True)
class ChangeDraft:
    """A change that passed its checks, for the sequencer to number.

    Attributes:
        record: the request.
        target: the message as it is before this change (an edit is built on it).
    """

    record: ChangeRecord
    target: ChimeMessage

    @property
    def token(self) -> int:
        """The record's token."""
        return self.record.token

    @property
    def channel_id(self) -> str:
        """The record's channel."""
        return self.record.channel_id


async def check_changes(
    store: MessageStore, records: Sequence[tuple[int, ChangeRecord]]
) -> dict[RecordKey, SendOutcome | ChangeDraft]:
    """Check ``(origin, record)`` changes; a draft for each allowed one, else its outcome."""
    if not records:
        return {}
    targets = sorted({(r.channel_id, r.message_id) for _, r in records})
    reacted = sorted({(r.channel_id, r.message_id) for _, r in records if r.kind in _REACTIONS})
    found = await asyncio.gather(
        *(store.get_message(channel_id, message_id) for channel_id, message_id in targets),
        return_exceptions=True,
    )
    reactions = await asyncio.gather(
        *(store.reactions(channel_id, [message_id]) for channel_id, message_id in reacted),
        return_exceptions=True,
    )
    messages: dict[_Target, ChimeMessage | None] = {}
    failed: set[_Target] = set()
    for target, result in zip(targets, found, strict=True):
        if isinstance(result, ChimeMessage):
            messages[target] = result
        elif isinstance(result, MessageNotFound):
            messages[target] = None
        elif isinstance(result, StoreError):
            log.warning("storage unavailable while checking a change", error=str(result))
            failed.add(target)
        else:
            raise result
    # (channel, message, emoji) -> users who reacted so, as the write goes on.
    reactors: dict[tuple[str, str, str], set[str]] = {}
    for target, outcome in zip(reacted, reactions, strict=True):
        if isinstance(outcome, StoreError):
            log.warning("storage unavailable while checking a reaction", error=str(outcome))
            failed.add(target)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            for emoji, users in outcome.get(target[1], {}).items():
                reactors[(*target, emoji)] = set(users)
    answers: dict[RecordKey, SendOutcome | ChangeDraft] = {}
    for origin, record in records:
        target = (record.channel_id, record.message_id)
        answers[(origin, record.token)] = (
            _unavailable(record) if target in failed else _check(record, messages, reactors)
        )
    return answers


def _check(
    record: ChangeRecord,
    messages: dict[_Target, ChimeMessage | None],
    reactors: dict[tuple[str, str, str], set[str]],
) -> SendOutcome | ChangeDraft:
    """One change against the state so far; updates that state when it passes."""
    target = (record.channel_id, record.message_id)
    message = messages[target]
    if message is None:
        if record.kind is ChangeKind.DELETE and record.retried:
            return SendOutcome(record.token)
        return SendOutcome(
            record.token,
            error_code=ErrorCode.NOT_FOUND,
            error_message=f"no message {record.message_id} in {record.channel_id}",
        )
    if record.kind in _REACTIONS:
        assert record.emoji is not None  # the gateway sends one with every reaction
        users = reactors.setdefault((*target, record.emoji), set())
        adding = record.kind is ChangeKind.REACTION_ADD
        if (record.user_id in users) == adding:
            return SendOutcome(record.token)  # nothing to change
        if adding:
            users.add(record.user_id)
        else:
            users.discard(record.user_id)
        return ChangeDraft(record, message)
    if message.user_id != record.user_id:
        verb = "edit" if record.kind is ChangeKind.EDIT else "delete"
        return SendOutcome(
            record.token,
            error_code=ErrorCode.FORBIDDEN,
            error_message=f"only the author may {verb} message {record.message_id}",
        )
    draft = ChangeDraft(record, message)
    if record.kind is ChangeKind.DELETE:
        messages[target] = None
    else:
        assert record.content is not None  # the gateway sends it with every edit
        messages[target] = ChimeMessage(
            channel_id=message.channel_id,
            message_id=message.message_id,
            user_id=message.user_id,
            content=record.content,
            created_at=message.created_at,
            edited_at=message.edited_at,
            metadata=message.metadata,
            thread_id=message.thread_id,
            client_msg_id=message.client_msg_id,
            channel_name=message.channel_name,
            attachments=message.attachments,
        )
    return draft


def _unavailable(record: ChangeRecord) -> SendOutcome:
    return SendOutcome(
        record.token, error_code=ErrorCode.UNAVAILABLE, error_message="storage unavailable"
    )
