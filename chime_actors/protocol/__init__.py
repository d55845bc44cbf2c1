"""Chime's wire protocol, sans I/O: parse client frames, encode server frames,
and run each connection's state machine.

Nothing in this package imports asyncio, sockets or any storage or actor
library (a test enforces it); the gateway actors do the I/O.
"""

from chime_actors.protocol.codes import CloseCode, ErrorCode
from chime_actors.protocol.connection import (
    Close,
    ConnectionProtocol,
    ConnState,
    Output,
    Reply,
    Request,
)
from chime_actors.protocol.frames import Limits, parse_binary, parse_frame

__all__ = [
    "Close",
    "CloseCode",
    "ConnState",
    "ConnectionProtocol",
    "ErrorCode",
    "Limits",
    "Output",
    "Reply",
    "Request",
    "parse_binary",
    "parse_frame",
]
