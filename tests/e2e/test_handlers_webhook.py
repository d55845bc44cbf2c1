"""The webhook built-in against a local HTTP receiver that fails, is slow and comes back."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import clients, fresh, run, send_message
from tests.e2e.webhook_receiver import Receiver, receiver, webhook_handler
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

__all__ = ["receiver"]  # the fixture, used by name

pytestmark = pytest.mark.e2e


def webhook_server(tmp: Path, receiver: Receiver) -> Any:
    return running_server(tmp, overrides={"handlers": [webhook_handler(receiver)]})


def send_all(server: ServerProcess, channel: str, contents: list[str]) -> list[str]:
    async def scenario() -> list[str]:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            return [(await send_message(alice, channel, c))["messageId"] for c in contents]

    return run(scenario())


def test_each_message_and_change_is_posted_signed_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        ids = send_all(server, channel, ["one", "two", "three"])
        wait_until(lambda: len(receiver.ids(channel)) == 3, what="3 posts")

        async def change() -> None:
            async with clients(server) as cs:
                alice = await cs.connect("alice", [channel])
                await alice.send(
                    {
                        "type": "edit",
                        "requestId": "e",
                        "channelId": channel,
                        "messageId": ids[1],
                        "content": "two, fixed",
                    }
                )
                await alice.expect("message_edited")
                await alice.send(
                    {
                        "type": "react",
                        "channelId": channel,
                        "messageId": ids[0],
                        "emoji": "+1",
                        "op": "add",
                    }
                )
                await alice.expect("reaction")

        run(change())
        wait_until(lambda: len(receiver.changes()) == 2, what="2 changes posted")
    assert receiver.ids(channel) == ids
    assert receiver.contents(channel) == ["one", "two", "three"]
    assert receiver.bad_signatures == 0
    edited, reacted = receiver.changes()
    assert edited["type"] == "message_edited"
    assert edited["message"]["content"] == "two, fixed"
    assert edited["eventId"] == "0000000000000004"
    assert (reacted["type"], reacted["messageId"], reacted["emoji"]) == ("reaction", ids[0], "+1")
    assert reacted["eventId"] == "0000000000000005"
    (first, *_) = receiver.accepted
    assert set(first) == {
        "channelId",
        "channelName",
        "messageId",
        "userId",
        "content",
        "createdAt",
        "editedAt",
        "metadata",
        "threadId",
        "clientMsgId",
    }


def test_a_failing_then_slow_receiver_gets_everything_once_it_answers_2xx(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    receiver.modes = ["fail", "slow", "fail"]
    with webhook_server(tmp_path, receiver) as server:
        ids = send_all(server, channel, [f"m{n}" for n in range(5)])
        wait_until(lambda: len(receiver.ids(channel)) >= 5, timeout=30, what="5 posts")
    # The first message was offered until it was confirmed, the others waited behind it.
    assert receiver.requests >= 8
    assert receiver.ids(channel)[:5] == ids


def test_a_server_restart_resumes_from_the_cursor_without_gaps(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        before = send_all(server, channel, ["a", "b", "c"])
        wait_until(lambda: len(receiver.ids(channel)) == 3, what="3 posts")
        receiver.default = "fail"  # the receiver goes down; these wait in storage
        during = send_all(server, channel, ["d", "e", "f"])
        wait_until(lambda: receiver.requests >= 5, what="retries while down")
    receiver.default = "ok"
    with webhook_server(tmp_path, receiver) as server:
        after = send_all(server, channel, ["g"])
        wait_until(lambda: len(receiver.ids(channel)) >= 7, timeout=30, what="7 posts")
    got = receiver.ids(channel)
    assert got[:3] == before  # confirmed before the stop: not posted again
    assert got == before + during + after
    assert receiver.contents(channel) == ["a", "b", "c", "d", "e", "f", "g"]


def test_a_handler_killed_under_load_resumes_with_nothing_missed(
    tmp_path: Path, receiver: Receiver
) -> None:
    channel = fresh("hook")
    with webhook_server(tmp_path, receiver) as server:
        title = "chime: handler 1"
        (pid,) = wait_until(lambda: server.pids_by_title(title), what="the handler process")

        async def scenario() -> list[str]:
            async with clients(server) as cs:
                alice = await cs.connect("alice", [channel])
                ids = []
                for n in range(60):
                    if n == 20:
                        os.kill(pid, signal.SIGKILL)
                    ids.append((await send_message(alice, channel, f"m{n}"))["messageId"])
                return ids

        ids = run(scenario())
        wait_until(lambda: set(ids) <= set(receiver.ids(channel)), timeout=30, what="every message")
        restarted = wait_until(lambda: server.pids_by_title(title), what="the new handler")
        assert restarted != [pid]
    got = receiver.ids(channel)
    # At least once: a message may be posted again after the kill, never skipped,
    # and each first arrival is in id order.
    first_arrivals = list(dict.fromkeys(got))
    assert first_arrivals == ids
