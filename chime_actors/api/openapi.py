"""``GET /openapi.json``: the OpenAPI 3.1 description of every route the API serves.

The document is built here (paths and responses) and in ``openapi_schemas``
(the JSON Schemas), from the limits of the modules that enforce them, and
carries the server's version (``info.version``). It is built once and served as
the same bytes every time.

Adding a route: its :class:`~chime_actors.api.router.Route` goes into the table
(``routes.api_routes``) and its operations into :func:`paths` here, one
:func:`operation` per method with its parameters, request body and responses
(:func:`problems` names the error statuses it answers, each a shared
problem+json response). ``tests/unit/test_openapi.py`` fails while the table
and the document disagree, and ``tests/e2e/test_openapi_live.py`` while an
operation is not called against a live server.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from chime_actors import __version__
from chime_actors.api.attachment_routes import MAX_FILENAME_CHARS, UPLOAD_PATH
from chime_actors.api.http_server import PROBLEM_CONTENT_TYPE
from chime_actors.api.openapi_schemas import (
    ATTACHMENT_ID_PATTERN,
    CHANNEL_ID_PATTERN,
    MESSAGE_ID_PATTERN,
    Schema,
    ref,
    schemas,
)
from chime_actors.protocol.frames import DEFAULT_LIMITS

__all__ = [
    "OPENAPI_VERSION",
    "PATH",
    "PUBLIC",
    "READER",
    "WRITER",
    "build",
    "document",
    "document_bytes",
    "empty",
    "json_body",
    "operation",
    "param",
    "paths",
    "problems",
]

PATH = "/openapi.json"
OPENAPI_VERSION = "3.1.0"

# Who may call an operation: nobody needs to say (probes), a reader (in insecure
# mode anyone), a writer (a user is required in both modes).
PUBLIC: list[dict[str, list[str]]] = []
READER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"chimeUser": []}, {}]
WRITER: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"chimeUser": []}]

_DESCRIPTION = """\
Everything of Chime that is not real-time, over HTTP, under the same rules and error
codes as the WebSocket (docs/protocol.md, "HTTP API"). What is done here reaches WebSocket
subscribers exactly as if it had been done over a WebSocket.

* **Who you are**: with `auth.mode: jwt` a Bearer token (its `sub` is the user, its
  `channels` claim the channels granted); with `auth.mode: insecure` the
  `X-Chime-User` header names the user (required for writes, and for read markers
  and unread counts).
* **Errors** are RFC 9457 problems (`application/problem+json`) with docs/protocol.md's
  `code`. That includes the HTTP layer's own: 404 for a path that is no route,
  405 (with `Allow`) for a method a route does not take, 413 for a body over 64 KiB
  (an upload: over `attachments.max_bytes`).
* `HEAD` is accepted wherever `GET` is. Query parameters with an empty value count
  as absent; unknown ones are ignored. Path parameters are percent-decoded one
  segment at a time (an encoded `/` stays inside its segment).
"""


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Any],
    *,
    security: list[dict[str, list[str]]],
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """One operation object.

    Args:
        operation_id: unique across the document.
        summary: one line.
        tag: its group (``messages``, ``presence``, ``operations``, ``web``).
        responses: status -> response object (with :func:`problems` for errors).
        security: :data:`PUBLIC`, :data:`READER` or :data:`WRITER`.
        parameters: parameter objects, or references to shared ones (:func:`param`).
        body: the name of the JSON request body's schema, if it takes one.
        description: more than the summary says.
    """
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": security,
    }
    if description is not None:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    op["responses"] = {**responses, "default": _response_ref("Problem")}
    return op


def problems(*statuses: int) -> dict[str, Any]:
    """The shared problem+json responses for ``statuses`` (each in :data:`_PROBLEMS`)."""
    return {str(status): _response_ref(_PROBLEMS[status][0]) for status in statuses}


def param(name: str) -> dict[str, str]:
    """A ``$ref`` to ``components.parameters[name]``."""
    return {"$ref": f"#/components/parameters/{name}"}


def json_body(description: str, schema: str) -> dict[str, Any]:
    """A response whose body is the JSON of ``components.schemas[schema]``."""
    return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}


def empty(description: str) -> dict[str, Any]:
    """A response without a body (204, 304)."""
    return {"description": description}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


# status -> (response name, description, extra headers, schema name)
_PROBLEMS: dict[int, tuple[str, str, tuple[str, ...], str]] = {
    400: (
        "BadRequest",
        "`bad_request`: a bad channel id, message id, cursor, limit, emoji, filename or body.",
        (),
        "Problem",
    ),
    401: (
        "Unauthorized",
        "`unauthorized`: jwt mode, no valid Bearer token; insecure mode, no valid "
        "`X-Chime-User` where a user is needed.",
        ("WWW-Authenticate",),
        "Problem",
    ),
    403: (
        "Forbidden",
        "`forbidden`: the token does not grant the channel, or the message is another's.",
        (),
        "Problem",
    ),
    404: ("NotFound", "`not_found`: no such message (or file).", (), "Problem"),
    413: (
        "TooLarge",
        "`too_large`: content over `chat.max_content_chars`, a body over 64 KiB, or an "
        "upload over `attachments.max_bytes`.",
        (),
        "Problem",
    ),
    429: (
        "RateLimited",
        "`rate_limited`: over `limits.messages_per_10s` (or, for an upload, "
        "`limits.upload_bytes_per_hour`) for this user.",
        ("Retry-After",),
        "RateLimitedProblem",
    ),
    503: (
        "Unavailable",
        "`unavailable`: storage (or, for presence, every gateway) did not answer; "
        "nothing was done.",
        ("Retry-After",),
        "Problem",
    ),
}

_HEADERS: dict[str, dict[str, Any]] = {
    "WWW-Authenticate": {
        "description": "`Bearer`.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    },
    "ETag": {"description": "Revalidate with `If-None-Match`.", "schema": {"type": "string"}},
}


def _problem_response(description: str, headers: tuple[str, ...], schema: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": ref(schema)}},
    }
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in headers}
    return response


def _responses() -> dict[str, Any]:
    responses = {
        name: _problem_response(description, headers, schema)
        for name, description, headers, schema in _PROBLEMS.values()
    }
    responses["Problem"] = _problem_response(
        "Any other error: `internal` (500, with a `correlationId`), `too_large` (413) "
        "for a body over 64 KiB, ...",
        (),
        "Problem",
    )
    return responses


def _path_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def _cursor(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "description": f"{description} An empty value counts as absent.",
        "schema": {"type": "string", "pattern": f"^({MESSAGE_ID_PATTERN[1:-1]})?$"},
    }


def _parameters() -> dict[str, Any]:
    return {
        "channelId": _path_param(
            "channelId",
            {"type": "string", "pattern": CHANNEL_ID_PATTERN},
            "The channel (percent-encoded; an encoded `/` makes it invalid).",
        ),
        "messageId": _path_param(
            "messageId", {"type": "string", "pattern": MESSAGE_ID_PATTERN}, "The message."
        ),
        "emoji": _path_param(
            "emoji", ref("Emoji"), "The reaction, one percent-encoded segment (👍: `%F0%9F%91%8D`)."
        ),
        "before": _cursor("before", "Only messages older than this id."),
        "after": _cursor("after", "Only messages newer than this id."),
        "threadId": _cursor("threadId", "Only the thread of this root (the root included)."),
        "limit": {
            "name": "limit",
            "in": "query",
            "description": "How many messages at most. An empty value counts as absent.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": DEFAULT_LIMITS.history_max_limit,
                "default": DEFAULT_LIMITS.history_default_limit,
            },
        },
        "channels": {
            "name": "channels",
            "in": "query",
            "required": True,
            "description": (
                "Comma-separated channel ids, at most `chat.max_channels_per_connection` (128)."
            ),
            "schema": {"type": "string", "minLength": 1},
            "example": "general,random",
        },
        "name": _path_param("name", {"type": "string"}, "A file of the page."),
        "attachmentId": _path_param(
            "attachmentId",
            {"type": "string"},
            f"The file (a malformed id is 404, like an unknown one): `{ATTACHMENT_ID_PATTERN}`.",
        ),
        "filename": {
            "name": "filename",
            "in": "query",
            "required": True,
            "description": (
                "The file's name, kept for the download: not blank, no `/` or `\\`, "
                "not `.` or `..`, no control or formatting characters."
            ),
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_FILENAME_CHARS},
            "example": "report 2026.pdf",
        },
    }


def _security_schemes() -> dict[str, Any]:
    return {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": (
                "`auth.mode: jwt`: a token the server verifies (`auth.jwt.*`); its "
                "`sub` is the user, its `channels` claim the channels granted."
            ),
        },
        "chimeUser": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Chime-User",
            "description": (
                "`auth.mode: insecure` only (bound to loopback): names the user, "
                "1-64 of `A-Z a-z 0-9 _ . @ : -`."
            ),
        },
    }


def paths() -> dict[str, dict[str, Any]]:
    """``paths`` of the document: one entry per route of ``routes.api_routes``."""
    channel, message = param("channelId"), param("messageId")
    change_errors = problems(400, 401, 403, 404, 429, 503)
    return {
        # --- operations ---------------------------------------------------------------
        "/healthz": {
            "get": operation(
                "getHealth",
                "Liveness: 200 while the API process runs.",
                "operations",
                {"200": json_body("The process runs.", "Health")},
                security=PUBLIC,
            )
        },
        "/readyz": {
            "get": operation(
                "getReadiness",
                "Readiness: storage answers and every actor reported within 3 s.",
                "operations",
                {
                    "200": json_body("Ready.", "Readiness"),
                    "503": json_body("Not ready; `checks` says why.", "Readiness"),
                },
                security=PUBLIC,
            )
        },
        "/metrics": {
            "get": operation(
                "getMetrics",
                "Prometheus metrics of every process.",
                "operations",
                {
                    "200": {
                        "description": "Prometheus text format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                security=PUBLIC,
            )
        },
        PATH: {
            "get": operation(
                "getOpenApi",
                "This document.",
                "operations",
                {
                    "200": {
                        "description": "OpenAPI 3.1; `info.version` is the server's.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
                security=PUBLIC,
            )
        },
        # --- messages -----------------------------------------------------------------
        "/v1/channels/{channelId}/messages": {
            "parameters": [channel],
            "get": operation(
                "getHistory",
                "One page of the channel's history, oldest first.",
                "messages",
                {
                    "200": json_body("The page.", "HistoryPage"),
                    **problems(400, 401, 403, 503),
                },
                security=READER,
                parameters=[param("before"), param("after"), param("limit"), param("threadId")],
                description=(
                    "With neither cursor: the newest `limit`. With both: the oldest `limit` "
                    "strictly between. Deleted messages are not returned."
                ),
            ),
            "post": operation(
                "sendMessage",
                "Send a message; answered once it is stored.",
                "messages",
                {
                    "201": json_body("Stored, and delivered to subscribers.", "ChimeMessage"),
                    "200": json_body(
                        "A repeat of a `clientMsgId` within 10 minutes: nothing stored.",
                        "DuplicateSend",
                    ),
                    **problems(400, 401, 403, 413, 429, 503),
                },
                security=WRITER,
                body="SendRequest",
            ),
        },
        "/v1/channels/{channelId}/messages/{messageId}": {
            "parameters": [channel, message],
            "patch": operation(
                "editMessage",
                "Edit your message (author only).",
                "messages",
                {
                    "200": json_body("The message as edited.", "ChimeMessage"),
                    **problems(400, 401, 403, 404, 413, 429, 503),
                },
                security=WRITER,
                body="EditRequest",
            ),
            "delete": operation(
                "deleteMessage",
                "Delete your message (author only).",
                "messages",
                {"204": empty("Deleted."), **change_errors},
                security=WRITER,
            ),
        },
        "/v1/channels/{channelId}/messages/{messageId}/reactions/{emoji}": {
            "parameters": [channel, message, param("emoji")],
            "put": operation(
                "addReaction",
                "Add your reaction (a reaction already there changes nothing).",
                "messages",
                {"204": empty("Added."), **change_errors},
                security=WRITER,
            ),
            "delete": operation(
                "removeReaction",
                "Remove your reaction (one not there changes nothing).",
                "messages",
                {"204": empty("Removed."), **change_errors},
                security=WRITER,
            ),
        },
        # --- presence and read markers ------------------------------------------------
        "/v1/channels/{channelId}/presence": {
            "parameters": [channel],
            "get": operation(
                "getPresence",
                "Who has a WebSocket connection in the channel.",
                "presence",
                {"200": json_body("Online users.", "Presence"), **problems(400, 401, 403, 503)},
                security=READER,
            ),
        },
        "/v1/channels/{channelId}/read": {
            "parameters": [channel],
            "post": operation(
                "markRead",
                "Move your read marker (it never moves back).",
                "presence",
                {
                    "204": empty("Stored."),
                    **problems(400, 401, 403),
                    "404": {
                        **_response_ref("NotFound"),
                        "description": "`not_found`: past the channel's newest message.",
                    },
                    **problems(413, 503),
                },
                security=WRITER,
                body="ReadRequest",
            ),
        },
        "/v1/me/unread": {
            "get": operation(
                "getUnread",
                "Your unread counts in the channels named.",
                "presence",
                {
                    "200": json_body("Counts per channel.", "UnreadCounts"),
                    **problems(400, 401, 403, 503),
                },
                security=WRITER,
                parameters=[param("channels")],
            ),
        },
        # --- attachments --------------------------------------------------------------
        UPLOAD_PATH: {
            "post": {
                **operation(
                    "uploadAttachment",
                    "Upload a file, to list in sends.",
                    "attachments",
                    {
                        "201": {
                            **json_body("Stored: the file's record.", "Attachment"),
                            "headers": {
                                "Location": {
                                    "description": "`/v1/attachments/{attachmentId}`.",
                                    "required": True,
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **problems(400, 401, 413, 429, 503),
                    },
                    security=WRITER,
                    parameters=[param("filename")],
                    description=(
                        "The file is the raw request body (not a form), with its "
                        "`Content-Type` (default `application/octet-stream`). At most "
                        "`attachments.max_bytes` (10 MiB): a larger `Content-Length` is "
                        "refused before the body is read (and `Expect: 100-continue` "
                        "gets the 413 instead of `100 Continue`), a chunked body as soon "
                        "as it grows past it. An empty body is 400. A user may upload "
                        "`limits.upload_bytes_per_hour` (100 MiB) per hour: past it, 429 "
                        "with `Retry-After` (an upload without `Content-Length` counts "
                        "as `attachments.max_bytes` until it ends). A file no live message "
                        "lists can be sent for `attachments.unsent_ttl_s` (24 h), then is "
                        "deleted."
                    ),
                ),
                "requestBody": {
                    "required": True,
                    "description": "The file's bytes.",
                    "content": {"*/*": {}},
                },
            },
        },
        f"{UPLOAD_PATH}/{{attachmentId}}": {
            "parameters": [param("attachmentId")],
            "get": operation(
                "downloadAttachment",
                "Download a file, always as an attachment.",
                "attachments",
                {
                    "200": {
                        "description": (
                            "The bytes, with the stored `Content-Type` and a "
                            "`Content-Length`; cut short (the connection closed) only if "
                            "storage fails midway."
                        ),
                        "headers": {
                            "Content-Disposition": {
                                "description": (
                                    "`attachment; filename=\"...\"; filename*=UTF-8''...`"
                                ),
                                "required": True,
                                "schema": {"type": "string"},
                            },
                            "X-Content-Type-Options": {
                                "description": "`nosniff`.",
                                "required": True,
                                "schema": {"const": "nosniff"},
                            },
                        },
                        "content": {"*/*": {}},
                    },
                    **problems(401),
                    "404": {
                        **_response_ref("NotFound"),
                        "description": (
                            "`not_found`: no such file, a malformed id, or one you may not "
                            "read (neither yours nor listed by a live message of a channel "
                            "you are granted): the same answer for all three."
                        ),
                    },
                    **problems(503),
                },
                security=READER,
            ),
        },
        # --- the web page -------------------------------------------------------------
        "/": {
            "get": operation(
                "getWebPage",
                "The built-in web chat page.",
                "web",
                _web_file_responses({"text/html": {"schema": {"type": "string"}}}),
                security=PUBLIC,
            )
        },
        "/static/{name}": {
            "parameters": [param("name")],
            "get": operation(
                "getStaticFile",
                "A module, stylesheet or icon of the web page.",
                "web",
                _web_file_responses(
                    {
                        media: {"schema": {"type": "string"}}
                        for media in ("text/javascript", "text/css", "image/svg+xml", "image/png")
                    }
                ),
                security=PUBLIC,
            ),
        },
        "/v1/client-config": {
            "get": operation(
                "getClientConfig",
                "What the web page needs to reach the chat port.",
                "web",
                {"200": json_body("The page's settings.", "ClientConfig")},
                security=PUBLIC,
            )
        },
    }


def _web_file_responses(content: dict[str, Any]) -> dict[str, Any]:
    etag = {"ETag": {"$ref": "#/components/headers/ETag"}}
    return {
        "200": {"description": "The file.", "headers": etag, "content": content},
        "304": {"description": "Not modified (`If-None-Match`).", "headers": etag},
        **problems(404),
    }


def build(version: str = __version__) -> dict[str, Any]:
    """The whole document, for a server of ``version``."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Chime REST API",
            "version": version,
            "summary": (
                "History, sends, changes, presence, read markers and attachments of a Chime server."
            ),
            "description": _DESCRIPTION,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "messages", "description": "History, sends, edits, deletes, reactions."},
            {"name": "presence", "description": "Presence, read markers, unread counts."},
            {"name": "attachments", "description": "Files to list in messages."},
            {"name": "operations", "description": "Probes, metrics and this document."},
            {"name": "web", "description": "The built-in web chat page."},
        ],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
            "headers": _HEADERS,
            "securitySchemes": _security_schemes(),
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document of this server, serialized once."""
    return orjson.dumps(build())


def document() -> dict[str, Any]:
    """The document of this server (a fresh copy: the caller may change it)."""
    parsed: dict[str, Any] = orjson.loads(document_bytes())
    return parsed
