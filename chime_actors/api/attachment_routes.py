"""REST routes of attachments (docs/protocol.md "Attachments").

==========================================  ==============================================
``POST /v1/attachments?filename=NAME``      the file as the raw body, its ``Content-Type``
                                            (default ``application/octet-stream``): 201
                                            ``{"attachmentId", "filename", "contentType",
                                            "size", "sha256"}``
``GET /v1/attachments/{id}`` (and HEAD)     the bytes, streamed, as a download
==========================================  ==============================================

Uploads need a user (the Bearer token's ``sub``; ``X-Chime-User`` in insecure
mode). The body is streamed (``routes.streams_body``): it is hashed and cut into
1 MiB chunks that go to storage as they fill, so an upload holds at most a chunk
in memory, and it is refused with 413 as soon as it is known to be too large:
from its ``Content-Length`` before a byte is read (an ``Expect: 100-continue``
is then never answered with a ``100``), or when a chunked body grows past
``attachments.max_bytes``. What was stored of a refused or broken upload is
discarded. An empty body is 400, and so is a missing or unsafe ``filename``
(blank, longer than ``MAX_FILENAME_CHARS``, a path separator, a control or
formatting character, ``.`` or ``..``) or a malformed ``Content-Type``.

A download is served to the uploader, and to whoever is granted (the token's
``channels`` claim) a channel where a live message lists the file; to anyone
else, and for ids that are unknown or malformed, 404 in the same words, so an
id reveals nothing. Files are always served as downloads: ``Content-Disposition:
attachment`` with the name RFC 6266-encoded (an ASCII fallback and
``filename*=UTF-8''...``, so no name can end the header early or split it),
``X-Content-Type-Options: nosniff`` and a sandboxing ``Content-Security-Policy``,
so an uploaded HTML page is never rendered as the API's own.

Refusals are raised as ``ProtocolError`` (``routes`` turns them into error
responses, as for every route); storage failures as ``StoreError``.
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import AsyncGenerator, Mapping
from typing import Protocol
from urllib.parse import quote, unquote

from chime_actors.api.http_server import HttpRequest, HttpResponse, json_response
from chime_actors.api.presence_routes import Caller
from chime_actors.api.upload_budget import UploadBudget
from chime_actors.errors import ProtocolError, StoreError
from chime_actors.ids import is_attachment_id, new_attachment_id
from chime_actors.logs import get_logger
from chime_actors.protocol.codes import ErrorCode
from chime_actors.records import utc_now_iso
from chime_actors.storage.attachments import (
    CHUNK_BYTES,
    AttachmentStore,
    StoredAttachment,
    read_attachment,
    upload_stub,
)

log = get_logger(__name__)

UPLOAD_PATH = "/v1/attachments"
MAX_FILENAME_CHARS = 255
MAX_CONTENT_TYPE_CHARS = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# RFC 9110: type "/" subtype *( OWS ";" OWS parameter ), parameter values tokens or
# quoted strings (without backslash escapes: nobody needs them in a file's type).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf"(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})"
    rf"(?P<params>(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*)[ \t]*"
)
# Unicode categories a filename may not hold: controls, formatting characters
# (bidirectional overrides that disguise "gpj.exe" as "exe.jpg"), line and
# paragraph separators, surrogates.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# What the quoted ASCII fallback of Content-Disposition keeps; the rest becomes "_".
_FALLBACK_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !#$&'()+,-.=@[]^_`{}~"
)

# One answer for "no such file" and "not yours": an id reveals nothing.
_NOT_FOUND = "no such attachment"


class AttachmentBackend(Protocol):
    """What these routes need from the API process."""

    @property
    def attachments(self) -> AttachmentStore:
        """Where uploaded files are stored."""
        ...

    @property
    def max_attachment_bytes(self) -> int:
        """``attachments.max_bytes``: the largest file accepted."""
        ...

    @property
    def upload_budget(self) -> UploadBudget:
        """``limits.upload_bytes_per_hour``: what each user may still upload."""
        ...

    @property
    def upload_restamp_s(self) -> float | None:
        """How often an upload in progress renews its stub, so that the sweep of
        unsent files never takes it (``attachment_sweeper.restamp_s``); None:
        files never expire, so never."""
        ...

    def caller(self, headers: Mapping[str, str]) -> Caller:
        """Identify the request (see ``presence_routes.PresenceBackend.caller``)."""
        ...


def streams_body(method: str, path: str) -> bool:
    """True for the requests whose body is streamed to the route: uploads."""
    return method == "POST" and path == UPLOAD_PATH


async def upload(backend: AttachmentBackend, request: HttpRequest) -> HttpResponse:
    """``POST /v1/attachments``: store the body as a file, 201 with its record.

    Raises:
        ProtocolError: ``unauthorized`` (no user), ``bad_request`` (filename,
            content type, empty body, unreadable body), ``too_large``,
            ``rate_limited`` (over ``limits.upload_bytes_per_hour``).
        StoreError: storage failed; nothing of the upload is kept.
    """
    body = request.body_stream or _whole(request.body)
    try:
        caller = backend.caller(request.headers)
        if caller.user_id is None:
            raise ProtocolError(
                ErrorCode.UNAUTHORIZED, "an upload needs a user: the X-Chime-User header"
            )
        filename = check_filename(request.query.get("filename"))
        content_type = check_content_type(request.headers.get("content-type"))
        limit = backend.max_attachment_bytes
        declared = _content_length(request.headers)
        if declared is not None and declared > limit:
            # Refused before a byte of the body is read.
            raise _too_large(limit)
        if declared == 0:
            raise _bad_request("the file is empty")
        # Reserved before the body is read: a chunked one may grow to the limit.
        reserved = limit if declared is None else declared
        budget = backend.upload_budget
        wait_ms = budget.reserve(caller.user_id, reserved)
        if wait_ms is not None:
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                "over limits.upload_bytes_per_hour; try again later",
                retry_after_ms=wait_ms,
            )
        kept = 0
        try:
            stored = await _store_upload(
                backend.attachments,
                body,
                owner=caller.user_id,
                filename=filename,
                content_type=content_type,
                limit=limit,
                restamp_s=backend.upload_restamp_s,
            )
            kept = stored.size
        finally:
            budget.refund(caller.user_id, reserved - kept)
    finally:
        await body.aclose()
    log.info(
        "attachment stored",
        attachmentId=stored.attachment_id,
        userId=stored.owner,
        size=stored.size,
        chunks=stored.chunks,
    )
    record = {
        "attachmentId": stored.attachment_id,
        "filename": stored.filename,
        "contentType": stored.content_type,
        "size": stored.size,
        "sha256": stored.sha256,
    }
    location = f"{UPLOAD_PATH}/{stored.attachment_id}"
    return json_response(record, 201, headers={"Location": location})


async def download(backend: AttachmentBackend, request: HttpRequest, raw_id: str) -> HttpResponse:
    """``GET /v1/attachments/{id}``: the file, streamed from storage chunk by chunk.

    Raises:
        ProtocolError: ``unauthorized`` (no or a bad token in jwt mode),
            ``not_found`` (unknown, malformed, or not the caller's to read).
        StoreError: storage failed before the first byte was sent.
    """
    caller = backend.caller(request.headers)
    attachment_id = unquote(raw_id, errors="replace")
    if not is_attachment_id(attachment_id):
        raise ProtocolError(ErrorCode.NOT_FOUND, _NOT_FOUND)
    store = backend.attachments
    found = (await store.get_attachments([attachment_id])).get(attachment_id)
    if found is None or not await _may_read(store, caller, found):
        raise ProtocolError(ErrorCode.NOT_FOUND, _NOT_FOUND)
    headers = {
        "Content-Disposition": content_disposition(found.filename),
        "X-Content-Type-Options": "nosniff",
        # Opened in a browser tab all the same, it runs nothing and loads nothing.
        "Content-Security-Policy": "default-src 'none'; sandbox",
        # Access can end (the message is deleted): caches must ask again.
        "Cache-Control": "private, no-cache",
    }
    return HttpResponse(
        200,
        content_type=found.content_type,
        headers=headers,
        stream=read_attachment(store, found),
        stream_size=found.size,
    )


def check_filename(raw: str | None) -> str:
    """The upload's ``filename`` parameter, refused unless it is a plain, safe name.

    Raises:
        ProtocolError: ``bad_request``.
    """
    if raw is None or not raw.strip():
        raise _bad_request("the filename query parameter names the file")
    if len(raw) > MAX_FILENAME_CHARS:
        raise _bad_request(f"the filename is longer than {MAX_FILENAME_CHARS} characters")
    if "/" in raw or "\\" in raw or raw in (".", ".."):
        raise _bad_request("the filename is a name, not a path")
    if any(unicodedata.category(c) in _UNSAFE_CATEGORIES for c in raw):
        raise _bad_request("the filename may not hold control or formatting characters")
    return raw


def check_content_type(raw: str | None) -> str:
    """The upload's media type (lower-case type and subtype), or the default.

    Raises:
        ProtocolError: ``bad_request`` for a malformed or over-long one.
    """
    if raw is None or not raw.strip():
        return DEFAULT_CONTENT_TYPE
    match = _MEDIA_TYPE.fullmatch(raw.strip())
    if len(raw) > MAX_CONTENT_TYPE_CHARS or match is None:
        raise _bad_request("Content-Type must be a media type such as text/plain")
    params = match["params"].strip()
    kind = f"{match['type']}/{match['subtype']}".lower()
    return f"{kind}{params}" if params else kind


def content_disposition(filename: str) -> str:
    """``attachment`` naming ``filename`` (RFC 6266): an ASCII fallback, then UTF-8.

    Neither part can end the header's value early: the fallback keeps only safe
    ASCII (no quote, backslash or semicolon), the extended one is percent-encoded.
    """
    fallback = "".join(c if c in _FALLBACK_SAFE else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _may_read(store: AttachmentStore, caller: Caller, found: StoredAttachment) -> bool:
    if caller.user_id is not None and caller.user_id == found.owner:
        return True
    channels = await store.attachment_channels(found.attachment_id)
    return any(caller.identity.may_access(channel) for channel in channels)


async def _store_upload(
    store: AttachmentStore,
    body: AsyncGenerator[bytes, None],
    *,
    owner: str,
    filename: str,
    content_type: str,
    limit: int,
    restamp_s: float | None,
) -> StoredAttachment:
    """Hash the body and store it in ``CHUNK_BYTES`` chunks as it arrives, then its record.

    The stub written first is written again, with a new ``created_at``, every
    ``restamp_s`` while the body arrives (None: never).
    """
    attachment_id = new_attachment_id()
    digest = hashlib.sha256()
    pending = bytearray()
    size = 0
    started = 0  # chunks whose write began: what a failure must discard

    async def stamp() -> float:
        # If this process dies mid-upload, the sweeper finds the chunks through
        # the stub (storage.attachments.StoredAttachment); while it lives, the
        # stub stays young enough that no sweep takes them.
        stub = upload_stub(
            attachment_id,
            owner=owner,
            filename=filename,
            content_type=content_type,
            max_bytes=limit,
            created_at=utc_now_iso(),
        )
        await store.begin_attachment(stub)
        return time.monotonic()

    try:
        stamped = await stamp()
        async for piece in body:
            if restamp_s is not None and time.monotonic() - stamped >= restamp_s:
                stamped = await stamp()
            size += len(piece)
            if size > limit:
                raise _too_large(limit)
            digest.update(piece)
            pending += piece
            while len(pending) >= CHUNK_BYTES:
                started += 1
                await store.save_attachment_chunk(
                    attachment_id, started - 1, bytes(pending[:CHUNK_BYTES])
                )
                del pending[:CHUNK_BYTES]
        if size == 0:
            raise _bad_request("the file is empty")
        if pending:
            started += 1
            await store.save_attachment_chunk(attachment_id, started - 1, bytes(pending))
        stored = StoredAttachment(
            attachment_id=attachment_id,
            owner=owner,
            filename=filename,
            content_type=content_type,
            size=size,
            sha256=digest.hexdigest(),
            chunks=started,
            created_at=utc_now_iso(),
        )
        await store.finish_attachment(stored)
    except BaseException:
        await _discard(store, attachment_id, started)  # the chunks begun, and the stub
        raise
    return stored


async def _discard(store: AttachmentStore, attachment_id: str, chunks: int) -> None:
    """Drop what a failed upload stored; a failure here only leaves unreachable chunks."""
    try:
        await store.discard_attachment(attachment_id, chunks)
    except StoreError as exc:
        log.warning(
            "chunks of a failed upload left behind", attachmentId=attachment_id, error=str(exc)
        )


async def _whole(body: bytes) -> AsyncGenerator[bytes, None]:
    """A body that was read whole (a server that does not stream uploads), as a stream."""
    if body:
        yield body


def _content_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("content-length")
    # aiohttp refused a malformed one before any route ran; be safe anyway.
    if raw is None or not (raw.isascii() and raw.isdecimal()):
        return None
    return int(raw)


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.TOO_LARGE, f"the file is larger than attachments.max_bytes ({limit} bytes)"
    )


def _bad_request(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)
