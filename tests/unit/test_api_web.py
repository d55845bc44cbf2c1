"""Tests for chime_actors.api.web: the page's routes, headers and shipped files."""

from __future__ import annotations

import asyncio
import configparser
import re
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pytest

from chime_actors.api.http_server import HttpRequest, HttpResponse
from chime_actors.api.routes import make_handler
from chime_actors.api.web import ClientConfig, StaticFile, WebClient, load_static_files
from tests.unit.test_api_routes import FakeBackend

CONFIG = ClientConfig(
    auth_mode="insecure", chat_port=3143, max_content_chars=4000, max_attachment_bytes=1_000_000
)
ROOT = Path(__file__).resolve().parents[2]


def get(
    target: str, method: str = "GET", host: str = "127.0.0.1:3142", **headers: str
) -> HttpResponse | None:
    fields = {"host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}
    return WebClient(CONFIG).handle(HttpRequest(method, target, headers=fields))


def must_get(target: str, method: str = "GET", **kwargs: str) -> HttpResponse:
    response = get(target, method, **kwargs)
    assert response is not None, target
    return response


def test_the_package_ships_the_page_and_its_modules() -> None:
    files = load_static_files()
    shipped = {
        "index.html",
        "app.js",
        "chime.js",
        "render.js",
        "thread.js",
        "attach.js",
        "style.css",
    }
    assert shipped | {"icon.svg"} <= set(files)
    assert files["chime.js"].content_type == "text/javascript; charset=utf-8"
    assert files["style.css"].content_type == "text/css; charset=utf-8"
    assert files["icon.svg"].content_type == "image/svg+xml"


def test_setup_cfg_installs_the_web_files_as_package_data() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    data = setup["options.package_data"]["chime_actors"]
    assert "web/*" in [item.strip() for item in data.split(",")]


def test_root_serves_the_page_with_a_strict_csp() -> None:
    response = must_get("/")
    assert response.status == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert b"<title>Chime</title>" in response.body
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    csp = dict(
        part.partition(" ")[::2] for part in response.headers["Content-Security-Policy"].split("; ")
    )
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"  # no 'unsafe-inline', no other origin
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    # Images from the origin, and the blob: URLs of attachments the page fetched.
    assert csp["img-src"] == "'self' blob:"
    # The chat port of the host the page came from, and nothing else.
    assert csp["connect-src"] == "'self' ws://127.0.0.1:3143 wss://127.0.0.1:3143"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("chat.example.com", "chat.example.com"),
        ("Chat.Example.com:8443", "chat.example.com"),
        ("[::1]:3142", "[::1]"),
        ("evil.com; script-src *", None),
        ("a b", None),
        ("", None),
        ("host:port", None),
    ],
)
def test_csp_names_only_a_plain_host_from_the_host_header(host: str, expected: str | None) -> None:
    """The Host header is the client's: only a well-formed host goes into the CSP."""
    csp = must_get("/", host=host).headers["Content-Security-Policy"]
    connect = next(p for p in csp.split("; ") if p.startswith("connect-src"))
    if expected is None:
        assert connect == "connect-src 'self'"
    else:
        assert connect == f"connect-src 'self' ws://{expected}:3143 wss://{expected}:3143"


def test_static_files_have_their_types_and_revalidate_by_etag() -> None:
    response = must_get("/static/chime.js")
    assert response.status == 200
    assert response.content_type == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
    again = must_get("/static/chime.js", if_none_match=etag)
    assert (again.status, again.body, again.headers["ETag"]) == (304, b"", etag)
    other = must_get("/static/chime.js", if_none_match='"something-else"')
    assert other.status == 200 and other.body == response.body


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/index.html",
        "/static/../api/web.py",
        "/static/%2e%2e/api/web.py",
        "/static/",
        "/static/sub/app.js",
    ],
)
def test_only_the_web_files_themselves_are_served(path: str) -> None:
    response = must_get(path)
    assert response.status == 404
    assert orjson.loads(response.body)["code"] == "not_found"


def test_writes_are_refused_with_405() -> None:
    for path in ("/", "/static/app.js", "/v1/client-config"):
        response = must_get(path, "POST")
        assert response.status == 405, path
        assert response.headers["Allow"] == "GET, HEAD"


def test_client_config_tells_the_page_how_to_reach_the_chat_port() -> None:
    response = must_get("/v1/client-config")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert orjson.loads(response.body) == {
        "authMode": "insecure",
        "chatPort": 3143,
        "chatPath": "/",
        "maxContentChars": 4000,
        "maxAttachmentBytes": 1_000_000,
    }


def test_other_paths_are_left_to_the_api_routes() -> None:
    assert get("/healthz") is None
    assert get("/v1/channels/general/messages") is None


def test_a_missing_page_is_a_404_not_a_crash() -> None:
    client = WebClient(CONFIG, files={"app.js": StaticFile.of("app.js", b"")})
    response = client.handle(HttpRequest("GET", "/", headers={"host": "h"}))
    assert response is not None and response.status == 404


def test_make_handler_serves_the_page_before_its_own_routes() -> None:
    async def scenario() -> tuple[int, int, int]:
        with_page = make_handler(FakeBackend(), WebClient(CONFIG))
        without = make_handler(FakeBackend())
        page = await with_page(HttpRequest("GET", "/", headers={"host": "h"}))
        health = await with_page(HttpRequest("GET", "/healthz"))
        none = await without(HttpRequest("GET", "/"))
        return page.status, health.status, none.status

    assert asyncio.run(scenario()) == (200, 200, 404)


class _PageChecker(HTMLParser):
    """Collects what in index.html the CSP would refuse, and what it links to."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.links: list[str] = []
        self.labels: dict[str, str] = {}
        self._label_for: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and not names.get("src"):
            self.inline.append("inline <script>")
        for name in names:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}=")
        for name in ("src", "href"):
            value = names.get(name)
            if value and value.startswith("/"):
                self.links.append(value)
        if tag == "label":
            self._label_for = names.get("for")

    def handle_data(self, data: str) -> None:
        if self._label_for is not None and data.strip():
            self.labels[self._label_for] = data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None


def test_the_page_has_nothing_inline_and_links_only_shipped_files() -> None:
    """What the CSP forbids (inline scripts, styles, handlers) is not in the page,
    every file it links is shipped, and the message box is labelled "Message"."""
    files = load_static_files()
    checker = _PageChecker()
    checker.feed(files["index.html"].body.decode())
    assert checker.inline == []
    for link in checker.links:
        assert link.startswith("/static/") and link.removeprefix("/static/") in files, link
    assert checker.labels["composer"] == "Message"  # OPERATIONS.md: the accessible name
    assert checker.labels["thread-composer"] == "Reply"
    assert {"user-input", "token-input", "channels-input", "join-input"} <= set(checker.labels)


def test_the_modules_import_only_each_other() -> None:
    """No CDN and no build step: every import of a shipped module is a shipped file."""
    files = load_static_files()
    for name, file in files.items():
        if not name.endswith(".js"):
            continue
        for target in re.findall(
            r"""^\s*import\b[^'"]*['"]([^'"]+)['"]""", file.body.decode(), re.M
        ):
            assert target.startswith("./") and target[2:] in files, (name, target)
