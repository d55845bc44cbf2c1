"""``word_filter`` (before_store): reject, or mask, messages holding listed words.

Options:

* ``words``: the words, matched whole (not inside a longer word) and without
  regard to case: ``darn`` matches ``Darn!`` but not ``darning``;
* ``action``: ``reject`` (default) answers the sender ``forbidden`` naming the
  word; ``mask`` stores the message with each listed word replaced by as many
  asterisks as it has characters.

It answers at once (no ``await``), so it costs a regular expression search per
send on the gateway's loop and nothing else.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from chime_actors.handlers.api import ACCEPT, Draft, Handler, Reject, Rewrite, Verdict
from chime_actors.handlers.registry import parse_options


class Action(enum.StrEnum):
    """What a match does."""

    REJECT = "reject"
    MASK = "mask"


class WordFilterOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The options of ``word_filter``."""

    words: Annotated[
        tuple[Annotated[str, msgspec.Meta(min_length=1, max_length=200)], ...],
        msgspec.Meta(min_length=1),
    ]
    action: Action = Action.REJECT


def word_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern matching any of ``words`` as a whole word, in any case.

    "Whole" means not next to another word character: lookarounds rather than
    ``\\b``, which misbehaves for words that start or end with punctuation.
    Longest first, so a word that begins another is not preferred to it.
    """
    ordered = sorted({w for w in words}, key=lambda w: (-len(w), w))
    alternatives = "|".join(re.escape(word) for word in ordered)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


class WordFilter(Handler):
    """Rejects or masks listed words."""

    def __init__(self, options: WordFilterOptions) -> None:
        self._pattern = word_pattern(options.words)
        self._action = options.action

    def before_store(self, draft: Draft) -> Verdict:
        """Accept, mask or reject (see the module docstring)."""
        if self._action is Action.REJECT:
            found = self._pattern.search(draft.content)
            if found is None:
                return ACCEPT
            return Reject("forbidden", f"the message contains a blocked word: {found[0]!r}")
        masked, count = self._pattern.subn(lambda m: "*" * len(m[0]), draft.content)
        return Rewrite(content=masked) if count else ACCEPT


def make(options: Mapping[str, Any]) -> WordFilter:
    """The ``word_filter`` factory."""
    return WordFilter(parse_options(options, WordFilterOptions))
