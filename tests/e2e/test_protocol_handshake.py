"""PROTOCOL.md "Handshake" (insecure mode): identity, the connected reply, refusals, timeout."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import (
    TIGHT_HANDSHAKE_TIMEOUT_MS,
    clients,
    expect_close,
    expect_error,
    fresh,
    ping_pong,
    run,
    send_message,
)
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e


def test_connected_reply_fields(server: ServerProcess) -> None:
    first, second = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            await client.send({"type": "connect", "channels": [first, second], "userId": "alice"})
            reply = await client.recv()
            assert reply["type"] == "connected", reply
            assert reply["userId"] == "alice"
            assert reply["channels"] == [first, second]
            assert isinstance(reply["connectionId"], str) and reply["connectionId"]
            assert reply["heartbeatMs"] == 25000  # the default
            other = await cs.connect("alice", [first])
            other_reply = other.frames[-1]
            assert other_reply["connectionId"] != reply["connectionId"]

    run(scenario())


def test_user_id_from_frame_wins_over_query(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw("/?userId=bob")
            await client.send({"type": "connect", "channels": [channel], "userId": "alice"})
            assert (await client.expect("connected"))["userId"] == "alice"

    run(scenario())


def test_user_id_from_query(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw("/chat?userId=bob")
            await client.send({"type": "connect", "channels": [channel]})
            assert (await client.expect("connected"))["userId"] == "bob"
            ack = await send_message(client, channel, "from bob")
            (message,) = await client.messages(1)
            assert message["messageId"] == ack["messageId"]
            assert message["userId"] == "bob"

    run(scenario())


def test_anonymous_user_id_is_assigned(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            ids = []
            for _ in range(2):
                client = await cs.raw()
                await client.send({"type": "connect", "channels": [channel]})
                ids.append((await client.expect("connected"))["userId"])
            assert all(re.fullmatch(r"anon-.+", user) for user in ids), ids
            assert ids[0] != ids[1]

    run(scenario())


def test_seed_connect_without_type(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            await client.send({"channels": [channel], "userId": "carol"})
            reply = await client.expect("connected")
            assert reply["channels"] == [channel]
            assert reply["userId"] == "carol"

    run(scenario())


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "ping"},
        {"type": "send", "channelId": "general", "content": "too early"},
        {"content": "too early"},
        "plain text too early",
        {"type": "subscribe", "channels": ["general"]},
        {"type": "history", "requestId": "r1", "channelId": "general"},
    ],
    ids=["ping", "send", "seed-send", "plain-text", "subscribe", "history"],
)
def test_frames_before_connect_get_handshake_required(
    server: ServerProcess, frame: dict[str, object] | str
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            await client.send(frame)  # type: ignore[arg-type]
            await expect_error(client, "handshake_required")
            # not closed: the connect still works afterwards
            await client.send({"type": "connect", "channels": [channel], "userId": "dave"})
            await client.expect("connected")
            await ping_pong(client)

    run(scenario())


def test_second_connect_is_refused_without_closing(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.connect("erin", [channel])
            await client.send({"type": "connect", "channels": [channel], "userId": "mallory"})
            await expect_error(client, "bad_request")
            await ping_pong(client)

    run(scenario())


def test_no_connect_within_timeout_closes_4008(tight_server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(tight_server) as cs:
            idle = await cs.raw()
            chatty = await cs.raw()
            # frames that are not a connect do not keep the handshake alive
            await chatty.send({"type": "ping"})
            await expect_error(chatty, "handshake_required")
            prompt = await cs.connect("frank", [channel])
            assert await expect_close(idle) == 4008
            assert await expect_close(chatty) == 4008
            # a connected client is not affected by the handshake timer
            await ping_pong(prompt)
            await send_message(prompt, channel, "still here")

    run(scenario(), timeout=TIGHT_HANDSHAKE_TIMEOUT_MS / 1000 + 30)


@pytest.mark.parametrize("query", ["bad%20user", "a%3Cb%3E", "x" * 65, "%C3%A9"], ids=repr)
def test_invalid_query_user_id_is_bad_request(server: ServerProcess, query: str) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw(f"/?userId={query}")
            await client.send({"type": "connect", "channels": [channel]})
            await expect_error(client, "bad_request")
            # not connected, not closed: a connect naming a valid userId goes through
            await client.send({"type": "ping"})
            await expect_error(client, "handshake_required")
            await client.send({"type": "connect", "channels": [channel], "userId": "valid"})
            assert (await client.expect("connected"))["userId"] == "valid"

    run(scenario())


def test_invalid_frame_user_id_is_bad_request(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            for bad in ("", "has space", "x" * 65, 5):
                await client.send({"type": "connect", "channels": [channel], "userId": bad})
                await expect_error(client, "bad_request")
            await client.send({"type": "connect", "channels": [channel], "userId": "a.b@c:d-e_f"})
            assert (await client.expect("connected"))["userId"] == "a.b@c:d-e_f"

    run(scenario())


def test_channel_count_limit(server: ServerProcess) -> None:
    prefix = fresh("many")
    limit = 128  # chat.max_channels_per_connection default

    async def scenario() -> None:
        async with clients(server) as cs:
            over = await cs.raw()
            await over.send(
                {"type": "connect", "channels": [f"{prefix}-{i}" for i in range(limit + 1)]}
            )
            await expect_error(over, "bad_request")
            full = await cs.connect("full", [f"{prefix}-{i}" for i in range(limit)])
            assert len(full.frames[-1]["channels"]) == limit
            await full.send({"type": "subscribe", "channels": [f"{prefix}-extra"]})
            await expect_error(full, "bad_request")
            await full.send({"type": "unsubscribe", "channels": [f"{prefix}-0"]})
            await full.expect("unsubscribed")
            await full.send({"type": "subscribe", "channels": [f"{prefix}-extra"]})
            assert (await full.expect("subscribed"))["channels"] == [f"{prefix}-extra"]

    run(scenario())


def test_fault_injection_never_acts_before_the_connect(server: ServerProcess) -> None:
    """The test server has ``testing.fault_injection`` on; an anonymous socket still
    cannot crash anything: before the connect, ``debug_crash`` is just a frame."""

    async def scenario() -> None:
        async with clients(server) as cs:
            raw = await cs.raw()
            await raw.send({"type": "debug_crash", "target": "connection"})
            refused = await raw.expect("error")
            assert refused["code"] == "bad_request", refused  # not "internal": nothing crashed
            await raw.send({"type": "connect", "channels": [fresh()], "userId": "alice"})
            await raw.expect("connected")
            await ping_pong(raw)

    run(scenario())
