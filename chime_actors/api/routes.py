"""The HTTP API's routes: health, readiness, metrics and REST history.

=========================================  =======================================
``GET /healthz``                           200 ``{"status": "ok"}`` while the process runs
``GET /readyz``                            200 or 503 ``{"ready": bool, "checks": {...}}``
``GET /metrics``                           Prometheus text format 0.0.4
``GET /v1/channels/{channelId}/messages``  ``{"messages": [...], "hasMore": bool}``
=========================================  =======================================

``/``, ``/static/...`` and ``/v1/client-config`` are the web chat page's
(``api.web.WebClient``, tried before these routes when given).

``HEAD`` is accepted wherever ``GET`` is. History takes the query parameters
``before``, ``after``, ``threadId`` (message ids) and ``limit`` (1..100, default
50); an empty value counts as absent, so ``?before=&limit=`` is the default
query. Unknown parameters are ignored. Only ``/v1/`` routes are authorized:
probes and the Prometheus scraper carry no tokens.

The routes hold no state and do no I/O of their own: everything goes through an
:class:`ApiBackend`, so they are tested with a small fake.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

from chime_actors.api import exposition
from chime_actors.api.http_server import (
    HttpHandler,
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    text_response,
)
from chime_actors.api.web import WebClient
from chime_actors.errors import ChimeError, ProtocolError, StoreUnavailable
from chime_actors.ids import is_message_id
from chime_actors.logs import get_logger
from chime_actors.storage.store import HistoryPage

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "MAX_HISTORY_LIMIT",
    "METRICS_CONTENT_TYPE",
    "ApiBackend",
    "Readiness",
    "make_handler",
]

log = get_logger(__name__)

DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 100
METRICS_CONTENT_TYPE = exposition.CONTENT_TYPE

_CHANNEL_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_ALLOW = {"Allow": "GET, HEAD"}
_READ_METHODS = ("GET", "HEAD")
# Status for each error code ``ApiBackend.authorize`` may return.
_AUTH_STATUS = {"unauthorized": 401, "forbidden": 403}


@dataclass(frozen=True, slots=True)
class Readiness:
    """Whether the server can take traffic, and why not.

    Attributes:
        ready: True when every check passed.
        checks: one entry per dependency, e.g. ``{"storage": True, "gateway 1": True}``.
    """

    ready: bool
    checks: Mapping[str, bool]


class ApiBackend(Protocol):
    """What the routes need from the rest of Chime."""

    async def readiness(self) -> Readiness:
        """Check storage, the bus and the actors; never raises for a failed check."""
        ...

    def metrics_text(self) -> str:
        """Return the Prometheus exposition of every process' latest snapshot."""
        ...

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        """Return one page of a channel's history (arguments already validated).

        Raises:
            StoreUnavailable: storage is down; answered with 503.
        """
        ...

    def authorize(self, headers: Mapping[str, str], channel_id: str) -> str | None:
        """Check the request's credentials (``Authorization: Bearer ...``) for a channel.

        Args:
            headers: the request headers, names lower-cased.
            channel_id: the channel the request reads; the token must grant it.

        Returns:
            None when allowed, else the error code (``unauthorized``, ``forbidden``).
        """
        ...


def make_handler(backend: ApiBackend, web: WebClient | None = None) -> HttpHandler:
    """Return the HTTP handler serving Chime's API from ``backend``.

    Args:
        backend: where readiness, metrics and history come from.
        web: the web chat page's routes, tried first; None serves no page.

    Returns:
        A handler for :class:`chime_actors.api.http_server.HttpServer`.
    """

    async def handle(request: HttpRequest) -> HttpResponse:
        # Split the raw path before decoding so "%2F" inside a channel id stays
        # part of that segment instead of adding one.
        if web is not None and (page := web.handle(request)) is not None:
            return page
        segments = request.path.split("/")[1:]
        if segments in (["healthz"], ["readyz"], ["metrics"]):
            if request.method not in _READ_METHODS:
                return _method_not_allowed(request)
            if segments == ["healthz"]:
                return json_response({"status": "ok"})
            if segments == ["readyz"]:
                return await _readyz(backend)
            return text_response(backend.metrics_text(), content_type=METRICS_CONTENT_TYPE)
        if len(segments) == 4 and segments[:2] == ["v1", "channels"] and segments[3] == "messages":
            if request.method not in _READ_METHODS:
                return _method_not_allowed(request)
            return await _history(backend, request, segments[2])
        return error_response(404, f"no route for {request.path}", code="not_found")

    return handle


def _method_not_allowed(request: HttpRequest) -> HttpResponse:
    return error_response(405, f"{request.method} is not allowed on {request.path}", headers=_ALLOW)


async def _readyz(backend: ApiBackend) -> HttpResponse:
    try:
        readiness = await backend.readiness()
    except ChimeError:
        # A backend that cannot even tell is not ready; the probe wants a status.
        readiness = Readiness(ready=False, checks={})
    body = {"ready": readiness.ready, "checks": dict(readiness.checks)}
    return json_response(body, 200 if readiness.ready else 503)


async def _history(backend: ApiBackend, request: HttpRequest, raw_channel: str) -> HttpResponse:
    try:
        channel_id = _channel_id(raw_channel)
    except ProtocolError as exc:
        return error_response(400, exc.message, code=exc.code)
    denied = backend.authorize(request.headers, channel_id)
    if denied is not None:
        status = _AUTH_STATUS.get(denied, 401)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        message = (
            "this token does not grant the channel" if status == 403 else "request not authorized"
        )
        return error_response(status, message, code=denied, headers=headers)
    try:
        before = _message_id_param(request, "before")
        after = _message_id_param(request, "after")
        thread_id = _message_id_param(request, "threadId")
        limit = _limit_param(request)
    except ProtocolError as exc:
        return error_response(400, exc.message, code=exc.code)
    try:
        page = await backend.history(
            channel_id, before=before, after=after, limit=limit, thread_id=thread_id
        )
    except StoreUnavailable:
        # The exception's text names hosts or files: it goes to our log, not to the client.
        log.warning("history: storage unavailable", channel=channel_id, exc_info=True)
        return error_response(
            503,
            "storage is unavailable; try again",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    return json_response(
        {"messages": [message.to_wire() for message in page.messages], "hasMore": page.has_more}
    )


def _bad_request(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


def _channel_id(raw: str) -> str:
    try:
        channel_id = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise _bad_request("channelId is not valid UTF-8") from exc
    if not _CHANNEL_ID.match(channel_id):
        raise _bad_request("channelId must match [A-Za-z0-9_.:-]{1,64}")
    return channel_id


def _message_id_param(request: HttpRequest, name: str) -> str | None:
    value = request.query.get(name, "")
    if not value:
        return None
    if not is_message_id(value):
        raise _bad_request(f"{name} is not a message id")
    return value


def _limit_param(request: HttpRequest) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return DEFAULT_HISTORY_LIMIT
    # isdecimal alone admits non-ASCII digits; "+5", " 5" and "5.0" are refused too,
    # and the length cap keeps int() away from huge digit strings.
    if not (len(raw) <= 3 and raw.isascii() and raw.isdecimal()) or not (
        1 <= int(raw) <= MAX_HISTORY_LIMIT
    ):
        raise _bad_request(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    return int(raw)
