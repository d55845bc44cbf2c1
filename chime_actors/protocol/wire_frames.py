"""WebSocket text frames encoded once, header included, for many recipients.

A broadcast reaches hundreds of connections in one gateway. Framing it through
websockets' ``send`` costs a lock, a frame object and a serialisation per
recipient; a server frame is unmasked (RFC 6455 §5.1), so its bytes are the same
for every recipient and can be built once and written to each socket as they
are (``gateway.outbox``). Pure functions, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)
_MASK_BIT = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame_header(first_byte: int, size: int, *, masked: bool = False) -> bytes:
    """A frame's header up to its payload (or its masking key, when ``masked``).

    ``first_byte`` holds the FIN bit and the opcode; ``size`` is the payload's
    length, in the 7-, 16- or 64-bit form RFC 6455 §5.2 asks for.
    """
    mask = _MASK_BIT if masked else 0
    if size < 126:
        return bytes((first_byte, mask | size))
    if size < 1 << 16:
        return _LEN16.pack(first_byte, mask | 126, size)
    return _LEN64.pack(first_byte, mask | 127, size)


def text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame carrying ``payload`` (UTF-8)."""
    return frame_header(_FIN_TEXT, len(payload)) + payload


def frame_payload(frame: bytes) -> bytes:
    """The payload of a frame made by ``text_frame`` (tests and fakes read it back)."""
    size = frame[1]
    if size < 126:
        return frame[2:]
    return frame[4:] if size == 126 else frame[10:]


@dataclass(frozen=True, slots=True)
class WireFrame:
    """A server text frame, encoded: ``data`` goes to the socket as it is."""

    data: bytes

    @classmethod
    def of(cls, text: str) -> WireFrame:
        """Frame the JSON text of a server frame."""
        return cls(text_frame(text.encode()))

    @property
    def text(self) -> str:
        """The frame's text (for tests and logs; the hot path never decodes)."""
        return frame_payload(self.data).decode()
