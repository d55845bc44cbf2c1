"""A small HTTP/1.1 server for Chime's API: health, metrics and REST history.

Two layers, tested separately:

* pure functions: :func:`parse_request_head` turns the bytes of a request line and
  header block into an :class:`HttpRequest` or raises :class:`HttpError`;
  :func:`encode_response` turns an :class:`HttpResponse` into bytes;
* the asyncio adapter, :class:`HttpServer` (started by :func:`serve_http`), which
  reads heads and bodies within :class:`HttpLimits`, calls the handler and writes
  the response.

Connections are persistent (HTTP/1.1 keep-alive, requests answered in order, so
pipelining works) unless the client sends ``Connection: close``, speaks HTTP/1.0
without ``keep-alive``, or the request was malformed: after any error found while
reading a request the server answers and closes, because it can no longer tell
where the next request starts. Chunked request bodies are not supported (501).

Every error body is JSON in the shape of PROTOCOL.md:
``{"error": {"code": "bad_request", "message": "..."}}``, using the protocol's
codes (``bad_request``, ``too_large``, ``not_found``, ``internal`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

import orjson

from chime_actors.errors import ChimeError

__all__ = [
    "HttpError",
    "HttpHandler",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "encode_response",
    "error_response",
    "json_response",
    "parse_request_head",
    "serve_http",
    "text_response",
]

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_TIMEOUT_S = 10.0

# Lingering close after an error: at most this long, at most this much input.
_LINGER_S = 1.0
_LINGER_BYTES = 256 * 1024

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""Methods the server passes to the handler; any other token is answered 405."""

_EMPTY: Mapping[str, str] = MappingProxyType({})


def _empty() -> Mapping[str, str]:
    return _EMPTY


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
# Field values: visible ASCII, obs-text and inner spaces/tabs; no control chars.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_TARGET = re.compile(r"/[\x21-\x7e]*\Z")

# The code in an error body for each status the server itself produces; PROTOCOL.md's
# vocabulary is reused so a client handles one set of codes everywhere.
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
    """A request the server refuses before it reaches the handler.

    Attributes:
        status: the HTTP status to answer with (400, 405, 413, 431 ...).
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
class HttpLimits:
    """Resource limits of one server; the defaults are what Chime runs with.

    Attributes:
        max_head_bytes: request line plus headers, terminating blank line included.
        max_body_bytes: largest ``Content-Length`` accepted.
        head_timeout_s: time allowed to receive a complete head; also how long an
            idle keep-alive connection is kept.
        body_timeout_s: time allowed to receive the body once the head is in.
        write_timeout_s: time allowed for the client to take the response.
        close_grace_s: on close, how long in-flight requests may still finish.
    """

    max_head_bytes: int = MAX_HEAD_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = HEAD_TIMEOUT_S
    write_timeout_s: float = HEAD_TIMEOUT_S
    close_grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request.

    Attributes:
        method: upper-case method token (``GET``).
        path: the target's path, still percent-encoded (``/v1/channels/a%3Ab/messages``)
            so that an encoded ``/`` cannot change routing; decode per segment.
        query: query parameters, percent-decoded; the first value wins on repeats.
        headers: header fields with lower-cased names; repeated fields are joined
            with ``", "``.
        body: the request body (empty without ``Content-Length``).
        version: ``"HTTP/1.1"`` or ``"HTTP/1.0"``.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=_empty)
    headers: Mapping[str, str] = field(default_factory=_empty)
    body: bytes = b""
    version: str = "HTTP/1.1"

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after this request."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if "close" in tokens:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in tokens

    @property
    def content_length(self) -> int:
        """The body length announced in the head (0 when absent)."""
        # parse_request_head allowed repeats only when identical ("5, 5").
        return int(self.headers.get("content-length", "0").split(",")[0])


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response to send.

    Attributes:
        status: the HTTP status code.
        body: the payload bytes (not sent for HEAD requests, 1xx, 204 and 304).
        content_type: the ``Content-Type`` header.
        headers: extra headers; ``Content-Length``, ``Connection`` and ``Date`` are
            set by the server.
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
            if not _TOKEN.match(name) or "\r" in value or "\n" in value:
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
    """A JSON error: ``{"error": {"code": ..., "message": ..., **extra}}``.

    Args:
        status: the HTTP status.
        message: human text.
        code: the PROTOCOL.md error code; derived from ``status`` when omitted.
        headers: extra response headers.
        **extra: more fields of the error object (``correlationId``).
    """
    error = {"code": code or _STATUS_CODES.get(status, "bad_request"), "message": message}
    error.update(extra)
    return json_response({"error": error}, status, headers=headers)


# --- pure parsing and encoding ------------------------------------------------------


def parse_request_head(
    head: bytes, *, max_bytes: int = MAX_HEAD_BYTES, max_body_bytes: int = MAX_BODY_BYTES
) -> HttpRequest:
    """Parse a request line and header block.

    Args:
        head: the bytes up to and including the blank line that ends the head (the
            blank line may be omitted). Lines end in CRLF; a bare LF is accepted.
        max_bytes: longest head accepted.
        max_body_bytes: largest ``Content-Length`` accepted.

    Returns:
        The request, with an empty body: the caller reads ``content_length`` bytes.

    Raises:
        HttpError: 400 malformed, 405 unknown method, 413 body too large, 431 head
            too large, 501 transfer coding, 505 HTTP version other than 1.x.
    """
    if len(head) > max_bytes:
        raise HttpError(431, f"request head over {max_bytes} bytes")
    # latin-1 maps every byte to one character, so decoding never fails; the
    # regexes below decide what is acceptable.
    lines = head.decode("latin-1").split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    method, path, query, version = _parse_request_line(lines[0])
    headers = _parse_header_lines(lines[1:])
    if version == "HTTP/1.1" and "host" not in headers:
        raise HttpError(400, "missing Host header")
    _check_body_framing(headers, max_body_bytes)
    return HttpRequest(method, path, query, headers, b"", version)


def _parse_request_line(line: str) -> tuple[str, str, Mapping[str, str], str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise HttpError(400, "malformed method")
    match = _VERSION.match(version)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    if match.group(1) != "1":
        raise HttpError(505, f"{version} is not supported")
    if method not in KNOWN_METHODS:
        raise HttpError(405, f"unknown method {method}", headers={"Allow": "GET, HEAD"})
    if not _TARGET.match(target):
        raise HttpError(400, "request target must be an absolute path")
    path, _, query_text = target.partition("?")
    path = path.partition("#")[0]
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(query_text.partition("#")[0], keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "query string is not UTF-8") from exc
    for key, value in pairs:
        query.setdefault(key, value)
    return method, path, MappingProxyType(query), f"HTTP/1.{match.group(2)}"


def _parse_header_lines(lines: list[str]) -> Mapping[str, str]:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    headers: dict[str, str] = {}
    for line in lines:
        if line[:1] in (" ", "\t"):
            # RFC 9112 5.2: obsolete line folding may be rejected with 400.
            raise HttpError(400, "folded header lines are not accepted")
        name, colon, value = line.partition(":")
        # No whitespace between name and colon (RFC 9112 5.1): a smuggling vector.
        if not colon or not _TOKEN.match(name):
            raise HttpError(400, f"malformed header line: {line[:64]!r}")
        value = value.strip(" \t")
        if not _FIELD_VALUE.match(value):
            raise HttpError(400, f"invalid characters in header {name}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return MappingProxyType(headers)


def _check_body_framing(headers: Mapping[str, str], max_body_bytes: int) -> None:
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    raw = headers.get("content-length")
    if raw is None:
        return
    # Repeated fields were joined with ", "; identical repeats are allowed (RFC 9110 8.6).
    values = {v.strip() for v in raw.split(",")}
    # At most 18 digits: int() of thousands of digits raises (and costs quadratic
    # time below its limit), and no body we take is longer than 18 digits say.
    value = next(iter(values))
    if len(values) != 1 or not raw.isascii() or not value.isdigit() or len(value) > 18:
        raise HttpError(400, "invalid Content-Length")
    if int(next(iter(values))) > max_body_bytes:
        raise HttpError(413, f"body over {max_body_bytes} bytes")


def encode_response(
    response: HttpResponse, *, head_only: bool = False, keep_alive: bool = True
) -> bytes:
    """Serialize a response to HTTP/1.1 bytes.

    Args:
        response: what to send.
        head_only: answer to a HEAD request: headers as for GET, no body.
        keep_alive: whether the connection stays open (``Connection`` header).
    """
    status = response.status
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    no_body = head_only or status < 200 or status in (204, 304)
    lines = [f"HTTP/1.1 {status} {reason}", f"Date: {formatdate(usegmt=True)}"]
    if status not in (204, 304):
        lines.append(f"Content-Type: {response.content_type}")
    if status >= 200 and status != 204:
        lines.append(f"Content-Length: {len(response.body)}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    managed = {"content-length", "content-type", "connection", "date"}
    lines.extend(f"{k}: {v}" for k, v in response.headers.items() if k.lower() not in managed)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if no_body else head + response.body


# --- asyncio adapter --------------------------------------------------------------------


class HttpServer:
    """Serves ``handler`` over HTTP/1.1 on one listening socket.

    Use :func:`serve_http` to create and start one; ``async with`` closes it.
    """

    def __init__(self, handler: HttpHandler, *, limits: HttpLimits | None = None) -> None:
        """Prepare a server; nothing listens until :meth:`start`.

        Args:
            handler: called once per request; an exception becomes a 500 whose body
                names a correlation id that is also logged with the traceback.
            limits: resource limits; :class:`HttpLimits` defaults when omitted.
        """
        self._handler = handler
        self._limits = limits or HttpLimits()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        # Writers of connections waiting for their next request: safe to close now.
        self._idle: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, see :attr:`port`)."""
        self._server = await asyncio.start_server(
            self._on_connection,
            host,
            port,
            reuse_port=reuse_port or None,
            # The stream limit bounds the buffered head: readuntil gives up with
            # LimitOverrunError instead of buffering an endless header block.
            limit=self._limits.max_head_bytes,
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful after asking for port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not listening")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening, close idle connections, let in-flight requests finish.

        Requests still running after ``limits.close_grace_s`` are cancelled.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._idle):
            writer.close()
        if self._connections:
            _, pending = await asyncio.wait(
                set(self._connections), timeout=self._limits.close_grace_s
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # The peer went away or stalled: nobody is left to answer.
        except Exception:
            logger.exception("HTTP connection failed")
        finally:
            self._connections.discard(task)
            self._idle.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while not self._closing:
            self._idle.add(writer)
            try:
                request = await self._read_request(reader)
            except HttpError as exc:
                self._idle.discard(writer)
                response = error_response(exc.status, exc.message, headers=exc.headers)
                await self._write(writer, encode_response(response, keep_alive=False))
                await _linger(reader, writer)
                return
            self._idle.discard(writer)
            if request is None:
                return  # clean EOF or idle timeout between requests
            response = await self._call_handler(request)
            keep_alive = request.keep_alive and not self._closing
            data = encode_response(
                response, head_only=request.method == "HEAD", keep_alive=keep_alive
            )
            await self._write(writer, data)
            if not keep_alive:
                return

    async def _read_request(self, reader: asyncio.StreamReader) -> HttpRequest | None:
        limits = self._limits
        try:
            async with asyncio.timeout(limits.head_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise HttpError(431, f"request head over {limits.max_head_bytes} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise HttpError(400, "connection closed inside the request head") from exc
            return None
        except TimeoutError as exc:
            if reader.at_eof() or not _buffered(reader):
                return None  # idle keep-alive connection: just close it
            raise HttpError(408, "request head not received in time") from exc
        request = parse_request_head(
            head, max_bytes=limits.max_head_bytes, max_body_bytes=limits.max_body_bytes
        )
        length = request.content_length
        if length:
            try:
                async with asyncio.timeout(limits.body_timeout_s):
                    body = await reader.readexactly(length)
            except TimeoutError as exc:
                raise HttpError(408, "request body not received in time") from exc
            request = HttpRequest(
                request.method, request.path, request.query, request.headers, body, request.version
            )
        return request

    async def _call_handler(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await self._handler(request)
            if not isinstance(response, HttpResponse):
                raise TypeError(f"handler returned {type(response).__name__}, not HttpResponse")
        except HttpError as exc:
            # A handler may refuse a request the same way the parser does.
            return error_response(exc.status, exc.message, headers=exc.headers)
        except Exception:
            correlation_id = secrets.token_hex(8)
            logger.exception(
                "HTTP handler failed on %s %s (correlation id %s)",
                request.method,
                request.path,
                correlation_id,
            )
            return error_response(
                500,
                f"internal error, correlation id {correlation_id}",
                correlationId=correlation_id,
            )
        return response

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        async with asyncio.timeout(self._limits.write_timeout_s):
            await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, then discard what the client is still sending, briefly.

    Closing a socket with unread input makes the kernel send RST, and a client
    that gets RST may lose our error response before reading it (a 431 or 413
    arrives while it is still uploading). Discarding input for a moment first
    is the "lingering close" of RFC 9112 9.6.
    """
    if writer.can_write_eof():
        writer.write_eof()
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(_LINGER_S):
            discarded = 0
            while discarded < _LINGER_BYTES:
                chunk = await reader.read(16 * 1024)
                if not chunk:
                    break
                discarded += len(chunk)


def _buffered(reader: asyncio.StreamReader) -> bool:
    # StreamReader has no public "bytes buffered" accessor; a partially received
    # head is what separates a slow request (408) from an idle connection.
    buffer = getattr(reader, "_buffer", b"")
    return bool(bytes(buffer).strip())


async def serve_http(
    handler: HttpHandler,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    limits: HttpLimits | None = None,
) -> HttpServer:
    """Start serving ``handler`` on ``host:port`` and return the running server.

    Args:
        handler: the application, e.g. :func:`chime_actors.api.routes.make_handler`.
        host: address to bind.
        port: port to bind; 0 picks a free one (read it from ``server.port``).
        reuse_port: set ``SO_REUSEPORT`` so several processes share the port.
        limits: resource limits; :class:`HttpLimits` defaults when omitted.

    Returns:
        The listening server; ``await server.close()`` (or ``async with``) stops it.
    """
    server = HttpServer(handler, limits=limits)
    await server.start(host, port, reuse_port=reuse_port)
    return server
