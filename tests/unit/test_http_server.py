"""Tests for chime_actors.api.http_server: pure parsing/encoding, then real loopback I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import orjson
import pytest

from chime_actors.api.http_server import (
    HttpError,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    encode_response,
    error_response,
    json_response,
    parse_request_head,
    serve_http,
    text_response,
)

# --- parse_request_head --------------------------------------------------------------


def test_parses_request_line_query_and_headers() -> None:
    request = parse_request_head(
        b"GET /v1/channels/a%3Ab/messages?limit=5&before=&limit=9&x=%C3%A9 HTTP/1.1\r\n"
        b"Host: localhost\r\n"
        b"X-Thing:  padded value \t\r\n"
        b"Accept: a\r\n"
        b"ACCEPT: b\r\n"
        b"\r\n"
    )
    assert request.method == "GET"
    assert request.path == "/v1/channels/a%3Ab/messages"  # left encoded for the router
    assert dict(request.query) == {"limit": "5", "before": "", "x": "é"}
    assert request.headers["x-thing"] == "padded value"
    assert request.headers["accept"] == "a, b"
    assert request.version == "HTTP/1.1"
    assert request.body == b""
    assert request.keep_alive


def test_bare_lf_and_missing_blank_line_are_accepted() -> None:
    request = parse_request_head(b"HEAD /healthz HTTP/1.0\nConnection: keep-alive")
    assert request.method == "HEAD"
    assert request.version == "HTTP/1.0"
    assert request.keep_alive


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Keep-Alive, Close", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
    ],
)
def test_keep_alive(version: str, connection: str | None, keep_alive: bool) -> None:
    headers = {"host": "h"} | ({"connection": connection} if connection else {})
    assert HttpRequest("GET", "/", headers=headers, version=version).keep_alive is keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"", 400),
        (b"\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\nHost: h\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        (b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n", 405),
        (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /?q=%ff HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost h\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: h\x00\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: h\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_bad_heads_raise_http_error(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(head)
    assert info.value.status == status


def test_unknown_method_error_names_allowed_methods() -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(b"BREW / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert info.value.headers == {"Allow": "GET, HEAD"}


def test_content_length_within_limit() -> None:
    request = parse_request_head(
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
    )
    assert request.content_length == 5


# --- responses -----------------------------------------------------------------------


def test_encode_response_sets_framing_headers() -> None:
    response = json_response({"a": 1}, 201, headers={"X-Id": "7", "Content-Length": "999"})
    data = encode_response(response, keep_alive=False)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 201 Created"
    assert "Content-Type: application/json" in lines
    assert "Content-Length: 7" in lines
    assert "Connection: close" in lines
    assert "X-Id: 7" in lines
    assert "Content-Length: 999" not in lines  # the server owns framing headers
    assert any(line.startswith("Date: ") for line in lines)
    assert body == b'{"a":1}'


def test_encode_response_head_only_keeps_length_drops_body() -> None:
    data = encode_response(text_response("hello"), head_only=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"Content-Length: 5\r\n" in data
    assert b"Connection: keep-alive\r\n" in data


def test_encode_204_has_no_body_or_length() -> None:
    data = encode_response(HttpResponse(204, b"ignored"))
    assert data.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"Content-Length" not in data
    assert data.endswith(b"\r\n\r\n")


def test_response_refuses_header_injection_and_bad_status() -> None:
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"X": "a\r\nSet-Cookie: x"})
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"Bad Name": "v"})
    with pytest.raises(ValueError, match="invalid HTTP status"):
        HttpResponse(99)


def test_error_response_uses_protocol_codes() -> None:
    assert orjson.loads(error_response(431, "big").body) == {
        "error": {"code": "too_large", "message": "big"}
    }
    assert orjson.loads(error_response(404, "x", code="not_found", extra="y").body) == {
        "error": {"code": "not_found", "message": "x", "extra": "y"}
    }


# --- loopback ------------------------------------------------------------------------

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/boom":
        raise RuntimeError("kaboom")
    if request.path == "/refuse":
        raise HttpError(403, "go away")
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "body": request.body.decode(),
        }
    )


class Client:
    """A raw HTTP client over asyncio streams: exactly the bytes we choose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(5):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
            length = 0 if head_request else int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return int(status_line.split(" ")[1]), headers, body

    async def at_eof(self) -> bool:
        async with asyncio.timeout(5):
            return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def run_with_server(
    test: Callable[[HttpServer], Awaitable[None]],
    handler: Handler = echo,
    limits: HttpLimits | None = None,
) -> None:
    async def main() -> None:
        server = await serve_http(handler, "127.0.0.1", 0, limits=limits)
        async with server:
            await test(server)

    asyncio.run(main())


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: test", *extra, "", ""]
    return "\r\n".join(lines).encode()


def test_serves_requests_on_a_kept_alive_connection() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(get("/one?a=1"))
            status, headers, body = await client.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert orjson.loads(body)["query"] == {"a": "1"}
            # Two pipelined requests are answered in order on the same connection.
            await client.send(get("/two") + get("/three"))
            assert orjson.loads((await client.response())[2])["path"] == "/two"
            assert orjson.loads((await client.response())[2])["path"] == "/three"
        finally:
            await client.close()

    run_with_server(test)


def test_connection_close_is_honoured() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(get("/x", "Connection: close"))
            status, headers, _ = await client.response()
            assert status == 200
            assert headers["connection"] == "close"
            assert await client.at_eof()
        finally:
            await client.close()

    run_with_server(test)


def test_head_request_gets_headers_only() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n" + get("/after"))
            status, headers, _ = await client.response(head_request=True)
            assert status == 200
            assert int(headers["content-length"]) > 0
            # No body was sent: the next bytes are the following response.
            assert orjson.loads((await client.response())[2])["path"] == "/after"
        finally:
            await client.close()

    run_with_server(test)


def test_post_body_reaches_the_handler() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
            status, _, body = await client.response()
            assert status == 200
            assert orjson.loads(body)["body"] == "hello"
        finally:
            await client.close()

    run_with_server(test)


def test_malformed_request_gets_400_and_close() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"this is not http\r\n\r\n")
            status, headers, body = await client.response()
            assert status == 400
            assert headers["connection"] == "close"
            assert orjson.loads(body)["error"]["code"] == "bad_request"
            assert await client.at_eof()
        finally:
            await client.close()

    run_with_server(test)


def test_a_content_length_of_thousands_of_digits_gets_400() -> None:
    """int() refuses over 4,300 digits: that must be an answer, not a traceback."""

    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            digits = b"9" * 5000
            await client.send(
                b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: " + digits + b"\r\n\r\n"
            )
            status, _, body = await client.response()
            assert status == 400
            assert orjson.loads(body)["error"]["code"] == "bad_request"
        finally:
            await client.close()

    run_with_server(test)


def test_oversize_head_gets_431() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            status, _, body = await client.response()
            assert status == 431
            assert orjson.loads(body)["error"]["code"] == "too_large"
            assert await client.at_eof()
        finally:
            await client.close()

    run_with_server(test)


def test_oversize_body_gets_413_without_reading_it() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n")
            status, _, _ = await client.response()
            assert status == 413
        finally:
            await client.close()

    run_with_server(test)


def test_unknown_method_gets_405() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(b"BREW /pot HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, _ = await client.response()
            assert status == 405
            assert headers["allow"] == "GET, HEAD"
        finally:
            await client.close()

    run_with_server(test)


def test_handler_exception_is_a_logged_500_with_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(get("/boom"))
            status, _, body = await client.response()
            assert status == 500
            error = orjson.loads(body)["error"]
            assert error["code"] == "internal"
            assert error["correlationId"] in error["message"]
            # The connection survives a handler bug.
            await client.send(get("/fine"))
            assert (await client.response())[0] == 200
        finally:
            await client.close()
        (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert error["correlationId"] in record.getMessage()
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)

    with caplog.at_level(logging.ERROR, logger="chime_actors.api.http_server"):
        run_with_server(test)


def test_handler_may_raise_http_error() -> None:
    async def test(server: HttpServer) -> None:
        client = await Client.connect(server.port)
        try:
            await client.send(get("/refuse"))
            status, _, body = await client.response()
            assert status == 403
            assert orjson.loads(body)["error"] == {"code": "forbidden", "message": "go away"}
        finally:
            await client.close()

    run_with_server(test)


def test_slow_head_gets_408_and_idle_connection_is_closed_silently() -> None:
    async def test(server: HttpServer) -> None:
        slow, idle = await Client.connect(server.port), await Client.connect(server.port)
        try:
            await slow.send(b"GET / HTTP/1.1\r\nHost:")
            status, _, _ = await slow.response()
            assert status == 408
            assert await slow.at_eof()
            assert await idle.at_eof()
        finally:
            await slow.close()
            await idle.close()

    run_with_server(test, limits=HttpLimits(head_timeout_s=0.2))


def test_close_ends_idle_connections_and_lets_requests_finish() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(request: HttpRequest) -> HttpResponse:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return text_response("done")

    async def main() -> None:
        server = await serve_http(slow, "127.0.0.1", 0)
        port = server.port
        idle, busy = await Client.connect(port), await Client.connect(port)
        try:
            await idle.send(get("/quick"))
            assert (await idle.response())[0] == 200
            await busy.send(get("/slow"))
            await started.wait()
            closing = asyncio.create_task(server.close())
            assert await idle.at_eof()
            release.set()
            status, headers, body = await busy.response()
            assert (status, body) == (200, b"done")
            assert headers["connection"] == "close"
            await closing
            with pytest.raises(OSError):
                await Client.connect(port)
        finally:
            await idle.close()
            await busy.close()

    asyncio.run(main())


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not listening"):
        _ = HttpServer(echo).port
