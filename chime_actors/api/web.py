"""The built-in web chat page: its files, its config route, its security headers.

=========================  ==========================================================
``GET /``                  the page (``chime_actors/web/index.html``)
``GET /static/{name}``     the page's modules, stylesheet and icon (the other files of
                           ``chime_actors/web/``, shipped as package data)
``GET /v1/client-config``  ``{"authMode", "chatPort", "chatPath", "maxContentChars",
                           "maxAttachmentBytes"}``: what the page needs to reach the
                           chat port, which differs from the API port it was loaded
                           from, and the limits it checks before sending
=========================  ==========================================================

There is no build step: the files are served as they are in the package. Their
names carry no content hash, so every response says ``Cache-Control: no-cache``
with an ``ETag``: a browser revalidates (a cheap 304) and never runs an old
``chime.js`` next to a new ``app.js`` after an upgrade.

The page's ``Content-Security-Policy`` allows scripts, styles and images from the
API origin only (nothing inline, nothing from elsewhere), images also from
``blob:`` URLs (the page makes them of attachments it fetched with the user's
credentials, which an ``<img src>`` of the download URL cannot send), and
WebSocket connections to the chat port of the host the page was loaded from; the
chat port's ``Origin`` check accepts that host (docs/protocol.md, "Handshake").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType

from chime_actors.api.http_server import HttpRequest, HttpResponse, error_response, json_response

__all__ = [
    "ClientConfig",
    "StaticFile",
    "WebClient",
    "load_static_files",
]

PAGE_NAME = "index.html"
STATIC_PREFIX = "/static/"
CLIENT_CONFIG_PATH = "/v1/client-config"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    # ES modules are only run when served with a JavaScript MIME type.
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# A Host header's host part that may go into the CSP: a DNS name, an IPv4 address
# or a bracketed IPv6 address. Anything else gets no WebSocket source at all.
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_READ_METHODS = ("GET", "HEAD")
# Headers every response of the page carries, whatever its type.
_COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What ``/v1/client-config`` tells the page.

    Attributes:
        auth_mode: ``insecure`` (the page asks for a user name) or ``jwt`` (a token).
        chat_port: the chat WebSocket's port; the page connects to it on the host
            it was loaded from.
        max_content_chars: the longest message the server takes.
        max_attachment_bytes: the largest file ``POST /v1/attachments`` takes
            (``attachments.max_bytes``): the page refuses a larger one itself.
        chat_path: the WebSocket path (any path works; ``/`` is the documented one).
    """

    auth_mode: str
    chat_port: int
    max_content_chars: int
    max_attachment_bytes: int
    chat_path: str = "/"

    def to_wire(self) -> dict[str, object]:
        """The JSON body of ``/v1/client-config``."""
        return {
            "authMode": self.auth_mode,
            "chatPort": self.chat_port,
            "chatPath": self.chat_path,
            "maxContentChars": self.max_content_chars,
            "maxAttachmentBytes": self.max_attachment_bytes,
        }


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One file of the page, read once at start-up.

    Attributes:
        body: the file's bytes.
        content_type: its ``Content-Type``.
        etag: a strong validator derived from the bytes.
    """

    body: bytes
    content_type: str
    etag: str

    @classmethod
    def of(cls, name: str, body: bytes) -> StaticFile:
        """A file named ``name`` (its extension picks the type) with ``body``."""
        suffix = name[name.rfind(".") :] if "." in name else ""
        content_type = _CONTENT_TYPES.get(suffix, "application/octet-stream")
        return cls(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def load_static_files() -> Mapping[str, StaticFile]:
    """Read the files of ``chime_actors/web/`` (package data) by name.

    Only the directory's own regular files are served, looked up by exact name,
    so no request path can reach anything else.
    """
    files: dict[str, StaticFile] = {}
    for entry in resources.files("chime_actors").joinpath("web").iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            files[entry.name] = StaticFile.of(entry.name, entry.read_bytes())
    return MappingProxyType(files)


class WebClient:
    """Serves the page, its static files and its config route.

    :meth:`handle` answers the requests that are the page's and returns None for
    every other path, so the API's router tries its own routes next.
    """

    def __init__(self, config: ClientConfig, files: Mapping[str, StaticFile] | None = None) -> None:
        """Serve ``files`` (default: :func:`load_static_files`) with ``config``.

        Args:
            config: what ``/v1/client-config`` answers.
            files: the page's files by name; ``index.html`` is the page itself.
        """
        self._config = config
        self._files = load_static_files() if files is None else files

    def handle(self, request: HttpRequest) -> HttpResponse | None:
        """The response for one of the page's routes, or None if the path is not one."""
        if request.path == "/":
            file = self._files.get(PAGE_NAME)
        elif request.path.startswith(STATIC_PREFIX):
            name = request.path[len(STATIC_PREFIX) :]
            file = self._files.get(name) if name != PAGE_NAME else None
            if file is None:
                return error_response(404, f"no file {request.path}", code="not_found")
        elif request.path == CLIENT_CONFIG_PATH:
            if request.method not in _READ_METHODS:
                return _method_not_allowed(request)
            return json_response(
                self._config.to_wire(), headers={"Cache-Control": "no-store", **_COMMON_HEADERS}
            )
        else:
            return None
        if request.method not in _READ_METHODS:
            return _method_not_allowed(request)
        if file is None:
            return error_response(404, "the web page is not installed", code="not_found")
        headers = {
            "Cache-Control": "no-cache",
            "ETag": file.etag,
            "Content-Security-Policy": self.content_security_policy(request),
            **_COMMON_HEADERS,
        }
        if _etag_matches(request.headers.get("if-none-match", ""), file.etag):
            return HttpResponse(304, b"", file.content_type, headers)
        return HttpResponse(200, file.body, file.content_type, headers)

    def content_security_policy(self, request: HttpRequest) -> str:
        """The page's CSP: everything from the API origin only, plus the chat socket."""
        connect = ["'self'"]
        host = _request_host(request.headers.get("host", ""))
        if host is not None:
            port = self._config.chat_port
            connect += [f"ws://{host}:{port}", f"wss://{host}:{port}"]
        return "; ".join(
            (
                "default-src 'none'",
                "script-src 'self'",
                "style-src 'self'",
                # blob: only for the attachments the page fetched itself.
                "img-src 'self' blob:",
                f"connect-src {' '.join(connect)}",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            )
        )


def _method_not_allowed(request: HttpRequest) -> HttpResponse:
    return error_response(
        405,
        f"{request.method} is not allowed on {request.path}",
        headers={"Allow": "GET, HEAD"},
    )


def _request_host(header: str) -> str | None:
    """The host part of a ``Host`` header, if it is a plain host (it goes into a header)."""
    host, port = header.strip(), ""
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":":
            host, port = host[: end + 1], host[end + 2 :]
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not _HOST.match(host) or (port and not _PORT.match(port)):
        return None
    return host.lower()


def _etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return etag in candidates or "*" in candidates
