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
  into docs/protocol.md's error body: RFC 9457 problem details,
  ``application/problem+json`` ``{"type": "about:blank", "title", "status",
  "detail", "code"}`` (a 500 names a correlation id that is also logged with
  the traceback).

Bodies are read whole (at most ``max_body_bytes``) except for the requests the
server's ``streams`` predicate names (file uploads): those get
``HttpRequest.body_stream``, the body chunk by chunk as it arrives, with no size
limit of the server's own (the route counts), and their ``Expect: 100-continue``
is answered only when the route starts reading, so a route that refuses at once
(413 on ``Content-Length``) never invites the body. A response may likewise
carry ``HttpResponse.stream`` (a download) instead of ``body``: written chunk by
chunk, with a ``Content-Length`` of ``stream_size``; if the stream fails once
the headers are out, the connection is closed, so the client sees a body shorter
than announced rather than a truncated file taken for whole.

Errors aiohttp finds while *parsing* (a malformed request line, a bad
``Content-Length``) are answered 400 by aiohttp itself, before any handler or
middleware runs; their body is aiohttp's plain text.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import secrets
import socket
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import HttpVersion11, http_exceptions, web

from chime_actors.errors import ChimeError

__all__ = [
    "CATCH_ALL",
    "MAX_BODY_BYTES",
    "PROBLEM_CONTENT_TYPE",
    "STREAM_CHUNK_BYTES",
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
# The most a streamed request body hands its route at once.
STREAM_CHUNK_BYTES = 64 * 1024
# An idle keep-alive connection is closed after this long, and so is one whose
# request head has not come whole by then (aiohttp's keep-alive timer runs until
# a head is complete): a client dribbling header bytes cannot hold a slot.
KEEPALIVE_TIMEOUT_S = 10.0
# On close, requests still running get this long before they are cancelled.
CLOSE_GRACE_S = 5.0
# A buffered request body (at most ``max_body_bytes``) must arrive whole within
# this long, and a streamed one (an upload) must bring a byte at least this
# often; otherwise 408 and the connection is closed (the rest of that body may
# still come). A client cannot hold a connection, or a half-stored upload, by
# going quiet after its head.
BODY_IDLE_TIMEOUT_S = 30.0

_EMPTY: Mapping[str, str] = MappingProxyType({})
# Headers of an aiohttp exception that described its own body, not ours.
_FRAMING_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})
# RFC 9110 token: what a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _empty() -> Mapping[str, str]:
    return _EMPTY


# The code in an error body for each status; docs/protocol.md's vocabulary is reused so
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
        body: the request body (empty when there is none, or when it is streamed).
        body_stream: for the requests the server streams (``HttpServer``'s
            ``streams``), the body in chunks as they arrive; iterating it may
            raise :class:`HttpError` (400) when the body is malformed or cut off.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=_empty)
    headers: Mapping[str, str] = field(default_factory=_empty)
    body: bytes = b""
    body_stream: AsyncGenerator[bytes, None] | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response to send.

    Attributes:
        status: the HTTP status code.
        body: the payload bytes (not sent for HEAD requests, 204 and 304).
        content_type: the ``Content-Type`` header.
        headers: extra headers; framing headers (``Content-Length``, ``Date``,
            ``Server``) are aiohttp's.
        stream: the body chunk by chunk, instead of ``body`` (closed unread for
            HEAD requests).
        stream_size: the streamed body's length in bytes (its ``Content-Length``);
            required with ``stream``.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=_empty)
    stream: AsyncGenerator[bytes, None] | None = None
    stream_size: int | None = None

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"invalid HTTP status: {self.status}")
        if (self.stream is None) != (self.stream_size is None) or (
            self.stream is not None and self.body
        ):
            raise ValueError("a streamed response has a stream_size and no body")
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
        code: the docs/protocol.md error code; derived from ``status`` when omitted.
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


def _never(method: str, path: str) -> bool:
    return False


_NO_CONTENT = frozenset({204, 304})


def _to_aiohttp(response: HttpResponse) -> web.Response:
    # Content-Type as a header, verbatim: aiohttp's content_type/charset arguments
    # would rebuild it and drop parameters such as Prometheus' "version=0.0.4".
    if response.status in _NO_CONTENT:
        # No content, so nothing to describe (RFC 9110 sections 15.3.5, 15.4.5).
        return web.Response(status=response.status, headers=dict(response.headers))
    headers = {**response.headers, "Content-Type": response.content_type}
    return web.Response(status=response.status, body=response.body, headers=headers)


def _path_of(request: web.BaseRequest) -> str:
    # raw_path keeps percent-encoding (an encoded "/" stays inside its segment).
    return request.raw_path.split("?", 1)[0]


async def _from_aiohttp(request: web.Request, *, stream: bool, idle_s: float) -> HttpRequest:
    query: dict[str, str] = {}
    for key, value in request.query.items():
        query.setdefault(key, value)
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if stream:
        return HttpRequest(
            request.method,
            _path_of(request),
            MappingProxyType(query),
            MappingProxyType(headers),
            body_stream=_body_chunks(request, idle_s),
        )
    try:
        async with asyncio.timeout(idle_s):
            body = await request.read() if request.body_exists else b""
    except TimeoutError as exc:
        raise _body_timeout(idle_s) from exc
    return HttpRequest(
        request.method, _path_of(request), MappingProxyType(query), MappingProxyType(headers), body
    )


def _wants_continue(request: web.BaseRequest) -> bool:
    expect = request.headers.get("Expect", "")
    return request.version == HttpVersion11 and expect.lower() == "100-continue"


async def _send_continue(request: web.BaseRequest) -> None:
    """Invite the body (what aiohttp's default ``Expect`` handler does at once)."""
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The interim response is not part of the response's size.
    request.writer.output_size = 0


async def _body_chunks(request: web.Request, idle_s: float) -> AsyncGenerator[bytes, None]:
    """A streamed request's body; the ``100 Continue`` goes out on the first read.

    Each piece must come within ``idle_s`` of the last (a slow link is fine; a
    silent one is not).
    """
    if _wants_continue(request):
        await _send_continue(request)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await request.content.read(STREAM_CHUNK_BYTES)
        except TimeoutError as exc:
            raise _body_timeout(idle_s) from exc
        except (http_exceptions.HttpProcessingError, ConnectionError) as exc:
            # A malformed chunked body, or a client that went away mid-body.
            raise HttpError(400, "the request body could not be read") from exc
        if not chunk:
            return
        yield chunk


def _body_timeout(idle_s: float) -> HttpError:
    return HttpError(408, f"the request body stalled: no data for {idle_s:g} s")


async def _stream_out(request: web.Request, response: HttpResponse) -> web.StreamResponse:
    """Write a streamed response chunk by chunk; cut the connection if the stream fails."""
    stream = response.stream
    assert stream is not None and response.stream_size is not None  # checked by the caller
    out = web.StreamResponse(
        status=response.status,
        headers={**response.headers, "Content-Type": response.content_type},
    )
    out.content_length = response.stream_size
    try:
        await out.prepare(request)
        if request.method != "HEAD":
            async for chunk in stream:
                await out.write(chunk)
    except ConnectionError:
        return out  # the client went away; aiohttp finds the connection closed
    except Exception:
        if not out.prepared:
            raise  # nothing sent yet: an error response as for any handler
        logger.exception(
            "HTTP stream failed on %s %s after the headers", request.method, request.rel_url.path
        )
        # The status and length are out: closing is the only way left to tell
        # the client the body is incomplete.
        if request.transport is not None:
            request.transport.close()
        return out
    finally:
        await stream.aclose()
    await out.write_eof()
    return out


class HttpServer:
    """Serves ``handler`` with aiohttp on one listening socket.

    ``await start(host, port)`` to listen; ``await close()`` (or ``async with``)
    to stop: no new connections, running requests get ``CLOSE_GRACE_S``.
    """

    def __init__(
        self,
        handler: HttpHandler,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        streams: Callable[[str, str], bool] | None = None,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        """Prepare a server; nothing listens until :meth:`start`.

        Args:
            handler: called once per request; an exception becomes a 500 whose body
                names a correlation id that is also logged with the traceback.
            max_body_bytes: larger request bodies are refused with 413.
            streams: ``streams(method, path)`` is True for the requests whose body
                the handler reads itself from ``HttpRequest.body_stream`` (``path``
                still percent-encoded); None streams none.
            keepalive_timeout_s: how long a connection may sit idle, or take to
                send a request head, before it is closed.
            body_idle_timeout_s: see ``BODY_IDLE_TIMEOUT_S``.
        """
        self._handler = handler
        self._streams = streams or _never
        self._body_idle_timeout_s = body_idle_timeout_s
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors])
        # One catch-all route: the handler (the API's ``Router``) routes on the raw path.
        app.router.add_route("*", CATCH_ALL, self._serve, expect_handler=self._expect)
        self._app = app
        self._runner = web.AppRunner(
            app,
            access_log=None,  # one line per request belongs in a proxy, not here
            keepalive_timeout=keepalive_timeout_s,
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

    def _is_streamed(self, request: web.BaseRequest) -> bool:
        return self._streams(request.method, _path_of(request))

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        streamed = self._is_streamed(request)
        response = await self._handler(
            await _from_aiohttp(request, stream=streamed, idle_s=self._body_idle_timeout_s)
        )
        if not isinstance(response, HttpResponse):
            raise TypeError(f"handler returned {type(response).__name__}, not HttpResponse")
        if response.stream is not None:
            return await _stream_out(request, response)
        return _to_aiohttp(response)

    async def _expect(self, request: web.Request) -> None:
        """``Expect``: ``100-continue`` at once, except for a streamed body (on first read)."""
        if not _wants_continue(request):
            if request.version == HttpVersion11:
                raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
            return
        if not self._is_streamed(request):
            await _send_continue(request)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as exc:
            response = _to_aiohttp(error_response(exc.status, exc.message, headers=exc.headers))
            if exc.status == 408:
                # What is left of that body may still come: nothing after it can be read.
                response.force_close()
            return response
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
