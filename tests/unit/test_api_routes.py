"""Tests for chime_actors.api.routes against a small in-memory backend."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest

from chime_actors.api.http_server import HttpRequest, HttpResponse, HttpServer
from chime_actors.api.routes import METRICS_CONTENT_TYPE, ApiBackend, Readiness, make_handler
from chime_actors.errors import ActorError, StoreUnavailable
from chime_actors.ids import format_message_id
from chime_actors.records import ChimeMessage
from chime_actors.storage.store import HistoryPage


@dataclass
class HistoryCall:
    channel_id: str
    before: str | None
    after: str | None
    limit: int
    thread_id: str | None


@dataclass
class FakeBackend:
    """Answers from fields; records history calls; ``down`` makes storage fail."""

    ready: Readiness = field(default_factory=lambda: Readiness(True, {"storage": True}))
    readiness_error: Exception | None = None
    metrics: str = "# HELP x X.\n# TYPE x counter\nx 1\n"
    messages: tuple[ChimeMessage, ...] = ()
    has_more: bool = False
    down: bool = False
    deny: str | None = None
    calls: list[HistoryCall] = field(default_factory=list)
    seen_headers: list[Mapping[str, str]] = field(default_factory=list)

    async def readiness(self) -> Readiness:
        if self.readiness_error is not None:
            raise self.readiness_error
        return self.ready

    def metrics_text(self) -> str:
        return self.metrics

    async def history(
        self,
        channel_id: str,
        *,
        before: str | None,
        after: str | None,
        limit: int,
        thread_id: str | None,
    ) -> HistoryPage:
        self.calls.append(HistoryCall(channel_id, before, after, limit, thread_id))
        if self.down:
            raise StoreUnavailable("database is locked")
        return HistoryPage(self.messages, self.has_more)

    def authorize(self, headers: Mapping[str, str], channel_id: str) -> str | None:
        self.seen_headers.append(headers)
        return self.deny


def message(seq: int, channel_id: str = "general") -> ChimeMessage:
    return ChimeMessage(
        channel_id=channel_id,
        message_id=format_message_id(seq),
        user_id="alice",
        content=f"hi {seq}",
        created_at="2026-11-27T10:00:00.000Z",
        metadata=(("k", "v"),),
        client_msg_id=f"c-{seq}",
    )


def call(backend: ApiBackend, target: str, method: str = "GET", *headers: str) -> HttpResponse:
    path, _, raw_query = target.partition("?")
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(key, value)  # the first value wins, as the server does
    fields = dict(h.split(": ", 1) for h in ("Host: t", *headers))
    request = HttpRequest(method, path, query, {k.lower(): v for k, v in fields.items()})
    handler = make_handler(backend)

    async def main() -> HttpResponse:
        return await handler(request)

    return asyncio.run(main())


def body(response: HttpResponse) -> Any:
    assert response.content_type == "application/json"
    return orjson.loads(response.body)


ID1, ID5, ID9 = format_message_id(1), format_message_id(5), format_message_id(9)


def test_healthz() -> None:
    response = call(FakeBackend(), "/healthz")
    assert response.status == 200
    assert body(response) == {"status": "ok"}


def test_readyz_ready_and_not_ready() -> None:
    response = call(FakeBackend(), "/readyz")
    assert (response.status, body(response)) == (200, {"ready": True, "checks": {"storage": True}})
    down = FakeBackend(ready=Readiness(False, {"storage": True, "gateway 1": False}))
    response = call(down, "/readyz")
    assert response.status == 503
    assert body(response) == {"ready": False, "checks": {"storage": True, "gateway 1": False}}


def test_readyz_when_the_backend_cannot_tell() -> None:
    response = call(FakeBackend(readiness_error=ActorError("no answer")), "/readyz")
    assert (response.status, body(response)) == (503, {"ready": False, "checks": {}})


def test_metrics_text() -> None:
    backend = FakeBackend()
    response = call(backend, "/metrics")
    assert response.status == 200
    assert response.content_type == METRICS_CONTENT_TYPE
    assert response.content_type.startswith("text/plain; version=0.0.4")
    assert response.body == backend.metrics.encode()


def test_history_defaults_and_wire_format() -> None:
    backend = FakeBackend(messages=(message(1), message(2)), has_more=True)
    response = call(backend, "/v1/channels/general/messages")
    assert response.status == 200
    assert body(response) == {
        "messages": [message(1).to_wire(), message(2).to_wire()],
        "hasMore": True,
    }
    assert backend.calls == [HistoryCall("general", None, None, 50, None)]


def test_history_passes_validated_parameters() -> None:
    backend = FakeBackend()
    target = f"/v1/channels/team%3Aops/messages?before={ID9}&after={ID1}&limit=100&threadId={ID5}"
    assert call(backend, target).status == 200
    assert backend.calls == [HistoryCall("team:ops", ID9, ID1, 100, ID5)]


def test_history_empty_parameters_count_as_absent() -> None:
    backend = FakeBackend()
    assert call(backend, "/v1/channels/c/messages?before=&after=&limit=&threadId=").status == 200
    assert backend.calls == [HistoryCall("c", None, None, 50, None)]


@pytest.mark.parametrize(
    "target",
    [
        "/v1/channels/" + "a" * 65 + "/messages",
        "/v1/channels/a%2Fb/messages",  # an encoded slash is part of the id, and invalid
        "/v1/channels/caf%C3%A9/messages",
        "/v1/channels/%ff/messages",
        "/v1/channels//messages",
        "/v1/channels/c/messages?before=12",
        "/v1/channels/c/messages?after=abc",
        "/v1/channels/c/messages?threadId=x",
        "/v1/channels/c/messages?limit=0",
        "/v1/channels/c/messages?limit=101",
        "/v1/channels/c/messages?limit=abc",
        "/v1/channels/c/messages?limit=%2B5",
        "/v1/channels/c/messages?limit=5.0",
        "/v1/channels/c/messages?limit=" + "9" * 5000,
    ],
)
def test_history_bad_requests(target: str) -> None:
    backend = FakeBackend()
    response = call(backend, target)
    assert response.status == 400
    assert body(response)["error"]["code"] == "bad_request"
    assert backend.calls == []


def test_history_storage_down_is_503() -> None:
    response = call(FakeBackend(down=True), "/v1/channels/c/messages")
    assert response.status == 503
    assert body(response)["error"]["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"
    # The store's own words ("database is locked", a host, a path) stay in the log.
    assert "locked" not in response.body.decode()


@pytest.mark.parametrize(("code", "status"), [("unauthorized", 401), ("forbidden", 403)])
def test_history_authorization(code: str, status: int) -> None:
    backend = FakeBackend(deny=code)
    response = call(backend, "/v1/channels/c/messages", "GET", "Authorization: Bearer nope")
    assert response.status == status
    assert body(response)["error"]["code"] == code
    assert backend.seen_headers[0]["authorization"] == "Bearer nope"
    assert backend.calls == []
    assert ("WWW-Authenticate" in response.headers) is (status == 401)


def test_probes_and_metrics_skip_authorization() -> None:
    backend = FakeBackend(deny="unauthorized")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert call(backend, path).status == 200
    assert backend.seen_headers == []


@pytest.mark.parametrize(
    "target", ["/", "/healthz/", "/nope", "/v1/channels/c", "/v1/channels/c/messages/x"]
)
def test_unknown_paths_are_404(target: str) -> None:
    response = call(FakeBackend(), target)
    assert response.status == 404
    assert body(response)["error"]["code"] == "not_found"


@pytest.mark.parametrize("target", ["/healthz", "/metrics", "/v1/channels/c/messages"])
def test_wrong_method_is_405(target: str) -> None:
    response = call(FakeBackend(), target, "POST")
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_head_is_served_like_get() -> None:
    assert call(FakeBackend(), "/healthz", "HEAD").status == 200


def test_routes_over_loopback() -> None:
    backend = FakeBackend(messages=(message(3, "c"),))

    def fetch(url: str) -> tuple[int, str, bytes]:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read()

    async def main() -> None:
        server = HttpServer(make_handler(backend))
        await server.start("127.0.0.1", 0)
        async with server:
            base = f"http://127.0.0.1:{server.port}"
            # urllib blocks, so it runs in a thread while the loop serves it.
            status, _, data = await asyncio.to_thread(fetch, f"{base}/v1/channels/c/messages")
            assert status == 200
            assert orjson.loads(data)["messages"][0]["messageId"] == format_message_id(3)
            status, content_type, _ = await asyncio.to_thread(fetch, f"{base}/metrics")
            assert (status, content_type) == (200, METRICS_CONTENT_TYPE)

    asyncio.run(main())
