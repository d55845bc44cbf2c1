"""Tests for chime_actors.api.attachment_routes, through routes.make_handler, over a
MemoryStore (the attachment store's fake) and a small backend of our own."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

from chime_actors.api.attachment_routes import (
    check_content_type,
    check_filename,
    content_disposition,
)
from chime_actors.api.http_server import HttpError, HttpRequest, HttpResponse
from chime_actors.api.presence_routes import Caller
from chime_actors.api.routes import make_handler, streams_body
from chime_actors.api.upload_budget import UploadBudget
from chime_actors.auth import Identity
from chime_actors.errors import ProtocolError, StoreUnavailable
from chime_actors.ids import format_message_id, is_attachment_id, new_attachment_id
from chime_actors.records import ChimeMessage
from chime_actors.storage import MemoryStore
from chime_actors.storage.attachments import CHUNK_BYTES, StoredAttachment
from tests.support.clock import FakeClock


class FailingStore(MemoryStore):
    """A MemoryStore whose chunk writes fail after ``ok_chunks`` of them."""

    def __init__(self, ok_chunks: int) -> None:
        super().__init__()
        self.ok_chunks = ok_chunks

    async def save_attachment_chunk(self, attachment_id: str, index: int, data: bytes) -> None:
        if index >= self.ok_chunks:
            raise StoreUnavailable("disk on fire at /var/lib/chime")
        await super().save_attachment_chunk(attachment_id, index, data)


class StubLog(MemoryStore):
    """A MemoryStore that keeps each stub written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stubs: list[StoredAttachment] = []

    async def begin_attachment(self, stub: StoredAttachment) -> None:
        self.stubs.append(stub)
        await super().begin_attachment(stub)


@dataclass
class Backend:
    """``AttachmentBackend``: a store, a limit, and callers named by headers.

    ``x-user`` names the user (absent: none, as insecure mode without
    ``X-Chime-User``); ``x-channels`` (comma-separated) what the token grants;
    ``x-deny`` makes the credentials invalid.
    """

    store: MemoryStore = field(default_factory=MemoryStore)
    max_attachment_bytes: int = 3 * CHUNK_BYTES
    upload_restamp_s: float | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    upload_budget: UploadBudget = field(init=False)

    def __post_init__(self) -> None:
        self.upload_budget = UploadBudget(0, self.clock)  # no limit unless a test sets one

    @property
    def attachments(self) -> MemoryStore:
        return self.store

    def caller(self, headers: Mapping[str, str]) -> Caller:
        if "x-deny" in headers:
            raise ProtocolError("unauthorized", "request not authorized: no Bearer token")
        user = headers.get("x-user")
        channels = headers.get("x-channels")
        grants = None if channels is None else frozenset(channels.split(","))
        return Caller(user, Identity(user or "", grants))


def handle(backend: Backend, request: HttpRequest) -> HttpResponse:
    handler = make_handler(backend)  # type: ignore[arg-type]  # only what these routes use
    return asyncio.run(handler(request))


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def must_not_be_read() -> AsyncGenerator[bytes, None]:
    raise AssertionError("the body was read")
    yield b""  # pragma: no cover - makes this an async generator


async def breaks_after(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data
    raise HttpError(400, "the request body could not be read")


def upload_request(
    body: AsyncGenerator[bytes, None],
    *,
    filename: str | None = "f.txt",
    headers: Mapping[str, str] | None = None,
) -> HttpRequest:
    query = {} if filename is None else {"filename": filename}
    sent = {"x-user": "alice", "content-type": "text/plain", **(headers or {})}
    return HttpRequest("POST", "/v1/attachments", query=query, headers=sent, body_stream=body)


def error_of(response: HttpResponse) -> tuple[int, str]:
    return response.status, orjson.loads(response.body)["code"]


def read(response: HttpResponse) -> bytes:
    assert response.stream is not None

    async def main() -> bytes:
        assert response.stream is not None
        return b"".join([chunk async for chunk in response.stream])

    return asyncio.run(main())


def uploaded(backend: Backend, data: bytes, user: str = "alice") -> dict[str, Any]:
    response = handle(backend, upload_request(pieces(data), headers={"x-user": user}))
    assert response.status == 201, response.body
    body: dict[str, Any] = orjson.loads(response.body)
    return body


def download(backend: Backend, attachment_id: str, **headers: str) -> HttpResponse:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    return handle(backend, HttpRequest("GET", f"/v1/attachments/{attachment_id}", headers=sent))


def list_in(backend: Backend, channel: str, attachment_id: str, seq: int = 1) -> None:
    """Store a message of ``channel`` listing the file (as a persister would)."""
    (found,) = asyncio.run(_records(backend.store, [attachment_id])).values()
    message = ChimeMessage(
        channel, format_message_id(seq), found.owner, "x", "t", attachments=(found.ref,)
    )

    async def main() -> None:
        await backend.store.append([message])

    asyncio.run(main())


async def _records(store: MemoryStore, ids: Sequence[str]) -> Mapping[str, Any]:
    return await store.get_attachments(ids)


@pytest.fixture
def backend() -> Backend:
    store = Backend().store
    asyncio.run(store.open())
    return Backend(store)


# --- the pure checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a.txt", "résumé 2026.pdf", "..hidden", "a..b", "名前.png", "x" * 255, "a'b\"c;d"]
)
def test_plain_names_are_kept_as_given(name: str) -> None:
    assert check_filename(name) == name


@pytest.mark.parametrize(
    "name",
    [
        None,
        "",
        "  ",
        "a/b",
        "a\\b",
        ".",
        "..",
        "a\x00b",
        "a\nb",
        "a\x7f",
        "a\u202egpj.exe",
        "a\u2028b",
        "a\x85b",
        "x" * 256,
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "slash",
        "backslash",
        "dot",
        "dotdot",
        "nul",
        "newline",
        "del",
        "bidi-override",
        "line-separator",
        "c1-control",
        "too-long",
    ],
)
def test_unsafe_names_are_bad_request(name: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        check_filename(name)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (None, "application/octet-stream"),
        ("", "application/octet-stream"),
        ("Text/HTML", "text/html"),
        ("text/plain; charset=UTF-8", "text/plain; charset=UTF-8"),
        ('multipart/x; boundary="a b"', 'multipart/x; boundary="a b"'),
        ("image/svg+xml", "image/svg+xml"),
    ],
)
def test_content_types_are_normalised(raw: str | None, kept: str) -> None:
    assert check_content_type(raw) == kept


@pytest.mark.parametrize(
    "raw",
    ["text", "text/", "/plain", "te xt/plain", "text/plain;", "text/plain; a", "a/" + "b" * 300],
)
def test_malformed_content_types_are_bad_request(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_content_type(raw)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    "name", ["plain.txt", 'q"uote.txt', "semi;colon.txt", "back\\slash", "ünï 名.txt", "a%20b"]
)
def test_content_disposition_names_the_file_and_cannot_be_broken_out_of(name: str) -> None:
    value = content_disposition(name)
    HttpResponse(200, headers={"Content-Disposition": value})  # no CR/LF: a valid header
    assert value.startswith('attachment; filename="')
    fallback, _, extended = value.removeprefix('attachment; filename="').partition('"; ')
    assert fallback.isascii() and not set(fallback) & set('"\\;')
    assert extended.startswith("filename*=UTF-8''")
    assert unquote(extended.removeprefix("filename*=UTF-8''")) == name


def test_attachment_ids_are_random_and_well_formed() -> None:
    first, second = new_attachment_id(), new_attachment_id()
    assert first != second and is_attachment_id(first) and is_attachment_id(second)
    for bad in ("", "A" * 32, "a" * 31, "g" * 32, "../" + "a" * 29, 42, None):
        assert not is_attachment_id(bad)


def test_only_uploads_are_streamed() -> None:
    assert streams_body("POST", "/v1/attachments")
    assert not streams_body("GET", "/v1/attachments")
    assert not streams_body("POST", "/v1/attachments/x")
    assert not streams_body("POST", "/v1/channels/a/messages")


# --- upload ---------------------------------------------------------------------------


def test_upload_stores_the_body_in_chunks_and_answers_its_record(backend: Backend) -> None:
    data = bytes(range(256)) * (CHUNK_BYTES // 128)  # two chunks exactly
    response = handle(backend, upload_request(pieces(data, 1000), filename="b.bin"))
    assert response.status == 201
    body = orjson.loads(response.body)
    assert body == {
        "attachmentId": body["attachmentId"],
        "filename": "b.bin",
        "contentType": "text/plain",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert response.headers["Location"] == f"/v1/attachments/{body['attachmentId']}"
    assert backend.store.chunk_count() == 2


def test_an_upload_needs_a_user(backend: Backend) -> None:
    no_user = HttpRequest(
        "POST", "/v1/attachments", query={"filename": "f"}, body_stream=must_not_be_read()
    )
    assert error_of(handle(backend, no_user)) == (401, "unauthorized")
    bad_token = upload_request(must_not_be_read(), headers={"x-deny": "1"})
    response = handle(backend, bad_token)
    assert error_of(response) == (401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_too_large_by_content_length_is_refused_without_reading(backend: Backend) -> None:
    request = upload_request(
        must_not_be_read(), headers={"content-length": str(3 * CHUNK_BYTES + 1)}
    )
    assert error_of(handle(backend, request)) == (413, "too_large")


def test_a_body_growing_past_the_limit_is_refused_and_what_it_stored_discarded(
    backend: Backend,
) -> None:
    backend.max_attachment_bytes = CHUNK_BYTES + 10
    response = handle(backend, upload_request(pieces(b"z" * (2 * CHUNK_BYTES))))
    assert error_of(response) == (413, "too_large")
    assert backend.store.chunk_count() == 0
    # The limit itself is allowed.
    assert uploaded(backend, b"z" * (CHUNK_BYTES + 10))["size"] == CHUNK_BYTES + 10


def test_an_empty_body_is_bad_request(backend: Backend) -> None:
    assert error_of(handle(backend, upload_request(pieces(b"")))) == (400, "bad_request")
    declared_empty = upload_request(must_not_be_read(), headers={"content-length": "0"})
    assert error_of(handle(backend, declared_empty)) == (400, "bad_request")


def test_bad_filename_or_content_type_is_bad_request(backend: Backend) -> None:
    for request in (
        upload_request(must_not_be_read(), filename=None),
        upload_request(must_not_be_read(), filename="../x"),
        upload_request(must_not_be_read(), headers={"content-type": "nonsense"}),
    ):
        assert error_of(handle(backend, request)) == (400, "bad_request")


def records(backend: Backend) -> tuple[object, ...]:
    """Every record the store holds, stubs of uploads in progress included."""
    return asyncio.run(backend.store.scan_attachments(None, 1000))[0]


def test_a_broken_body_discards_what_was_stored(backend: Backend) -> None:
    with pytest.raises(HttpError):
        handle(backend, upload_request(breaks_after(b"q" * (CHUNK_BYTES + 5))))
    assert backend.store.chunk_count() == 0
    assert records(backend) == ()  # nor is the upload's stub left behind


def test_an_upload_leaves_its_record_only_not_its_stub(backend: Backend) -> None:
    assert handle(backend, upload_request(pieces(b"done"))).status == 201
    assert error_of(handle(backend, upload_request(pieces(b"")))) == (400, "bad_request")
    (kept,) = records(backend)
    assert isinstance(kept, StoredAttachment) and not kept.in_progress


@pytest.mark.parametrize(("restamp_s", "stubs"), [(None, 1), (0.0, 5)])
def test_an_upload_rewrites_its_stub_while_its_body_arrives(
    restamp_s: float | None, stubs: int
) -> None:
    # restamp_s 0: at every piece of the body (4 here), after the first stub.
    store = StubLog()
    asyncio.run(store.open())
    backend = Backend(store, upload_restamp_s=restamp_s)
    response = handle(backend, upload_request(pieces(b"s" * 4 * 1024, size=1024)))
    assert response.status == 201
    assert len(store.stubs) == stubs
    assert len({stub.attachment_id for stub in store.stubs}) == 1
    assert all(stub.in_progress for stub in store.stubs)
    (kept,) = records(backend)  # the finished record, not the last stub
    assert not kept.in_progress and kept.size == 4 * 1024


def test_storage_failing_mid_upload_is_503_and_discards_the_rest() -> None:
    store = FailingStore(ok_chunks=1)
    asyncio.run(store.open())
    backend = Backend(store)
    response = handle(backend, upload_request(pieces(b"w" * (2 * CHUNK_BYTES + 1))))
    assert error_of(response) == (503, "unavailable")
    assert b"/var/lib" not in response.body  # the store's words stay in the log
    assert store.chunk_count() == 0


def test_an_upload_over_the_users_hourly_budget_is_429_before_its_body_is_read(
    backend: Backend,
) -> None:
    backend.upload_budget = UploadBudget(3 * CHUNK_BYTES, backend.clock)  # 3 MiB an hour
    sized = {"content-length": str(CHUNK_BYTES)}
    for _ in range(3):
        request = upload_request(pieces(b"m" * CHUNK_BYTES), headers=sized)
        assert handle(backend, request).status == 201
    response = handle(backend, upload_request(must_not_be_read(), headers=sized))
    assert error_of(response) == (429, "rate_limited")
    # A refill of 1 MiB takes 20 minutes at 3 MiB an hour.
    assert orjson.loads(response.body)["retryAfterMs"] == 1_200_000
    assert response.headers["Retry-After"] == "1200"
    # Another user has a budget of their own.
    bob = upload_request(pieces(b"b" * 10), headers={"x-user": "bob"})
    assert handle(backend, bob).status == 201
    # Twenty minutes later alice may upload a MiB again.
    backend.clock.now += 1200
    request = upload_request(pieces(b"m" * CHUNK_BYTES), headers=sized)
    assert handle(backend, request).status == 201


def test_a_body_without_length_reserves_the_limit_and_is_charged_what_it_stored(
    backend: Backend,
) -> None:
    backend.upload_budget = UploadBudget(4 * CHUNK_BYTES, backend.clock)
    # max_attachment_bytes is 3 MiB: a chunked upload starts only with 3 MiB free.
    assert handle(backend, upload_request(pieces(b"s" * 100))).status == 201
    assert handle(backend, upload_request(pieces(b"s" * 100))).status == 201
    # Refused uploads cost nothing: too large, and broken off half-way.
    too_large = upload_request(pieces(b"z" * (3 * CHUNK_BYTES + 1)))
    assert error_of(handle(backend, too_large)) == (413, "too_large")
    with pytest.raises(HttpError):
        handle(backend, upload_request(breaks_after(b"q" * (CHUNK_BYTES + 5))))
    # 200 bytes charged, 4 MiB - 200 left: a 1 MiB upload leaves 3 MiB - 200,
    sized = {"content-length": str(CHUNK_BYTES)}
    request = upload_request(pieces(b"k" * CHUNK_BYTES), headers=sized)
    assert handle(backend, request).status == 201
    # which is 200 bytes short of what one without a length reserves.
    response = handle(backend, upload_request(must_not_be_read()))
    assert error_of(response) == (429, "rate_limited")
    refill_ms = 200 / (4 * CHUNK_BYTES / 3600) * 1000
    assert orjson.loads(response.body)["retryAfterMs"] == math.ceil(refill_ms)


def test_uploads_are_post_only(backend: Backend) -> None:
    response = handle(backend, HttpRequest("PUT", "/v1/attachments", headers={"x-user": "a"}))
    assert response.status == 405 and response.headers["Allow"] == "POST"
    response = handle(backend, HttpRequest("DELETE", f"/v1/attachments/{'a' * 32}"))
    assert response.status == 405


# --- download -------------------------------------------------------------------------


def test_the_uploader_downloads_the_bytes_as_an_attachment(backend: Backend) -> None:
    data = b"<script>alert(1)</script>" * 100_000  # more than a chunk
    response = handle(
        backend,
        upload_request(pieces(data), filename="x.html", headers={"content-type": "text/html"}),
    )
    attachment_id = orjson.loads(response.body)["attachmentId"]
    got = download(backend, attachment_id, x_user="alice")
    assert got.status == 200
    assert got.content_type == "text/html"
    assert got.stream_size == len(data)
    assert got.headers["Content-Disposition"].startswith("attachment;")
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in got.headers["Content-Security-Policy"]
    assert read(got) == data


def test_others_get_it_only_through_a_granted_channel_listing_it(backend: Backend) -> None:
    attachment_id = uploaded(backend, b"secret")["attachmentId"]
    unknown = download(backend, new_attachment_id(), x_user="bob")
    assert error_of(unknown) == (404, "not_found")
    # Not listed anywhere: not even a token granting every channel reads it.
    assert download(backend, attachment_id, x_user="bob").body == unknown.body
    list_in(backend, "team-a", attachment_id)
    assert download(backend, attachment_id, x_user="bob", x_channels="team-b").body == unknown.body
    granted = download(backend, attachment_id, x_user="bob", x_channels="team-*")
    assert granted.status == 200 and read(granted) == b"secret"
    # Insecure mode without X-Chime-User: every channel is readable, so is the file.
    assert download(backend, attachment_id).status == 200


@pytest.mark.parametrize(
    "raw_id", ["abc", "..%2F..%2Fetc%2Fpasswd", "%00", "A" * 32, "%" * 40, "a" * 3000]
)
def test_malformed_ids_are_not_found(backend: Backend, raw_id: str) -> None:
    assert error_of(download(backend, raw_id, x_user="alice")) == (404, "not_found")


def test_a_download_needs_valid_credentials(backend: Backend) -> None:
    attachment_id = uploaded(backend, b"x")["attachmentId"]
    assert error_of(download(backend, attachment_id, x_deny="1")) == (401, "unauthorized")
