"""Tests for chime_actors.api.routes against a small in-memory backend."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import orjson
import pytest

from chime_actors.api.http_server import (
    PROBLEM_CONTENT_TYPE,
    HttpRequest,
    HttpResponse,
    HttpServer,
)
from chime_actors.api.routes import METRICS_CONTENT_TYPE, ApiBackend, Readiness, make_handler
from chime_actors.errors import ActorError, ProtocolError, StoreUnavailable
from chime_actors.ids import format_message_id
from chime_actors.records import ChangeKind, ChimeMessage, MessageChange, SendOutcome
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

    # --- changes ---------------------------------------------------------------

    max_content_chars: int = 10
    # What ``change`` answers: an error code, or None (done).
    refuse: str | None = None
    wait_s: float | None = None
    changes: list[ChangeCall] = field(default_factory=list)

    def writer(self, headers: Mapping[str, str], channel_id: str) -> str:
        self.seen_headers.append(headers)
        if self.deny is not None:
            raise ProtocolError(self.deny, "refused")
        user = headers.get("x-chime-user")
        if user is None:
            raise ProtocolError("unauthorized", "who?")
        return user

    def take_rate(self, user_id: str) -> float | None:
        return self.wait_s

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
        self.changes.append(ChangeCall(channel_id, message_id, user_id, kind, content, emoji))
        if self.refuse is not None:
            return SendOutcome(1, error_code=self.refuse, error_message="store words: /var/x")
        edited = None
        if kind is ChangeKind.EDIT:
            edited = msgspec.structs.replace(message(1, channel_id), content=content or "")
        change = MessageChange(
            channel_id, ID9, kind, message_id, user_id, "t", emoji=emoji, message=edited
        )
        return SendOutcome(1, change=change)


@dataclass
class ChangeCall:
    channel_id: str
    message_id: str
    user_id: str
    kind: ChangeKind
    content: str | None
    emoji: str | None


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


def call(
    backend: ApiBackend, target: str, method: str = "GET", *headers: str, data: bytes = b""
) -> HttpResponse:
    path, _, raw_query = target.partition("?")
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(key, value)  # the first value wins, as the server does
    fields = dict(h.split(": ", 1) for h in ("Host: t", *headers))
    request = HttpRequest(method, path, query, {k.lower(): v for k, v in fields.items()}, data)
    handler = make_handler(backend)

    async def main() -> HttpResponse:
        return await handler(request)

    return asyncio.run(main())


def body(response: HttpResponse) -> Any:
    parsed = orjson.loads(response.body)
    if response.content_type == PROBLEM_CONTENT_TYPE:
        # An RFC 9457 problem (PROTOCOL.md "REST API"), whose status is the response's.
        assert response.status >= 400 and parsed["status"] == response.status
        assert parsed["type"] == "about:blank" and parsed["title"] and parsed["detail"]
    else:
        # JSON that is not a problem: answers, and /readyz's 503 (a probe's body).
        assert response.content_type == "application/json"
    return parsed


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
    # Each message as history has it: reactions and the thread's reply count added.
    extra = {"reactions": {}, "replyCount": 0}
    assert body(response) == {
        "messages": [{**message(1).to_wire(), **extra}, {**message(2).to_wire(), **extra}],
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
    assert body(response)["code"] == "bad_request"
    assert backend.calls == []


def test_history_storage_down_is_503() -> None:
    response = call(FakeBackend(down=True), "/v1/channels/c/messages")
    assert response.status == 503
    assert body(response)["code"] == "unavailable"
    assert response.headers["Retry-After"] == "1"
    # The store's own words ("database is locked", a host, a path) stay in the log.
    assert "locked" not in response.body.decode()


@pytest.mark.parametrize(("code", "status"), [("unauthorized", 401), ("forbidden", 403)])
def test_history_authorization(code: str, status: int) -> None:
    backend = FakeBackend(deny=code)
    response = call(backend, "/v1/channels/c/messages", "GET", "Authorization: Bearer nope")
    assert response.status == status
    assert body(response)["code"] == code
    assert backend.seen_headers[0]["authorization"] == "Bearer nope"
    assert backend.calls == []
    assert ("WWW-Authenticate" in response.headers) is (status == 401)


def test_probes_and_metrics_skip_authorization() -> None:
    backend = FakeBackend(deny="unauthorized")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert call(backend, path).status == 200
    assert backend.seen_headers == []


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/healthz/",
        "/nope",
        "/v1/channels/c",
        f"/v1/channels/c/messages/{format_message_id(1)}/nope",
        f"/v1/channels/c/messages/{format_message_id(1)}/reactions",
    ],
)
def test_unknown_paths_are_404(target: str) -> None:
    response = call(FakeBackend(), target)
    assert response.status == 404
    assert body(response)["code"] == "not_found"


@pytest.mark.parametrize(
    ("target", "method", "allow"),
    [
        ("/healthz", "POST", "GET, HEAD"),
        ("/metrics", "POST", "GET, HEAD"),
        ("/v1/channels/c/messages", "PUT", "GET, HEAD, POST"),
    ],
)
def test_wrong_method_is_405(target: str, method: str, allow: str) -> None:
    response = call(FakeBackend(), target, method)
    assert response.status == 405
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize(
    ("target", "method", "allow"),
    [
        (f"/v1/channels/c/messages/{format_message_id(1)}", "GET", "PATCH, DELETE"),
        (f"/v1/channels/c/messages/{format_message_id(1)}", "PUT", "PATCH, DELETE"),
        (f"/v1/channels/c/messages/{format_message_id(1)}/reactions/x", "POST", "PUT, DELETE"),
    ],
)
def test_wrong_method_on_a_message_is_405(target: str, method: str, allow: str) -> None:
    response = call(FakeBackend(), target, method, "X-Chime-User: alice")
    assert (response.status, response.headers["Allow"]) == (405, allow)


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


# --- changes: PATCH / DELETE a message, PUT / DELETE a reaction --------------------------

MSG = f"/v1/channels/general/messages/{format_message_id(1)}"


def test_patch_edits_and_answers_the_edited_message() -> None:
    backend = FakeBackend()
    response = call(backend, MSG, "PATCH", "X-Chime-User: alice", data=b'{"content": "new"}')
    assert response.status == 200
    assert body(response)["content"] == "new"
    assert backend.changes == [
        ChangeCall("general", format_message_id(1), "alice", ChangeKind.EDIT, "new", None)
    ]


def test_delete_and_reactions_answer_204() -> None:
    backend = FakeBackend()
    assert call(backend, MSG, "DELETE", "X-Chime-User: alice").status == 204
    # The emoji is one percent-encoded path segment (an encoded "/" stays in it).
    target = f"{MSG}/reactions/%F0%9F%91%8D%2F"
    assert call(backend, target, "PUT", "X-Chime-User: bob").status == 204
    assert call(backend, target, "DELETE", "X-Chime-User: bob").status == 204
    assert [(c.kind, c.user_id, c.emoji) for c in backend.changes] == [
        (ChangeKind.DELETE, "alice", None),
        (ChangeKind.REACTION_ADD, "bob", "👍/"),
        (ChangeKind.REACTION_REMOVE, "bob", "👍/"),
    ]


@pytest.mark.parametrize(
    ("target", "method", "data", "code"),
    [
        ("/v1/channels/general/messages/12", "DELETE", b"", "bad_request"),
        ("/v1/channels/a%2Fb/messages/" + format_message_id(1), "DELETE", b"", "bad_request"),
        (MSG, "PATCH", b"", "bad_request"),
        (MSG, "PATCH", b"[1]", "bad_request"),
        (MSG, "PATCH", b'{"content": 5}', "bad_request"),
        (MSG, "PATCH", b'{"content": "  "}', "bad_request"),
        (MSG, "PATCH", b'{"content": "' + b"x" * 11 + b'"}', "too_large"),
        (f"{MSG}/reactions/%20", "PUT", b"", "bad_request"),
        (f"{MSG}/reactions/{'x' * 65}", "PUT", b"", "bad_request"),
        (f"{MSG}/reactions/%ff", "PUT", b"", "bad_request"),
    ],
)
def test_bad_changes_are_refused_before_reaching_a_persister(
    target: str, method: str, data: bytes, code: str
) -> None:
    backend = FakeBackend()
    response = call(backend, target, method, "X-Chime-User: alice", data=data)
    assert response.status == (413 if code == "too_large" else 400)
    assert body(response)["code"] == code
    assert backend.changes == []


@pytest.mark.parametrize(("code", "status"), [("unauthorized", 401), ("forbidden", 403)])
def test_changes_need_a_user_the_channel_grants(code: str, status: int) -> None:
    backend = FakeBackend(deny=code)
    response = call(backend, MSG, "DELETE", "X-Chime-User: alice")
    assert (response.status, body(response)["code"]) == (status, code)
    assert ("WWW-Authenticate" in response.headers) is (status == 401)
    assert backend.changes == []
    nobody = call(FakeBackend(), MSG, "DELETE")
    assert (nobody.status, body(nobody)["code"]) == (401, "unauthorized")


@pytest.mark.parametrize(
    ("code", "status"), [("forbidden", 403), ("not_found", 404), ("unavailable", 503)]
)
def test_refused_changes_map_to_statuses(code: str, status: int) -> None:
    response = call(FakeBackend(refuse=code), MSG, "DELETE", "X-Chime-User: bob")
    assert (response.status, body(response)["code"]) == (status, code)
    if code == "forbidden":
        # A refusal's own words (the author rule, a before_store handler) are the
        # requester's to read; nothing of storage is in them.
        assert body(response)["detail"] == "store words: /var/x"
    else:
        assert "/var/x" not in response.body.decode()  # the store's words stay in the log


def test_changes_over_the_rate_limit_are_429() -> None:
    backend = FakeBackend(wait_s=1.5)
    response = call(backend, MSG, "DELETE", "X-Chime-User: alice")
    assert response.status == 429
    assert body(response)["code"] == "rate_limited"
    assert body(response)["retryAfterMs"] == 1500
    assert response.headers["Retry-After"] == "2"
    assert backend.changes == []
