"""Path parameters shared by the REST routes, checked as the WebSocket frames are."""

from __future__ import annotations

from urllib.parse import unquote

from chime_actors.errors import ProtocolError
from chime_actors.protocol.frames import is_channel_id


def channel_id_param(raw: str) -> str:
    """The channel id of a still percent-encoded path segment.

    Decoded first, so an encoded ``/`` stays part of the id (and is then refused).

    Raises:
        ProtocolError: ``bad_request``, when it is not UTF-8 or not a channel id.
    """
    try:
        channel_id = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise ProtocolError("bad_request", "channelId is not valid UTF-8") from exc
    if not is_channel_id(channel_id):
        raise ProtocolError("bad_request", "channelId must match [A-Za-z0-9_.:-]{1,64}")
    return channel_id
