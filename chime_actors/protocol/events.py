"""Client requests: what a client frame means, once parsed and validated.

Each class is one frame ``type`` of docs/protocol.md. They are frozen, slotted
dataclasses (picklable, immutable all the way down: mappings are tuples of
pairs) so they can cross actor boundaries unchanged. Every value in them has
already been validated by :func:`chime_actors.protocol.frames.parse_frame`:
channel ids match the channel pattern, message ids are well formed, content
is within limits.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from chime_actors.records import Metadata

ChannelList = tuple[str, ...]
"""Channel ids, deduplicated, in the order the client gave them."""

ResumePoints = tuple[tuple[str, str], ...]
"""``(channel_id, last_seen_message_id)`` pairs of a connect's ``resume``."""


class ReactionOp(enum.Enum):
    """Whether a reaction is added or removed."""

    ADD = "add"
    REMOVE = "remove"


class PresenceStatus(enum.Enum):
    """A user's presence in a channel, as ``presence_changed`` reports it."""

    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Connect:
    """``connect``: the handshake; must be the first frame.

    Attributes:
        channels: channels to subscribe to (may be empty).
        user_id: the claimed user id; in jwt mode it must equal the token's ``sub``.
        token: a JWT, when the client sends one in the frame.
        resume: last message id seen per channel; the actor replays what follows.
            It may name channels outside ``channels``; the actor resumes only
            channels it actually subscribed.
    """

    channels: ChannelList
    user_id: str | None = None
    token: str | None = None
    resume: ResumePoints = ()


@dataclass(frozen=True, slots=True)
class Send:
    """``send``: post a message.

    Attributes:
        channel_id: target channel; None means "the first channel of the connect"
            and is filled in by the connection state machine before the actor sees it.
        content: the message text (non-blank, within ``Limits.max_content_chars``).
        client_msg_id: the client's idempotency key, echoed in ``ack`` and errors.
        metadata: string-to-string pairs, in the order the client gave them.
        thread_id: message id of the thread root in the same channel.
        attachments: ids of files the sender uploaded, well formed and at most
            ``Limits.max_attachments``; whether each exists and is the sender's
            is checked where the send is stored (``persister.attachments``).
    """

    channel_id: str | None
    content: str
    client_msg_id: str | None = None
    metadata: Metadata = ()
    thread_id: str | None = None
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscribe:
    """``subscribe``: join more channels."""

    channels: ChannelList


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: leave channels (unknown ones are ignored)."""

    channels: ChannelList


@dataclass(frozen=True, slots=True)
class History:
    """``history``: page a channel's (or a thread's) stored messages.

    Attributes:
        request_id: echoed in the reply.
        channel_id: the channel to read.
        before: only messages with a smaller id.
        after: only messages with a larger id.
        limit: at most this many messages (1..``Limits.history_max_limit``).
        thread_id: only the thread rooted at this message.
    """

    request_id: str | None
    channel_id: str
    before: str | None = None
    after: str | None = None
    limit: int = 50
    thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: application-level keepalive, answered with ``pong``."""


@dataclass(frozen=True, slots=True)
class Refresh:
    """``refresh``: a new token for the same user, before the current one expires.

    Attributes:
        token: the new JWT; its ``channels`` claim replaces the grants.
        request_id: echoed in the reply or the error.
    """

    token: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """``edit``: replace the content of one's own message."""

    request_id: str | None
    channel_id: str
    message_id: str
    content: str


@dataclass(frozen=True, slots=True)
class Delete:
    """``delete``: delete one's own message."""

    request_id: str | None
    channel_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class React:
    """``react``: add or remove an emoji reaction on a message.

    ``request_id`` is optional (docs/protocol.md names none for ``react``); when
    given it is echoed in the confirmation or the error.
    """

    channel_id: str
    message_id: str
    emoji: str
    op: ReactionOp
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceQuery:
    """``presence`` (client side): who is online in a channel."""

    request_id: str | None
    channel_id: str


@dataclass(frozen=True, slots=True)
class Typing:
    """``typing``: tell the channel's other subscribers; never stored."""

    channel_id: str


@dataclass(frozen=True, slots=True)
class Read:
    """``read``: store the user's read marker for a channel."""

    channel_id: str
    message_id: str


ClientEvent = (
    Connect
    | Send
    | Subscribe
    | Unsubscribe
    | History
    | Ping
    | Refresh
    | Edit
    | Delete
    | React
    | PresenceQuery
    | Typing
    | Read
)
"""Any parsed client frame."""

CLIENT_EVENT_TYPES: tuple[type[ClientEvent], ...] = (
    Connect,
    Send,
    Subscribe,
    Unsubscribe,
    History,
    Ping,
    Refresh,
    Edit,
    Delete,
    React,
    PresenceQuery,
    Typing,
    Read,
)
"""Every member of ``ClientEvent``, for code (and tests) that must cover them all."""
