"""Two Chime servers on one Redis and one Cassandra: one truth (PROTOCOL.md).

Each server is a real ``chime serve`` (its own actor system, gateways, persisters
and Redis bridge); they share nothing but Redis and Cassandra, like two hosts.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import Client
from tests.integration.services import backend_overrides, load_services
from tests.support.servers import ServerProcess, running_hosts

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, ...]]:
    services = load_services("redis", "cassandra")
    overrides = backend_overrides(services, f"chime_{uuid.uuid4().hex[:10]}")
    with running_hosts(map(tmp_path_factory.mktemp, ("host-a", "host-b")), overrides) as servers:
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


async def _confirmed(client: Client, kind: str, request_id: str, **frame: Any) -> dict[str, Any]:
    """Send an edit/delete/react frame; the requester's confirmation of type ``kind``."""
    await client.send({**frame, "requestId": request_id})
    while True:
        reply = await client.recv()
        if reply.get("requestId") == request_id:
            assert reply["type"] == kind, reply
            return reply


_CHANGES = ("message_edited", "message_deleted", "reaction")


async def _changes_seen(client: Client, count: int) -> list[dict[str, Any]]:
    """The first ``count`` change frames the client got from its channel (no ``requestId``),
    counting those already read while waiting for something else."""

    def seen() -> list[dict[str, Any]]:
        return [f for f in client.frames if f["type"] in _CHANGES and "requestId" not in f]

    while len(seen()) < count:
        await client.recv()
    return seen()[:count]


def _rest(server: ServerProcess, method: str, path: str, user: str, body: Any = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.api}{path}",
        data=data,
        method=method,
        headers={"X-Chime-User": user, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_edits_deletes_and_reactions_reach_both_hosts_in_one_order(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[str]:
        alice = await Client.connect(host_a.url, "alice", [channel])
        bob = await Client.connect(host_b.url, "bob", [channel])
        try:
            await alice.send({"type": "send", "channelId": channel, "content": "one"})
            first = (await alice.expect("ack"))["messageId"]
            await alice.send({"type": "send", "channelId": channel, "content": "two"})
            second = (await alice.expect("ack"))["messageId"]
            target = {"channelId": channel, "messageId": first}
            # On A: alice edits her message; B's subscriber gets it.
            await _confirmed(alice, "message_edited", "e1", type="edit", content="1!", **target)
            # On B: bob may not edit it, but may react; twice is once, across hosts too.
            await bob.send({"type": "edit", "requestId": "e2", "content": "mine", **target})
            refused = await bob.expect("error")
            assert (refused["code"], refused["requestId"]) == ("forbidden", "e2")
            react = {"type": "react", "emoji": "👍", "op": "add", **target}
            added = await _confirmed(bob, "reaction", "r1", **react)
            again = await _confirmed(alice, "reaction", "r2", **react)
            assert "eventId" in added and "eventId" in again  # alice's own, from A
            repeat = await _confirmed(bob, "reaction", "r3", **react)
            assert "eventId" not in repeat  # bob's is there already: nothing changed
            # The same from the other host, over REST: still nothing to change (a
            # change there would show up below, before the delete).
            thumbs = f"/v1/channels/{channel}/messages/{first}/reactions/%F0%9F%91%8D"
            assert await asyncio.to_thread(_rest, host_a, "PUT", thumbs, "bob") == 204
            # Over REST on B: alice deletes her second message.
            path = f"/v1/channels/{channel}/messages/{second}"
            assert await asyncio.to_thread(_rest, host_b, "DELETE", path, "alice") == 204
            assert await asyncio.to_thread(_rest, host_b, "DELETE", path, "bob") == 404
            orders = []
            for client in (alice, bob):
                events = await _changes_seen(client, 4)
                assert [e["type"] for e in events] == [
                    "message_edited",
                    "reaction",
                    "reaction",
                    "message_deleted",
                ]
                assert events[0]["message"]["content"] == "1!"
                assert [e["userId"] for e in events[1:3]] == ["bob", "alice"]
                assert events[3]["messageId"] == second
                orders.append([e["eventId"] for e in events])
            assert orders[0] == orders[1] == sorted(orders[0])
            return orders[0]
        finally:
            await alice.close()
            await bob.close()

    event_ids = asyncio.run(scenario())
    from_a, from_b = _history(host_a, channel), _history(host_b, channel)
    assert from_a == from_b
    (only,) = from_a
    assert only["content"] == "1!" and only["editedAt"] is not None
    assert only["reactions"] == {"👍": ["alice", "bob"]}

    # A client that saw only the messages learns of every change when it
    # resumes, on either host.
    async def resume(server: ServerProcess) -> list[str]:
        client = await Client.connect(server.url, "carol", [channel], resume={channel: "0" * 16})
        try:
            resumed = await client.expect("resumed")
            frames = [f for f in client.frames if f["type"] not in ("connected", "resumed")]
            assert resumed["count"] == len(frames)
            return [f.get("eventId") or f["message"]["messageId"] for f in frames]
        finally:
            await client.close()

    replay_a = asyncio.run(resume(host_a))
    assert replay_a == asyncio.run(resume(host_b))
    assert replay_a[1:] == event_ids  # the first message (the second is deleted), then changes


def test_threads_on_cassandra_across_hosts(
    two_hosts: tuple[ServerProcess, ServerProcess],
) -> None:
    host_a, host_b = two_hosts
    channel = f"c-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[str, list[str]]:
        a = await Client.connect(host_a.url, "alice", [channel])
        b = await Client.connect(host_b.url, "bob", [channel])
        try:
            await a.send({"type": "send", "channelId": channel, "content": "root"})
            root = (await a.expect("ack"))["messageId"]
            replies = []
            for i, client in enumerate((a, b, b)):
                await client.send(
                    {"type": "send", "channelId": channel, "content": f"r{i}", "threadId": root}
                )
                replies.append((await client.expect("ack"))["messageId"])
            await b.send(
                {"type": "history", "requestId": "t", "channelId": channel, "threadId": root}
            )
            thread = await b.expect("history")
            assert [m["messageId"] for m in thread["messages"]] == [root, *replies]
            return root, replies
        finally:
            await a.close()
            await b.close()

    root, replies = asyncio.run(scenario())
    for server in two_hosts:
        messages = _history(server, channel)
        counts = {m["messageId"]: m["replyCount"] for m in messages}
        assert counts == {root: 3, **dict.fromkeys(replies, 0)}
