"""The HTTP API's routes: health, readiness, metrics, REST history and changes.

===================================================  =============================================
``GET /healthz``                                     200 ``{"status": "ok"}`` while the process runs
``GET /readyz``                                      200 or 503 ``{"ready": bool, "checks": {...}}``
``GET /metrics``                                     Prometheus text format 0.0.4
``GET /v1/channels/{c}/messages``                    ``{"messages": [...], "hasMore": bool}``
``POST /v1/channels/{c}/messages``                   send ``{"content", "clientMsgId", ...}``: 201
                                                     once stored; a repeat: 200 ``duplicate``
``PATCH /v1/channels/{c}/messages/{m}``              edit ``{"content"}``: 200, the edited message
``DELETE /v1/channels/{c}/messages/{m}``             delete: 204
``PUT /v1/channels/{c}/messages/{m}/reactions/{e}``  add the reaction ``e`` (percent-encoded): 204
``DELETE`` the same                                  remove it: 204
``POST /v1/attachments?filename=NAME``               upload a file (the raw body): 201
``GET /v1/attachments/{id}``                         download it (``attachment_routes``)
``GET /openapi.json``                                the OpenAPI 3.1 description of all of these
===================================================  =============================================

``/``, ``/static/{name}`` and ``/v1/client-config`` are the web chat page's
(``api.web.WebClient``, when given). :func:`api_routes` is the table of them
all (``api.router``), and ``api.openapi`` describes each of its routes.

``HEAD`` is accepted wherever ``GET`` is. History takes the query parameters
``before``, ``after``, ``threadId`` (message ids) and ``limit`` (1..100, default
50); an empty value counts as absent, so ``?before=&limit=`` is the default
query. Unknown parameters are ignored. Only ``/v1/`` routes are authorized:
probes and the Prometheus scraper carry no tokens. The send and the changes
are the WebSocket's ``send``, ``edit``, ``delete`` and ``react`` with the same
rules and codes
(author only: 403 ``forbidden``; unknown message: 404 ``not_found``; over
``limits.messages_per_10s``: 429 ``rate_limited`` with ``Retry-After``); they
need a user: the Bearer token's, or in insecure mode the ``X-Chime-User``
header (401 ``unauthorized`` without one).

The routes hold no state and do no I/O of their own: everything goes through an
:class:`ApiBackend`, so they are tested with a small fake.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote

import orjson

from chime_actors.api import attachment_routes, exposition, openapi, presence_routes
from chime_actors.api.http_server import (
    HttpRequest,
    HttpResponse,
    error_response,
    json_response,
    text_response,
)
from chime_actors.api.params import channel_id_param
from chime_actors.api.router import Route, Router
from chime_actors.api.web import CLIENT_CONFIG_PATH, STATIC_PREFIX, WebClient
from chime_actors.errors import ChimeError, ProtocolError, StoreError, StoreUnavailable
from chime_actors.ids import is_message_id
from chime_actors.logs import get_logger
from chime_actors.persister.link import next_token
from chime_actors.protocol import server_frames
from chime_actors.protocol.codes import ErrorCode
from chime_actors.protocol.events import Send
from chime_actors.protocol.frames import MAX_EMOJI_CHARS, Limits, parse_frame
from chime_actors.records import (
    ChangeKind,
    SendOutcome,
    SendRecord,
    server_client_msg_id,
    wire_client_msg_id,
)
from chime_actors.storage.store import HistoryPage

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "MAX_HISTORY_LIMIT",
    "METRICS_CONTENT_TYPE",
    "ApiBackend",
    "Readiness",
    "api_routes",
    "make_handler",
    "streams_body",
]

log = get_logger(__name__)

DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 100
METRICS_CONTENT_TYPE = exposition.CONTENT_TYPE

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


#: Which requests' bodies the HTTP server streams to the routes (uploads).
streams_body = attachment_routes.streams_body


class ApiBackend(presence_routes.PresenceBackend, attachment_routes.AttachmentBackend, Protocol):
    """What the routes need from the rest of Chime (presence and read markers:
    ``presence_routes``; files: ``attachment_routes``)."""

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

    @property
    def max_content_chars(self) -> int:
        """``chat.max_content_chars``: the longest content an edit may carry."""
        ...

    def writer(self, headers: Mapping[str, str], channel_id: str) -> str:
        """The user a change of ``channel_id`` is made as.

        Raises:
            ProtocolError: ``unauthorized`` (no user, or a token refused) or
                ``forbidden`` (the token does not grant the channel).
        """
        ...

    def take_rate(self, user_id: str) -> float | None:
        """Count one change of ``user_id`` against ``limits.messages_per_10s``.

        Returns:
            None when it may go on, else the seconds until it may.
        """
        ...

    async def send(self, record: SendRecord) -> SendOutcome:
        """Hand a send to the channel's persister (through the before_store
        handlers) and wait for its outcome; never raises for a refusal."""
        ...

    async def change(
        self,
        channel_id: str,
        message_id: str,
        user_id: str,
        kind: ChangeKind,
        *,
        content: str | None = None,
        emoji: str | None = None,
    ) -> SendOutcome:
        """Hand a change to the channel's persister and wait for its outcome.

        The outcome's ``error_code`` (``forbidden``, ``not_found``,
        ``unavailable``) says why it was not made; never raises for those.
        """
        ...


def make_handler(backend: ApiBackend, web: WebClient | None = None) -> Router:
    """Return the HTTP handler serving Chime's API from ``backend``.

    Args:
        backend: where readiness, metrics and history come from.
        web: the web chat page's routes; None serves no page.

    Returns:
        A :class:`Router` (an ``HttpHandler`` for
        :class:`chime_actors.api.http_server.HttpServer`) whose table is every
        route served.
    """
    return Router(api_routes(backend, web))


def api_routes(backend: ApiBackend, web: WebClient | None = None) -> list[Route]:
    """Every route of the API (``/openapi.json`` describes each), in matching order."""

    async def healthz(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return json_response({"status": "ok"})

    async def readyz(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _readyz(backend)

    async def metrics(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return text_response(backend.metrics_text(), content_type=METRICS_CONTENT_TYPE)

    async def history(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _history(backend, request, params["channelId"])

    async def send(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _send(backend, request, params["channelId"])

    async def change(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        emoji = params.get("emoji")
        return await _message_change(
            backend, request, params["channelId"], params["messageId"], emoji
        )

    async def upload(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        return await _attachment(request, attachment_routes.upload(backend, request))

    async def download(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        answer = attachment_routes.download(backend, request, params["attachmentId"])
        return await _attachment(request, answer)

    message = "/v1/channels/{channelId}/messages/{messageId}"
    return [
        *([] if web is None else _web_routes(web)),
        Route("/healthz", {"GET": healthz}),
        Route("/readyz", {"GET": readyz}),
        Route("/metrics", {"GET": metrics}),
        Route(openapi.PATH, {"GET": _openapi}),
        Route("/v1/channels/{channelId}/messages", {"GET": history, "POST": send}),
        Route(message, {"PATCH": change, "DELETE": change}),
        Route(f"{message}/reactions/{{emoji}}", {"PUT": change, "DELETE": change}),
        *presence_routes.routes(backend),
        Route(attachment_routes.UPLOAD_PATH, {"POST": upload}),
        Route(f"{attachment_routes.UPLOAD_PATH}/{{attachmentId}}", {"GET": download}),
    ]


def _web_routes(web: WebClient) -> list[Route]:
    """The web page's paths, answered by ``web`` (its own checks and headers)."""

    async def page(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
        answer = web.handle(request)
        if answer is None:  # cannot happen for these paths; a 404 rather than a crash
            return error_response(404, f"no route for {request.path}", code="not_found")
        return answer

    paths = ("/", f"{STATIC_PREFIX}{{name}}", CLIENT_CONFIG_PATH)
    return [Route(path, {"GET": page}) for path in paths]


async def _openapi(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
    return HttpResponse(200, openapi.document_bytes(), "application/json")


async def _attachment(request: HttpRequest, answer: Awaitable[HttpResponse]) -> HttpResponse:
    """An attachment route's answer, its refusals and storage failures as problems."""
    try:
        return await answer
    except ProtocolError as exc:
        return _protocol_error(exc)
    except StoreError:
        # Its text names hosts or files: it goes to our log, not to the client.
        log.warning("attachments: storage failed", path=request.path, exc_info=True)
        return error_response(
            503,
            "storage is unavailable; try again",
            code="unavailable",
            headers={"Retry-After": "1"},
        )


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
        channel_id = channel_id_param(raw_channel)
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
    messages = [
        server_frames.history_message(message, page.reactions, page.reply_counts)
        for message in page.messages
    ]
    return json_response({"messages": messages, "hasMore": page.has_more})


async def _message_change(
    backend: ApiBackend,
    request: HttpRequest,
    raw_channel: str,
    raw_message: str,
    raw_emoji: str | None,
) -> HttpResponse:
    """PATCH/DELETE a message, PUT/DELETE a reaction: the WebSocket's twins."""
    try:
        channel_id = channel_id_param(raw_channel)
        message_id = unquote(raw_message)
        if not is_message_id(message_id):
            raise _bad_request("messageId is not a message id")
        emoji = None if raw_emoji is None else _emoji(raw_emoji)
        user_id = backend.writer(request.headers, channel_id)
        content = None
        if raw_emoji is None and request.method == "PATCH":
            content = _edit_content(request.body, backend.max_content_chars)
    except ProtocolError as exc:
        return _protocol_error(exc)
    wait_s = backend.take_rate(user_id)
    if wait_s is not None:
        return _rate_limited(wait_s)
    if emoji is not None:
        added = request.method == "PUT"
        kind = ChangeKind.REACTION_ADD if added else ChangeKind.REACTION_REMOVE
    else:
        kind = ChangeKind.EDIT if content is not None else ChangeKind.DELETE
    outcome = await backend.change(
        channel_id, message_id, user_id, kind, content=content, emoji=emoji
    )
    if outcome.error_code is not None:
        code = outcome.error_code
        headers = {"Retry-After": "1"} if code == "unavailable" else None
        # Messages of this layer's own (never the store's: they name hosts).
        message = _CHANGE_REFUSALS.get(code, "the change could not be made")
        if code in _OWN_WORDS and outcome.error_message:
            # A refusal's own words (a before_store handler's, meant for the
            # sender); only storage failures' texts name hosts.
            message = outcome.error_message
        return error_response(_STATUS.get(code, 500), message, code=code, headers=headers)
    if kind is ChangeKind.EDIT:
        assert outcome.change is not None and outcome.change.message is not None
        return json_response(outcome.change.message.to_wire())
    return HttpResponse(204)


_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}
_OWN_WORDS = frozenset({"forbidden", "bad_request"})
_CHANGE_REFUSALS = {
    "forbidden": "only the author may edit or delete a message",
    "not_found": "no such message",
    "unavailable": "storage is unavailable; try again",
}


async def _send(backend: ApiBackend, request: HttpRequest, raw_channel: str) -> HttpResponse:
    """``POST /v1/channels/{c}/messages``: the WebSocket ``send``, answered once stored.

    The body is a send frame's fields (``content``, ``clientMsgId``, ``metadata``,
    ``threadId``, ``attachments``), checked by the protocol core exactly as on the
    WebSocket (and the attachments by the channel's persister).
    201 with the stored ChimeMessage; a repeat of a ``clientMsgId`` stores
    nothing and answers 200 with the first message's ids (``duplicate: true``).
    """
    try:
        channel_id = channel_id_param(raw_channel)
        user_id = backend.writer(request.headers, channel_id)
        event = _send_event(request.body, channel_id, backend.max_content_chars)
    except ProtocolError as exc:
        return _protocol_error(exc)
    wait_s = backend.take_rate(user_id)
    if wait_s is not None:
        return _rate_limited(wait_s)
    record = SendRecord(
        token=next_token(),
        channel_id=channel_id,
        user_id=user_id,
        content=event.content,
        metadata=event.metadata,
        thread_id=event.thread_id,
        # Always a key, so the send is always safe to retry (records.py).
        client_msg_id=event.client_msg_id or server_client_msg_id(),
        attachments=event.attachments,
    )
    outcome = await backend.send(record)
    if outcome.error_code is not None or outcome.message is None:
        code = outcome.error_code or "unavailable"
        headers = {"Retry-After": "1"} if code == "unavailable" else None
        message = "storage is unavailable; try again"
        if code in _OWN_WORDS and outcome.error_message:
            message = outcome.error_message  # a before_store handler's words
        return error_response(_STATUS.get(code, 500), message, code=code, headers=headers)
    stored = outcome.message
    if outcome.duplicate:
        # The first send's ids (its content is not kept for repeats).
        return json_response(
            {
                "duplicate": True,
                "channelId": stored.channel_id,
                "messageId": stored.message_id,
                "createdAt": stored.created_at,
                "clientMsgId": wire_client_msg_id(stored.client_msg_id),
            }
        )
    return json_response(stored.to_wire(), 201)


def _send_event(body: bytes, channel_id: str, max_content_chars: int) -> Send:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad_request("the body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise _bad_request("the body must be a JSON object")
    if data.get("channelId", channel_id) != channel_id:
        raise _bad_request("the body's channelId differs from the path's")
    frame = {**data, "type": "send", "channelId": channel_id}
    event = parse_frame(
        orjson.dumps(frame).decode(), limits=Limits(max_content_chars=max_content_chars)
    )
    assert isinstance(event, Send)  # the type was set above
    return event


def _rate_limited(wait_s: float) -> HttpResponse:
    """429 over ``limits.messages_per_10s``, saying when to try again."""
    return _protocol_error(
        ProtocolError(
            ErrorCode.RATE_LIMITED,
            "over limits.messages_per_10s; try again later",
            retry_after_ms=max(1, math.ceil(wait_s * 1000)),
        )
    )


def _protocol_error(exc: ProtocolError) -> HttpResponse:
    status = _STATUS.get(exc.code, 400)
    if exc.retry_after_ms is not None:  # rate_limited: when to try again, both ways
        return error_response(
            status,
            exc.message,
            code=exc.code,
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_ms / 1000)))},
            retryAfterMs=exc.retry_after_ms,
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc.message, code=exc.code, headers=headers)


def _emoji(raw: str) -> str:
    try:
        emoji = unquote(raw, errors="strict")
    except UnicodeDecodeError as exc:
        raise _bad_request("the emoji is not valid UTF-8") from exc
    if not emoji.strip() or len(emoji) > MAX_EMOJI_CHARS:
        raise _bad_request(f"the emoji must be 1-{MAX_EMOJI_CHARS} characters, not blank")
    return emoji


def _edit_content(body: bytes, max_chars: int) -> str:
    """The ``content`` of an edit's JSON body, checked as the WebSocket checks it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad_request("the body must be a JSON object") from exc
    if not isinstance(data, dict):
        raise _bad_request("the body must be a JSON object")
    content = data.get("content")
    if not isinstance(content, str):
        raise _bad_request("'content' must be a string")
    if len(content) > max_chars:
        raise ProtocolError("too_large", f"'content' is longer than {max_chars} characters")
    if not content.strip():
        raise _bad_request("'content' must not be blank")
    return content


def _bad_request(message: str) -> ProtocolError:
    return ProtocolError("bad_request", message)


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
