"""Chime's HTTP API: a small asyncio HTTP/1.1 server and the routes it serves.

``http_server`` knows HTTP and nothing about Chime; ``routes`` knows Chime's
endpoints and reaches the rest of the system only through an ``ApiBackend``.
"""

from chime_actors.api.http_server import (
    HttpError,
    HttpHandler,
    HttpLimits,
    HttpRequest,
    HttpResponse,
    HttpServer,
    encode_response,
    error_response,
    json_response,
    parse_request_head,
    serve_http,
    text_response,
)
from chime_actors.api.routes import ApiBackend, Readiness, make_handler

__all__ = [
    "ApiBackend",
    "HttpError",
    "HttpHandler",
    "HttpLimits",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Readiness",
    "encode_response",
    "error_response",
    "json_response",
    "make_handler",
    "parse_request_head",
    "serve_http",
    "text_response",
]
