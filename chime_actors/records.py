"""Immutable records: the stored ChimeMessage and everything that crosses processes.

Every class here is a ``FrozenRecord``: a frozen (so hashable) msgspec ``Struct``,
tagged with its class name, so the lanes (``runtime.lane_codec``) encode it as
msgpack and decode it back to exactly this type, refusing anything else. It is
picklable too, for what still travels through Thespian. Hot-path records travel in batches
(``PersistBatch``, ``Deliveries``): never one Thespian send per chat message.
Mappings are kept as tuples of pairs so a record is immutable all the way down.
"""

from __future__ import annotations

import enum
import itertools
import os
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec

from chime_actors.ids import parse_message_id

Metadata = tuple[tuple[str, str], ...]

# A send without a clientMsgId gets one made by the server, with this prefix
# (clients may not use it): the gateway can then always retry a send whose
# persister died mid-write, and the new persister's dedupe settles it, so
# "unavailable" always means "not stored". The wire never shows it: clients see
# the null they sent (``ChimeMessage.wire_client_msg_id``).
SERVER_CLIENT_MSG_ID_PREFIX = "~chime:"

#: ``PersistBatch.gateway_index`` of the API process's records (gateways are 1..N).
API_ORIGIN = 0


class FrozenRecord(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Base of every record that travels on lanes: immutable, hashable, tagged.

    ``tag=True`` names each subclass on the wire by its class name, which is what
    lets a lane decode a union of them to the right type; ``array_like`` writes
    the fields as a msgpack array (no field names on the wire: smaller, faster).
    Change a field of a record with ``msgspec.structs.replace``. Subclasses
    repeat ``frozen=True`` for mypy, which does not see it inherited.
    """


class _ServerKeys:
    """Server-made keys: a random 64-bit prefix per process, then a counter.

    A uuid4 per send (``os.urandom`` and a ``UUID``) was 2 % of a gateway's
    CPU in many small rooms. A key must only never repeat within a channel and
    user; the prefix is drawn again in a forked child, so two processes never
    share it, and a restarted process draws a new one.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = f"{SERVER_CLIENT_MSG_ID_PREFIX}{secrets.token_hex(8)}-"
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


_server_keys = _ServerKeys()
os.register_at_fork(after_in_child=_server_keys.reseed)


def server_client_msg_id() -> str:
    """A fresh server-made idempotency key for a send that came without one."""
    return _server_keys.next()


def wire_client_msg_id(client_msg_id: str | None) -> str | None:
    """``client_msg_id`` as clients see it: a server-made key is shown as null."""
    if client_msg_id is not None and client_msg_id.startswith(SERVER_CLIENT_MSG_ID_PREFIX):
        return None
    return client_msg_id


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a ``Z`` (docs/protocol.md)."""
    return format_timestamp(datetime.now(UTC))


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime the way the wire wants it: ``2026-11-27T10:00:00.000Z``."""
    # isoformat, not strftime: the same text (milliseconds truncated, as
    # ``microsecond // 1000`` did) and fixed width below year 1000 too, in
    # 1.5 instead of 2.7 µs (called once per write plan).
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Attachment(FrozenRecord, frozen=True):
    """A file a message lists (docs/protocol.md "Attachments"): what its readers see of it.

    The bytes and who uploaded them live in the attachment store
    (``storage.attachments``); a message carries only this.
    """

    attachment_id: str
    filename: str
    content_type: str
    size: int

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of an entry of a ChimeMessage's ``attachments``."""
        return {
            "attachmentId": self.attachment_id,
            "filename": self.filename,
            "contentType": self.content_type,
            "size": self.size,
        }


class ChimeMessage(FrozenRecord, frozen=True):
    """A chat message as stored, broadcast and returned by history.

    ``attachments`` are the files it lists, in the sender's order; on the wire
    the field is absent when there are none (docs/protocol.md).
    """

    channel_id: str
    message_id: str
    user_id: str
    content: str
    created_at: str
    edited_at: str | None = None
    metadata: Metadata = ()
    thread_id: str | None = None
    client_msg_id: str | None = None
    channel_name: str | None = None
    attachments: tuple[Attachment, ...] = ()

    @property
    def seq(self) -> int:
        """The message's position in its channel (1-based, contiguous)."""
        return parse_message_id(self.message_id)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of docs/protocol.md's ChimeMessage section."""
        wire: dict[str, Any] = {
            "channelId": self.channel_id,
            "channelName": self.channel_name,
            "messageId": self.message_id,
            "userId": self.user_id,
            "content": self.content,
            "createdAt": self.created_at,
            "editedAt": self.edited_at,
            "metadata": dict(self.metadata),
            "threadId": self.thread_id,
            "clientMsgId": wire_client_msg_id(self.client_msg_id),
        }
        if self.attachments:
            wire["attachments"] = [attachment.to_wire() for attachment in self.attachments]
        return wire


class ChangeKind(enum.Enum):
    """What a ``MessageChange`` does to the message it names."""

    EDIT = "edit"
    DELETE = "delete"
    REACTION_ADD = "reaction_add"
    REACTION_REMOVE = "reaction_remove"


class MessageChange(FrozenRecord, frozen=True):
    """An edit, delete or reaction of a stored message, at a position of its own.

    A change takes the next id of its channel's order, like a message, so the
    machinery that gives a channel's messages to every subscriber in order,
    once (gap fills, catch-ups, resume replays, the Redis bus) gives its
    changes the same way: a client that resumes after an edit learns of it.
    Stored next to the messages but never returned as one (docs/architecture.md).

    Attributes:
        channel_id: the channel.
        event_id: the change's own position, formatted like a message id.
        kind: edit, delete, reaction added or removed.
        message_id: the message changed.
        user_id: who changed it (the author, for edits and deletes).
        at: when, in the wire's timestamp format.
        emoji: the reaction (reactions only).
        message: the message as edited, ``edited_at`` set (edits only).
    """

    channel_id: str
    event_id: str
    kind: ChangeKind
    message_id: str
    user_id: str
    at: str
    emoji: str | None = None
    message: ChimeMessage | None = None

    @property
    def seq(self) -> int:
        """The change's position in its channel (shared with the messages)."""
        return parse_message_id(self.event_id)


ChannelEvent = ChimeMessage | MessageChange
"""What takes a position in a channel's order: a message or a change of one."""


# --- gateway -> persister -------------------------------------------------------


class SendRecord(FrozenRecord, frozen=True):
    """One message a client asked to send, not yet sequenced or stored.

    ``token`` is the gateway's own handle for the pending ack; it means nothing
    to anyone else. ``attachments`` are the ids the client listed, not yet
    checked: the persister that owns the channel looks them up (each must be
    the sender's own upload) before it numbers the send (``persister.attachments``).
    """

    token: int
    channel_id: str
    user_id: str
    content: str
    metadata: Metadata = ()
    thread_id: str | None = None
    client_msg_id: str | None = None
    attachments: tuple[str, ...] = ()


class ChangeRecord(FrozenRecord, frozen=True):
    """A request to change a stored message, not yet checked or sequenced.

    The persister that owns the channel checks it against storage (the message
    exists; edits and deletes are the author's), numbers it and stores it with
    the channel's sends, so changes and messages of a channel share one order.

    Attributes:
        token: the requester's handle for the pending answer (as ``SendRecord``).
        channel_id: the channel.
        message_id: the message to change.
        user_id: who asks.
        kind: what to do.
        content: the new content (edits only).
        emoji: the reaction (reactions only).
        retried: sent again after the persister it first went to died: a delete
            of a message that is gone by now is then answered as done (the first
            attempt may have deleted it).
    """

    token: int
    channel_id: str
    message_id: str
    user_id: str
    kind: ChangeKind
    content: str | None = None
    emoji: str | None = None
    retried: bool = False


PersistRecord = SendRecord | ChangeRecord
"""What a ``PersistBatch`` carries."""


class PersistBatch(FrozenRecord, frozen=True):
    """Records for one persister from one gateway (or the API), sent as one message.

    ``gateway_index`` tells the senders apart (tokens are unique per sender):
    gateways are 1..N, the API process is ``API_ORIGIN``.
    """

    batch_id: int
    gateway_index: int
    records: tuple[PersistRecord, ...]

    def __repr__(self) -> str:
        # Short on purpose: Thespian formats every message it sends or receives
        # for a debug log line, whether or not that line is written, and the
        # generated repr of a few hundred records cost ~10% of a gateway's CPU.
        size = len(self.records)
        return f"PersistBatch({self.batch_id}, gateway {self.gateway_index}, {size} records)"


# --- persister -> gateways ------------------------------------------------------


class SendOutcome(FrozenRecord, frozen=True):
    """What became of one ``SendRecord`` or ``ChangeRecord``.

    For a send, exactly one of ``message`` (stored: the ack) or ``error_code``
    is set; ``duplicate`` is True when an earlier send with the same client id
    won. For a change, ``error_code`` is set when it was refused or failed
    (``forbidden``, ``not_found``, ``unavailable``); otherwise it is done, and
    ``change`` is the stored change, or None when there was nothing to change
    (a reaction already there, or already gone).
    """

    token: int
    message: ChimeMessage | None = None
    error_code: str | None = None
    error_message: str = ""
    duplicate: bool = False
    change: MessageChange | None = None


class PersistResult(FrozenRecord, frozen=True):
    """The persister's answer to one ``PersistBatch``: an outcome per record."""

    batch_id: int
    outcomes: tuple[SendOutcome, ...]

    def __repr__(self) -> str:
        return f"PersistResult({self.batch_id}, {len(self.outcomes)} outcomes)"  # see PersistBatch


class Deliveries(FrozenRecord, frozen=True):
    """Newly durable messages and changes, in sequence order per channel, for one gateway."""

    messages: tuple[ChannelEvent, ...] = ()

    def __repr__(self) -> str:
        return f"Deliveries({len(self.messages)} messages)"  # see PersistBatch.__repr__
