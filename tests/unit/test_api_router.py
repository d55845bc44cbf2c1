"""Tests for chime_actors.api.router: matching raw segments, HEAD, 404 and 405."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
import pytest

from chime_actors.api.http_server import PROBLEM_CONTENT_TYPE, HttpRequest, HttpResponse
from chime_actors.api.router import Route, Router


async def echo(request: HttpRequest, params: Mapping[str, str]) -> HttpResponse:
    body = orjson.dumps({"method": request.method, "params": dict(params)})
    return HttpResponse(200, body, "application/json")


ROUTER = Router(
    [
        Route("/", {"GET": echo}),
        Route("/things/{thing}", {"GET": echo, "POST": echo}),
        Route("/things/{thing}/parts/{part}", {"PUT": echo, "DELETE": echo}),
    ]
)


def call(method: str, path: str) -> HttpResponse:
    return asyncio.run(ROUTER(HttpRequest(method, path)))


def test_parameters_are_whole_raw_segments() -> None:
    response = call("PUT", "/things/a%2Fb/parts/%F0%9F%91%8D")
    assert orjson.loads(response.body) == {
        "method": "PUT",
        "params": {"thing": "a%2Fb", "part": "%F0%9F%91%8D"},  # the handler decodes
    }
    # An empty segment is a value too: the handler refuses it as a bad id (400).
    assert orjson.loads(call("GET", "/things/").body)["params"] == {"thing": ""}


def test_get_routes_take_head() -> None:
    assert orjson.loads(call("HEAD", "/").body)["method"] == "HEAD"
    assert call("HEAD", "/things/x/parts/y").status == 405


@pytest.mark.parametrize("path", ["/nope", "/things", "/things/a/b", "/things/a/parts/b/c", ""])
def test_a_path_no_route_matches_is_a_404_problem(path: str) -> None:
    response = call("GET", path)
    assert (response.status, response.content_type) == (404, PROBLEM_CONTENT_TYPE)
    assert orjson.loads(response.body)["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/", "GET, HEAD"),
        ("PATCH", "/things/x", "GET, HEAD, POST"),
        ("GET", "/things/x/parts/y", "PUT, DELETE"),
    ],
)
def test_a_method_the_route_lacks_is_a_405_problem_with_allow(
    method: str, path: str, allow: str
) -> None:
    response = call(method, path)
    assert (response.status, response.headers["Allow"]) == (405, allow)
    assert orjson.loads(response.body)["code"] == "bad_request"


def test_routes_know_their_parameters() -> None:
    assert ROUTER.routes[2].parameters == ("thing", "part")
    assert ROUTER.routes[0].parameters == ()


def test_bad_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        Router([Route("/a", {"GET": echo}), Route("/a", {"POST": echo})])
    with pytest.raises(ValueError, match="starts with"):
        Route("a", {"GET": echo})
    with pytest.raises(ValueError, match="methods"):
        Route("/a", {"HEAD": echo})
    with pytest.raises(ValueError, match="methods"):
        Route("/a", {})
