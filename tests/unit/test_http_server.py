"""Tests for chime_actors.api.http_server: the records, then aiohttp over real loopback I/O."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web

from chime_actors.api.http_server import (
    HttpError,
    HttpRequest,
    HttpResponse,
    HttpServer,
    error_response,
    json_response,
    text_response,
)

# --- records and helpers ----------------------------------------------------------------


def test_a_streamed_response_needs_its_size_and_no_body() -> None:
    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b"x"

    with pytest.raises(ValueError, match="stream_size"):
        HttpResponse(200, stream=chunks())
    with pytest.raises(ValueError, match="stream_size"):
        HttpResponse(200, stream_size=1)
    with pytest.raises(ValueError, match="stream_size"):
        HttpResponse(200, body=b"x", stream=chunks(), stream_size=1)


def test_response_refuses_header_injection_and_bad_status() -> None:
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"X": "a\r\nSet-Cookie: x"})
    with pytest.raises(ValueError, match="invalid response header"):
        HttpResponse(200, headers={"Bad Name": "v"})
    with pytest.raises(ValueError, match="invalid HTTP status"):
        HttpResponse(99)


def test_error_response_is_problem_json_with_protocol_codes() -> None:
    """RFC 9457 problem details: ``about:blank`` with the status phrase as its
    title, our words as ``detail`` and PROTOCOL.md's ``code`` as an extension."""
    response = error_response(431, "big")
    assert response.content_type == "application/problem+json"
    assert orjson.loads(response.body) == {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "big",
        "code": "too_large",
    }
    extra = error_response(429, "slow down", code="rate_limited", retryAfterMs=1500)
    assert orjson.loads(extra.body) == {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "slow down",
        "code": "rate_limited",
        "retryAfterMs": 1500,
    }


# --- loopback ------------------------------------------------------------------------

Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def _read_all(request: HttpRequest) -> bytes:
    if request.body_stream is None:
        return request.body
    return b"".join([chunk async for chunk in request.body_stream])


async def echo(request: HttpRequest) -> HttpResponse:
    if request.path == "/boom":
        raise RuntimeError("kaboom")
    if request.path == "/refuse":
        raise HttpError(403, "go away", headers={"X-Why": "test"})
    if request.path == "/aiohttp-405":
        # aiohttp's own refusal, as its router raises it for a method it lacks.
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
    if request.path == "/nothing":
        return HttpResponse(204)
    if request.path == "/metrics":
        return text_response("m 1\n", content_type="text/plain; version=0.0.4; charset=utf-8")
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": dict(request.headers),
            "body": (await _read_all(request)).decode(),
        },
        headers={"X-Echo": "1"},
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
            with contextlib.suppress(ConnectionError):
                return await self.reader.read(1) == b""
            return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def run_with_server(
    test: Callable[[HttpServer, Client], Awaitable[None]],
    handler: Handler = echo,
    max_body_bytes: int = 64 * 1024,
    streams: Callable[[str, str], bool] | None = None,
) -> None:
    async def main() -> None:
        server = HttpServer(handler, max_body_bytes=max_body_bytes, streams=streams)
        await server.start("127.0.0.1", 0)
        async with server:
            client = await Client.connect(server.port)
            try:
                await test(server, client)
            finally:
                await client.close()

    asyncio.run(main())


def get(path: str, *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *extra, "", ""]
    return "\r\n".join(lines).encode()


def test_pipelined_requests_on_a_kept_alive_connection_with_the_librarys_server_header() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/one?a=1&a=2&b=%20x") + get("/two"))
        status, headers, body = await client.response()
        assert status == 200
        assert "aiohttp" in headers["server"]
        assert headers["x-echo"] == "1"
        assert orjson.loads(body)["query"] == {"a": "1", "b": " x"}  # the first value wins
        status, _, body = await client.response()
        assert (status, orjson.loads(body)["path"]) == (200, "/two")

    run_with_server(test)


def test_the_path_keeps_its_percent_encoding_and_headers_are_lower_cased() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/v1/channels/a%2Fb/messages", "X-Thing: 1", "X-Thing: 2"))
        _, _, body = await client.response()
        echoed = orjson.loads(body)
        assert echoed["path"] == "/v1/channels/a%2Fb/messages"
        assert echoed["headers"]["x-thing"] == "1, 2"

    run_with_server(test)


def test_head_gets_the_headers_only() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/x", method="HEAD") + get("/after"))
        status, headers, _ = await client.response(head_request=True)
        assert status == 200 and int(headers["content-length"]) > 0
        status, _, body = await client.response()  # nothing of a body came in between
        assert orjson.loads(body)["path"] == "/after"

    run_with_server(test)


def test_bodies_reach_the_handler_with_a_length_or_chunked() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        _, _, body = await client.response()
        assert orjson.loads(body)["body"] == "hello"
        chunked = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        await client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        await client.send(chunked)
        _, _, body = await client.response()
        assert orjson.loads(body)["body"] == "abcde"

    run_with_server(test)


def test_an_oversize_body_gets_413_as_problem_json() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        big = b"x" * 2000
        await client.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + big)
        status, headers, body = await client.response()
        assert (status, headers["content-type"]) == (413, "application/problem+json")
        problem = orjson.loads(body)
        assert problem["code"] == "too_large" and problem["status"] == 413
        assert problem["title"] == "Request Entity Too Large"
        assert "1000" in problem["detail"]  # aiohttp's words name the limit

    run_with_server(test, max_body_bytes=1000)


def test_aiohttps_own_refusals_become_problem_json_with_their_headers() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/aiohttp-405", method="POST"))
        status, headers, body = await client.response()
        assert (status, headers["content-type"]) == (405, "application/problem+json")
        assert headers["allow"] == "GET,HEAD"
        problem = orjson.loads(body)
        assert (problem["type"], problem["status"], problem["code"]) == (
            "about:blank",
            405,
            "bad_request",
        )

    run_with_server(test)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"this is not http\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["not-http", "thousands-of-digits", "negative-length"],
)
def test_malformed_requests_get_400_and_the_server_goes_on(request_bytes: bytes) -> None:
    """A Content-Length of thousands of digits is an answer, not a traceback."""

    async def test(server: HttpServer, client: Client) -> None:
        await client.send(request_bytes)
        status, _, _ = await client.response()
        assert status == 400
        assert await client.at_eof()
        other = await Client.connect(server.port)
        try:
            await other.send(get("/still-serving"))
            assert (await other.response())[0] == 200
        finally:
            await other.close()

    run_with_server(test)


def test_a_handler_exception_is_a_logged_500_with_a_correlation_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(server: HttpServer, client: Client) -> None:
        with caplog.at_level(logging.ERROR, logger="chime_actors.api.http_server"):
            await client.send(get("/boom"))
            status, _, body = await client.response()
        assert status == 500
        problem = orjson.loads(body)
        assert (problem["code"], problem["title"]) == ("internal", "Internal Server Error")
        assert problem["correlationId"] in problem["detail"]
        assert "kaboom" not in body.decode()  # the traceback stays in the log
        assert any(problem["correlationId"] in r.getMessage() for r in caplog.records)

    run_with_server(test)


def test_a_handler_may_refuse_with_http_error() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/refuse"))
        status, headers, body = await client.response()
        assert (status, headers["x-why"]) == (403, "test")
        assert orjson.loads(body) == {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": "go away",
            "code": "forbidden",
        }

    run_with_server(test)


def test_the_content_type_is_sent_verbatim() -> None:
    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/metrics"))
        _, headers, body = await client.response()
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert body == b"m 1\n"

    run_with_server(test)


def test_a_204_carries_no_body_headers() -> None:
    """RFC 9110 section 15.3.5: a 204 has no content, so no ``Content-Type`` for it."""

    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/nothing"))
        status, headers, body = await client.response()
        assert (status, body) == (204, b"")
        assert "content-type" not in headers, headers
        assert "content-length" not in headers, headers

    run_with_server(test)


def test_close_ends_idle_connections() -> None:
    async def main() -> None:
        server = HttpServer(echo)
        await server.start("127.0.0.1", 0)
        client = await Client.connect(server.port)
        await client.send(get("/x"))
        assert (await client.response())[0] == 200
        await server.close()
        assert await client.at_eof()
        await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("opening", [b"", b"GET /x HTTP/1.1\r\nHost: test\r\n"])
def test_a_connection_that_never_completes_its_request_head_is_closed(opening: bytes) -> None:
    """Slowloris: a client that sends nothing, or dribbles header lines and never
    ends the head, is closed once the keep-alive timeout passes (it cannot hold
    a connection slot for ever)."""

    async def main() -> None:
        server = HttpServer(echo, keepalive_timeout_s=0.5)
        await server.start("127.0.0.1", 0)
        async with server:
            client = await Client.connect(server.port)
            await client.send(opening)
            closed = False
            async with asyncio.timeout(10):
                while not closed:
                    with contextlib.suppress(ConnectionError):
                        if opening:
                            await client.send(b"X-Dribble: 1\r\n")
                    try:
                        closed = await asyncio.wait_for(client.reader.read(1), 0.2) == b""
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        closed = True
            assert closed
            await client.close()

    asyncio.run(main())


@pytest.mark.parametrize("streamed", [False, True])
def test_a_request_body_that_stalls_gets_408_and_the_connection_closes(streamed: bool) -> None:
    """A client that sends its head and part of a body, then nothing, is answered
    408 once no byte came for the body idle timeout, and the connection is to
    close: it cannot hold a connection (or a half-written upload) for ever."""

    async def main() -> None:
        server = HttpServer(
            echo,
            streams=(lambda method, path: True) if streamed else None,
            body_idle_timeout_s=0.5,
        )
        await server.start("127.0.0.1", 0)
        async with server:
            client = await Client.connect(server.port)
            await client.send(get("/x", "Content-Length: 100", method="POST") + b"0123456789")
            status, headers, body = await client.response()
            assert status == 408, (status, body)
            assert headers["content-type"] == "application/problem+json"
            # Closed after the response (aiohttp lingers up to 10 s for the rest
            # of the body first, so that the client can read the 408).
            assert headers.get("connection") == "close"
            await client.close()

    asyncio.run(main())


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = HttpServer(echo).port


# --- streamed bodies (uploads and downloads) ------------------------------------------


def streamed_uploads(method: str, path: str) -> bool:
    return method == "POST" and path == "/upload"


class Streaming:
    """Handlers for the streaming tests; records what they saw."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.started = False
        self.closed = False

    async def handle(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/upload":
            assert request.body == b""
            assert request.body_stream is not None
            if request.query.get("refuse"):
                return error_response(413, "too big")  # without reading a byte
            async for piece in request.body_stream:
                self.pieces.append(piece)
            return json_response({"size": sum(map(len, self.pieces))})
        if request.path == "/download":
            return HttpResponse(200, stream=self.chunks(), stream_size=6)
        if request.path == "/broken":
            return HttpResponse(200, stream=self.chunks(fail=True), stream_size=100)
        return await echo(request)

    async def chunks(self, *, fail: bool = False) -> AsyncGenerator[bytes, None]:
        self.started = True
        try:
            yield b"abc"
            if fail:
                raise RuntimeError("storage went away")
            yield b"def"
        finally:
            self.closed = True


def test_a_streamed_request_body_arrives_in_pieces_past_the_buffered_limit() -> None:
    streaming = Streaming()

    async def test(server: HttpServer, client: Client) -> None:
        data = b"y" * 5000
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (500, data[i : i + 500]) for i in range(0, 5000, 500))
            + b"0\r\n\r\n"
        )
        status, _, body = await client.response()
        assert (status, orjson.loads(body)) == (200, {"size": 5000})
        assert b"".join(streaming.pieces) == data
        # Other requests are still read whole, under the limit.
        await client.send(b"POST /upload2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        await client.send(data)
        assert (await client.response())[0] == 413

    run_with_server(test, streaming.handle, max_body_bytes=1000, streams=streamed_uploads)


def test_expect_100_continue_of_a_streamed_body_waits_for_the_first_read() -> None:
    streaming = Streaming()

    async def test(server: HttpServer, client: Client) -> None:
        expect = "Content-Length: 4", "Expect: 100-continue"
        # Refused at once: no 100 Continue ever invites the body.
        await client.send(get("/upload?refuse=1", *expect, method="POST"))
        status, _, _ = await client.response()
        assert status == 413
        other = await Client.connect(server.port)
        try:
            await other.send(get("/upload", *expect, method="POST"))
            async with asyncio.timeout(5):
                interim = await other.reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await other.send(b"data")
            status, _, body = await other.response()
            assert (status, orjson.loads(body)) == (200, {"size": 4})
            # A request that is not streamed is invited at once, as before.
            await other.send(get("/other", *expect, method="POST"))
            async with asyncio.timeout(5):
                interim = await other.reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            await other.send(b"abcd")
            assert orjson.loads((await other.response())[2])["body"] == "abcd"
        finally:
            await other.close()

    run_with_server(test, streaming.handle, streams=streamed_uploads)


def test_a_malformed_chunked_stream_is_a_400() -> None:
    streaming = Streaming()

    async def test(server: HttpServer, client: Client) -> None:
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
        )
        status, _, _ = await client.response()
        assert status == 400

    run_with_server(test, streaming.handle, streams=streamed_uploads)


def test_a_streamed_response_is_written_chunk_by_chunk_with_its_length() -> None:
    streaming = Streaming()

    async def test(server: HttpServer, client: Client) -> None:
        await client.send(get("/download"))
        status, headers, body = await client.response()
        assert (status, headers["content-length"], body) == (200, "6", b"abcdef")
        assert "transfer-encoding" not in headers
        assert streaming.closed
        # HEAD: the length, no body, and nothing of the stream read.
        streaming.started = False
        await client.send(get("/download", method="HEAD") + get("/after"))
        status, headers, _ = await client.response(head_request=True)
        assert (status, headers["content-length"]) == (200, "6")
        assert not streaming.started
        _, _, body = await client.response()
        assert orjson.loads(body)["path"] == "/after"

    run_with_server(test, streaming.handle)


def test_a_stream_failing_after_the_headers_cuts_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streaming = Streaming()

    async def test(server: HttpServer, client: Client) -> None:
        with caplog.at_level(logging.ERROR, logger="chime_actors.api.http_server"):
            await client.send(get("/broken"))
            async with asyncio.timeout(5):
                head = await client.reader.readuntil(b"\r\n\r\n")
                rest = await client.reader.read()  # until the server closes
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 100" in head
        assert rest == b"abc"  # short of the 100 announced: the client can tell
        assert streaming.closed
        assert any("stream failed" in r.getMessage() for r in caplog.records)
        other = await Client.connect(server.port)
        try:
            await other.send(get("/download"))
            assert (await other.response())[2] == b"abcdef"
        finally:
            await other.close()

    run_with_server(test, streaming.handle)
