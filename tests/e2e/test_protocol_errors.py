"""PROTOCOL.md "Errors and limits": bad input is answered, never fatal, never contagious."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import (
    clients,
    expect_close,
    expect_error,
    expect_reply,
    fresh,
    gateway_connections,
    ping_pong,
    received,
    run,
    send_message,
)
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

MAX_FRAME_BYTES = 65536
MAX_CONTENT_CHARS = 4000

MALFORMED = [
    "{",
    '{"type": "send",',
    '{"type": "ping"}}',
    "{'type': 'ping'}",
    '{"type": "ping", "x": NaN}',
    '{"type": "ping", "x": Infinity}',
    '{"type": "send", "content": "\\ud800"}',
    "{" * 2000 + "}" * 2000,
    '{"type": "ping"} {"type": "ping"}',
    "\t\n {\n",
]

WRONG_TYPES: list[dict[str, Any]] = [
    {"type": 5},
    {"type": ["send"]},
    {"type": "send", "channelId": 5, "content": "x"},
    {"type": "send", "content": 5},
    {"type": "send", "content": None},
    {"type": "send", "content": ["x"]},
    {"type": "send", "content": ""},
    {"type": "send", "content": "   "},
    {"type": "send", "content": "x", "metadata": ["k", "v"]},
    {"type": "send", "content": "x", "metadata": {"k": 1}},
    {"type": "send", "content": "x", "metadata": {"k": None}},
    {"type": "send", "content": "x", "metadata": {f"k{i}": "v" for i in range(17)}},
    {"type": "send", "content": "x", "metadata": {"k": "v" * 257}},
    {"type": "send", "content": "x", "threadId": 7},
    {"type": "send", "content": "x", "threadId": "not-an-id"},
    {"type": "send", "content": "x", "clientMsgId": ""},
    {"type": "send", "content": "x", "clientMsgId": "c" * 129},
    {"type": "subscribe", "channels": None},
    {"type": "subscribe", "channels": {"a": 1}},
    {"type": "subscribe", "channels": [["nested"]]},
    {"type": "connect", "channels": ["x"]},  # second connect
    {},
    {"nothing": "useful"},
    {"type": "nope"},
    {"type": ""},
    {"type": "SEND", "content": "x"},
]

BAD_CHANNEL_IDS: list[Any] = [
    "",
    "has space",
    "slash/inside",
    "x" * 65,
    "ünïcode",
    "tab\t",
    "semi;colon",
    5,
    True,
    {"id": "x"},
]


async def _assert_open(client: Client, channel: str) -> None:
    """The connection still works: ping and a real send."""
    await ping_pong(client)
    await send_message(client, channel, "still alive")


@pytest.mark.parametrize("text", MALFORMED, ids=lambda t: repr(t[:30]))
def test_malformed_json_is_bad_request(server: ServerProcess, text: str) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await alice.send(text)
            await expect_error(alice, "bad_request")
            await _assert_open(alice, channel)

    run(scenario())


@pytest.mark.parametrize("frame", WRONG_TYPES, ids=lambda f: orjson.dumps(f).decode()[:50])
def test_wrong_field_types_and_unknown_type_are_bad_request(
    server: ServerProcess, frame: dict[str, Any]
) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await alice.send(frame)
            await expect_error(alice, "bad_request")
            await _assert_open(alice, channel)
            assert [f["type"] for f in alice.frames].count("ack") == 1

    run(scenario())


def test_bad_request_echoes_client_msg_id(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await alice.send({"type": "send", "content": 5, "clientMsgId": "echo-1"})
            assert (await expect_error(alice, "bad_request"))["clientMsgId"] == "echo-1"
            await alice.send(
                {"type": "send", "channelId": "bad id", "content": "x", "clientMsgId": "echo-2"}
            )
            assert (await expect_error(alice, "bad_request"))["clientMsgId"] == "echo-2"

    run(scenario())


@pytest.mark.parametrize("bad", BAD_CHANNEL_IDS, ids=repr)
def test_bad_channel_ids_are_bad_request(server: ServerProcess, bad: Any) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            # at connect: refused, not connected, not closed
            client = await cs.raw()
            await client.send({"type": "connect", "channels": [channel, bad]})
            await expect_error(client, "bad_request")
            await client.send({"type": "connect", "channels": [channel]})
            await client.expect("connected")
            for frame in (
                {"type": "send", "channelId": bad, "content": "x"},
                {"type": "subscribe", "channels": [bad]},
                {"type": "unsubscribe", "channels": [bad]},
                {"type": "history", "requestId": "h", "channelId": bad},
            ):
                await client.send(frame)
                await expect_error(client, "bad_request")
            await _assert_open(client, channel)

    run(scenario())


def test_longest_channel_id_is_fine(server: ServerProcess) -> None:
    channel = ("Az09_.:-" * 8)[:64]
    channel = channel[:54] + fresh("")[1:]

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            ack = await send_message(alice, channel, "long id")
            assert ack["channelId"] == channel

    assert len(channel) == 64
    run(scenario())


def test_binary_frames_are_bad_request(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            await client.ws.send(b'{"type": "connect", "channels": ["x"]}')
            await expect_error(client, "bad_request")
            await client.send({"type": "connect", "channels": [channel]})
            await client.expect("connected")
            for payload in (b"\x00\xff\x10", b"hello", b""):
                await client.ws.send(payload)
                await expect_error(client, "bad_request")
            await _assert_open(client, channel)

    run(scenario())


@pytest.mark.parametrize("kind", ["text", "binary", "text-before-connect"])
def test_oversize_frame_closes_1009(server: ServerProcess, kind: str) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            if kind == "text-before-connect":
                client = await cs.raw()
            else:
                client = await cs.connect("big", [channel])
            if kind == "binary":
                await client.ws.send(b"x" * (MAX_FRAME_BYTES + 1))
            else:
                frame = {"type": "send", "channelId": channel, "content": "x"}
                frame["pad"] = "p" * MAX_FRAME_BYTES
                await client.send(frame)
            assert await expect_close(client) == 1009

    run(scenario())


def test_frame_at_the_byte_limit_is_not_closed(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            head = {"type": "send", "channelId": channel, "content": "ok", "clientMsgId": "edge"}
            text = orjson.dumps(head).decode()
            # pad with an ignored field to exactly MAX_FRAME_BYTES bytes
            pad = MAX_FRAME_BYTES - len(text) - len(',"pad":""')
            text = text[:-1] + ',"pad":"' + "p" * pad + '"}'
            assert len(text.encode()) == MAX_FRAME_BYTES
            await alice.send(text)
            await expect_reply(alice, "ack", clientMsgId="edge")
            # multibyte: 4000 chars of 4 UTF-8 bytes each is still within both limits
            emoji = "\U0001f600" * MAX_CONTENT_CHARS
            ack = await send_message(alice, channel, emoji)
            (message,) = [m for m in await received(alice, 2) if m["messageId"] == ack["messageId"]]
            assert message["content"] == emoji

    run(scenario())


def test_content_over_max_is_too_large(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            await alice.send(
                {
                    "type": "send",
                    "channelId": channel,
                    "content": "x" * (MAX_CONTENT_CHARS + 1),
                    "clientMsgId": "big-1",
                }
            )
            error = await expect_error(alice, "too_large")
            assert error["clientMsgId"] == "big-1"
            await alice.send({"content": "é" * (MAX_CONTENT_CHARS + 1), "clientMsgId": "big-2"})
            assert (await expect_error(alice, "too_large"))["clientMsgId"] == "big-2"
            # plain text too
            await alice.send("y" * (MAX_CONTENT_CHARS + 1))
            await expect_error(alice, "too_large")
            # exactly the limit is fine
            ok = await send_message(alice, channel, "z" * MAX_CONTENT_CHARS, "fits")
            (got,) = await received(bob, 1)
            assert got["messageId"] == ok["messageId"], "nothing too large was stored"
            assert int(ok["messageId"]) == 1

    run(scenario())


def test_ping_pong(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [fresh()])
            for _ in range(3):
                await alice.send({"type": "ping"})
                assert await alice.recv() == {"type": "pong"}

    run(scenario())


def test_many_errors_in_a_row_do_not_close(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            for i in range(60):
                await alice.send(MALFORMED[i % len(MALFORMED)])
            for _ in range(60):
                await expect_error(alice, "bad_request")
            await _assert_open(alice, channel)

    run(scenario())


def test_bad_input_never_affects_another_connection(server: ServerProcess) -> None:
    channel = fresh()
    count = 40

    async def scenario() -> None:
        async with clients(server) as cs:
            bystander = await cs.connect("bystander", [channel])
            sender = await cs.connect("sender", [channel])
            attackers = [await cs.connect(f"attacker{i}", [channel]) for i in range(4)]

            async def garbage(n: int, client: Client) -> None:
                for i in range(count):
                    choice = (n + i) % 7
                    if choice == 0:
                        await client.ws.send(b"\x00\x01binary")
                    elif choice == 1:
                        await client.send(MALFORMED[i % len(MALFORMED)])
                    elif choice == 2:
                        await client.send(WRONG_TYPES[i % len(WRONG_TYPES)])
                    elif choice == 3:
                        await client.send({"content": "x" * (MAX_CONTENT_CHARS + 1)})
                    elif choice == 4:
                        await client.send({"type": "send", "channelId": "other", "content": "x"})
                    elif choice == 5:
                        await client.send({"type": "history", "channelId": channel, "limit": 0})
                    else:
                        await client.send({"type": "subscribe", "channels": ["bad id"]})
                if n == 0:  # and one of them gets itself closed
                    await client.ws.send("{" + " " * MAX_FRAME_BYTES + "}")

            async def chat() -> list[str]:
                return [
                    (await send_message(sender, channel, f"real {i}"))["messageId"]
                    for i in range(count)
                ]

            results = await asyncio.gather(
                chat(), *(garbage(n, a) for n, a in enumerate(attackers))
            )
            ids = results[0]
            got = await received(bystander, count)
            assert [m["messageId"] for m in got] == ids
            assert [m["content"] for m in got] == [f"real {i}" for i in range(count)]
            assert not [f for f in bystander.frames if f["type"] == "error"]
            assert await expect_close(attackers[0]) == 1009
            # the other attackers got only errors, never a close, and no internal error
            for attacker in attackers[1:]:
                await ping_pong(attacker)
                codes = {f["code"] for f in attacker.frames if f["type"] == "error"}
                assert "internal" not in codes, codes
            await _assert_open(bystander, channel)

    run(scenario(), timeout=90)


def test_abrupt_disconnect_does_not_affect_others(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            bystander = await cs.connect("bystander", [channel])
            sender = await cs.connect("sender", [channel])
            for i in range(5):
                leaver = await cs.connect(f"leaver{i}", [channel])
                await send_message(leaver, channel, "bye")
                # drop the TCP connection without a close handshake
                transport = leaver.ws.transport
                transport.abort()
            ack = await send_message(sender, channel, "after")
            got = await received(bystander, 6)
            assert got[-1]["messageId"] == ack["messageId"]
            assert len({m["messageId"] for m in got}) == 6

    run(scenario())


def test_connections_closed_badly_are_all_released(server: ServerProcess) -> None:
    """Oversize closes, aborted sockets and abandoned handshakes leave no connection behind."""
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            for i in range(6):
                big = await cs.connect(f"big{i}", [channel])
                await big.ws.send(b"x" * (MAX_FRAME_BYTES + 1))
                assert await expect_close(big) == 1009
                gone = await cs.connect(f"gone{i}", [channel])
                await send_message(gone, channel, "then vanish")
                gone.ws.transport.abort()
                half = await cs.raw()
                await half.send({"type": "ping"})
                await expect_error(half, "handshake_required")

    run(scenario())

    wait_until(
        lambda: gateway_connections(server) == 0, 15, "chime_connections back to 0", interval=0.2
    )
