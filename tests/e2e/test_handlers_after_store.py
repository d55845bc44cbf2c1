"""after_store handlers in a real server: echo_bot's loop; a crashing handler delays nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import clients, fresh, received, run, send_message
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handlers = [
        {
            "name": "echo",
            "use": "echo_bot",
            "stage": "after_store",
            "channels": ["echo-*"],
            "options": {"user": "echo-bot", "prefix": "!echo "},
        },
        {
            "name": "blocker",
            "use": "tests.e2e.handler_fixtures:block",
            "stage": "after_store",
            "channels": ["block-*"],
            "timeout_ms": 200,
            "backlog": 3,
        },
        {
            "name": "crasher",
            "use": "tests.e2e.handler_fixtures:crash_process",
            "stage": "after_store",
            "channels": ["crash-*"],
        },
    ]
    with running_server(
        tmp_path_factory.mktemp("after-store"),
        overrides={"handlers": handlers},
        env_overrides={"PYTHONPATH": str(REPO)},
    ) as srv:
        yield srv


def readiness(server: ServerProcess) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{server.api}/readyz", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
    return body


def metrics(server: ServerProcess) -> list[str]:
    with urllib.request.urlopen(f"{server.api}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text.splitlines()


def test_echo_bot_replies_in_the_channel_as_its_user(server: ServerProcess) -> None:
    channel = fresh("echo")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            ack = await send_message(alice, channel, "!echo hello world")
            first, reply = await received(bob, 2)
            assert first["messageId"] == ack["messageId"]
            assert reply["userId"] == "echo-bot"
            assert reply["content"] == "hello world"
            assert reply["channelId"] == channel
            assert reply["messageId"] == "0000000000000002"
            # Not prefixed: no reply.
            await send_message(alice, channel, "just talking")
            await send_message(alice, channel, "!echo again")
            later = await received(bob, 5)
            assert [(m["userId"], m["content"]) for m in later[2:]] == [
                ("alice", "just talking"),
                ("alice", "!echo again"),
                ("echo-bot", "again"),
            ]

    run(scenario())


def test_a_handler_that_kills_its_process_delays_no_ack(server: ServerProcess) -> None:
    """Every message kills the handler's process; sends and deliveries go on as ever."""
    channel = fresh("crash")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            for n in range(20):
                ack = await send_message(alice, channel, f"m{n}")
                assert ack["messageId"] == f"{n + 1:016d}"
            got = await received(bob, 20)
            assert [m["content"] for m in got] == [f"m{n}" for n in range(20)]

    run(scenario())
    # It keeps being restarted; the server stays up and ready, and names it.
    wait_until(lambda: readiness(server).get("checks", {}).get("handler crasher") is False)
    body = readiness(server)
    assert body["ready"] is True
    assert server.proc.poll() is None


def test_a_handler_that_blocks_its_thread_delays_no_ack_and_keeps_its_bound(
    server: ServerProcess,
) -> None:
    """Far past its backlog of 3, with its thread stuck: sends and deliveries go on."""
    channel = fresh("block")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            for n in range(40):
                await alice.send(
                    {
                        "type": "send",
                        "channelId": channel,
                        "content": f"m{n}",
                        "clientMsgId": f"c{n}",
                    }
                )
            got = await received(bob, 40)
            assert [m["content"] for m in got] == [f"m{n}" for n in range(40)]
            acks = [f for f in alice.frames if f.get("type") == "ack"]
            while len(acks) < 40:
                await alice.expect("ack")
                acks = [f for f in alice.frames if f.get("type") == "ack"]

    run(scenario())
    assert readiness(server)["ready"] is True
    # In memory it holds at most its backlog; the rest waits in storage.
    sample = 'chime_queue_depth{process="handler 2",queue="handler_backlog"} '
    line = wait_until(lambda: next((x for x in metrics(server) if x.startswith(sample)), ""))
    assert float(line.split()[-1]) <= 3
