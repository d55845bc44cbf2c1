"""Two Chime servers on one Redis and one Cassandra: one truth (PROTOCOL.md).

Each server is a real ``chime serve`` (its own actor system, gateways, persisters
and Redis bridge); they share nothing but Redis and Cassandra, like two hosts.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.e2e.client import Client
from tests.e2e.server_process import ServerProcess, running_server
from tests.integration.services import backend_overrides, load_services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    services = load_services("redis", "cassandra")
    overrides = backend_overrides(services, f"chime_{uuid.uuid4().hex[:10]}")
    with ExitStack() as stack:
        servers = tuple(
            stack.enter_context(running_server(tmp_path_factory.mktemp(name), overrides, workers=1))
            for name in ("host-a", "host-b")
        )
        yield servers


def _history(server: ServerProcess, channel: str) -> list[dict[str, Any]]:
    url = f"{server.api}/v1/channels/{channel}/messages?limit=100"
    with urllib.request.urlopen(url, timeout=10) as response:
        messages: list[dict[str, Any]] = json.loads(response.read())["messages"]
    return messages


def test_message_sent_on_a_reaches_a_and_b_once_in_order(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        on_a = await Client.connect(host_a.url, "alice", [channel])
        on_b = await Client.connect(host_b.url, "bob", [channel])
        sender_b = await Client.connect(host_b.url, "carol", [channel])
        try:
            for i in range(20):
                sender = on_a if i % 2 == 0 else sender_b
                await sender.send({"type": "send", "channelId": channel, "content": f"m{i}"})
            got_a = await on_a.messages(20)
            got_b = await on_b.messages(20)
            ids_a = [m["messageId"] for m in got_a]
            ids_b = [m["messageId"] for m in got_b]
            assert ids_a == ids_b, "both hosts deliver the same messages in the same order"
            assert ids_a == sorted(ids_a) and len(set(ids_a)) == 20
            await asyncio.sleep(0)  # nothing more may arrive: no duplicates
            with pytest.raises(TimeoutError):
                await on_b.expect("message", timeout=1.0)
        finally:
            for client in (on_a, on_b, sender_b):
                await client.close()

    asyncio.run(scenario())
    assert _history(host_a, channel) == _history(host_b, channel)
    assert len(_history(host_a, channel)) == 20


def test_idempotent_send_dedupes_across_hosts(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        first = await Client.connect(host_a.url, "alice", [channel])
        retry = await Client.connect(host_b.url, "alice", [channel])
        try:
            frame = {"type": "send", "channelId": channel, "content": "once", "clientMsgId": "c-1"}
            await first.send(frame)
            ack_a = await first.expect("ack")
            await retry.send(frame)
            ack_b = await retry.expect("ack")
            assert ack_a["messageId"] == ack_b["messageId"]
        finally:
            await first.close()
            await retry.close()

    asyncio.run(scenario())
    assert [m["content"] for m in _history(host_b, channel)] == ["once"]


def test_client_moving_from_a_to_b_resumes_exactly_once(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        sender = await Client.connect(host_a.url, "alice", [channel])
        mover = await Client.connect(host_a.url, "bob", [channel])
        try:
            for i in range(5):
                await sender.send({"type": "send", "channelId": channel, "content": f"a{i}"})
            seen = await mover.messages(5)
            await mover.close()
            for i in range(5):
                await sender.send({"type": "send", "channelId": channel, "content": f"b{i}"})
            for _ in range(10):  # the acks of a0..a4 come first, unread until now
                await sender.expect("ack")
            moved = await Client.connect(
                host_b.url, "bob", [channel], resume={channel: seen[-1]["messageId"]}
            )
            try:
                replay = await moved.messages(5)
                resumed = await moved.expect("resumed")
                assert [m["content"] for m in replay] == [f"b{i}" for i in range(5)]
                assert resumed["count"] == 5
                await sender.send({"type": "send", "channelId": channel, "content": "live"})
                (live,) = await moved.messages(1)
                assert live["content"] == "live"
            finally:
                await moved.close()
        finally:
            await sender.close()

    asyncio.run(scenario())


def test_history_is_identical_from_both_hosts(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        a = await Client.connect(host_a.url, "alice", [channel])
        b = await Client.connect(host_b.url, "bob", [channel])
        try:
            for i in range(10):
                await (a if i % 3 else b).send(
                    {"type": "send", "channelId": channel, "content": f"h{i}"}
                )
            await a.messages(10)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
    from_a, from_b = _history(host_a, channel), _history(host_b, channel)
    assert from_a == from_b
    assert len(from_a) == 10
