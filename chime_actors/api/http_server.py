"""The HTTP API's server: aiohttp on the API actor's own event loop.

aiohttp does HTTP/1.1 (parsing, keep-alive, pipelining, chunked bodies, the
``Server`` and ``Date`` headers, HEAD, size limits); this module only adapts it
to the small interface the routes are written against, so the routes stay pure
functions of an :class:`HttpRequest` tested without sockets:

* :class:`HttpRequest` / :class:`HttpResponse`: frozen records of one exchange;
* :func:`json_response`, :func:`text_response`, :func:`error_response`: helpers;
* :class:`HttpServer`: an ``aiohttp.web.AppRunner`` + ``TCPSite`` with one
  catch-all route that calls the handler, and a middleware that turns aiohttp's
  own refusals (413 and the like, with their headers) and any handler exception
  into PROTOCOL.md's error body: RFC 9457 problem details,
  ``application/problem+json`` ``{"type": "about:blank", "title", "status",
  "detail", "code"}`` (a 500 names a correlation id that is also logged with
  the traceback).

Errors aiohttp finds while *parsing* (a malformed request line, a bad
``Content-Length``) are answered 400 by aiohttp itself, before any handler or
middleware runs; their body is aiohttp's plain text.
"""

from __future__ import annotations

import http
import logging
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from chime_actors.errors import ChimeError

__all__ = [
    "CATCH_ALL",
    "MAX_BODY_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "HttpError",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "error_response",
    "json_response",
    "text_response",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
PROBLEM_CONTENT_TYPE = "application/problem+json"
# The path of the aiohttp route that hands every request to the handler.
CATCH_ALL = "/{tail:.*}"
# An idle keep-alive connection is closed after this long.
KEEPALIVE_TIMEOUT_S = 10.0
# On close, requests still running get this long before they are cancelled.
CLOSE_GRACE_S = 5.0

_EMPTY: Mapping[str, str] = MappingProxyType({})
# Headers of an aiohttp exception that described its own body, not ours.
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})
# RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _empty() -> Mapping[str, str]:
    return _EMPTY


# The code in an error body for each status; PROTOCOL.md's vocabulary is reused so
# a client handles one set of codes everywhere.
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    408: "bad_request",
    411: "bad_request",
    413: "too_large",
    414: "too_large",
    431: "too_large",
    500: "internal",
    501: "bad_request",
    503: "unavailable",
    505: "bad_request",
}


class HttpError(ChimeError):
    """A handler's way to refuse a request with a status of its choosing.

    Attributes:
        status: the HTTP status to answer with (400, 405, 413 ...).
        message: human text for the error body.
        headers: extra response headers (``Allow`` for 405).
    """

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.headers: Mapping[str, str] = dict(headers or {})


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, as the routes see it.

    Attributes:
        method: upper-case method token (``GET``).
        path: the target's path, still percent-encoded (``/v1/channels/a%3Ab/messages``)
            so that an encoded ``/`` cannot change routing; decode per segment.
        query: query parameters, percent-decoded; the first value wins on repeats.
        headers: header fields with lower-cased names; repeated fields are joined
            with ``", "``.
        body: the request body (empty when there is none).
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=_empty)
    headers: Mapping[str, str] = field(default_factory=_empty)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response to send.

    Attributes:
        status: the HTTP status code.
        body: the payload bytes (not sent for HEAD requests, 204 and 304).
        content_type: the ``Content-Type`` header.
        headers: extra headers; framing headers (``Content-Length``, ``Date``,
            ``Server``) are aiohttp's.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"invalid HTTP status: {self.status}")
        # Refuse CR/LF in header values here, where the bug is, rather than
        # letting a value split the response (header injection).
        for name, value in (("content-type", self.content_type), *self.headers.items()):
            if "\r" in value or "\n" in value or not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid response header {name!r}: {value!r}")


HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
"""The application: one request in, one response out."""


# --- response helpers ------------------------------------------------------------------


def json_response(
    obj: Any, status: int = 200, *, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """A response whose body is ``obj`` serialized with orjson."""
    return HttpResponse(status, orjson.dumps(obj), "application/json", dict(headers or {}))


def text_response(
    text: str,
    status: int = 200,
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """A response whose body is ``text`` encoded as UTF-8."""
    return HttpResponse(status, text.encode(), content_type, dict(headers or {}))


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> HttpResponse:
    """An RFC 9457 problem: ``{"type": "about:blank", "title", "status", "detail", "code"}``.

    ``about:blank`` says the status is all there is to the problem's type, so the
    title is the status' reason phrase (RFC 9457 section 4.2.1); ``code`` is the
    extension member a client switches on, as on the WebSocket.

    Args:
        status: the HTTP status.
        message: human text: the ``detail``.
        code: the PROTOCOL.md error code; derived from ``status`` when omitted.
        headers: extra response headers.
        **extra: more extension members (``correlationId``, ``retryAfterMs``).
    """
    problem: dict[str, Any] = {
        "type": "about:blank",
        "title": _reason_phrase(status),
        "status": status,
        "detail": message,
        "code": code or _STATUS_CODES.get(status, "bad_request"),
    }
    problem.update(extra)
    return HttpResponse(status, orjson.dumps(problem), PROBLEM_CONTENT_TYPE, dict(headers or {}))


def _reason_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status without a registered phrase (599)
        return "Client Error" if status < 500 else "Server Error"


# --- the aiohttp adapter ---------------------------------------------------------------


def _to_aiohttp(response: HttpResponse) -> web.Response:
    # Content-Type as a header, verbatim: aiohttp's content_type/charset arguments
    # would rebuild it and drop parameters such as Prometheus' "version=0.0.4".
    headers = {**response.headers, "Content-Type": response.content_type}
    return web.Response(status=response.status, body=response.body, headers=headers)


async def _from_aiohttp(request: web.Request) -> HttpRequest:
    # raw_path keeps percent-encoding (an encoded "/" stays inside its segment).
    path = request.raw_path.split("?", 1)[0]
    query: dict[str, str] = {}
    for key, value in request.query.items():
        query.setdefault(key, value)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    body = await request.read() if request.body_exists else b""
    return HttpRequest(
        request.method, path, MappingProxyType(query), MappingProxyType(headers), body
    )


class HttpServer:
    """Serves ``handler`` with aiohttp on one listening socket.

    ``await start(host, port)`` to listen; ``await close()`` (or ``async with``)
    to stop: no new connections, running requests get ``CLOSE_GRACE_S``.
    """

    def __init__(self, handler: HttpHandler, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        """Prepare a server; nothing listens until :meth:`start`.

        Args:
            handler: called once per request; an exception becomes a 500 whose body
                names a correlation id that is also logged with the traceback.
            max_body_bytes: larger request bodies are refused with 413.
        """
        self._handler = handler
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors])
        # One catch-all route: the handler (the API's ``Router``) routes on the raw path.
        app.router.add_route("*", CATCH_ALL, self._serve)
        self._app = app
        self._runner = web.AppRunner(
            app,
            access_log=None,  # one line per request belongs in a proxy, not here
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            shutdown_timeout=CLOSE_GRACE_S,
            handle_signals=False,  # the actor owns the process's signals
        )
        self._socket: socket.socket | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, see :attr:`port`)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, so the real port is known without reaching into aiohttp.
        sock = socket.create_server((host, port), family=family, reuse_port=reuse_port)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._socket = sock

    @property
    def handler(self) -> HttpHandler:
        """What every request is handed to."""
        return self._handler

    @property
    def app(self) -> web.Application:
        """The aiohttp application (its router has the catch-all route only)."""
        return self._app

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        if self._socket is None:
            raise RuntimeError("server is not listening")
        port: int = self._socket.getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and end connections (running requests get a grace period)."""
        await self._runner.cleanup()

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        response = await self._handler(await _from_aiohttp(request))
        if not isinstance(response, HttpResponse):
            raise TypeError(f"handler returned {type(response).__name__}, not HttpResponse")
        return _to_aiohttp(response)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            return _to_aiohttp(error_response(exc.status, exc.message, headers=exc.headers))
        except web.HTTPException as exc:
            # aiohttp's own refusals (413 body too large, 405 with its Allow, ...)
            # as problems too, keeping their headers but not their framing.
            if exc.status < 400:
                raise
            headers = {
                name: value
                for name, value in exc.headers.items()
                if name.lower() not in _FRAMING_HEADERS
            }
            # Its text names the limit ("Maximum request body size ..."), unless it
            # is aiohttp's default "413: Request Entity Too Large".
            default_text = f"{exc.status}: {exc.reason}"
            detail = exc.text if exc.text and exc.text != default_text else exc.reason
            return _to_aiohttp(error_response(exc.status, detail, headers=headers))
        except Exception:
            correlation_id = secrets.token_hex(8)
            logger.exception(
                "HTTP handler failed on %s %s (correlation id %s)",
                request.method,
                request.rel_url.path,
                correlation_id,
            )
            return _to_aiohttp(
                error_response(
                    500,
                    f"internal error, correlation id {correlation_id}",
                    correlationId=correlation_id,
                )
            )
