"""``limits.messages_per_10s`` over real sockets (PROTOCOL.md "Errors and limits")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import clients, expect_close, fresh, run, send_message
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

LIMIT = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"limits.messages_per_10s": LIMIT}
    # One gateway, so that a user's connections share one bucket.
    with running_server(tmp_path_factory.mktemp("rate"), overrides, workers=1) as srv:
        yield srv


def send_frame(channel: str, n: int) -> dict[str, Any]:
    return {"type": "send", "channelId": channel, "content": f"m{n}", "clientMsgId": f"c{n}"}


def test_past_the_limit_a_send_is_refused_with_retry_after(server: ServerProcess) -> None:
    async def scenario() -> None:
        channel = fresh("rate")
        async with clients(server) as cs:
            alice = await cs.connect("alice-rate", [channel])
            for n in range(LIMIT):
                await send_message(alice, channel, f"ok {n}", f"ok-{n}")
            await alice.send(send_frame(channel, 99))
            refused = await alice.expect("error")
            assert refused["code"] == "rate_limited", refused
            assert refused["clientMsgId"] == "c99"
            assert isinstance(refused["retryAfterMs"], int) and refused["retryAfterMs"] > 0
            # Another user is not affected.
            bob = await cs.connect("bob-rate", [channel])
            await send_message(bob, channel, "bob is fine")
            # The refused message was not stored.
            await bob.send({"type": "history", "requestId": "h", "channelId": channel})
            page = await bob.expect("history")
            assert "m99" not in [m["content"] for m in page["messages"]]

    run(scenario())


def test_the_limit_is_per_user_across_connections(server: ServerProcess) -> None:
    async def scenario() -> None:
        channel = fresh("rate-user")
        async with clients(server) as cs:
            first = await cs.connect("carol-rate", [channel])
            second = await cs.connect("carol-rate", [channel])
            for n in range(LIMIT // 2):
                await send_message(first, channel, f"a{n}")
                await send_message(second, channel, f"b{n}")
            await second.send(send_frame(channel, 1))
            assert (await second.expect("error"))["code"] == "rate_limited"

    run(scenario())


def test_a_connection_that_keeps_flooding_is_closed_with_4008(server: ServerProcess) -> None:
    async def scenario() -> None:
        channel = fresh("rate-flood")
        async with clients(server) as cs:
            flooder = await cs.connect("dave-rate", [channel])
            for n in range(3 * LIMIT):
                await flooder.send(send_frame(channel, n))
            assert await expect_close(flooder) == 4008
            codes = [f["code"] for f in flooder.frames if f.get("type") == "error"]
            assert codes and set(codes) == {"rate_limited"}
            # What was within the limit is stored (its acks may not have beaten the
            # close); nothing past it is.
            reader = await cs.connect("erin-rate", [channel])
            stored: list[str] = []
            for attempt in range(100):
                await reader.send(
                    {"type": "history", "requestId": f"h{attempt}", "channelId": channel}
                )
                stored = [m["content"] for m in (await reader.expect("history"))["messages"]]
                if len(stored) >= LIMIT:
                    break
                await asyncio.sleep(0.1)
            assert stored == [f"m{n}" for n in range(LIMIT)]

    run(scenario())
