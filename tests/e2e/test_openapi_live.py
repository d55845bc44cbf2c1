"""``/openapi.json`` against a live server: every documented operation is called, and
every real response must be one the document describes (status, content type,
body, required headers), errors as problem+json included.

The insecure server's test calls each operation for a success and at least one
error, and fails if the document gains an operation it does not call; the jwt
server's test covers what only a token can refuse (401 with ``WWW-Authenticate``,
403 for a channel the token does not grant).
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import jwt
import orjson
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from websockets.sync.client import connect as ws_connect

import chime_actors
from chime_actors.api import openapi
from tests.e2e.conftest import fresh
from tests.openapi_check import ApiDocument, Exchange
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

RATE = 30  # limits.messages_per_10s of the insecure server: a flooder passes it
MAX_UPLOAD = 1024  # attachments.max_bytes of the insecure server
SECRET = "openapi-secret-" + "x" * 32
UNKNOWN_ID = "9" * 16
THUMBS = quote("👍")
# Operations without an error of their own (nothing they take can be wrong): their
# error case is the 405 of their path, checked against the shared Problem.
NO_ERROR_OF_THEIR_OWN = {
    "getHealth",
    "getReadiness",
    "getMetrics",
    "getOpenApi",
    "getClientConfig",
    # 404 only when the page is not installed; it is, in every test server.
    "getWebPage",
}


@dataclass
class Api:
    """Calls a live server and checks every answer against its document."""

    server: ServerProcess
    doc: ApiDocument
    seen: dict[str, set[int]] = field(default_factory=dict)  # operationId -> statuses
    path_problems: set[str] = field(default_factory=set)  # templates answered 405

    def call(
        self,
        method: str,
        target: str,
        *,
        user: str | None = None,
        token: str | None = None,
        body: Any = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request; returns (status, JSON body or text, headers) once checked."""
        exchange = self.exchange(method, target, user, token, body, raw_body, headers)
        checked_method, template = self.doc.check(exchange)
        op = self.doc.document["paths"][template][checked_method.lower()]["operationId"]
        self.seen.setdefault(op, set()).add(exchange.status)
        return exchange.status, _parsed(exchange), dict(exchange.headers)

    def refused_method(self, method: str, target: str) -> Exchange:
        """A method the path's route does not take: a 405 problem with ``Allow``."""
        exchange = self.exchange(method, target, None, None, None, None, None)
        assert exchange.status == 405, exchange
        self.doc.check_problem(exchange)
        template = self.doc.template_of(target)
        assert template is not None
        self.path_problems.add(template)
        return exchange

    def exchange(
        self,
        method: str,
        target: str,
        user: str | None,
        token: str | None,
        body: Any,
        raw_body: bytes | None,
        headers: dict[str, str] | None,
    ) -> Exchange:
        sent = dict(headers or {})
        if user is not None:
            sent["X-Chime-User"] = user
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw_body if body is None else orjson.dumps(body)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection("127.0.0.1", self.server.api_port, timeout=20)
        try:
            connection.request(method, target, body=data, headers=sent)
            response = connection.getresponse()
            payload = response.read()
            got = {name.lower(): value for name, value in response.getheaders()}
        finally:
            connection.close()
        return Exchange(method, urlsplit(target).path, response.status, got, payload)

    def uncovered(self) -> list[str]:
        """Documented operations not yet called for a success and an error."""
        missing = []
        for template, item in self.doc.document["paths"].items():
            for method, op in item.items():
                if method == "parameters":
                    continue
                statuses = self.seen.get(op["operationId"], set())
                if not any(s < 400 for s in statuses):
                    missing.append(f"{op['operationId']}: no success")
                if op["operationId"] in NO_ERROR_OF_THEIR_OWN:
                    if template not in self.path_problems:
                        missing.append(f"{op['operationId']}: no 405 on {template}")
                elif not any(s >= 400 for s in statuses):
                    missing.append(f"{op['operationId']}: no error")
        return missing


def _parsed(exchange: Exchange) -> Any:
    media = exchange.headers.get("content-type", "")
    if "json" in media and exchange.body:
        return orjson.loads(exchange.body)
    return exchange.body.decode(errors="replace")


def live_document(server: ServerProcess) -> ApiDocument:
    """The server's own ``/openapi.json``, checked to be valid OpenAPI 3.1 first."""
    connection = http.client.HTTPConnection("127.0.0.1", server.api_port, timeout=20)
    try:
        connection.request("GET", openapi.PATH)
        document = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    assert not list(OpenAPIV31SpecValidator(document).iter_errors())
    assert document["info"]["version"] == chime_actors.__version__
    assert document == openapi.document()
    return ApiDocument(document)


@pytest.fixture(scope="module")
def insecure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"limits.messages_per_10s": RATE, "attachments.max_bytes": MAX_UPLOAD}
    with running_server(tmp_path_factory.mktemp("openapi"), overrides) as srv:
        yield srv


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": SECRET}
    with running_server(tmp_path_factory.mktemp("openapi-jwt"), overrides) as srv:
        yield srv


def token(sub: str, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


def test_every_operation_answers_as_documented(insecure_server: ServerProcess) -> None:
    api = Api(insecure_server, live_document(insecure_server))
    channel = fresh("oapi")
    messages = f"/v1/channels/{channel}/messages"

    # --- operations, the document, the web page --------------------------------------
    wait_until(lambda: api.call("GET", "/readyz")[0] == 200, 60, what="the server is ready")
    assert api.call("GET", "/healthz")[1] == {"status": "ok"}
    assert "chime_" in api.call("GET", "/metrics")[1]
    assert api.call("GET", openapi.PATH)[0] == 200
    assert api.call("HEAD", openapi.PATH)[0] == 200
    status, _, headers = api.call("GET", "/")
    assert status == 200
    assert api.call("GET", "/", headers={"If-None-Match": headers["etag"]})[0] == 304
    assert api.call("GET", "/static/app.js")[0] == 200
    assert api.call("GET", "/static/nope.js")[0] == 404
    assert api.call("GET", "/v1/client-config")[1]["authMode"] == "insecure"

    # --- history and sends ---------------------------------------------------------
    sent = {"content": "hello", "clientMsgId": "c-1", "metadata": {"k": "v"}}
    status, first, _ = api.call("POST", messages, user="alice", body=sent)
    assert status == 201 and first["content"] == "hello"
    status, again, _ = api.call("POST", messages, user="alice", body=sent)
    assert (status, again["duplicate"], again["messageId"]) == (200, True, first["messageId"])
    reply = {"content": "a reply", "threadId": first["messageId"]}
    assert api.call("POST", messages, user="bob", body=reply)[0] == 201
    for body, user, expected in [
        ({"content": "  "}, "alice", 400),
        ({"content": "hi"}, None, 401),
        ({"content": "x" * 5000}, "alice", 413),
    ]:
        assert api.call("POST", messages, user=user, body=body)[0] == expected
    oversize = b'{"content": "' + b"x" * 70_000 + b'"}'
    assert api.call("POST", messages, user="alice", raw_body=oversize)[0] == 413
    status, page, _ = api.call("GET", f"{messages}?limit=10")
    assert status == 200 and [m["content"] for m in page["messages"]] == ["hello", "a reply"]
    assert api.call("GET", f"{messages}?threadId={first['messageId']}")[0] == 200
    assert api.call("GET", f"{messages}?limit=0")[0] == 400

    # --- edits, deletes, reactions ---------------------------------------------------
    own = f"{messages}/{first['messageId']}"
    unknown = f"{messages}/{UNKNOWN_ID}"
    status, edited, _ = api.call("PATCH", own, user="alice", body={"content": "hello!"})
    assert status == 200 and edited["editedAt"] is not None
    assert api.call("PATCH", own, user="bob", body={"content": "mine"})[0] == 403
    assert api.call("PATCH", unknown, user="alice", body={"content": "x"})[0] == 404
    assert api.call("PATCH", own, user="alice", body=[1])[0] == 400
    assert api.call("PUT", f"{own}/reactions/{THUMBS}", user="bob")[0] == 204
    assert api.call("PUT", f"{own}/reactions/{'x' * 65}", user="bob")[0] == 400
    status, page, _ = api.call("GET", messages)
    assert page["messages"][0]["reactions"] == {"👍": ["bob"]}
    assert api.call("DELETE", f"{own}/reactions/{THUMBS}", user="bob")[0] == 204
    assert api.call("DELETE", f"{unknown}/reactions/{THUMBS}", user="bob")[0] == 404
    assert api.call("DELETE", own, user="bob")[0] == 403
    assert api.call("DELETE", unknown, user="alice")[0] == 404
    assert api.call("DELETE", own, user="alice")[0] == 204

    # --- presence, read markers, unread ----------------------------------------------
    presence = f"/v1/channels/{channel}/presence"
    with ws_connect(insecure_server.url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "connect", "channels": [channel], "userId": "carol"}))
        assert json.loads(ws.recv(timeout=20))["type"] == "connected"
        wait_until(lambda: api.call("GET", presence)[1] == {"online": ["carol"]}, 20, what="carol")
    assert api.call("GET", "/v1/channels/bad%2Fid/presence")[0] == 400
    read = f"/v1/channels/{channel}/read"
    assert api.call("POST", read, user="carol", body={"messageId": first["messageId"]})[0] == 204
    assert api.call("POST", read, user="carol", body={"messageId": UNKNOWN_ID})[0] == 404
    assert api.call("POST", read, user="carol", body={"messageId": "12"})[0] == 400
    status, unread, _ = api.call("GET", f"/v1/me/unread?channels={channel}", user="carol")
    assert (status, unread) == (200, {"unread": {channel: 1}})
    assert api.call("GET", f"/v1/me/unread?channels={channel}")[0] == 401
    assert api.call("GET", "/v1/me/unread?channels=", user="carol")[0] == 400

    # --- attachments -----------------------------------------------------------------
    text = {"Content-Type": "text/plain"}
    upload = f"/v1/attachments?filename={quote('notes é.txt')}"
    status, stored, headers = api.call(
        "POST", upload, user="alice", raw_body=b"some notes", headers=text
    )
    assert (status, stored["size"]) == (201, 10)
    assert headers["location"] == f"/v1/attachments/{stored['attachmentId']}"
    assert api.call("POST", upload, raw_body=b"x", headers=text)[0] == 401
    assert api.call("POST", upload, user="alice", raw_body=b"", headers=text)[0] == 400
    bad_name = "/v1/attachments?filename=..%2Fx"
    assert api.call("POST", bad_name, user="alice", raw_body=b"x", headers=text)[0] == 400
    big = b"x" * (MAX_UPLOAD + 1)
    assert api.call("POST", upload, user="alice", raw_body=big, headers=text)[0] == 413
    download = f"/v1/attachments/{stored['attachmentId']}"
    assert api.call("GET", download, user="bob")[0] == 404  # not listed anywhere yet
    listing = {"content": "my notes", "attachments": [stored["attachmentId"]]}
    status, sent_file, _ = api.call("POST", messages, user="alice", body=listing)
    assert status == 201 and sent_file["attachments"][0]["filename"] == "notes é.txt"
    status, got, headers = api.call("GET", download, user="bob")
    assert (status, got) == (200, "some notes")
    assert headers["content-disposition"].startswith("attachment;")
    assert api.call("HEAD", download, user="bob")[0] == 200
    assert api.call("GET", "/v1/attachments/not-an-id", user="bob")[0] == 404

    # --- over the rate limit: 429 with retryAfterMs and Retry-After ------------------
    flooder = f"flooder-{uuid.uuid4().hex[:6]}"
    statuses = [api.call("DELETE", unknown, user=flooder)[0] for _ in range(RATE + 1)]
    assert statuses[-1] == 429 and set(statuses) == {404, 429}, statuses

    # --- the HTTP layer's own refusals, as problems -----------------------------------
    no_route = api.exchange("GET", "/v1/nothing-here", None, None, None, None, None)
    assert (no_route.status, no_route.headers["content-type"]) == (404, "application/problem+json")
    api.doc.check_problem(no_route)
    examples = {
        "channelId": channel,
        "messageId": UNKNOWN_ID,
        "emoji": "x",
        "name": "app.js",
        "attachmentId": "0" * 32,
    }
    for template, item in api.doc.document["paths"].items():
        target = template.format(**examples)
        documented = [m.upper() for m in item if m != "parameters"]
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method not in documented:
                allow = api.refused_method(method, target).headers["allow"].split(", ")
                assert [m for m in allow if m != "HEAD"] == documented, (template, allow)

    assert not api.uncovered(), api.uncovered()


def test_token_refusals_answer_as_documented(jwt_server: ServerProcess) -> None:
    api = Api(jwt_server, live_document(jwt_server))
    channel, other = fresh("oapi-jwt"), fresh("oapi-other")
    mine = token("alice", channels=[channel])
    messages = f"/v1/channels/{channel}/messages"
    status, sent, _ = api.call("POST", messages, token=mine, body={"content": "hi"})
    assert status == 201
    own = f"{messages}/{sent['messageId']}"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", messages, {}, 401),
        ("GET", messages, {"token": "garbage"}, 401),
        ("GET", f"/v1/channels/{other}/messages", {"token": mine}, 403),
        ("POST", f"/v1/channels/{other}/messages", {"token": mine, "body": {"content": "x"}}, 403),
        ("POST", messages, {"body": {"content": "x"}}, 401),
        ("PATCH", own, {"token": "garbage", "body": {"content": "x"}}, 401),
        ("DELETE", own, {"token": token("bob")}, 403),  # not the author
        ("PUT", f"{own}/reactions/{THUMBS}", {}, 401),
        ("GET", f"/v1/channels/{other}/presence", {"token": mine}, 403),
        ("GET", f"/v1/channels/{channel}/presence", {}, 401),
        (
            "POST",
            f"/v1/channels/{other}/read",
            {"token": mine, "body": {"messageId": "1" * 16}},
            403,
        ),
        ("GET", f"/v1/me/unread?channels={channel},{other}", {"token": mine}, 403),
        ("POST", "/v1/attachments?filename=a.txt", {"raw_body": b"x"}, 401),
        ("GET", f"/v1/attachments/{'0' * 32}", {}, 401),
    ]
    for method, target, options, expected in cases:
        status, problem, headers = api.call(method, target, **options)
        assert (status, problem["status"]) == (expected, expected), (method, target, problem)
        if expected == 401:
            assert headers["www-authenticate"] == "Bearer"
    assert api.call("GET", messages, token=mine)[0] == 200
    assert api.call("DELETE", own, token=mine)[0] == 204
