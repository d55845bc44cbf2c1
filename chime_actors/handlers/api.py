"""The interface of a channel handler: one small protocol and frozen records in and out.

A handler is built by a factory, ``factory(options) -> ChannelHandler``, named by
``handlers[i].use`` (docs/handlers.md). The stage it is configured for decides
which of its methods Chime calls:

==================  ========================  ===================================
stage               in                        out
==================  ========================  ===================================
``before_store``    ``Draft`` (not stored)    ``Accept`` / ``Rewrite`` / ``Reject``
``after_store``     ``ChimeMessage``          ``Reply`` records (often none)
                    ``MessageChange``         (``after_change``: edits, deletes,
                                              reactions; optional)
==================  ========================  ===================================

Subclass ``Handler`` and override the one method of your stage; the other keeps
its harmless default. Records are frozen: a handler never changes what it is
given, it answers with a new record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from chime_actors.records import ChimeMessage, MessageChange, Metadata

__all__ = [
    "ACCEPT",
    "Accept",
    "ChannelHandler",
    "Draft",
    "Handler",
    "HandlerFactory",
    "Reject",
    "Reply",
    "Rewrite",
    "Verdict",
]


@dataclass(frozen=True, slots=True)
class Draft:
    """A message a client sent, not yet numbered or stored (``before_store``'s input).

    An edit is judged as a draft too (``edit_of`` set): its new content must
    pass like a new message's, and a ``Rewrite`` of it changes the content only.

    Attributes:
        channel_id: the channel it is sent to.
        user_id: the sender (the editor, for an edit).
        content: the text, as the client sent it (or as an earlier handler
            of the chain rewrote it).
        metadata: the client's metadata, as ``(key, value)`` pairs (none for an edit).
        thread_id: the thread it replies in, or None.
        edit_of: the id of the message an edit changes; None for a new message.
    """

    channel_id: str
    user_id: str
    content: str
    metadata: Metadata = ()
    thread_id: str | None = None
    edit_of: str | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    """Store the message as it is."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Store the message with new content and/or metadata (None keeps the old)."""

    content: str | None = None
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Do not store the message; the sender gets ``error`` with this code and text."""

    code: Literal["forbidden", "bad_request"]
    message: str


Verdict = Accept | Rewrite | Reject
"""What a ``before_store`` handler answers."""

ACCEPT = Accept()


@dataclass(frozen=True, slots=True)
class Reply:
    """A message an ``after_store`` handler asks Chime to send (``echo_bot``).

    Chime stores it like a client's send, with an idempotency key made from the
    handler's name and the message replied to: a message handled twice (at
    least once delivery) is still answered once. Replies do not pass the
    ``before_store`` handlers.

    Attributes:
        content: the text.
        user_id: who it is from (a user id, ``[A-Za-z0-9_.@:-]{1,64}``).
        channel_id: where it goes; None: the channel of the message replied to.
        metadata: ``(key, value)`` pairs.
        thread_id: the thread it replies in, or None.
    """

    content: str
    user_id: str
    channel_id: str | None = None
    metadata: Metadata = ()
    thread_id: str | None = None


class ChannelHandler(Protocol):
    """What Chime calls on a handler. Subclass ``Handler`` rather than write all three."""

    def before_store(self, draft: Draft) -> Verdict | Awaitable[Verdict]:
        """Judge a message before it is stored (stage ``before_store``).

        Runs in the gateway's event loop, in the path of the send: return a
        verdict at once when you can (``word_filter`` does); return an awaitable
        (``async def``) for I/O. Never block: the loop serves thousands of
        connections, and ``timeout_ms`` can only interrupt an ``await``.
        """
        ...

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        """React to a stored message (stage ``after_store``); return replies, if any.

        Runs in the handler's own process, on a thread of its own; it may block.
        Raising (or overrunning ``timeout_ms``) is a failure: with ``on_failure:
        reject`` the message is offered again, with backoff, until it succeeds.
        Messages of a channel arrive in id order, at least once.
        """
        ...

    async def after_change(self, change: MessageChange) -> Sequence[Reply]:
        """React to a stored edit, delete or reaction (stage ``after_store``).

        Changes take positions in their channel's order like messages, and
        reach the handler in that order, with the same guarantees. Optional:
        a handler without this method (or ``Handler``'s default) ignores them.
        """
        ...

    async def close(self) -> None:
        """Release what the handler holds (the process is stopping)."""
        ...


class Handler:
    """Base class of handlers: accepts every draft and ignores stored messages."""

    def before_store(self, draft: Draft) -> Verdict | Awaitable[Verdict]:
        """Accept (override for ``before_store``)."""
        return ACCEPT

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        """Nothing to do (override for ``after_store``)."""
        return ()

    async def after_change(self, change: MessageChange) -> Sequence[Reply]:
        """Nothing to do (override to see edits, deletes and reactions)."""
        return ()

    async def close(self) -> None:
        """Nothing to release."""


HandlerFactory = Callable[[Mapping[str, Any]], ChannelHandler]
"""``factory(options) -> handler``: called once per process that runs the handler,
and once at start to check the options (so keep it cheap: open connections on
first use, not here). Raise ``ValueError`` (or ``ConfigError``) for bad options."""
