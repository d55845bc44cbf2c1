"""PROTOCOL.md "History" over the WebSocket and over REST."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import (
    assert_chime_message,
    clients,
    expect_error,
    expect_reply,
    fresh,
    http_get,
    ping_pong,
    run,
    send_message,
)
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

COUNT = 7


@pytest.fixture(scope="module")
def filled(server: ServerProcess) -> tuple[str, list[str]]:
    """A channel with COUNT messages m0..m6; returns (channel, their ids)."""
    channel = fresh("hist")

    async def scenario() -> list[str]:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            return [
                (await send_message(alice, channel, f"m{i}"))["messageId"] for i in range(COUNT)
            ]

    return channel, run(scenario())


async def ws_history(client: Client, channel: str, **params: Any) -> dict[str, Any]:
    request_id = f"r-{len(client.frames)}"
    await client.send({"type": "history", "requestId": request_id, "channelId": channel, **params})
    reply = await expect_reply(client, "history", requestId=request_id)
    assert reply["channelId"] == channel
    assert isinstance(reply["hasMore"], bool)
    for message in reply["messages"]:
        assert_chime_message(message)
    return reply


def rest_history(server: ServerProcess, channel: str, **params: Any) -> dict[str, Any]:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    status, body = http_get(f"{server.api}/v1/channels/{quote(channel)}/messages?{query}")
    assert status == 200, body
    assert set(body) == {"messages", "hasMore"}
    for message in body["messages"]:
        assert_chime_message(message)
    return body  # type: ignore[no-any-return]


def _page(ids: list[str], body: dict[str, Any]) -> tuple[list[int], bool]:
    return [ids.index(m["messageId"]) for m in body["messages"]], body["hasMore"]


# (params given as indexes into the filled channel's ids) -> (expected indexes, hasMore)
PAGES: list[tuple[dict[str, Any], list[int], bool]] = [
    ({}, [0, 1, 2, 3, 4, 5, 6], False),
    ({"limit": 3}, [4, 5, 6], True),
    ({"limit": 7}, [0, 1, 2, 3, 4, 5, 6], False),
    ({"before": 4, "limit": 3}, [1, 2, 3], True),
    ({"before": 1, "limit": 3}, [0], False),
    ({"before": 0}, [], False),
    ({"after": 2, "limit": 2}, [3, 4], True),
    ({"after": 4, "limit": 10}, [5, 6], False),
    ({"after": 6}, [], False),
    ({"limit": 1}, [6], True),
    # exact boundaries: nothing more on the far side
    ({"after": 4, "limit": 2}, [5, 6], False),
    ({"before": 2, "limit": 2}, [0, 1], False),
    ({"before": 3, "limit": 2}, [1, 2], True),
    ({"after": 3, "limit": 2}, [4, 5], True),
]


def _resolve(ids: list[str], params: dict[str, Any]) -> dict[str, Any]:
    return {k: ids[v] if k in ("before", "after") else v for k, v in params.items()}


@pytest.mark.parametrize(("params", "want", "more"), PAGES)
def test_ws_history_pages(
    server: ServerProcess,
    filled: tuple[str, list[str]],
    params: dict[str, Any],
    want: list[int],
    more: bool,
) -> None:
    channel, ids = filled

    async def scenario() -> dict[str, Any]:
        async with clients(server) as cs:
            # history does not need a subscription to the channel
            reader = await cs.connect("reader", [fresh()])
            return await ws_history(reader, channel, **_resolve(ids, params))

    reply = run(scenario())
    assert _page(ids, reply) == (want, more)


@pytest.mark.parametrize(("params", "want", "more"), PAGES)
def test_rest_history_pages(
    server: ServerProcess,
    filled: tuple[str, list[str]],
    params: dict[str, Any],
    want: list[int],
    more: bool,
) -> None:
    channel, ids = filled
    body = rest_history(server, channel, **_resolve(ids, params))
    assert _page(ids, body) == (want, more)


def test_history_paging_walks_everything_once(
    server: ServerProcess, filled: tuple[str, list[str]]
) -> None:
    channel, ids = filled
    collected: list[str] = []
    body = rest_history(server, channel, limit=2)
    collected = [m["messageId"] for m in body["messages"]]
    while body["hasMore"]:
        body = rest_history(server, channel, limit=2, before=collected[0])
        collected = [m["messageId"] for m in body["messages"]] + collected
    assert collected == ids
    assert [m["content"] for m in rest_history(server, channel)["messages"]] == [
        f"m{i}" for i in range(COUNT)
    ]


def test_history_of_unknown_channel_is_empty(server: ServerProcess) -> None:
    assert rest_history(server, fresh()) == {"messages": [], "hasMore": False}


def test_rest_and_ws_history_agree(server: ServerProcess, filled: tuple[str, list[str]]) -> None:
    channel, _ = filled

    async def scenario() -> dict[str, Any]:
        async with clients(server) as cs:
            reader = await cs.connect("reader", [channel])
            return await ws_history(reader, channel)

    ws = run(scenario())
    rest = rest_history(server, channel)
    # The same messages, each with its reactions and reply count, both ways.
    assert ws["messages"] == rest["messages"]
    assert all(m["reactions"] == {} and m["replyCount"] == 0 for m in rest["messages"])


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "5"},
        {"limit": 5.5},
        {"limit": True},
        {"before": "nope"},
        {"after": 12},
        {"before": "1"},
        {"threadId": "x"},
    ],
    ids=repr,
)
def test_ws_history_bad_params(server: ServerProcess, params: dict[str, Any]) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            frame = {"type": "history", "requestId": "bad", "channelId": channel, **params}
            await alice.send(frame)
            error = await expect_error(alice, "bad_request")
            assert error["requestId"] == "bad"
            await ping_pong(alice)

    run(scenario())


def test_ws_history_bad_channel(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [fresh()])
            for channel in ("", "has space", "x" * 65, 5, None):
                await alice.send({"type": "history", "requestId": "q", "channelId": channel})
                assert (await expect_error(alice, "bad_request"))["requestId"] == "q"
            await ping_pong(alice)

    run(scenario())


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=-1", "limit=abc", "limit=5.0", "before=nope", "after=123"],
)
def test_rest_history_bad_params_are_400(
    server: ServerProcess, filled: tuple[str, list[str]], query: str
) -> None:
    channel, _ = filled
    status, body = http_get(f"{server.api}/v1/channels/{channel}/messages?{query}")
    assert status == 400, body


def test_rest_history_bad_channel_is_400(server: ServerProcess) -> None:
    for channel in ("has%20space", "x" * 65, "%FF"):
        status, body = http_get(f"{server.api}/v1/channels/{channel}/messages")
        assert status == 400, (channel, body)


def test_rest_limit_bounds_accepted(server: ServerProcess, filled: tuple[str, list[str]]) -> None:
    channel, ids = filled
    assert len(rest_history(server, channel, limit=1)["messages"]) == 1
    assert len(rest_history(server, channel, limit=100)["messages"]) == len(ids)


def test_history_between_before_and_after(
    server: ServerProcess, filled: tuple[str, list[str]]
) -> None:
    """docs/protocol.md: the oldest ``limit`` strictly between the two."""
    channel, ids = filled
    body = rest_history(server, channel, after=ids[1], before=ids[5], limit=2)
    assert _page(ids, body) == ([2, 3], True)
    body = rest_history(server, channel, after=ids[1], before=ids[5], limit=3)
    assert _page(ids, body) == ([2, 3, 4], False)


def test_channel_ids_with_every_allowed_character(server: ServerProcess) -> None:
    channel = "Team:general.v1_x-" + fresh("")[1:]

    async def scenario() -> str:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            ack = await send_message(alice, channel, "punctuated")
            assert ack["channelId"] == channel
            reply = await ws_history(alice, channel)
            assert [m["messageId"] for m in reply["messages"]] == [ack["messageId"]]
            return str(ack["messageId"])

    message_id = run(scenario())
    # REST, with the channel id percent-encoded (":" -> %3A) and as is
    assert [m["messageId"] for m in rest_history(server, channel)["messages"]] == [message_id]
    status, body = http_get(f"{server.api}/v1/channels/{channel}/messages")
    assert status == 200, body
    assert [m["channelId"] for m in body["messages"]] == [channel]
