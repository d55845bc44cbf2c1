"""Attachments on Cassandra across two hosts (PROTOCOL.md "Attachments").

Two real ``chime serve`` on one Redis and one Cassandra, in insecure mode (the
user is ``X-Chime-User``): a file uploaded on one host is sent from the other,
listed on both, and downloaded identical from either; the refusals hold there too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import attachment_http as http
from tests.e2e.client import Client
from tests.e2e.conftest import received
from tests.integration.services import backend_overrides, load_services
from tests.support.servers import ServerProcess, running_hosts

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    services = load_services("redis", "cassandra")
    overrides = backend_overrides(services, f"chime_{uuid.uuid4().hex[:10]}")
    names = ("att-host-a", "att-host-b")
    with running_hosts(map(tmp_path_factory.mktemp, names), overrides) as servers:
        yield servers


def as_user(user: str) -> dict[str, str]:
    return {"X-Chime-User": user}


def uploaded(server: ServerProcess, user: str, data: bytes, name: str) -> dict[str, Any]:
    reply = http.upload(server.api_port, data, name, "application/octet-stream", as_user(user))
    assert reply.status == 201, reply
    body: dict[str, Any] = reply.json()
    return body


async def answer(client: Client, client_msg_id: str) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame.get("clientMsgId") == client_msg_id and frame["type"] in ("ack", "error"):
            return frame


def test_uploaded_on_a_sent_from_b_listed_on_both_and_read_back_identical_anywhere(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"att-{uuid.uuid4().hex[:8]}"
    data = os.urandom(2 * MIB + 4321)  # three chunks
    attachment = uploaded(host_a, "alice", data, "data.bin")
    assert attachment["sha256"] == hashlib.sha256(data).hexdigest()
    listed = {k: attachment[k] for k in ("attachmentId", "filename", "contentType", "size")}

    async def scenario() -> None:
        sender = await Client.connect(host_b.url, "alice", [channel])
        reader = await Client.connect(host_a.url, "bob", [channel])
        try:
            await sender.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "across hosts",
                    "clientMsgId": "c-1",
                    "attachments": [attachment["attachmentId"]],
                }
            )
            ack = await answer(sender, "c-1")
            assert ack["type"] == "ack", ack
            for client in (sender, reader):
                (message,) = await received(client, 1)
                assert message["attachments"] == [listed]
            # Bob may not send Alice's file.
            await reader.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "mine now",
                    "clientMsgId": "c-2",
                    "attachments": [attachment["attachmentId"]],
                }
            )
            refused = await answer(reader, "c-2")
            assert refused["type"] == "error" and refused["code"] == "bad_request", refused
        finally:
            await sender.close()
            await reader.close()

    asyncio.run(scenario())
    for host in (host_a, host_b):
        reply = http.download(host.api_port, attachment["attachmentId"], as_user("bob"))
        assert reply.status == 200, reply
        assert hashlib.sha256(reply.body).hexdigest() == attachment["sha256"]
        assert reply.headers["content-disposition"].startswith("attachment;")
        history = http.request(host.api_port, "GET", f"/v1/channels/{channel}/messages")
        (stored,) = history.json()["messages"]
        assert stored["attachments"] == [listed]


def test_refusals_hold_on_cassandra(two_hosts: tuple[ServerProcess, ServerProcess]) -> None:
    host_a, host_b = two_hosts
    draft = uploaded(host_b, "alice", b"draft", "draft.txt")
    # Not sent yet: Alice's alone, on both hosts.
    assert http.download(host_a.api_port, draft["attachmentId"], as_user("alice")).body == b"draft"
    assert http.download(host_a.api_port, draft["attachmentId"], as_user("bob")).status == 404
    assert http.download(host_b.api_port, draft["attachmentId"]).status == 404
    assert http.download(host_a.api_port, "0" * 32, as_user("alice")).status == 404
    # Insecure mode: an upload names its user.
    assert http.upload(host_a.api_port, b"x").status == 401
    assert http.upload(host_a.api_port, b"", headers=as_user("alice")).status == 400
