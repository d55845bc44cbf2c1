"""The API's route table: every path it serves, the methods each takes, and dispatch.

A :class:`Route` is an OpenAPI path template (``/v1/channels/{channelId}/messages``)
and a handler per method; a :class:`Router` is the table, and the one
``HttpHandler`` the HTTP server calls. Nothing is served that is not a route of
the table, so the table is what ``/openapi.json`` must describe: a test compares
the two (``tests/unit/test_openapi.py``), and a route added without its
description fails it.

Matching works on the raw path, split at ``/`` before any percent-decoding: a
``{name}`` is one whole segment, still percent-encoded (an encoded ``/`` stays
inside it, so it cannot change routing), and may be empty; the handler decodes
and checks it (a bad id is its 400, not a 404). A route that takes ``GET`` takes
``HEAD`` too (aiohttp sends no body for it). A path no route matches is 404
``not_found``; a method its route does not take is 405 with ``Allow``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from chime_actors.api.http_server import HttpRequest, HttpResponse, error_response

__all__ = ["Route", "RouteHandler", "Router"]

RouteHandler = Callable[[HttpRequest, Mapping[str, str]], Awaitable[HttpResponse]]
"""One method of a route: the request and the template's parameters (raw segments)."""

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Route:
    """One path template and the handler of each method it takes.

    Attributes:
        template: the path, ``{name}`` for a parameter segment (OpenAPI's syntax).
        methods: upper-case method -> handler, in the order ``Allow`` lists them;
            ``HEAD`` is implied by ``GET``, never given.
    """

    template: str
    methods: Mapping[str, RouteHandler]
    _segments: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.template.startswith("/"):
            raise ValueError(f"a route template starts with '/': {self.template!r}")
        unknown = set(self.methods) - _METHODS
        if unknown or not self.methods:
            raise ValueError(f"route {self.template}: methods must be some of {sorted(_METHODS)}")
        object.__setattr__(self, "_segments", tuple(self.template.split("/")[1:]))
        object.__setattr__(self, "methods", MappingProxyType(dict(self.methods)))

    @property
    def parameters(self) -> tuple[str, ...]:
        """The names of the template's parameters, in path order."""
        return tuple(s[1:-1] for s in self._segments if _is_parameter(s))

    @property
    def allow(self) -> str:
        """The ``Allow`` header of a 405 on this route."""
        allowed: list[str] = []
        for method in self.methods:
            allowed.append(method)
            if method == "GET":
                allowed.append("HEAD")
        return ", ".join(allowed)

    def match(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The parameters (raw segments) when ``segments`` is this route's path, else None."""
        if len(segments) != len(self._segments):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(self._segments, segments, strict=True):
            if _is_parameter(pattern):
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params


class Router:
    """Dispatches a request to the route that matches its path (the first, in order)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        """Serve ``routes``.

        Raises:
            ValueError: two routes have the same template (one would never be reached).
        """
        self._routes = tuple(routes)
        templates = [route.template for route in self._routes]
        duplicates = sorted({t for t in templates if templates.count(t) > 1})
        if duplicates:
            raise ValueError(f"routes given twice: {', '.join(duplicates)}")

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route served, in matching order."""
        return self._routes

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        """Answer ``request`` with its route's handler, or a 404/405 problem."""
        segments = request.path.split("/")[1:]
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            method = request.method
            if method == "HEAD" and "GET" in route.methods:
                method = "GET"
            handler = route.methods.get(method)
            if handler is None:
                return error_response(
                    405,
                    f"{request.method} is not allowed on {request.path}",
                    headers={"Allow": route.allow},
                )
            return await handler(request, params)
        return error_response(404, f"no route for {request.path}", code="not_found")


def _is_parameter(segment: str) -> bool:
    return len(segment) > 2 and segment.startswith("{") and segment.endswith("}")
