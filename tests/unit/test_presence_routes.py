"""Tests for the REST presence and read marker routes against a small fake backend."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from chime_actors.api import presence_routes
from chime_actors.api.http_server import HttpRequest, HttpResponse
from chime_actors.api.presence_routes import Caller
from chime_actors.api.router import Router
from chime_actors.auth import Identity
from chime_actors.errors import (
    MessageNotFound,
    PresenceUnavailable,
    ProtocolError,
    StoreUnavailable,
)

M3 = "0000000000000003"


@dataclass
class Backend:
    """Grants what ``grants`` says; records what it was asked."""

    user: str | None = "alice"
    grants: frozenset[str] | None = None
    refuse: str | None = None
    online: list[str] = field(default_factory=lambda: ["alice", "bob"])
    failure: Exception | None = None
    max_channels: int = 3
    marks: list[tuple[str, str, str]] = field(default_factory=list)

    def caller(self, headers: Mapping[str, str]) -> Caller:
        if self.refuse is not None:
            raise ProtocolError(self.refuse, "no")
        return Caller(self.user, Identity(self.user or "", self.grants))

    async def presence_online(self, channel_id: str) -> list[str]:
        if self.failure is not None:
            raise self.failure
        return self.online

    async def mark_read(self, channel_id: str, user_id: str, message_id: str) -> None:
        if self.failure is not None:
            raise self.failure
        self.marks.append((channel_id, user_id, message_id))

    async def unread_counts(self, user_id: str, channel_ids: Sequence[str]) -> dict[str, int]:
        if self.failure is not None:
            raise self.failure
        return dict.fromkeys(channel_ids, 2)


def call(backend: Backend, method: str, target: str, body: Any = None) -> HttpResponse:
    path, _, query = target.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if p)
    request = HttpRequest(
        method,
        path,
        params,
        {},
        b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body),
    )
    return asyncio.run(Router(presence_routes.routes(backend))(request))


def error(response: HttpResponse) -> tuple[int, str]:
    return response.status, orjson.loads(response.body)["code"]


def test_presence_lists_the_online_users() -> None:
    response = call(Backend(), "GET", "/v1/channels/general/presence")
    assert response.status == 200
    assert orjson.loads(response.body) == {"online": ["alice", "bob"]}


def test_presence_refusals() -> None:
    assert error(call(Backend(grants=frozenset({"x"})), "GET", "/v1/channels/y/presence")) == (
        403,
        "forbidden",
    )
    assert error(call(Backend(refuse="unauthorized"), "GET", "/v1/channels/y/presence")) == (
        401,
        "unauthorized",
    )
    down = call(Backend(failure=PresenceUnavailable("x")), "GET", "/v1/channels/y/presence")
    assert error(down) == (503, "unavailable") and down.headers["Retry-After"] == "1"
    assert error(call(Backend(), "GET", "/v1/channels/a%20b/presence")) == (400, "bad_request")
    not_allowed = call(Backend(), "PUT", "/v1/channels/y/presence")
    assert not_allowed.status == 405 and not_allowed.headers["Allow"] == "GET, HEAD"


def test_read_stores_the_marker_and_answers_204() -> None:
    backend = Backend()
    response = call(backend, "POST", "/v1/channels/general/read", {"messageId": M3})
    assert response.status == 204 and response.body == b""
    assert backend.marks == [("general", "alice", M3)]


def test_read_refusals() -> None:
    target = "/v1/channels/general/read"
    assert error(call(Backend(), "POST", target, b"not json")) == (400, "bad_request")
    assert error(call(Backend(), "POST", target, ["x"])) == (400, "bad_request")
    assert error(call(Backend(), "POST", target, {"messageId": "12"})) == (400, "bad_request")
    assert error(call(Backend(user=None), "POST", target, {"messageId": M3})) == (
        401,
        "unauthorized",
    )
    assert error(call(Backend(grants=frozenset()), "POST", target, {"messageId": M3})) == (
        403,
        "forbidden",
    )
    missing = Backend(failure=MessageNotFound("x"))
    assert error(call(missing, "POST", target, {"messageId": M3})) == (404, "not_found")
    down = Backend(failure=StoreUnavailable("/srv/db"))
    assert error(call(down, "POST", target, {"messageId": M3})) == (503, "unavailable")
    assert call(Backend(), "GET", target).headers["Allow"] == "POST"


def test_unread_counts_the_named_channels() -> None:
    response = call(Backend(), "GET", "/v1/me/unread?channels=a,b,a")
    assert orjson.loads(response.body) == {"unread": {"a": 2, "b": 2}}


def test_unread_refusals() -> None:
    assert error(call(Backend(), "GET", "/v1/me/unread")) == (400, "bad_request")
    assert error(call(Backend(), "GET", "/v1/me/unread?channels=a,b,c,d")) == (400, "bad_request")
    assert error(call(Backend(), "GET", "/v1/me/unread?channels=a%2Fb")) == (400, "bad_request")
    assert error(call(Backend(user=None), "GET", "/v1/me/unread?channels=a")) == (
        401,
        "unauthorized",
    )
    limited = Backend(grants=frozenset({"a"}))
    assert error(call(limited, "GET", "/v1/me/unread?channels=a,b")) == (403, "forbidden")
    down = Backend(failure=StoreUnavailable("x"))
    assert error(call(down, "GET", "/v1/me/unread?channels=a")) == (503, "unavailable")


def test_other_paths_and_methods_are_not_these_routes() -> None:
    assert error(call(Backend(), "GET", "/v1/channels/a/messages")) == (404, "not_found")
    wrong = call(Backend(), "GET", "/v1/channels/a/read")
    assert (wrong.status, wrong.headers["Allow"]) == (405, "POST")
    assert call(Backend(), "POST", "/v1/me/unread").headers["Allow"] == "GET, HEAD"
