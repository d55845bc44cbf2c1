"""``echo_bot`` (after_store): answers ``<prefix>text`` with ``text``, as a user of its own.

Options:

* ``user``: the user id it speaks as (``[A-Za-z0-9_.@:-]{1,64}``);
* ``prefix``: a message starting with it is answered, in the same channel (and
  thread), with the rest of the text (``!echo hi`` with prefix ``!echo `` is
  answered ``hi``). Its own messages are never answered, so it cannot loop.

A small example of a bot, and the test of the whole after_store loop: message
stored, handler process told, reply sent through a persister like any send.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import msgspec

from chime_actors.handlers.api import Handler, Reply
from chime_actors.handlers.registry import parse_options
from chime_actors.records import ChimeMessage


class EchoBotOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The options of ``echo_bot``."""

    user: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.@:-]{1,64}$")]
    prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class EchoBot(Handler):
    """Echoes what follows its prefix."""

    def __init__(self, options: EchoBotOptions) -> None:
        self._user = options.user
        self._prefix = options.prefix

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        """One reply when the message starts with the prefix, else none."""
        if message.user_id == self._user or not message.content.startswith(self._prefix):
            return ()
        rest = message.content[len(self._prefix) :]
        if not rest.strip():
            return ()
        return (Reply(content=rest, user_id=self._user, thread_id=message.thread_id),)


def make(options: Mapping[str, Any]) -> EchoBot:
    """The ``echo_bot`` factory."""
    return EchoBot(parse_options(options, EchoBotOptions))
