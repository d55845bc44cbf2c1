"""HTTP helpers of the attachment tests (PROTOCOL.md "Attachments"), plain sockets only.

``http.client`` for ordinary uploads and downloads (raw bytes and headers kept),
and a raw socket for what a well-behaved client library would not send: a
``Content-Length`` larger than the body, or a chunked body that never ends.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    headers: Mapping[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """One request on a fresh connection; the whole answer read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        found = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, found, data)
    finally:
        conn.close()


def upload(
    port: int,
    data: bytes,
    filename: str = "notes.txt",
    content_type: str | None = "text/plain",
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """``POST /v1/attachments?filename=...`` with ``data`` as the body."""
    sent = dict(headers or {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    return request(
        port, "POST", f"/v1/attachments?filename={quote(filename)}", body=data, headers=sent
    )


def download(port: int, attachment_id: str, headers: Mapping[str, str] | None = None) -> Reply:
    """``GET /v1/attachments/{id}``."""
    return request(port, "GET", f"/v1/attachments/{quote(attachment_id, safe='')}", headers=headers)


def raw_exchange(port: int, head: bytes, body_parts: list[bytes] | None = None) -> bytes:
    """Send ``head`` (and ``body_parts``), then read until the server answers a status line
    and the headers and body it announces, or closes. Never finishes a body on purpose."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(head)
        for part in body_parts or []:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server refused and closed: its answer is what counts
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk
        head_bytes, _, rest = received.partition(b"\r\n\r\n")
        length = 0
        for line in head_bytes.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return head_bytes + b"\r\n\r\n" + rest


def status_of(raw: bytes) -> int:
    """The status code of a raw answer."""
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> Any:
    """The JSON body of a raw answer."""
    return json.loads(raw.partition(b"\r\n\r\n")[2])
