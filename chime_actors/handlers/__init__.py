"""Channel handlers: custom code that checks or reacts to a channel's messages.

The interface handler authors use is re-exported here (docs/handlers.md)::

    from chime_actors.handlers import ACCEPT, Draft, Handler, Reject, Reply, Rewrite
"""

from chime_actors.handlers.api import (
    ACCEPT,
    Accept,
    ChannelHandler,
    Draft,
    Handler,
    HandlerFactory,
    Reject,
    Reply,
    Rewrite,
    Verdict,
)
from chime_actors.handlers.registry import parse_options

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
    "parse_options",
]
