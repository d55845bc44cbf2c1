"""PROTOCOL.md "Edits, deletes, reactions, threads" over real sockets, on both backends.

Every test taking ``server`` runs twice: on the embedded default (SQLite, local
bus) and on Cassandra with the Redis bus. Edits and deletes (author only),
reactions (idempotent), threads and their reply counts, over WebSocket and over
the REST twins, as every subscriber on both gateways sees them, as history
returns them, and as a resume replays them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import (
    CREATED_AT,
    assert_chime_message,
    clients,
    expect_error,
    expect_reply,
    fresh,
    http_get,
    http_request,
    ping_pong,
    received,
    run,
    send_message,
)
from tests.integration.services import backend_overrides, load_services
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

# Enough subscribers that the kernel puts some on each of the two gateways.
WATCHERS = 8
RATE_LIMIT = 4


@pytest.fixture(scope="module", params=["sqlite", "cassandra"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """This module's server, once per backend (the authorship checks, the change
    sequencing and the reply counts live beside each store's own queries)."""
    overrides: dict[str, Any] = {}
    if request.param == "cassandra":
        services = load_services("redis", "cassandra")
        overrides = backend_overrides(services, f"chime_changes_{uuid.uuid4().hex[:8]}")
    with running_server(tmp_path_factory.mktemp(request.param), overrides=overrides) as srv:
        yield srv


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a small ``limits.messages_per_10s``."""
    overrides = {"limits.messages_per_10s": RATE_LIMIT}
    with running_server(tmp_path_factory.mktemp("limited"), overrides=overrides) as srv:
        yield srv


async def history(client: Client, channel: str, **params: Any) -> dict[str, Any]:
    request_id = f"h-{fresh()}"
    await client.send({"type": "history", "requestId": request_id, "channelId": channel, **params})
    return await expect_reply(client, "history", requestId=request_id)


async def change(client: Client, reply: str, **frame: Any) -> dict[str, Any]:
    """Send an edit/delete/react frame; the requester's confirmation (``reply`` type)."""
    request_id = f"r-{fresh()}"
    await client.send({**frame, "requestId": request_id})
    return await expect_reply(client, reply, requestId=request_id)


async def broadcast(client: Client, kind: str, **match: Any) -> dict[str, Any]:
    """The next ``kind`` frame without a ``requestId`` (a subscriber's copy)."""
    while True:
        frame = await client.expect(kind)
        if "requestId" not in frame and all(frame.get(k) == v for k, v in match.items()):
            return frame


def rest(server: ServerProcess, method: str, path: str, user: str | None, **body: Any) -> Any:
    headers = {} if user is None else {"X-Chime-User": user}
    return http_request(method, f"{server.api}{path}", headers=headers, body=body if body else None)


def message_path(channel: str, message_id: str) -> str:
    return f"/v1/channels/{channel}/messages/{message_id}"


def test_an_edit_is_confirmed_once_stored_and_reaches_every_subscriber(
    server: ServerProcess,
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            watchers = [await cs.connect(f"w{i}", [channel]) for i in range(WATCHERS)]
            ack = await send_message(alice, channel, "first", metadata={"k": "v"})
            mid = ack["messageId"]
            reply = await change(
                alice,
                "message_edited",
                type="edit",
                channelId=channel,
                messageId=mid,
                content="second",
            )
            edited = reply["message"]
            assert_chime_message(edited)
            assert (edited["messageId"], edited["content"]) == (mid, "second")
            assert edited["metadata"] == {"k": "v"} and edited["createdAt"] == ack["createdAt"]
            assert CREATED_AT.match(edited["editedAt"])
            # The edit has a position of its own, after the message's.
            assert reply["eventId"] > mid
            for client in (alice, *watchers):
                frame = await broadcast(client, "message_edited")
                assert frame["message"] == edited and frame["eventId"] == reply["eventId"]
            # Durable before confirmed: history has it, over WebSocket and REST.
            (stored,) = (await history(alice, channel))["messages"]
            assert (stored["content"], stored["editedAt"]) == ("second", edited["editedAt"])
            status, body = http_get(f"{server.api}/v1/channels/{channel}/messages")
            assert status == 200 and body["messages"][0]["content"] == "second"

    run(scenario())


def test_only_the_author_may_edit_or_delete_and_unknown_ids_are_not_found(
    server: ServerProcess,
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            ack = await send_message(alice, channel, "mine")
            mid = ack["messageId"]
            for frame in (
                {"type": "edit", "channelId": channel, "messageId": mid, "content": "bob's"},
                {"type": "delete", "channelId": channel, "messageId": mid},
            ):
                await bob.send({**frame, "requestId": "nope"})
                error = await expect_error(bob, "forbidden")
                assert error["requestId"] == "nope"
            unknown = "9" * 16
            for frame in (
                {"type": "edit", "channelId": channel, "messageId": unknown, "content": "x"},
                {"type": "delete", "channelId": channel, "messageId": unknown},
                {"type": "react", "channelId": channel, "messageId": unknown, "emoji": "👍"},
                # No message ever has id 0.
                {"type": "delete", "channelId": channel, "messageId": "0" * 16},
            ):
                await alice.send({"op": "add", **frame, "requestId": "gone"})
                error = await expect_error(alice, "not_found")
                assert error["requestId"] == "gone"
            # Nothing was changed, so nobody was told anything.
            await ping_pong(alice)
            await ping_pong(bob)
            kinds = {f["type"] for f in [*alice.frames, *bob.frames]}
            assert not kinds & {"message_edited", "message_deleted", "reaction"}
            (stored,) = (await history(bob, channel))["messages"]
            assert (stored["content"], stored["editedAt"]) == ("mine", None)

    run(scenario())


def test_a_delete_reaches_every_subscriber_and_the_message_is_gone(
    server: ServerProcess,
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            watchers = [await cs.connect(f"w{i}", [channel]) for i in range(WATCHERS)]
            kept = await send_message(alice, channel, "kept")
            doomed = await send_message(alice, channel, "doomed")
            reply = await change(
                alice,
                "message_deleted",
                type="delete",
                channelId=channel,
                messageId=doomed["messageId"],
            )
            assert (reply["channelId"], reply["messageId"]) == (channel, doomed["messageId"])
            for client in (alice, *watchers):
                frame = await broadcast(client, "message_deleted")
                assert frame["messageId"] == doomed["messageId"]
                assert frame["eventId"] == reply["eventId"]
            page = await history(alice, channel)
            assert [m["messageId"] for m in page["messages"]] == [kept["messageId"]]
            # Deleted means gone: no edit, no reaction, no second delete.
            for frame in (
                {"type": "edit", "channelId": channel, "content": "x"},
                {"type": "react", "channelId": channel, "emoji": "👍", "op": "add"},
                {"type": "delete", "channelId": channel},
            ):
                await alice.send({**frame, "messageId": doomed["messageId"]})
                await expect_error(alice, "not_found")

    run(scenario())


def test_reactions_are_idempotent_broadcast_and_in_history(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            carol = await cs.connect("carol", [channel])
            mid = (await send_message(alice, channel, "react to me"))["messageId"]
            react = {"type": "react", "channelId": channel, "messageId": mid, "emoji": "👍"}
            first = await change(bob, "reaction", **react, op="add")
            assert {k: first[k] for k in ("channelId", "messageId", "emoji", "userId", "op")} == {
                "channelId": channel,
                "messageId": mid,
                "emoji": "👍",
                "userId": "bob",
                "op": "add",
            }
            again = await change(bob, "reaction", **react, op="add")
            assert "eventId" not in again  # nothing changed: no position, no broadcast
            await change(carol, "reaction", **react, op="add")
            party = {**react, "emoji": "🎉"}
            await change(carol, "reaction", **party, op="add")
            await change(carol, "reaction", **party, op="remove")
            # A reaction is anyone's: no author check.
            seen = [await broadcast(alice, "reaction") for _ in range(4)]
            assert [(f["userId"], f["emoji"], f["op"]) for f in seen] == [
                ("bob", "👍", "add"),
                ("carol", "👍", "add"),
                ("carol", "🎉", "add"),
                ("carol", "🎉", "remove"),
            ]
            ids = [f["eventId"] for f in seen]
            assert ids == sorted(ids) and len(set(ids)) == 4
            await ping_pong(alice)
            assert len([f for f in alice.frames if f["type"] == "reaction"]) == 4
            (stored,) = (await history(alice, channel))["messages"]
            assert stored["reactions"] == {"👍": ["bob", "carol"]}
            status, body = http_get(f"{server.api}/v1/channels/{channel}/messages")
            assert status == 200
            assert body["messages"][0]["reactions"] == {"👍": ["bob", "carol"]}
            await change(bob, "reaction", **react, op="remove")
            (stored,) = (await history(alice, channel))["messages"]
            assert stored["reactions"] == {"👍": ["carol"]}

    run(scenario())


def test_changes_need_no_subscription(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            elsewhere = await cs.connect("alice", [fresh()])
            mid = (await send_message(alice, channel, "x"))["messageId"]
            await change(
                elsewhere,
                "message_edited",
                type="edit",
                channelId=channel,
                messageId=mid,
                content="from another connection",
            )
            frame = await broadcast(alice, "message_edited")
            assert frame["message"]["content"] == "from another connection"

    run(scenario())


def test_a_resume_past_changes_replays_them_in_order(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            acks = [await send_message(alice, channel, f"m{i}") for i in range(3)]
            last_seen = acks[-1]["messageId"]
            # Made while bob was away.
            await change(
                alice,
                "message_edited",
                type="edit",
                channelId=channel,
                messageId=acks[0]["messageId"],
                content="edited",
            )
            await change(
                alice,
                "message_deleted",
                type="delete",
                channelId=channel,
                messageId=acks[1]["messageId"],
            )
            reacted = await change(
                alice,
                "reaction",
                type="react",
                channelId=channel,
                messageId=acks[2]["messageId"],
                emoji="👀",
                op="add",
            )
            late = await send_message(alice, channel, "after the changes")
            bob = await cs.connect("bob", [channel], resume={channel: last_seen})
            resumed = await bob.expect("resumed")
            replay = [f for f in bob.frames if f.get("type") != "connected"][:-1]
            assert [f["type"] for f in replay] == [
                "message_edited",
                "message_deleted",
                "reaction",
                "message",
            ]
            assert replay[0]["message"]["content"] == "edited"
            assert replay[1]["messageId"] == acks[1]["messageId"]
            assert replay[2]["eventId"] == reacted["eventId"]
            assert replay[3]["message"]["messageId"] == late["messageId"]
            assert resumed["count"] == 4
            # Resuming from the last position seen (a message's or a change's id)
            # replays nothing twice.
            again = await cs.connect("bob", [channel], resume={channel: reacted["eventId"]})
            resumed = await again.expect("resumed")
            replay = [f for f in again.frames if f.get("type") != "connected"][:-1]
            assert [f["type"] for f in replay] == ["message"]
            assert resumed["count"] == 1

    run(scenario())


def test_threads_history_and_reply_counts(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            root = (await send_message(alice, channel, "root"))["messageId"]
            other = (await send_message(alice, channel, "not in the thread"))["messageId"]
            replies = [
                (await send_message(alice, channel, f"reply {i}", threadId=root))["messageId"]
                for i in range(3)
            ]
            # An ack can overtake the broadcast copy: wait for the third message.
            message = (await received(alice, 3, channel))[2]
            assert message["threadId"] == root
            thread = await history(alice, channel, threadId=root)
            assert [m["messageId"] for m in thread["messages"]] == [root, *replies]
            page = await history(alice, channel)
            counts = {m["messageId"]: m["replyCount"] for m in page["messages"]}
            assert counts == {root: 3, other: 0, **dict.fromkeys(replies, 0)}
            await change(
                alice, "message_deleted", type="delete", channelId=channel, messageId=replies[1]
            )
            page = await history(alice, channel)
            assert page["messages"][0]["replyCount"] == 2
            thread = await history(alice, channel, threadId=root, limit=2)
            assert [m["messageId"] for m in thread["messages"]] == [replies[0], replies[2]]
            assert thread["hasMore"] is True
            status, body = http_get(f"{server.api}/v1/channels/{channel}/messages?threadId={root}")
            assert status == 200
            assert [m["messageId"] for m in body["messages"]] == [root, replies[0], replies[2]]
            assert body["messages"][0]["replyCount"] == 2

    run(scenario())


# --- REST twins ---------------------------------------------------------------------


def test_rest_changes_reach_websocket_subscribers_as_websocket_ones_do(
    server: ServerProcess,
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            watchers = [await cs.connect(f"w{i}", [channel]) for i in range(WATCHERS)]
            mid = (await send_message(alice, channel, "over REST next"))["messageId"]
            path = message_path(channel, mid)
            status, body = await asyncio.to_thread(
                rest, server, "PATCH", path, "alice", content="edited over REST"
            )
            assert status == 200
            assert_chime_message(body)
            assert (body["messageId"], body["content"]) == (mid, "edited over REST")
            emoji = quote("👍", safe="")
            status, _ = await asyncio.to_thread(
                rest, server, "PUT", f"{path}/reactions/{emoji}", "bob"
            )
            assert status == 204
            status, _ = await asyncio.to_thread(
                rest, server, "PUT", f"{path}/reactions/{emoji}", "bob"
            )
            assert status == 204  # idempotent
            status, _ = await asyncio.to_thread(
                rest, server, "DELETE", f"{path}/reactions/{emoji}", "bob"
            )
            assert status == 204
            status, _ = await asyncio.to_thread(rest, server, "DELETE", path, "alice")
            assert status == 204
            for client in (alice, *watchers):
                edited = await broadcast(client, "message_edited")
                assert edited["message"]["content"] == "edited over REST"
                added = await broadcast(client, "reaction")
                removed = await broadcast(client, "reaction")
                assert (added["op"], removed["op"], added["userId"]) == ("add", "remove", "bob")
                deleted = await broadcast(client, "message_deleted")
                assert deleted["messageId"] == mid
                ids = [f["eventId"] for f in (edited, added, removed, deleted)]
                assert ids == sorted(ids)
            status, body = http_get(f"{server.api}/v1/channels/{channel}/messages")
            assert (status, body["messages"]) == (200, [])

    run(scenario())


def test_rest_refusals(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            mid = (await send_message(alice, channel, "alice's"))["messageId"]
            path = message_path(channel, mid)
            cases = [
                ("PATCH", path, "bob", {"content": "bob's"}, 403, "forbidden"),
                ("DELETE", path, "bob", {}, 403, "forbidden"),
                ("DELETE", path, None, {}, 401, "unauthorized"),
                ("PATCH", path, "alice", {"content": " "}, 400, "bad_request"),
                ("PATCH", path, "alice", {"content": "x" * 4001}, 413, "too_large"),
                ("DELETE", message_path(channel, "9" * 16), "alice", {}, 404, "not_found"),
                (
                    "PUT",
                    f"{message_path(channel, '9' * 16)}/reactions/x",
                    "bob",
                    {},
                    404,
                    "not_found",
                ),
                ("DELETE", message_path(channel, "12"), "alice", {}, 400, "bad_request"),
            ]
            for method, target, user, body, status, code in cases:
                got = await asyncio.to_thread(rest, server, method, target, user, **body)
                assert got[0] == status, (method, target, got)
                assert got[1]["code"] == code
            await ping_pong(alice)
            assert not {f["type"] for f in alice.frames} & {"message_edited", "message_deleted"}

    run(scenario())


def test_edits_and_reactions_count_against_the_rate_limit(limited_server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(limited_server) as cs:
            alice = await cs.connect("alice", [channel])
            mid = (await send_message(alice, channel, "one"))["messageId"]
            for i in range(RATE_LIMIT - 1):
                await change(
                    alice,
                    "message_edited",
                    type="edit",
                    channelId=channel,
                    messageId=mid,
                    content=f"edit {i}",
                )
            await alice.send(
                {
                    "type": "react",
                    "requestId": "too-many",
                    "channelId": channel,
                    "messageId": mid,
                    "emoji": "👍",
                    "op": "add",
                }
            )
            error = await expect_error(alice, "rate_limited")
            assert error["requestId"] == "too-many" and error["retryAfterMs"] > 0

    run(scenario())


def _post(server: ServerProcess, channel: str, body: object, user: str | None = "alice") -> Any:
    """POST a REST send (as ``user`` in insecure mode): (status, parsed body)."""
    headers = {} if user is None else {"X-Chime-User": user}
    url = f"{server.api}/v1/channels/{channel}/messages"
    return http_request("POST", url, headers=headers, body=body)


def test_rest_send_is_stored_broadcast_and_idempotent(server: ServerProcess) -> None:
    """POST a message: 201 once stored, delivered to WebSocket subscribers like a
    WebSocket send; the same clientMsgId again stores and broadcasts nothing."""

    async def scenario() -> None:
        channel = fresh("rest-send")
        async with clients(server) as cs:
            bob = await cs.connect("bob", [channel])
            body = {"content": "over http", "clientMsgId": "r-1", "metadata": {"k": "v"}}
            status, stored = await asyncio.to_thread(_post, server, channel, body)
            assert status == 201, stored
            assert (stored["userId"], stored["content"], stored["clientMsgId"]) == (
                "alice",
                "over http",
                "r-1",
            )
            (live,) = await bob.messages(1)
            assert live["messageId"] == stored["messageId"]
            status, again = await asyncio.to_thread(_post, server, channel, body)
            assert status == 200 and again["duplicate"] is True
            assert again["messageId"] == stored["messageId"]
            # Without a clientMsgId: its own message, and the wire shows null.
            status, bare = await asyncio.to_thread(_post, server, channel, {"content": "x"})
            assert status == 201 and bare["clientMsgId"] is None
            (second,) = await bob.messages(1)
            assert second["messageId"] == bare["messageId"]  # nothing for the repeat
            await bob.send({"type": "history", "requestId": "h", "channelId": channel})
            page = await bob.expect("history")
            assert [m["content"] for m in page["messages"]] == ["over http", "x"]

    run(scenario())


@pytest.mark.parametrize(
    ("body", "user", "status", "code"),
    [
        ({"content": "hi"}, None, 401, "unauthorized"),
        ({"content": ""}, "alice", 400, "bad_request"),
        ({"content": "x" * 5000}, "alice", 413, "too_large"),
        ({"content": "hi", "metadata": {"k" * 65: "v"}}, "alice", 400, "bad_request"),
        ({"content": "hi", "clientMsgId": "~chime:mine"}, "alice", 400, "bad_request"),
        ({"content": "hi", "attachments": ["a1"]}, "alice", 400, "bad_request"),
        ({"content": "hi", "attachments": ["a" * 32]}, "alice", 400, "bad_request"),
        (["not", "an", "object"], "alice", 400, "bad_request"),
    ],
    ids=[
        "no-user",
        "blank",
        "too-long",
        "bad-metadata-key",
        "reserved-id",
        "malformed-attachment-id",
        "unknown-attachment",
        "array",
    ],
)
def test_rest_send_refusals(
    server: ServerProcess, body: object, user: str | None, status: int, code: str
) -> None:
    got, answer = _post(server, fresh("rest-bad"), body, user)
    assert (got, answer["code"]) == (status, code), answer
