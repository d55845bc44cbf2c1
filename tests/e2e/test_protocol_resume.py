"""PROTOCOL.md "Resume": no gaps and no duplicates after a reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from chime_actors.ids import format_message_id
from tests.e2e.client import Client
from tests.e2e.conftest import (
    TIGHT_MAX_RESUME,
    Clients,
    clients,
    expect_error,
    fresh,
    received,
    run,
    seen,
    send_message,
)
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e


async def fill(client: Client, channel: str, count: int) -> list[str]:
    return [(await send_message(client, channel, f"m{i}"))["messageId"] for i in range(count)]


async def alice_sent(cs: Clients, channel: str, count: int) -> tuple[Client, list[str]]:
    """Alice, subscribed to ``channel``, sent ``count`` messages: her and their ids."""
    alice = await cs.connect("alice", [channel])
    return alice, await fill(alice, channel, count)


async def resume(
    cs: Clients, user: str, channel: str, last_seen: str
) -> tuple[Client, list[dict[str, Any]], dict[str, Any]]:
    """Connect with a resume point; returns (client, frames before the end marker, marker)."""
    client = await cs.connect(user, [channel], resume={channel: last_seen})
    while True:
        frame = await client.recv()
        if frame["type"] in ("resumed", "resume_failed") and frame.get("channelId") == channel:
            break
    start = next(i for i, f in enumerate(client.frames) if f["type"] == "connected") + 1
    end = client.frames.index(frame)
    return client, client.frames[start:end], frame


async def live_arrives(sender: Client, receiver: Client, channel: str) -> dict[str, Any]:
    """A message ``sender`` sends now is the next ``receiver`` gets; returns the ack."""
    live = await send_message(sender, channel, "live")
    (got,) = await received(receiver, 1, channel)
    assert got["messageId"] == live["messageId"]
    return live


async def check_resume_replays_nothing(
    server: ServerProcess, resume_at: Callable[[list[str]], str]
) -> None:
    """Alice sends 3 messages; bob resumes at ``resume_at(their ids)``, at or past
    the head: nothing is replayed, ``resumed`` counts 0, then live messages arrive."""
    channel = fresh()
    async with clients(server) as cs:
        alice, ids = await alice_sent(cs, channel, 3)
        bob, before, marker = await resume(cs, "bob", channel, resume_at(ids))
        assert marker == {"type": "resumed", "channelId": channel, "count": 0}
        assert not [f for f in before if f["type"] == "message"]
        await live_arrives(alice, bob, channel)


def test_resume_replays_later_messages_then_resumed(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice, ids = await alice_sent(cs, channel, 5)
            bob, before, marker = await resume(cs, "bob", channel, ids[1])
            assert marker == {"type": "resumed", "channelId": channel, "count": 3}
            assert [f["type"] for f in before] == ["message"] * 3
            assert [f["message"]["messageId"] for f in before] == ids[2:]
            assert [f["message"]["content"] for f in before] == ["m2", "m3", "m4"]
            # then live, without replaying anything again
            live = await send_message(alice, channel, "live")
            got = await received(bob, 4, channel)
            assert [m["messageId"] for m in got] == [*ids[2:], live["messageId"]]

    run(scenario())


def test_resume_at_the_head_replays_nothing(server: ServerProcess) -> None:
    run(check_resume_replays_nothing(server, lambda ids: ids[-1]))


def test_resume_only_for_named_channels(server: ServerProcess) -> None:
    resumed_channel, plain = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [resumed_channel, plain])
            ids = await fill(alice, resumed_channel, 2)
            await fill(alice, plain, 2)
            bob = await cs.connect(
                "bob", [resumed_channel, plain], resume={resumed_channel: ids[0]}
            )
            marker = await bob.expect("resumed")
            assert marker["channelId"] == resumed_channel and marker["count"] == 1
            live = await send_message(alice, plain, "live")
            # No replay for ``plain``: bob gets the live message. A message stored
            # just before his subscription may come first (its delivery to his
            # gateway can still be on its way; docs/protocol.md), never after it.
            got = await received(bob, 1, plain)
            while got[-1]["messageId"] != live["messageId"]:
                assert got[-1]["messageId"] < live["messageId"], got
                got = await received(bob, len(got) + 1, plain)
            assert len(got) <= 2, got
            assert [m["messageId"] for m in await received(bob, 1, resumed_channel)] == ids[1:]

    run(scenario())


@pytest.mark.parametrize("round_", range(4))
def test_resume_during_live_traffic_no_gaps_no_duplicates(
    server: ServerProcess, round_: int
) -> None:
    channel = fresh()
    stored = 20
    live_count = 60
    resumers = 6

    async def scenario() -> None:
        async with clients(server) as cs:
            sender = await cs.connect("sender", [channel])
            # subscribers spread over the gateways, so some resumers join a channel
            # actor that is already live and some start a new one
            watchers = [await cs.connect(f"w{i}", [channel]) for i in range(round_)]
            ids = await fill(sender, channel, stored)

            async def live() -> None:
                for i in range(live_count):
                    await sender.send(
                        {
                            "type": "send",
                            "channelId": channel,
                            "content": f"live{i}",
                            "clientMsgId": f"live-{i}",
                        }
                    )
                    if i % 10 == 0:
                        await asyncio.sleep(0)  # let the resumers interleave

            async def resumer(n: int) -> tuple[Client, int]:
                last_seen = ids[(n * 3) % stored]
                client, before, marker = await resume(cs, f"r{n}", channel, last_seen)
                assert marker["type"] == "resumed", marker
                replayed = [f for f in before if f["type"] == "message"]
                assert marker["count"] == len(replayed), (marker, len(replayed))
                return client, int(last_seen)

            results = await asyncio.gather(live(), *(resumer(n) for n in range(resumers)))
            # every live message is durably stored (acked) ...
            while sum(1 for f in sender.frames if f["type"] == "ack") < stored + live_count:
                await sender.expect("ack")
            # ... a marker goes last ...
            marker = await send_message(sender, channel, "marker")
            last = int(marker["messageId"])
            assert last == stored + live_count + 1
            # ... and everybody has every message from its start to the marker, once, in order
            starts = [(w, 0) for w in watchers] + [(r[0], r[1]) for r in results[1:]]
            for client, last_seq in starts:
                want = [format_message_id(s) for s in range(last_seq + 1, last + 1)]
                got = await received(client, len(want), channel)
                assert [m["messageId"] for m in got] == want
                assert len(seen(client, channel)) == len(want), "duplicate delivery"

    run(scenario(), timeout=90)


def test_resume_past_the_limit_fails_with_too_many(tight_server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(tight_server) as cs:
            alice, ids = await alice_sent(cs, channel, TIGHT_MAX_RESUME + 3)
            bob, before, marker = await resume(cs, "bob", channel, ids[0])
            assert marker == {"type": "resume_failed", "channelId": channel, "reason": "too_many"}
            assert not [f for f in before if f["type"] == "message"]
            # still subscribed: live messages arrive, and the client pages history
            live = await live_arrives(alice, bob, channel)
            # exactly the limit is still replayed
            _, before, marker = await resume(cs, "carol", channel, ids[3])
            assert marker == {"type": "resumed", "channelId": channel, "count": TIGHT_MAX_RESUME}
            assert [f["message"]["messageId"] for f in before] == [*ids[4:], live["messageId"]]

    run(scenario())


@pytest.mark.parametrize(
    "resume_value",
    [
        ["x"],
        "0000000000000001",
        {"ch": "not-an-id"},
        {"ch": 5},
        {"bad channel": "0000000000000001"},
    ],
    ids=repr,
)
def test_bad_resume_is_bad_request(server: ServerProcess, resume_value: object) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            client = await cs.raw()
            await client.send({"type": "connect", "channels": [channel], "resume": resume_value})
            await expect_error(client, "bad_request")
            # the connection stays usable: a good connect goes through
            await client.send({"type": "connect", "channels": [channel]})
            await client.expect("connected")

    run(scenario())


def test_resume_point_past_the_head_still_gets_live_messages(server: ServerProcess) -> None:
    """A resume id beyond the channel's last message (a wiped or other server)."""
    run(check_resume_replays_nothing(server, lambda _: format_message_id(50)))


def test_resume_from_zero_replays_the_whole_channel(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            _, ids = await alice_sent(cs, channel, 4)
            _, before, marker = await resume(cs, "bob", channel, format_message_id(0))
            assert marker == {"type": "resumed", "channelId": channel, "count": 4}
            assert [f["message"]["messageId"] for f in before] == ids

    run(scenario())


def test_resume_several_channels_in_connect_order(server: ServerProcess) -> None:
    first, second = fresh(), fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [first, second])
            ids1 = await fill(alice, first, 3)
            ids2 = await fill(alice, second, 2)
            bob = await cs.connect("bob", [first, second], resume={second: ids2[0], first: ids1[0]})
            await bob.expect("resumed")
            await bob.expect("resumed")
            kinds = [
                (f["type"], f.get("channelId") or f["message"]["channelId"])
                for f in bob.frames
                if f["type"] in ("message", "resumed")
            ]
            assert kinds == [
                ("message", first),
                ("message", first),
                ("resumed", first),
                ("message", second),
                ("resumed", second),
            ]

    run(scenario())
