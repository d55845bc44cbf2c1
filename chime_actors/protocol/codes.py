"""The error codes and WebSocket close codes of docs/protocol.md, as enums.

``ErrorCode`` is a ``StrEnum`` so a member can be passed wherever the wire code
string is expected (``ProtocolError(ErrorCode.BAD_REQUEST, ...)``) and compares
equal to it.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame (docs/protocol.md, "Errors and close codes")."""

    BAD_REQUEST = "bad_request"
    HANDSHAKE_REQUIRED = "handshake_required"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_SUBSCRIBED = "not_subscribed"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses (docs/protocol.md, "Close codes")."""

    NORMAL = 1000
    """The server ends a connection normally (after the client closed its side)."""
    GOING_AWAY = 1001
    """Server shutdown, after draining acks already owed."""
    SLOW_CONSUMER = 1008
    """A client held back that takes nothing for ``chat.send_stall_ms`` (RFC 6455's
    policy violation)."""
    MESSAGE_TOO_BIG = 1009
    """A frame over ``chat.max_frame_bytes``."""
    INTERNAL_ERROR = 1011
    """Repeated internal errors of a connection, or its channel kept failing; also
    a keepalive ping unanswered for two heartbeats ("keepalive ping timeout")."""
    UNAUTHORIZED = 4001
    """The connect's token failed to verify or contradicts ``userId``."""
    HANDSHAKE_TIMEOUT = 4008
    """No connect within ``chat.handshake_timeout_ms``; also (docs/protocol.md) a
    connection that goes on past twice ``limits.messages_per_10s``."""
    FLOODING = 4008
