"""Immutable records: the stored ChimeMessage and everything that crosses processes.

Every class here is a frozen, slotted dataclass and picklable, because Thespian
pickles messages between process actors. Hot-path records travel in batches
(``PersistBatch``, ``Deliveries``): never one Thespian send per chat message.
Mappings are kept as tuples of pairs so a record is immutable all the way down.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chime_actors.ids import parse_message_id

Metadata = tuple[tuple[str, str], ...]

# A send without a clientMsgId gets one made by the server, with this prefix
# (clients may not use it): the gateway can then always retry a send whose
# persister died mid-write, and the new persister's dedupe settles it, so
# "unavailable" always means "not stored". The wire never shows it: clients see
# the null they sent (``ChimeMessage.wire_client_msg_id``).
SERVER_CLIENT_MSG_ID_PREFIX = "~chime:"


def server_client_msg_id() -> str:
    """A fresh server-made idempotency key for a send that came without one."""
    return SERVER_CLIENT_MSG_ID_PREFIX + uuid.uuid4().hex


def wire_client_msg_id(client_msg_id: str | None) -> str | None:
    """``client_msg_id`` as clients see it: a server-made key is shown as null."""
    if client_msg_id is not None and client_msg_id.startswith(SERVER_CLIENT_MSG_ID_PREFIX):
        return None
    return client_msg_id


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with milliseconds and a ``Z`` (PROTOCOL.md)."""
    return format_timestamp(datetime.now(UTC))


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime the way the wire wants it: ``2026-11-27T10:00:00.000Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ChimeMessage:
    """A chat message as stored, broadcast and returned by history."""

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

    @property
    def seq(self) -> int:
        """The message's position in its channel (1-based, contiguous)."""
        return parse_message_id(self.message_id)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of PROTOCOL.md's ChimeMessage section."""
        return {
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


# --- gateway -> persister -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRecord:
    """One message a client asked to send, not yet sequenced or stored.

    ``token`` is the gateway's own handle for the pending ack; it means nothing
    to anyone else.
    """

    token: int
    channel_id: str
    user_id: str
    content: str
    metadata: Metadata = ()
    thread_id: str | None = None
    client_msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class PersistBatch:
    """Records for one persister from one gateway, sent as one Thespian message."""

    batch_id: int
    gateway_index: int
    records: tuple[SendRecord, ...]

    def __repr__(self) -> str:
        # Short on purpose: Thespian formats every message it sends or receives
        # for a debug log line, whether or not that line is written, and the
        # generated repr of a few hundred records cost ~10% of a gateway's CPU.
        size = len(self.records)
        return f"PersistBatch({self.batch_id}, gateway {self.gateway_index}, {size} records)"


# --- persister -> gateways ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of one ``SendRecord``.

    Exactly one of ``message`` (stored: the ack) or ``error_code`` is set.
    ``duplicate`` is True when an earlier send with the same client id won.
    """

    token: int
    message: ChimeMessage | None = None
    error_code: str | None = None
    error_message: str = ""
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class PersistResult:
    """The persister's answer to one ``PersistBatch``: an outcome per record."""

    batch_id: int
    outcomes: tuple[SendOutcome, ...]

    def __repr__(self) -> str:
        return f"PersistResult({self.batch_id}, {len(self.outcomes)} outcomes)"  # see PersistBatch


@dataclass(frozen=True, slots=True)
class Deliveries:
    """Newly durable messages, in sequence order per channel, for one gateway."""

    messages: tuple[ChimeMessage, ...] = field(default_factory=tuple)

    def __repr__(self) -> str:
        return f"Deliveries({len(self.messages)} messages)"  # see PersistBatch.__repr__
