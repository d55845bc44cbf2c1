"""PROTOCOL.md "ChimeMessage", "Sending" and "Subscriptions" over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from chime_actors.persister.sequencer import owner_index
from tests.e2e.client import Client
from tests.e2e.conftest import (
    assert_chime_message,
    clients,
    expect_error,
    expect_reply,
    fresh,
    ping_pong,
    received,
    run,
    seen,
    send_message,
)
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e


def test_ack_and_broadcast_to_every_subscriber_including_sender(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            others = [await cs.connect(f"user{i}", [channel]) for i in range(5)]
            outsider = await cs.connect("outsider", [fresh()])
            ack = await send_message(
                alice, channel, "hello all", "c-1", metadata={"k": "v"}, threadId=None
            )
            assert set(ack) == {"type", "clientMsgId", "channelId", "messageId", "createdAt"}
            assert ack["clientMsgId"] == "c-1"
            assert ack["channelId"] == channel
            for client in [alice, *others]:
                (message,) = await received(client, 1)
                assert_chime_message(message)
                assert message["messageId"] == ack["messageId"]
                assert message["createdAt"] == ack["createdAt"]
                assert message["channelId"] == channel
                assert message["userId"] == "alice"
                assert message["content"] == "hello all"
                assert message["metadata"] == {"k": "v"}
                assert message["clientMsgId"] == "c-1"
                assert message["editedAt"] is None
                assert message["threadId"] is None
            # the ack means durable: history has it at once
            await alice.send({"type": "history", "requestId": "h", "channelId": channel})
            history = await expect_reply(alice, "history", requestId="h")
            assert [m["messageId"] for m in history["messages"]] == [ack["messageId"]]
            # a connection in another channel gets nothing of it
            await ping_pong(outsider)
            assert not [f for f in outsider.frames if f["type"] == "message"]

    run(scenario())


def test_message_ids_fixed_width_and_sortable(server: ServerProcess) -> None:
    channel = fresh()
    count = 25

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            acks = [await send_message(alice, channel, f"m{i}") for i in range(count)]
            ids = [a["messageId"] for a in acks]
            assert len({len(i) for i in ids}) == 1, ids
            assert ids == sorted(ids)
            assert len(set(ids)) == count
            # every subscriber gets the channel's messages in id order
            received = await bob.messages(count)
            assert [m["messageId"] for m in received] == ids
            assert [m["content"] for m in received] == [f"m{i}" for i in range(count)]
            created = [m["createdAt"] for m in received]
            assert created == sorted(created)

    run(scenario())


def test_concurrent_senders_order_is_id_order_for_everyone(server: ServerProcess) -> None:
    channel = fresh()
    per_sender = 20

    async def scenario() -> None:
        async with clients(server) as cs:
            senders = [await cs.connect(f"s{i}", [channel]) for i in range(4)]
            watchers = [await cs.connect(f"w{i}", [channel]) for i in range(4)]

            async def burst(client: Client, n: int) -> None:
                for i in range(per_sender):
                    await client.send({"type": "send", "channelId": channel, "content": f"{n}:{i}"})

            await asyncio.gather(*(burst(c, n) for n, c in enumerate(senders)))
            total = per_sender * len(senders)
            seen = [await w.messages(total) for w in watchers]
            ids = [m["messageId"] for m in seen[0]]
            assert ids == sorted(ids) and len(set(ids)) == total
            for other in seen[1:]:
                assert [m["messageId"] for m in other] == ids
            # each sender's own messages keep their order
            for n in range(len(senders)):
                mine = [m["content"] for m in seen[0] if m["userId"] == f"s{n}"]
                assert mine == [f"{n}:{i}" for i in range(per_sender)]

    run(scenario())


@pytest.mark.parametrize("text", ["hello", "[1,2]", "42", "  not json {", "null", '"quoted"'])
def test_plain_text_frames_are_sends(server: ServerProcess, text: str) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel, fresh()])
            bob = await cs.connect("bob", [channel])
            await alice.send(text)
            ack = await alice.expect("ack")
            assert ack["channelId"] == channel  # the connect's first channel
            assert ack["clientMsgId"] is None
            (message,) = await received(bob, 1)
            assert message["content"] == text
            assert message["messageId"] == ack["messageId"]
            assert message["userId"] == "alice"

    run(scenario())


def test_seed_send_object_without_type(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await alice.send({"content": "x"})
            ack = await alice.expect("ack")
            assert ack["channelId"] == channel
            (message,) = await received(alice, 1)
            assert message["content"] == "x"
            await alice.send({"content": "y", "clientMsgId": "seed-2"})
            ack2 = await expect_reply(alice, "ack", clientMsgId="seed-2")
            assert ack2["messageId"] > ack["messageId"]

    run(scenario())


def test_lone_brace_is_bad_request(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            for garbage in ("{", "  {", '{"content": "x"', "{}", '{"a": 1} trailing'):
                await alice.send(garbage)
                await expect_error(alice, "bad_request")
            await ping_pong(alice)
            assert not [f for f in alice.frames if f["type"] in ("ack", "message")]

    run(scenario())


def test_send_without_channel_id_goes_to_first_channel(server: ServerProcess) -> None:
    first, second = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [first, second])
            in_second = await cs.connect("bob", [second])
            ack = await send_message(alice, None, "default")
            assert ack["channelId"] == first
            (message,) = await received(alice, 1)
            assert message["channelId"] == first
            # the second channel got nothing: a message sent there arrives first
            ack2 = await send_message(alice, second, "explicit")
            (got,) = await received(in_second, 1)
            assert got["messageId"] == ack2["messageId"] and got["content"] == "explicit"

    run(scenario())


def test_send_to_unsubscribed_channel_is_refused(server: ServerProcess) -> None:
    mine, theirs = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [mine])
            bob = await cs.connect("bob", [theirs])
            await alice.send(
                {"type": "send", "channelId": theirs, "content": "sneaky", "clientMsgId": "n-1"}
            )
            error = await expect_error(alice, "not_subscribed")
            assert error["clientMsgId"] == "n-1"
            # nothing was stored or delivered
            ack = await send_message(bob, theirs, "legit")
            (message,) = await received(bob, 1)
            assert message["messageId"] == ack["messageId"]
            assert int(ack["messageId"]) == 1
            await alice.send({"type": "history", "requestId": "h", "channelId": theirs})
            history = await expect_reply(alice, "history", requestId="h")
            assert [m["content"] for m in history["messages"]] == ["legit"]

    run(scenario())


def test_idempotent_send(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            first = await send_message(alice, channel, "once", "dup-1")
            again = await send_message(alice, channel, "once", "dup-1")
            assert again["messageId"] == first["messageId"]
            assert again["createdAt"] == first["createdAt"]
            # the same clientMsgId from another user is another message
            other = await send_message(bob, channel, "bob's", "dup-1")
            assert other["messageId"] != first["messageId"]
            after = await send_message(alice, channel, "next", "dup-2")
            # one broadcast of dup-1: bob's next messages are dup-1, bob's, next
            got = await received(bob, 3)
            assert [m["messageId"] for m in got] == [
                first["messageId"],
                other["messageId"],
                after["messageId"],
            ]
            await alice.send({"type": "history", "requestId": "h", "channelId": channel})
            history = await expect_reply(alice, "history", requestId="h")
            assert [m["content"] for m in history["messages"]] == ["once", "bob's", "next"]

    run(scenario())


def test_idempotent_send_in_flight_twice(server: ServerProcess) -> None:
    """Both copies sent before either ack: still one message, two equal acks."""
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            frame = {"type": "send", "channelId": channel, "content": "x", "clientMsgId": "d"}
            await alice.send(frame)
            await alice.send(frame)
            acks = [await expect_reply(alice, "ack", clientMsgId="d") for _ in range(2)]
            assert acks[0]["messageId"] == acks[1]["messageId"]
            marker = await send_message(alice, channel, "marker")
            got = await received(bob, 2)
            assert [m["messageId"] for m in got] == [acks[0]["messageId"], marker["messageId"]]

    run(scenario())


def test_subscribe_and_unsubscribe(server: ServerProcess) -> None:
    home = fresh()
    # the probe channel shares home's persister, so its delivery follows home's
    probe = next(c for c in iter(fresh, None) if owner_index(c, 2) == owner_index(home, 2))

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [probe])
            bob = await cs.connect("bob", [home])
            await alice.send({"type": "subscribe", "channels": [home]})
            reply = await alice.expect("subscribed")
            assert reply["channels"] == [home]
            ack = await send_message(bob, home, "welcome")
            (message,) = await received(alice, 1, home)
            assert message["messageId"] == ack["messageId"]
            # now alice may send there
            await send_message(alice, home, "thanks")

            await alice.send({"type": "unsubscribe", "channels": [home]})
            reply = await alice.expect("unsubscribed")
            assert reply["channels"] == [home]
            await alice.send(
                {"type": "send", "channelId": home, "content": "x", "clientMsgId": "u"}
            )
            assert (await expect_error(alice, "not_subscribed"))["clientMsgId"] == "u"
            missed = await send_message(bob, home, "after unsubscribe")
            marker = await send_message(alice, probe, "marker")
            (got,) = await received(alice, 1, probe)
            assert got["messageId"] == marker["messageId"]
            home_ids = [m["messageId"] for m in seen(alice, home)]
            assert missed["messageId"] not in home_ids, home_ids

    run(scenario())


def test_subscribe_is_idempotent_and_unsubscribe_of_unknown_is_harmless(
    server: ServerProcess,
) -> None:
    channel, extra = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await alice.send({"type": "subscribe", "channels": [channel, extra]})
            await alice.expect("subscribed")
            await alice.send({"type": "unsubscribe", "channels": [fresh()]})
            await alice.expect("unsubscribed")
            ack = await send_message(alice, channel, "once only")
            marker = await send_message(alice, extra, "marker")
            await received(alice, 1, extra)
            got = await received(alice, 2)
            ids = sorted(m["messageId"] + m["channelId"] for m in got)
            assert ids == sorted([ack["messageId"] + channel, marker["messageId"] + extra]), (
                "a double subscription must not deliver twice"
            )
            assert len(seen(alice)) == 2

    run(scenario())


def test_subscribe_bad_requests(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            for frame in (
                {"type": "subscribe"},
                {"type": "subscribe", "channels": "general"},
                {"type": "subscribe", "channels": ["bad channel"]},
                {"type": "unsubscribe", "channels": [1]},
            ):
                await alice.send(frame)
                await expect_error(alice, "bad_request")
            await ping_pong(alice)

    run(scenario())


def test_idempotency_spans_connections(server: ServerProcess) -> None:
    """The key is (userId, channelId, clientMsgId), not the connection."""
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            first = await cs.connect("alice", [channel])
            original = await send_message(first, channel, "retry me", "retry-1")
            await first.close()
            # a reconnect (perhaps to the other gateway) retries the unacked-looking send
            for _ in range(4):
                again = await cs.connect("alice", [channel])
                retry = await send_message(again, channel, "retry me", "retry-1")
                assert retry["messageId"] == original["messageId"]
            await again.send({"type": "history", "requestId": "h", "channelId": channel})
            history = await expect_reply(again, "history", requestId="h")
            assert [m["messageId"] for m in history["messages"]] == [original["messageId"]]

    run(scenario())


def test_send_without_channel_id_after_leaving_the_first_channel(server: ServerProcess) -> None:
    first, second = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [first, second])
            await alice.send({"type": "unsubscribe", "channels": [first]})
            await alice.expect("unsubscribed")
            # the default stays the connect's first channel: refused, not redirected
            await alice.send({"content": "where to?", "clientMsgId": "w"})
            assert (await expect_error(alice, "not_subscribed"))["clientMsgId"] == "w"

    run(scenario())


def test_connect_without_channels_then_send_needs_channel_id(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [])
            assert alice.frames[-1]["channels"] == []
            await alice.send("hello")
            await expect_error(alice, "bad_request")
            await alice.send({"type": "subscribe", "channels": [channel]})
            await alice.expect("subscribed")
            ack = await send_message(alice, channel, "now")
            assert ack["channelId"] == channel

    run(scenario())


def test_resubscribing_repeatedly_never_misses_or_repeats(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [fresh()])
            bob = await cs.connect("bob", [channel])
            wanted: list[str] = []
            for i in range(15):
                await alice.send({"type": "subscribe", "channels": [channel]})
                await alice.expect("subscribed")
                wanted.append((await send_message(bob, channel, f"n{i}"))["messageId"])
                got = await received(alice, len(seen(alice, channel)) + 1, channel)
                while got[-1]["messageId"] != wanted[-1]:
                    got = await received(alice, len(got) + 1, channel)
                await alice.send({"type": "unsubscribe", "channels": [channel]})
                await alice.expect("unsubscribed")
                # sent while alice is out
                await send_message(bob, channel, f"gap{i}")
            await alice.send({"type": "subscribe", "channels": [channel]})
            await alice.expect("subscribed")
            wanted.append((await send_message(bob, channel, "last"))["messageId"])
            got = await received(alice, len(seen(alice, channel)) + 1, channel)
            while got[-1]["messageId"] != wanted[-1]:
                got = await received(alice, len(got) + 1, channel)
            ids = [m["messageId"] for m in got]
            # every message sent while subscribed, in order, none twice
            assert ids == sorted(set(ids)), ids
            assert set(wanted) <= set(ids)
            # nothing reaches her between an unsubscribed and the next subscribed. (A
            # message stored just before a subscribe may still arrive after it: the
            # subscription starts from what this gateway has delivered, not from
            # storage.)
            out = False
            for frame in alice.frames:
                if frame["type"] in ("subscribed", "unsubscribed"):
                    out = frame["type"] == "unsubscribed"
                elif frame["type"] == "message" and frame["message"]["channelId"] == channel:
                    assert not out, f"delivered while unsubscribed: {frame}"

    run(scenario())


@pytest.mark.parametrize("round_", range(2))
def test_nothing_arrives_after_unsubscribed(server: ServerProcess, round_: int) -> None:
    """Unsubscribe in the middle of a flood: once ``unsubscribed`` is read, the flow stops."""
    channel, other = fresh(), fresh()
    flood = 300

    async def scenario() -> None:
        async with clients(server) as cs:
            # several listeners, so the channel stays busy on both gateways
            alice = await cs.connect("alice", [channel, other])
            bobs = [await cs.connect(f"bob{i}", [channel]) for i in range(3)]

            async def pour() -> None:
                for i in range(flood):
                    await bobs[0].send({"type": "send", "channelId": channel, "content": f"{i}"})

            pouring = asyncio.create_task(pour())
            await received(alice, 20 + round_ * 40, channel)
            await alice.send({"type": "unsubscribe", "channels": [channel]})
            await alice.expect("unsubscribed")
            await pouring
            await received(bobs[1], flood, channel, timeout=30)
            marker = await send_message(alice, other, "marker")
            await received(alice, 1, other)
            after = alice.frames.index(next(f for f in alice.frames if f["type"] == "unsubscribed"))
            late = [
                f["message"]["messageId"]
                for f in alice.frames[after:]
                if f["type"] == "message" and f["message"]["channelId"] == channel
            ]
            assert late == [], f"{len(late)} messages after unsubscribed"
            assert marker["channelId"] == other

    run(scenario())
