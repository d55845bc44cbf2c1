"""A real server on the dev Redis and Cassandra: what its Redis keys must never do.

* A Redis counter set back (a restart from an old snapshot, a failover to a
  lagging replica) must not hand out an id storage already holds: on Cassandra
  that write would silently overwrite the stored message.
* Two different ``(channel, user, clientMsgId)`` sends must never share a
  client-id claim, although channel and user ids may both contain ``:``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.e2e.client import Client
from tests.integration.services import backend_overrides, load_services
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load_services("redis", "cassandra")


@pytest.fixture(scope="module")
def server(
    services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    overrides = backend_overrides(services, f"chime_{uuid.uuid4().hex[:10]}")
    with running_server(tmp_path_factory.mktemp("host"), overrides, workers=1) as host:
        yield host


@pytest.fixture
def redis_client(services: dict[str, Any]) -> Iterator[redis.Redis]:
    config = services["redis"]
    client = redis.Redis(
        host=config["host"], port=int(config["port"]), password=config.get("password")
    )
    try:
        yield client
    finally:
        client.close()


def _history(server: ServerProcess, channel: str) -> list[dict[str, Any]]:
    url = f"{server.api}/v1/channels/{channel}/messages?limit=100"
    with urllib.request.urlopen(url, timeout=10) as response:
        messages: list[dict[str, Any]] = json.loads(response.read())["messages"]
    return messages


async def _send_acked(client: Client, channel: str, content: str, cmid: str) -> dict[str, Any]:
    frame = {"type": "send", "channelId": channel, "content": content, "clientMsgId": cmid}
    await client.send(frame)
    while True:
        reply = await client.recv()
        if reply.get("clientMsgId") == cmid and reply.get("type") in ("ack", "error"):
            assert reply["type"] == "ack", reply
            return reply


def test_a_counter_set_back_in_redis_never_reuses_a_stored_id(
    server: ServerProcess, redis_client: redis.Redis
) -> None:
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def send(contents: list[str]) -> list[dict[str, Any]]:
        client = await Client.connect(server.url, "alice", [channel])
        try:
            return [
                await _send_acked(client, channel, text, f"{channel}-{text}") for text in contents
            ]
        finally:
            await client.close()

    asyncio.run(send([f"old-{i}" for i in range(6)]))
    before = _history(server, channel)
    assert [m["content"] for m in before] == [f"old-{i}" for i in range(6)]
    highest = max(int(m["messageId"]) for m in before)
    # What a Redis restarted from an old snapshot holds: a counter behind storage.
    assert redis_client.exists(f"chime:seq:{channel}") == 1
    redis_client.set(f"chime:seq:{channel}", highest - 4)

    (ack,) = asyncio.run(send(["new"]))

    after = _history(server, channel)
    assert after[: len(before)] == before, "a stored message was overwritten"
    assert [m["content"] for m in after] == [*(m["content"] for m in before), "new"]
    assert int(ack["messageId"]) > highest
    assert after[-1]["messageId"] == ack["messageId"]


def test_colons_in_channel_and_user_ids_never_share_a_client_id_claim(
    server: ServerProcess,
) -> None:
    # User "b:c" in channel "<p>a" and user "c" in channel "<p>a:b": the old
    # key ``chime:cmid:{channel}:{user}:{cmid}`` was the same for both.
    prefix = f"k{uuid.uuid4().hex[:8]}-"
    first_channel, second_channel = prefix + "a", prefix + "a:b"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await Client.connect(server.url, "b:c", [first_channel])
        second = await Client.connect(server.url, "c", [second_channel])
        try:
            # One message ahead in the second channel: its next id (2) differs
            # from the first channel's (1), so the acks tell the two apart.
            await _send_acked(second, second_channel, "warm-up", "warm-up")
            ack_1 = await _send_acked(first, first_channel, "from b:c", "same-id")
            ack_2 = await _send_acked(second, second_channel, "from c", "same-id")
            return ack_1, ack_2
        finally:
            await first.close()
            await second.close()

    ack_1, ack_2 = asyncio.run(scenario())
    assert ack_1["channelId"] == first_channel and ack_2["channelId"] == second_channel
    assert ack_1["messageId"] != ack_2["messageId"], "acked as a repeat of the other send"
    (stored_1,) = _history(server, first_channel)
    assert (stored_1["userId"], stored_1["content"]) == ("b:c", "from b:c")
    assert stored_1["messageId"] == ack_1["messageId"]
    stored = _history(server, second_channel)
    assert [(m["userId"], m["content"]) for m in stored] == [("c", "warm-up"), ("c", "from c")]
    assert stored[-1]["messageId"] == ack_2["messageId"]
