"""Chime's HTTP API: aiohttp behind a small request/response interface, and the routes.

``http_server`` adapts aiohttp and knows nothing about Chime; ``routes`` knows
Chime's endpoints and reaches the rest of the system only through an ``ApiBackend``.
"""

from chime_actors.api.http_server import (
    HttpError,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    HttpServer,
    error_response,
    json_response,
    text_response,
)
from chime_actors.api.routes import ApiBackend, Readiness, make_handler

__all__ = [
    "ApiBackend",
    "HttpError",
    "HttpHandler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Readiness",
    "error_response",
    "json_response",
    "make_handler",
    "text_response",
]
