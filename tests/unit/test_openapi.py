"""Tests for chime_actors.api.openapi: a valid OpenAPI 3.1 document of every route served."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

import chime_actors
from chime_actors.actors.wiring import api_adapters
from chime_actors.api import openapi
from chime_actors.api.core import ApiCore
from chime_actors.api.http_server import PROBLEM_CONTENT_TYPE, HttpRequest, error_response
from chime_actors.api.router import Router
from chime_actors.config import load_config
from chime_actors.protocol import server_frames
from chime_actors.records import Attachment, ChimeMessage
from chime_actors.runtime.messages import ActorId, ActorKind
from tests.openapi_check import METHODS, ApiDocument, Exchange

DOC = ApiDocument(openapi.document())


@pytest.fixture
def api_core(tmp_path: Path) -> Iterator[ApiCore]:
    """The API process's core as the server builds it (nothing listens)."""
    path = tmp_path / "chime.yaml"
    path.write_text(yaml.safe_dump({"storage": {"sqlite": {"path": str(tmp_path / "c.db")}}}))
    config = load_config(path, env={})
    yield ApiCore(ActorId(ActorKind.API, 1), config, 0, store=api_adapters(config).store)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document()
    assert document["openapi"] == "3.1.0"
    errors = list(OpenAPIV31SpecValidator(document).iter_errors())
    assert not errors, [str(e)[:300] for e in errors[:3]]
    validate(document, cls=OpenAPIV31SpecValidator)  # the library's own entry point


def test_the_document_carries_the_server_version() -> None:
    assert openapi.document()["info"]["version"] == chime_actors.__version__
    assert openapi.build("9.8.7")["info"]["version"] == "9.8.7"


def test_every_route_the_server_serves_is_documented_and_nothing_else(api_core: ApiCore) -> None:
    """The aiohttp app of the API has one catch-all route into the Router; the
    Router's table must be the document's paths, method for method, so a route
    added without its description (or a description of nothing) fails here."""
    server = api_core._server
    (route,) = server.app.router.routes()
    assert (route.method, route.resource.canonical if route.resource else None) == ("*", "/{tail}")
    router = server.handler
    assert isinstance(router, Router)
    served = {(method, r.template) for r in router.routes for method in r.methods}
    assert served == DOC.operations()
    # Path parameters are the template's, named alike and in order.
    for r in router.routes:
        params = [resolved(p) for p in DOC.document["paths"][r.template].get("parameters", [])]
        assert tuple(p["name"] for p in params if p["in"] == "path") == r.parameters


def resolved(param: dict[str, Any]) -> dict[str, Any]:
    """A parameter object, its ``$ref`` (to components.parameters) followed."""
    if "$ref" not in param:
        return param
    found: dict[str, Any] = DOC.document["components"]["parameters"][param["$ref"].split("/")[-1]]
    return found


def test_operation_ids_are_unique_and_errors_are_problems() -> None:
    ids = []
    for template, item in DOC.document["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            ids.append(op["operationId"])
            assert "default" in op["responses"], (method, template)
            for status, response in op["responses"].items():
                if status == "default" or int(status) < 400 or template == "/readyz":
                    continue
                name = response["$ref"].rsplit("/", 1)[1]
                content = DOC.document["components"]["responses"][name]["content"]
                assert list(content) == [PROBLEM_CONTENT_TYPE], (method, template, status)
    assert len(ids) == len(set(ids))


def test_the_api_serves_its_document(api_core: ApiCore) -> None:
    response = asyncio.run(api_core._server.handler(HttpRequest("GET", openapi.PATH)))
    assert response.body == openapi.document_bytes()
    DOC.check(
        Exchange(
            "GET",
            openapi.PATH,
            response.status,
            {"content-type": response.content_type},
            response.body,
        )
    )


MESSAGE = ChimeMessage(
    channel_id="general",
    message_id="0000000000000007",
    user_id="alice",
    content="hi",
    created_at="2026-11-27T10:00:00.000Z",
    metadata=(("k", "v"),),
    client_msg_id="c-1",
)


@pytest.mark.parametrize(
    "message",
    [
        MESSAGE,
        msgspec.structs.replace(
            MESSAGE, thread_id="0000000000000001", metadata=(), client_msg_id=None
        ),
        msgspec.structs.replace(
            MESSAGE, edited_at="2026-11-27T10:00:01.000Z", channel_name="General"
        ),
        msgspec.structs.replace(
            MESSAGE, attachments=(Attachment("a" * 32, "f é.txt", "text/plain; charset=utf-8", 3),)
        ),
    ],
    ids=["plain", "reply", "edited", "attachments"],
)
def test_the_message_schemas_describe_the_records_as_sent(message: ChimeMessage) -> None:
    DOC.validate("ChimeMessage", message.to_wire())
    with_reactions = server_frames.history_message(
        message, {message.message_id: {"👍": ("alice", "bob")}}, {message.message_id: 2}
    )
    DOC.validate("HistoryMessage", with_reactions)
    with pytest.raises(AssertionError, match="replyCount"):
        DOC.validate("ChimeMessage", with_reactions)  # closed: no unnamed fields


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 429, 431, 500, 503])
def test_every_problem_the_server_makes_matches_the_problem_schema(status: int) -> None:
    DOC.validate("Problem", orjson.loads(error_response(status, "words").body))


def test_the_rate_limited_problem_carries_its_retry_time() -> None:
    limited = error_response(429, "slow", code="rate_limited", retryAfterMs=1200)
    DOC.validate("RateLimitedProblem", orjson.loads(limited.body))
    with pytest.raises(AssertionError, match="retryAfterMs"):
        DOC.validate("RateLimitedProblem", orjson.loads(error_response(429, "slow").body))
