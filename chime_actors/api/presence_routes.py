"""REST routes of presence and read markers (docs/protocol.md, "HTTP API").

==========================================  ==========================================
``GET /v1/channels/{c}/presence``           ``{"online": [...]}``: WebSocket connections
                                            only (the API asks a gateway over a lane)
``POST /v1/channels/{c}/read``              body ``{"messageId"}``: the read marker, 204
``GET /v1/me/unread?channels=a,b``          ``{"unread": {"a": 3, "b": 0}}``
==========================================  ==========================================

The caller is the Bearer token's ``sub`` in jwt mode, the ``X-Chime-User`` header in
insecure mode (required by the two routes that are about one user); the token's
``channels`` claim must grant every channel named (``forbidden``, 403). The same
rules as the WebSocket twins apply (``presence.unread``): a marker never moves
back, one past the channel's newest message is ``not_found`` (404).

Pure like ``routes``: everything goes through a :class:`PresenceBackend`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from chime_actors.api.http_server import HttpRequest, HttpResponse, error_response, json_response
from chime_actors.api.params import channel_id_param
from chime_actors.api.router import Route
from chime_actors.auth import Identity
from chime_actors.errors import (
    MessageNotFound,
    PresenceUnavailable,
    ProtocolError,
    StoreUnavailable,
)
from chime_actors.ids import is_message_id
from chime_actors.logs import get_logger
from chime_actors.protocol.frames import is_channel_id

log = get_logger(__name__)

_STATUS = {"bad_request": 400, "unauthorized": 401, "forbidden": 403}


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking.

    Attributes:
        user_id: the user; None in insecure mode without ``X-Chime-User``.
        identity: what the credentials grant (``Identity.may_access``).
    """

    user_id: str | None
    identity: Identity


class PresenceBackend(Protocol):
    """What these routes need from the API process."""

    max_channels: int
    """The most channels one ``/v1/me/unread`` may name."""

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """Identify the request.

        Raises:
            ProtocolError: ``unauthorized`` (no or bad token in jwt mode) or
                ``bad_request`` (a malformed ``X-Chime-User``).
        """
        ...

    async def presence_online(self, channel_id: str) -> list[str]:
        """Users with a WebSocket connection in the channel; ``PresenceUnavailable``."""
        ...

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        """Store a read marker; ``MessageNotFound``, ``StoreUnavailable``."""
        ...

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        """Unread counts per channel; ``StoreUnavailable``."""
        ...


def routes(backend: PresenceBackend) -> list[Route]:
    """These routes, for the API's table (``routes.api_routes``)."""

    async def presence(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _presence(backend, request, params["channelId"])

    async def read(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _read(backend, request, params["channelId"])

    async def unread(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _unread(backend, request)

    return [
        Route("/v1/channels/{channelId}/presence", {"GET": presence}),
        Route("/v1/channels/{channelId}/read", {"POST": read}),
        Route("/v1/me/unread", {"GET": unread}),
    ]


async def _presence(backend: PresenceBackend, request: HttpRequest, raw: str) -> HttpResponse:
    try:
        caller = backend.caller(request.headers)
        channel_id = channel_id_param(raw)
        _check_grant(caller, [channel_id])
        online = await backend.presence_online(channel_id)
    except ProtocolError as exc:
        return _refused(exc)
    except PresenceUnavailable:
        log.warning("presence: no gateway answered", channel=channel_id, exc_info=True)
        return _unavailable("presence is unavailable; try again")
    return json_response({"online": online})


async def _read(backend: PresenceBackend, request: HttpRequest, raw: str) -> HttpResponse:
    try:
        caller = backend.caller(request.headers)
        user_id = _user(caller)
        channel_id = channel_id_param(raw)
        _check_grant(caller, [channel_id])
        message_id = _message_id(request.body)
        await backend.mark_read(channel_id, user_id, message_id)
    except ProtocolError as exc:
        return _refused(exc)
    except MessageNotFound:
        return error_response(
            404, f"no message {message_id} in channel {channel_id}", code="not_found"
        )
    except StoreUnavailable:
        log.warning("read marker: storage unavailable", channel=channel_id, exc_info=True)
        return _unavailable("storage is unavailable; try again")
    return HttpResponse(204)


async def _unread(backend: PresenceBackend, request: HttpRequest) -> HttpResponse:
    try:
        caller = backend.caller(request.headers)
        user_id = _user(caller)
        channels = _channel_list(request.query.get("channels", ""), backend.max_channels)
        _check_grant(caller, channels)
        counts = await backend.unread_counts(user_id, channels)
    except ProtocolError as exc:
        return _refused(exc)
    except StoreUnavailable:
        log.warning("unread counts: storage unavailable", exc_info=True)
        return _unavailable("storage is unavailable; try again")
    return json_response({"unread": counts})


# --- checks ---------------------------------------------------------------------------


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


def _channel_list(raw: str, limit: int) -> list[str]:
    names = [name for name in raw.split(",") if name]
    if not names:
        raise _bad("the channels parameter names no channel (channels=a,b)")
    if len(names) > limit:
        raise _bad(f"at most {limit} channels per request")
    for name in names:
        if not is_channel_id(name):
            raise _bad(f"{name!r} is not a channel id: [A-Za-z0-9_.:-]{{1,64}}")
    return list(dict.fromkeys(names))


def _user(caller: Caller) -> str:
    if caller.user_id is None:
        raise ProtocolError("unauthorized", "say who you are: the X-Chime-User header")
    return caller.user_id


def _check_grant(caller: Caller, channels: Sequence[str]) -> None:
    denied = [c for c in channels if not caller.identity.may_access(c)]
    if denied:
        raise ProtocolError("forbidden", f"the token does not grant: {', '.join(denied)}")


def _message_id(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad('the body must be a JSON object: {"messageId": "..."}') from exc
    message_id = data.get("messageId") if isinstance(data, dict) else None
    if not is_message_id(message_id):
        raise _bad("messageId must be a message id (16 digits)")
    assert isinstance(message_id, str)
    return message_id


# --- responses ------------------------------------------------------------------------


def _refused(exc: ProtocolError) -> HttpResponse:
    status = _STATUS.get(exc.code, 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc.message, code=exc.code, headers=headers)


def _unavailable(message: str) -> HttpResponse:
    return error_response(503, message, code="unavailable", headers={"Retry-After": "1"})
