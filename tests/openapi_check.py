"""Check real HTTP responses against ``/openapi.json`` (unit and e2e tests share it).

:class:`ApiDocument` finds the operation of a request (method and raw path, matched
against the document's path templates, independently of the server's router) and
checks a response: its status is one the operation lists, its content type one
that status has, its body valid against that schema (JSON Schema 2020-12,
OpenAPI 3.1's dialect, with formats checked), and the headers it marks required
are present. Objects are checked closed: a field the server sends that the
document does not name fails too (``additionalProperties: false`` is added to
every object schema that lists properties and says nothing else).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOC_URI = "urn:chime:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def closed(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` whose object schemas admit no unnamed properties.

    Raises:
        AssertionError: a schema composes with ``allOf`` (closing its parts would
            refuse the other parts' properties; the document builds composed
            schemas in Python instead).
    """
    strict = copy.deepcopy(document)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert "allOf" not in node, f"allOf cannot be closed: {node}"
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(strict["components"]["schemas"])
    return strict


def _media_key(media: str, content: Mapping[str, Any]) -> str | None:
    """The key of ``content`` that ``media`` falls under: itself, ``type/*`` or ``*/*``."""
    for key in (media, f"{media.split('/')[0]}/*", "*/*"):
        if key in content:
            return key
    return None


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Exchange:
    """One request and its response, as they went over the wire."""

    method: str
    path: str  # the raw path, without the query
    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes


class ApiDocument:
    """An OpenAPI document, ready to check responses against."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self._strict = closed(document)
        resource = Resource.from_contents(self._strict, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(DOC_URI, resource)

    def operations(self) -> set[tuple[str, str]]:
        """Every documented (METHOD, path template)."""
        return {
            (method.upper(), template)
            for template, item in self.document["paths"].items()
            for method in item
            if method in METHODS
        }

    def template_of(self, path: str) -> str | None:
        """The documented path template that ``path`` (raw, still encoded) matches."""
        segments = path.split("/")[1:]
        for template in self.document["paths"]:
            parts = template.split("/")[1:]
            if len(parts) == len(segments) and all(
                (p.startswith("{") and p.endswith("}")) or p == s
                for p, s in zip(parts, segments, strict=True)
            ):
                return template
        return None

    def check(self, exchange: Exchange) -> tuple[str, str]:
        """Check one exchange against its operation; returns (METHOD, template).

        ``HEAD`` is checked as the ``GET`` of its path, without a body.

        Raises:
            AssertionError: naming what does not match.
        """
        template = self.template_of(exchange.path)
        assert template is not None, f"{exchange.path} is no documented path"
        method = "get" if exchange.method == "HEAD" else exchange.method.lower()
        item = self.document["paths"][template]
        assert method in item, f"{exchange.method} {template} is not documented"
        pointer = f"/paths/{_escape(template)}/{method}/responses/{exchange.status}"
        responses = item[method]["responses"]
        assert str(exchange.status) in responses, (
            f"{exchange.method} {exchange.path}: status {exchange.status} is not listed "
            f"(listed: {sorted(responses)}); body: {exchange.body[:300]!r}"
        )
        self._check_response(exchange, pointer, head=exchange.method == "HEAD")
        return method.upper(), template

    def check_problem(self, exchange: Exchange) -> None:
        """Check a response the HTTP layer gives outside any operation (404, 405)
        against the shared ``components.responses.Problem``."""
        self._check_response(exchange, "/components/responses/Problem", head=False)

    def validate(self, schema: str, instance: Any) -> None:
        """Check ``instance`` against ``components.schemas[schema]`` (closed)."""
        self._validate(f"/components/schemas/{_escape(schema)}", instance, schema)

    def _validate(self, schema_pointer: str, instance: Any, where: str) -> None:
        validator = Draft202012Validator(
            {"$ref": f"{DOC_URI}#{schema_pointer}"},
            registry=self._registry,
            format_checker=FormatChecker(),
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: does not match its schema: " + "; ".join(
            f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]
        )

    def _check_response(self, exchange: Exchange, pointer: str, *, head: bool) -> None:
        response, pointer = self._deref(pointer)
        where = f"{exchange.method} {exchange.path} -> {exchange.status}"
        for name, header in response.get("headers", {}).items():
            header, _ = self._deref_node(header, pointer)
            if header.get("required"):
                assert name.lower() in exchange.headers, f"{where}: no {name} header"
        content = response.get("content")
        if not content:
            assert not exchange.body, f"{where}: a body where none is documented"
            return
        media = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
        key = _media_key(media, content)
        assert key is not None, f"{where}: content type {media!r}, documented {sorted(content)}"
        schema = content[key].get("schema")
        if head or schema is None:
            return
        if media == "application/json" or media.endswith("+json"):
            instance: Any = orjson.loads(exchange.body)
        elif media.startswith("text/"):
            instance = exchange.body.decode()
        else:
            return  # bytes (a file): its content type is all there is to check
        self._validate(f"{pointer}/content/{_escape(key)}/schema", instance, where)

    def _deref(self, pointer: str) -> tuple[dict[str, Any], str]:
        node: Any = self._strict
        for token in pointer.strip("/").split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
        return self._deref_node(node, pointer)

    def _deref_node(self, node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
        # Response and header objects may be $refs (to components); schemas are
        # resolved by jsonschema itself.
        while "$ref" in node:
            target = node["$ref"]
            assert target.startswith("#/"), target
            pointer = target[1:]
            node = self._strict
            for token in pointer.strip("/").split("/"):
                node = node[token.replace("~1", "/").replace("~0", "~")]
        return node, pointer
