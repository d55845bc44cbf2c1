"""Attachments end to end on SQLite, in jwt mode (PROTOCOL.md "Attachments").

Upload, send over the WebSocket and REST, receive live, in history and in a
resume, download by another user granted the channel; and every refusal: users
not granted, foreign and malformed ids, oversize bodies (by ``Content-Length``
and by a chunked body that grows past the limit), empty bodies, bad filenames,
another user's attachment in a send, more than 10 attachments, and uploads past
a user's ``limits.upload_bytes_per_hour``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import jwt
import pytest

from tests.e2e import attachment_http as http
from tests.e2e.client import Client
from tests.e2e.conftest import received
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

SECRET = "e2e-attachments-" + "x" * 32
MAX_BYTES = 3 * 1024 * 1024  # small, so the oversize tests stay quick
MIB = 1024 * 1024


def token(sub: str, channels: list[str] | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if channels is not None:
        claims["channels"] = channels
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(sub: str, channels: list[str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, channels)}"}


def chunked_upload_head(filename: str, user: str, headers: bytes = b"") -> bytes:
    """The head of a chunked upload of ``filename`` by ``user`` (its body follows)."""
    return (
        (
            f"POST /v1/attachments?filename={filename} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token(user)}\r\n"
            "Transfer-Encoding: chunked\r\n"
        ).encode()
        + headers
        + b"\r\n"
    )


def fresh() -> str:
    return f"att-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {
        "auth.mode": "jwt",
        "auth.jwt.secret": SECRET,
        "attachments.max_bytes": MAX_BYTES,
    }
    with running_server(tmp_path_factory.mktemp("attachments"), overrides) as srv:
        yield srv


async def connect(server: ServerProcess, user: str, channels: list[str], **extra: Any) -> Client:
    client = await Client.connect(server.url)
    frame = {"type": "connect", "channels": channels, "token": token(user, channels), **extra}
    await client.send(frame)
    await client.expect("connected")
    return client


def uploaded(server: ServerProcess, user: str, data: bytes, **kwargs: Any) -> dict[str, Any]:
    reply = http.upload(server.api_port, data, headers=bearer(user), **kwargs)
    assert reply.status == 201, reply
    body: dict[str, Any] = reply.json()
    return body


def listed(attachment: dict[str, Any]) -> dict[str, Any]:
    """How a ChimeMessage lists an uploaded attachment."""
    return {k: attachment[k] for k in ("attachmentId", "filename", "contentType", "size")}


async def reply_to(client: Client, client_msg_id: str) -> dict[str, Any]:
    """The ack or error answering the send ``client_msg_id``."""
    while True:
        frame = await client.recv()
        if frame.get("clientMsgId") == client_msg_id and frame["type"] in ("ack", "error"):
            return frame


def rest_history(server: ServerProcess, channel: str, user: str) -> list[dict[str, Any]]:
    reply = http.request(
        server.api_port, "GET", f"/v1/channels/{channel}/messages", headers=bearer(user)
    )
    assert reply.status == 200, reply
    messages: list[dict[str, Any]] = reply.json()["messages"]
    return messages


# --- upload ---------------------------------------------------------------------------


def test_upload_answers_201_with_id_size_and_sha256(server: ServerProcess) -> None:
    data = b"hello attachments\n"
    reply = http.upload(server.api_port, data, "hello.txt", "text/plain", bearer("alice"))
    assert reply.status == 201, reply
    body = reply.json()
    assert set(body) == {"attachmentId", "filename", "contentType", "size", "sha256"}
    assert isinstance(body["attachmentId"], str) and body["attachmentId"]
    assert body["filename"] == "hello.txt"
    assert body["contentType"] == "text/plain"
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    # Two uploads of the same bytes are two attachments.
    assert uploaded(server, "alice", data)["attachmentId"] != body["attachmentId"]


def test_upload_without_a_token_is_unauthorized(server: ServerProcess) -> None:
    reply = http.upload(server.api_port, b"x")
    assert reply.status == 401, reply
    assert reply.json()["code"] == "unauthorized"


def test_empty_upload_is_bad_request(server: ServerProcess) -> None:
    reply = http.upload(server.api_port, b"", headers=bearer("alice"))
    assert reply.status == 400, reply
    assert reply.json()["code"] == "bad_request"
    chunked = http.raw_exchange(
        server.api_port,
        chunked_upload_head("e.txt", "alice", b"Connection: close\r\n") + b"0\r\n\r\n",
    )
    assert http.status_of(chunked) == 400, chunked


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?filename=",
        "?filename=%20%20",
        "?filename=a/b.txt",
        "?filename=..%2F..%2Fetc%2Fpasswd",
        "?filename=..%5Cwin.ini",
        "?filename=a%00b",
        "?filename=a%0D%0ASet-Cookie:%20x",
        "?filename=..",
        "?filename=" + "n" * 300,
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "slash",
        "traversal",
        "backslash",
        "nul",
        "crlf",
        "dotdot",
        "too-long",
    ],
)
def test_bad_filenames_are_bad_request(server: ServerProcess, query: str) -> None:
    reply = http.request(
        server.api_port,
        "POST",
        f"/v1/attachments{query}",
        body=b"data",
        headers={**bearer("alice"), "Content-Type": "text/plain"},
    )
    assert reply.status == 400, reply
    assert reply.json()["code"] == "bad_request"


def test_oversize_content_length_is_refused_before_any_body_is_sent(server: ServerProcess) -> None:
    # Only the head goes out: a 413 proves the server refused on Content-Length
    # alone, without waiting for (or reading) a byte of the body.
    raw = http.raw_exchange(
        server.api_port,
        b"POST /v1/attachments?filename=big.bin HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token('alice')}\r\n".encode()
        + f"Content-Length: {MAX_BYTES + 1}\r\n".encode()
        + b"Content-Type: application/octet-stream\r\n\r\n",
    )
    assert http.status_of(raw) == 413, raw
    assert http.body_of(raw)["code"] == "too_large"


def test_expect_100_continue_over_the_limit_gets_413_instead_of_continue(
    server: ServerProcess,
) -> None:
    raw = http.raw_exchange(
        server.api_port,
        b"POST /v1/attachments?filename=big.bin HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token('alice')}\r\n".encode()
        + f"Content-Length: {MAX_BYTES * 4}\r\nExpect: 100-continue\r\n\r\n".encode(),
    )
    assert http.status_of(raw) == 413, raw


def test_chunked_body_growing_past_the_limit_is_refused_while_streaming(
    server: ServerProcess,
) -> None:
    # More than the limit, and no terminating chunk: the body never ends, so a
    # 413 proves the server refused while it streamed, not after reading it all.
    piece = os.urandom(64 * 1024)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    parts = [frame] * (MAX_BYTES // len(piece) + 4)
    raw = http.raw_exchange(
        server.api_port,
        chunked_upload_head("big.bin", "alice", b"Content-Type: application/octet-stream\r\n"),
        parts,
    )
    assert http.status_of(raw) == 413, raw[:300]
    assert http.body_of(raw)["code"] == "too_large"
    # The server is fine afterwards.
    assert uploaded(server, "alice", b"after")["size"] == 5


def test_exactly_the_limit_is_accepted_and_read_back_identical_in_chunks(
    server: ServerProcess,
) -> None:
    data = os.urandom(MAX_BYTES)  # three storage chunks of 1 MiB
    body = uploaded(server, "alice", data, filename="blob.bin", content_type=None)
    assert body["size"] == MAX_BYTES
    assert body["contentType"] == "application/octet-stream"
    reply = http.download(server.api_port, body["attachmentId"], bearer("alice"))
    assert reply.status == 200
    assert reply.headers["content-length"] == str(MAX_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(reply.body).hexdigest() == body["sha256"] == digest


# --- send and receive -----------------------------------------------------------------


def test_attachment_is_listed_live_in_history_and_in_resume_and_downloadable_by_the_channel(
    server: ServerProcess,
) -> None:
    channel = fresh()
    data = os.urandom(MIB + 12345)  # two chunks
    attachment = uploaded(
        server, "alice", data, filename="report 2026.pdf", content_type="application/pdf"
    )

    async def scenario() -> str:
        alice = await connect(server, "alice", [channel])
        bob = await connect(server, "bob", [channel])
        try:
            await alice.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "the report",
                    "clientMsgId": "c-att",
                    "attachments": [attachment["attachmentId"]],
                }
            )
            ack = await reply_to(alice, "c-att")
            assert ack["type"] == "ack", ack
            (live,) = await bob.messages(1)
            assert live["messageId"] == ack["messageId"]
            assert live["attachments"] == [listed(attachment)]
            message_id: str = live["messageId"]
        finally:
            await alice.close()
            await bob.close()
        # A resume from before the message replays it with its attachments.
        resumed = await connect(server, "bob", [channel], resume={channel: "0" * 16})
        try:
            (replayed,) = await resumed.messages(1)
            assert replayed["attachments"] == [listed(attachment)]
            await resumed.expect("resumed")
        finally:
            await resumed.close()
        return message_id

    message_id = asyncio.run(scenario())
    (stored,) = rest_history(server, channel, "bob")
    assert stored["messageId"] == message_id
    assert stored["attachments"] == [listed(attachment)]

    # Bob was granted the channel: he may download it.
    reply = http.download(server.api_port, attachment["attachmentId"], bearer("bob", [channel]))
    assert reply.status == 200, reply
    assert reply.body == data
    assert reply.headers["content-type"] == "application/pdf"
    assert reply.headers["content-length"] == str(len(data))
    assert reply.headers["x-content-type-options"] == "nosniff"
    disposition = reply.headers["content-disposition"]
    assert disposition.startswith("attachment;"), disposition
    assert "filename*=UTF-8''report%202026.pdf" in disposition
    # HEAD: the same headers, no body.
    head = http.request(
        server.api_port,
        "HEAD",
        f"/v1/attachments/{attachment['attachmentId']}",
        headers=bearer("bob", [channel]),
    )
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(data))

    # Carol's token grants other channels only: to her it does not exist.
    missing = http.download(server.api_port, "0" * 32, bearer("carol", ["elsewhere"]))
    refused = http.download(
        server.api_port, attachment["attachmentId"], bearer("carol", ["elsewhere", "team-*"])
    )
    assert refused.status == missing.status == 404
    assert refused.json()["code"] == "not_found"
    assert refused.json() == missing.json()  # word for word: existence is not revealed


def test_rest_send_carries_attachments_to_websocket_subscribers(server: ServerProcess) -> None:
    channel = fresh()
    first = uploaded(server, "alice", b"one", filename="1.txt")
    second = uploaded(server, "alice", b"two", filename="2.txt")

    async def scenario() -> None:
        bob = await connect(server, "bob", [channel])
        try:
            reply = await asyncio.to_thread(
                http.request,
                server.api_port,
                "POST",
                f"/v1/channels/{channel}/messages",
                body=(
                    b'{"content": "files", "attachments": ["%s", "%s"]}'
                    % (first["attachmentId"].encode(), second["attachmentId"].encode())
                ),
                headers={**bearer("alice"), "Content-Type": "application/json"},
            )
            assert reply.status == 201, reply
            assert reply.json()["attachments"] == [listed(first), listed(second)]
            (live,) = await bob.messages(1)
            assert live["attachments"] == [listed(first), listed(second)]
        finally:
            await bob.close()

    asyncio.run(scenario())


def test_a_message_without_attachments_has_no_attachments_field(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        alice = await connect(server, "alice", [channel])
        try:
            await alice.send({"type": "send", "channelId": channel, "content": "plain"})
            (message,) = await received(alice, 1)
            assert "attachments" not in message
        finally:
            await alice.close()

    asyncio.run(scenario())
    assert "attachments" not in rest_history(server, channel, "alice")[0]


# --- refusals of sends ----------------------------------------------------------------


def test_sending_another_users_attachment_is_bad_request_and_stores_nothing(
    server: ServerProcess,
) -> None:
    channel = fresh()
    bobs = uploaded(server, "bob", b"bob's secret")

    async def scenario() -> None:
        alice = await connect(server, "alice", [channel])
        try:
            for cmid, ids in (("c-foreign", [bobs["attachmentId"]]), ("c-unknown", ["f" * 32])):
                await alice.send(
                    {
                        "type": "send",
                        "channelId": channel,
                        "content": "look",
                        "clientMsgId": cmid,
                        "attachments": ids,
                    }
                )
                error = await reply_to(alice, cmid)
                assert error["type"] == "error" and error["code"] == "bad_request", error
            # The connection carries on.
            await alice.send({"type": "ping"})
            await alice.expect("pong")
        finally:
            await alice.close()

    asyncio.run(scenario())
    reply = http.request(
        server.api_port,
        "POST",
        f"/v1/channels/{channel}/messages",
        body=b'{"content": "look", "attachments": ["%s"]}' % bobs["attachmentId"].encode(),
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )
    assert reply.status == 400, reply
    assert reply.json()["code"] == "bad_request"
    assert rest_history(server, channel, "alice") == []
    # Nor did sending it give anyone in the channel access to Bob's file.
    assert http.download(server.api_port, bobs["attachmentId"], bearer("alice")).status == 404


def test_at_most_ten_attachments_per_message(server: ServerProcess) -> None:
    channel = fresh()
    ids = [uploaded(server, "alice", b"%d" % i)["attachmentId"] for i in range(11)]

    async def scenario() -> None:
        alice = await connect(server, "alice", [channel])
        try:
            await alice.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "eleven",
                    "clientMsgId": "c-11",
                    "attachments": ids,
                }
            )
            error = await reply_to(alice, "c-11")
            assert error["type"] == "error" and error["code"] == "bad_request", error
            await alice.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "ten",
                    "clientMsgId": "c-10",
                    "attachments": ids[:10],
                }
            )
            ack = await reply_to(alice, "c-10")
            assert ack["type"] == "ack", ack
            (message,) = await received(alice, 1)
            assert [a["attachmentId"] for a in message["attachments"]] == ids[:10]
        finally:
            await alice.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "attachments",
    [["not-an-id"], "a" * 32, [42], [None], [{"attachmentId": "a" * 32}]],
    ids=["malformed", "not-a-list", "number", "null", "object"],
)
def test_malformed_attachment_lists_are_bad_request(
    server: ServerProcess, attachments: Any
) -> None:
    channel = fresh()

    async def scenario() -> None:
        alice = await connect(server, "alice", [channel])
        try:
            await alice.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "x",
                    "clientMsgId": "c-bad",
                    "attachments": attachments,
                }
            )
            error = await reply_to(alice, "c-bad")
            assert error["type"] == "error" and error["code"] == "bad_request", error
        finally:
            await alice.close()

    asyncio.run(scenario())


# --- refusals of downloads ------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_id",
    [
        "0123456789abcdef0123456789abcdef",  # well formed, never uploaded
        "not-an-id",
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e",
        "A" * 32,
        "a" * 33,
        "x" * 2000,
        "%00",
    ],
    ids=["foreign", "malformed", "traversal", "dots", "upper", "long", "very-long", "nul"],
)
def test_unknown_and_malformed_ids_are_not_found(server: ServerProcess, raw_id: str) -> None:
    reply = http.request(
        server.api_port, "GET", f"/v1/attachments/{raw_id}", headers=bearer("alice")
    )
    assert reply.status == 404, reply
    assert reply.json()["code"] == "not_found"


def test_an_unsent_attachment_is_its_uploaders_alone(server: ServerProcess) -> None:
    attachment = uploaded(server, "alice", b"draft")
    mine = http.download(server.api_port, attachment["attachmentId"], bearer("alice"))
    assert (mine.status, mine.body) == (200, b"draft")
    # Bob's token grants every channel, but no message references the file.
    theirs = http.download(server.api_port, attachment["attachmentId"], bearer("bob"))
    assert theirs.status == 404, theirs


def test_download_without_a_token_is_unauthorized(server: ServerProcess) -> None:
    attachment = uploaded(server, "alice", b"x")
    reply = http.download(server.api_port, attachment["attachmentId"])
    assert reply.status == 401, reply


def test_a_deleted_message_no_longer_grants_its_attachments(server: ServerProcess) -> None:
    channel = fresh()
    attachment = uploaded(server, "alice", b"soon gone")
    reply = http.request(
        server.api_port,
        "POST",
        f"/v1/channels/{channel}/messages",
        body=b'{"content": "x", "attachments": ["%s"]}' % attachment["attachmentId"].encode(),
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )
    assert reply.status == 201, reply
    message_id = reply.json()["messageId"]
    assert http.download(server.api_port, attachment["attachmentId"], bearer("bob")).status == 200
    deleted = http.request(
        server.api_port,
        "DELETE",
        f"/v1/channels/{channel}/messages/{message_id}",
        headers=bearer("alice"),
    )
    assert deleted.status == 204, deleted
    assert http.download(server.api_port, attachment["attachmentId"], bearer("bob")).status == 404
    # The uploader keeps hers.
    assert http.download(server.api_port, attachment["attachmentId"], bearer("alice")).status == 200


def test_html_is_served_as_a_download_never_inline(server: ServerProcess) -> None:
    page = b"<html><script>alert(document.cookie)</script></html>"
    name = 'évil "page"; filename=x.html'
    attachment = uploaded(server, "alice", page, filename=name, content_type="text/html")
    assert attachment["filename"] == name
    reply = http.download(server.api_port, attachment["attachmentId"], bearer("alice"))
    assert reply.status == 200
    assert reply.body == page
    assert reply.headers["content-type"] == "text/html"
    assert reply.headers["x-content-type-options"] == "nosniff"
    disposition = reply.headers["content-disposition"]
    assert disposition.startswith("attachment;"), disposition
    assert f"filename*=UTF-8''{quote(name, safe='')}" in disposition
    # The quoted fallback cannot end early: no raw quote, semicolon or non-ASCII in it.
    fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
    assert fallback.isascii() and ";" not in fallback and "\\" not in fallback


@pytest.mark.parametrize(
    "content_type",
    ["not a type", "a/" + "b" * 300, "text/plain; x", "text/plain;;"],
    ids=["no-slash", "long", "bad-parameter", "empty-parameter"],
)
def test_malformed_content_types_are_bad_request(server: ServerProcess, content_type: str) -> None:
    reply = http.raw_exchange(
        server.api_port,
        b"POST /v1/attachments?filename=a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + f"Authorization: Bearer {token('alice')}\r\n".encode()
        + f"Content-Type: {content_type}\r\nContent-Length: 1\r\n\r\nx".encode(),
    )
    assert http.status_of(reply) == 400, reply


def test_one_user_cannot_fill_the_disk_uploads_past_the_hourly_budget_are_429(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Before limits.upload_bytes_per_hour one user stored 30 files of 10 MiB in 1.6 s.
    overrides = {
        "auth.mode": "jwt",
        "auth.jwt.secret": SECRET,
        "attachments.max_bytes": MAX_BYTES,
        "limits.upload_bytes_per_hour": 3 * MIB,
    }
    with running_server(tmp_path_factory.mktemp("upload-budget"), overrides) as server:
        data = os.urandom(MIB)
        for _ in range(3):
            uploaded(server, "mallory", data)
        refused = http.upload(server.api_port, data, headers=bearer("mallory"))
        assert refused.status == 429, refused
        problem = refused.json()
        assert problem["code"] == "rate_limited"
        assert problem["retryAfterMs"] > 1_000_000  # a MiB of 3 an hour: 20 minutes
        assert int(refused.headers["retry-after"]) >= 1000
        # A chunked body reserves attachments.max_bytes: refused as well.
        chunked = http.raw_exchange(
            server.api_port,
            chunked_upload_head("c.txt", "mallory", b"Connection: close\r\n")
            + b"1\r\nx\r\n0\r\n\r\n",
        )
        assert http.status_of(chunked) == 429, chunked
        # Another user is not held back by mallory.
        assert uploaded(server, "alice", data)["size"] == MIB


def rest_send(server: ServerProcess, channel: str, attachment_id: str) -> http.Reply:
    return http.request(
        server.api_port,
        "POST",
        f"/v1/channels/{channel}/messages",
        body=b'{"content": "file", "attachments": ["%s"]}' % attachment_id.encode(),
        headers={**bearer("alice"), "Content-Type": "application/json"},
    )


def test_files_never_sent_expire_and_are_deleted_sent_ones_stay(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # unsent_ttl_s 2: sendable for 2 s unless listed, deleted 2 s (the grace) after
    # that by a sweep every 0.5 s.
    ttl_s = 2.0
    overrides = {
        "auth.mode": "jwt",
        "auth.jwt.secret": SECRET,
        "attachments.unsent_ttl_s": int(ttl_s),
    }
    channel = fresh()
    with running_server(tmp_path_factory.mktemp("unsent-ttl"), overrides) as server:
        before_uploads = time.monotonic()
        unsent = uploaded(server, "alice", b"never sent")
        sent = uploaded(server, "alice", b"sent at once")
        late = uploaded(server, "alice", b"sent too late")
        after_uploads = time.monotonic()
        assert rest_send(server, channel, sent["attachmentId"]).status == 201
        # Past the TTL, before the grace ends: the file still exists, but no
        # longer to be sent, so no send can list a file a sweep is about to take.
        time.sleep(max(0.0, after_uploads + ttl_s + 0.3 - time.monotonic()))
        assert http.download(server.api_port, late["attachmentId"], bearer("alice")).status == 200
        refused = rest_send(server, channel, late["attachmentId"])
        assert (refused.status, refused.json()["code"]) == (400, "bad_request"), refused
        # A file a live message lists may still be sent again, however old.
        assert rest_send(server, channel, sent["attachmentId"]).status == 201

        deadline = time.monotonic() + 30
        while http.download(server.api_port, unsent["attachmentId"], bearer("alice")).status != 404:
            assert time.monotonic() < deadline, "the unsent file was never deleted"
            time.sleep(0.2)
        assert time.monotonic() - before_uploads > 2 * ttl_s  # not before the grace
        assert http.download(server.api_port, late["attachmentId"], bearer("alice")).status == 404
        kept = http.download(server.api_port, sent["attachmentId"], bearer("alice"))
        assert (kept.status, kept.body) == (200, b"sent at once")
        deleted = [
            line
            for line in server.log_lines()
            if line.get("message") == "unsent attachment deleted"
        ]
        assert {line["attachmentId"] for line in deleted} == {
            unsent["attachmentId"],
            late["attachmentId"],
        }


def test_an_upload_lasting_longer_than_the_ttl_and_grace_is_kept_whole(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # unsent_ttl_s 2: an unfinished upload's stub is swept, with its chunks, once
    # it is 4 s old (a sweep every 0.5 s). This one takes about 7 s.
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": SECRET, "attachments.unsent_ttl_s": 2}
    with running_server(tmp_path_factory.mktemp("slow-upload"), overrides) as server:
        pieces = [bytes([65 + i]) * (MIB // 2 + 1) for i in range(7)]
        with socket.create_connection(("127.0.0.1", server.api_port), timeout=30) as upload:
            upload.sendall(chunked_upload_head("slow.bin", "alice", b"Connection: close\r\n"))
            for piece in pieces:
                upload.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(1.0)
            upload.sendall(b"0\r\n\r\n")
            answer = b""
            while chunk := upload.recv(65536):
                answer += chunk
        assert http.status_of(answer) == 201, answer
        attachment_id = http.body_of(answer)["attachmentId"]
        got = http.download(server.api_port, attachment_id, bearer("alice"))
        assert got.status == 200, got
        assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()
        assert not [
            line
            for line in server.log_lines()
            if line.get("message") == "unsent attachment deleted"
        ]


def test_the_chunks_of_an_upload_cut_off_by_a_crash_are_swept(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": SECRET, "attachments.unsent_ttl_s": 2}
    workdir = tmp_path_factory.mktemp("crashed-upload")
    with running_server(workdir, overrides) as server:
        database = workdir / "data" / "chime.db"

        def chunks_stored() -> int:
            with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
                (count,) = db.execute("SELECT COUNT(*) FROM attachment_chunks").fetchone()
                return int(count)

        with socket.create_connection(("127.0.0.1", server.api_port), timeout=10) as upload:
            upload.sendall(chunked_upload_head("big.bin", "alice"))
            piece = b"z" * (MIB + 1024)  # more than a chunk: one is stored
            upload.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            deadline = time.monotonic() + 20
            while chunks_stored() == 0:
                assert time.monotonic() < deadline, "no chunk of the upload was stored"
                time.sleep(0.1)
            # The API process dies mid-upload: nothing of it discards the chunk.
            (api,) = server.pids_by_title("chime: api")
            os.kill(api, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while chunks_stored() != 0:
            assert time.monotonic() < deadline, "the crashed upload's chunks were never swept"
            time.sleep(0.2)
