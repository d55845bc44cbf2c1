"""Message ids: fixed-width, string-sortable, contiguous per channel.

A channel's sequencer (see docs/architecture.md) numbers its messages 1, 2, 3 ...
with no gaps: a batch that fails to persist gives its numbers back. The id is that
number zero-padded to ``ID_WIDTH`` digits, so

* every id of a channel has the same length and string order is numeric order
  (docs/protocol.md), and
* a receiver that sees id n+2 right after n knows it missed exactly one message
  and can fetch it from storage (that is how gateways close gaps after a crash).
"""

from __future__ import annotations

import re
import secrets

ID_WIDTH = 16
_MAX_SEQ = 10**ID_WIDTH - 1


def format_message_id(seq: int) -> str:
    """Return the wire id of the ``seq``-th message of a channel (``seq`` >= 1)."""
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"sequence number out of range: {seq}")
    return f"{seq:0{ID_WIDTH}d}"


def parse_message_id(message_id: str) -> int:
    """Return the sequence number of a wire id; ``ValueError`` if it is not one."""
    if len(message_id) != ID_WIDTH or not message_id.isascii() or not message_id.isdigit():
        raise ValueError(f"not a message id: {message_id!r}")
    return int(message_id)


def is_message_id(value: object) -> bool:
    """True when ``value`` is a well-formed message id string."""
    if not isinstance(value, str):
        return False
    try:
        parse_message_id(value)
    except ValueError:
        return False
    return True


# --- attachment ids --------------------------------------------------------------

#: Random bytes in an attachment id (shown as twice as many hex digits).
ATTACHMENT_ID_BYTES = 16
_ATTACHMENT_ID = re.compile(r"[0-9a-f]{32}")


def new_attachment_id() -> str:
    """A fresh attachment id: 128 random bits as 32 lower-case hex digits.

    Random rather than numbered, so an id tells nothing about other uploads; who
    may read an attachment is decided by its uploader and the messages listing
    it, never by knowing the id (docs/protocol.md, "Attachments").
    """
    return secrets.token_hex(ATTACHMENT_ID_BYTES)


def is_attachment_id(value: object) -> bool:
    """True when ``value`` is a well-formed attachment id (32 lower-case hex digits)."""
    return isinstance(value, str) and _ATTACHMENT_ID.fullmatch(value) is not None
