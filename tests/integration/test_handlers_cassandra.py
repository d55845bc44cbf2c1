"""The built-in handlers on Cassandra, and the webhook's cursor across a restart."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import clients, fresh, received, run, send_message
from tests.e2e.webhook_receiver import Receiver, receiver, webhook_handler
from tests.integration.services import backend_overrides, load_services
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

__all__ = ["receiver"]  # the fixture, used by name

pytestmark = pytest.mark.integration


def cassandra_server(tmp: Path, keyspace: str, receiver: Receiver) -> Any:
    """A server on Cassandra (the local bus: after_store handlers run on one host)."""
    overrides = backend_overrides(load_services("cassandra"), keyspace)
    overrides = {k: v for k, v in overrides.items() if not k.startswith("bus.")}
    overrides["handlers"] = [
        {
            "name": "mask",
            "use": "word_filter",
            "stage": "before_store",
            "channels": ["masked-*"],
            "options": {"words": ["darn"], "action": "mask"},
        },
        {
            "name": "echo",
            "use": "echo_bot",
            "stage": "after_store",
            "channels": ["echo-*"],
            "options": {"user": "echo-bot", "prefix": "!echo "},
        },
        webhook_handler(receiver),
    ]
    return running_server(tmp, overrides, workers=1)


def sends(server: ServerProcess, channel: str, contents: list[str]) -> list[str]:
    async def scenario() -> list[str]:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            return [(await send_message(alice, channel, c))["messageId"] for c in contents]

    return run(scenario())


def test_the_built_ins_on_cassandra_and_the_webhook_cursor_across_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    keyspace = f"chime_{uuid.uuid4().hex[:10]}"
    masked, echo, hook = fresh("masked"), fresh("echo"), fresh("hook")
    with cassandra_server(tmp_path, keyspace, receiver) as server:

        async def scenario() -> None:
            async with clients(server) as cs:
                alice = await cs.connect("alice", [masked, echo])
                await send_message(alice, masked, "oh darn")
                await send_message(alice, echo, "!echo on cassandra")
                (stored,) = await received(alice, 1, masked)
                assert stored["content"] == "oh ****"
                _, reply = await received(alice, 2, echo)
                assert (reply["userId"], reply["content"]) == ("echo-bot", "on cassandra")

        run(scenario())
        before = sends(server, hook, ["a", "b"])
        wait_until(lambda: len(receiver.ids(hook)) == 2, what="2 posts")
        receiver.default = "fail"
        during = sends(server, hook, ["c", "d"])
        wait_until(lambda: receiver.requests >= 4, what="retries while down")
    receiver.default = "ok"
    with cassandra_server(tmp_path, keyspace, receiver) as server:
        after = sends(server, hook, ["e"])
        wait_until(lambda: len(receiver.ids(hook)) >= 5, timeout=30, what="5 posts")
    assert receiver.ids(hook) == before + during + after
    assert receiver.bad_signatures == 0
