"""``upload``: send a file to ``POST /v1/attachments`` (docs/protocol.md "Attachments").

A message lists files by id; a file gets its id by being uploaded first, over
REST to the API port (not the chat socket)::

    attachment = await upload("http://127.0.0.1:3142", "report.pdf", user_id="alice")
    await client.send("general", "the report", attachments=[attachment.attachment_id])

:meth:`ChimeClient.upload <chime_actors.client.ChimeClient.upload>` does the
same with the client's own credentials. The body is streamed: a file on disk is
read in chunks off the event loop (aiohttp reads it in a worker thread), never
whole. ``Expect: 100-continue`` lets the server refuse a file over its limit
(413) before a byte of it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
from io import BufferedReader
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import orjson

from chime_actors.client.events import Attachment
from chime_actors.errors import ClientError, ConnectionLost, RequestFailed, RequestTimeout

__all__ = ["DEFAULT_UPLOAD_TIMEOUT_S", "UploadSource", "upload"]

UploadSource = str | os.PathLike[str] | bytes
"""What ``upload`` sends: a path to a file, or the bytes themselves."""

DEFAULT_UPLOAD_TIMEOUT_S = 300.0
UPLOAD_PATH = "/v1/attachments"
DEFAULT_CONTENT_TYPE = "application/octet-stream"


async def upload(
    api_url: str,
    source: UploadSource,
    filename: str | None = None,
    content_type: str | None = None,
    *,
    user_id: str | None = None,
    token: str | None = None,
    timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
) -> Attachment:
    """Upload ``source`` as a file the user may then list in a send.

    Args:
        api_url: the API's base URL, e.g. ``http://127.0.0.1:3142``.
        source: a path (the file is streamed from disk) or the bytes.
        filename: the name kept for the download (default: the path's last part;
            required with bytes).
        content_type: its media type (default: guessed from the name, else
            ``application/octet-stream``).
        user_id: the uploader in insecure mode (``X-Chime-User``).
        token: a JWT in jwt mode (``Authorization: Bearer``).
        timeout_s: the whole upload, from connecting to the server's answer.

    Returns:
        The server's record of the file, with its ``sha256``.

    Raises:
        RequestFailed: the server refused it: ``too_large`` (over
            ``attachments.max_bytes``), ``bad_request`` (empty, a bad filename or
            type), ``unauthorized``; ``exc.message`` is the server's ``detail``.
        ConnectionLost: the connection failed before the answer (nothing is
            known to be stored: upload again).
        RequestTimeout: no answer within ``timeout_s``.
        ClientError: bytes without a ``filename``.
        OSError: the file cannot be opened.
    """
    name = filename if filename is not None else _name_of(source)
    kind = content_type or mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
    headers = {"Content-Type": kind, **_credentials(user_id, token)}
    url = f"{api_url.rstrip('/')}{UPLOAD_PATH}?{urlencode({'filename': name})}"
    async with contextlib.AsyncExitStack() as stack:
        body: bytes | BufferedReader
        if isinstance(source, bytes):
            body = source
        else:
            # aiohttp sends its size as Content-Length and reads it in a thread.
            body = await asyncio.to_thread(_open, source)
            stack.callback(body.close)
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
            async with session.post(url, data=body, headers=headers, expect100=True) as response:
                status, raw = response.status, await response.read()
        except TimeoutError:
            raise RequestTimeout(
                f"no answer to the upload of {name} within {timeout_s} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise ConnectionLost(f"the upload of {name} failed: {exc}") from exc
    return _answer(status, raw)


def _name_of(source: UploadSource) -> str:
    if isinstance(source, bytes):
        raise ClientError("an upload of bytes needs a filename")
    return Path(source).name


def _open(path: str | os.PathLike[str]) -> BufferedReader:
    # Closed by the caller (its exit stack), after the upload.
    return open(path, "rb")


def _credentials(user_id: str | None, token: str | None) -> dict[str, str]:
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    return {"X-Chime-User": user_id} if user_id is not None else {}


def _answer(status: int, raw: bytes) -> Attachment:
    """The record of a 201, or the refusal of anything else as ``RequestFailed``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if status != 201:
        # An RFC 9457 problem: ``code`` is docs/protocol.md's, ``detail`` the human text.
        problem = body if isinstance(body, dict) else {}
        code = problem.get("code")
        detail = problem.get("detail") or problem.get("title")
        retry_after_ms = problem.get("retryAfterMs")  # with rate_limited
        raise RequestFailed(
            code if isinstance(code, str) else "unavailable",
            detail if isinstance(detail, str) else f"the upload was answered with HTTP {status}",
            retry_after_ms=retry_after_ms if isinstance(retry_after_ms, int) else None,
        )
    try:
        return Attachment.from_wire(body)
    except ValueError as exc:
        raise RequestFailed(
            "unavailable", f"the upload's answer is not a file record: {exc}"
        ) from exc
