"""before_store handlers in a real server: word_filter rejects and masks, a hang is bounded."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import clients, expect_error, fresh, received, run, send_message
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
HANG_BUDGET_MS = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    handlers = [
        {
            "name": "no-darn",
            "use": "word_filter",
            "stage": "before_store",
            "channels": ["strict-*"],
            "options": {"words": ["darn", "heck"]},
        },
        {
            "name": "mask-darn",
            "use": "word_filter",
            "stage": "before_store",
            "channels": ["masked-*"],
            "options": {"words": ["darn", "heck"], "action": "mask"},
        },
        {
            "name": "hang",
            "use": "tests.e2e.handler_fixtures:hang",
            "stage": "before_store",
            "channels": ["hang-*"],
            "timeout_ms": HANG_BUDGET_MS,
        },
        {
            "name": "hang-open",
            "use": "tests.e2e.handler_fixtures:hang",
            "stage": "before_store",
            "channels": ["open-*"],
            "timeout_ms": HANG_BUDGET_MS,
            "on_failure": "accept",
        },
    ]
    with running_server(
        tmp_path_factory.mktemp("before-store"),
        overrides={"handlers": handlers},
        env_overrides={"PYTHONPATH": str(REPO)},
    ) as srv:
        yield srv


def test_word_filter_rejects_with_forbidden_and_stores_nothing(server: ServerProcess) -> None:
    channel = fresh("strict")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            await alice.send(
                {"type": "send", "channelId": channel, "content": "oh DARN", "clientMsgId": "c-1"}
            )
            error = await expect_error(alice, "forbidden")
            assert error["clientMsgId"] == "c-1"
            assert "darn" in error["message"].lower()
            # A clean message passes, and is the only one anybody sees or history has.
            ack = await send_message(alice, channel, "darning socks is fine")
            (message,) = await received(bob, 1)
            assert message["messageId"] == ack["messageId"] == "0000000000000001"
            assert message["content"] == "darning socks is fine"
            await bob.send({"type": "history", "requestId": "h", "channelId": channel})
            history = await bob.expect("history")
            assert [m["content"] for m in history["messages"]] == ["darning socks is fine"]

    run(scenario())


def test_word_filter_judges_edits_like_sends(server: ServerProcess) -> None:
    strict, masked = fresh("strict"), fresh("masked")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [strict, masked])
            acks = {
                channel: await send_message(alice, channel, "fine") for channel in (strict, masked)
            }
            for channel, ack in acks.items():
                await alice.send(
                    {
                        "type": "edit",
                        "requestId": f"e-{channel}",
                        "channelId": channel,
                        "messageId": ack["messageId"],
                        "content": "oh darn",
                    }
                )
            error = await expect_error(alice, "forbidden")
            assert error["requestId"] == f"e-{strict}"
            edited = await alice.expect("message_edited")
            assert edited["message"]["channelId"] == masked
            assert edited["message"]["content"] == "oh ****"
            # A REST edit passes the same handlers (in the API process).
            status, body = rest_edit(server, strict, acks[strict]["messageId"], "DARN")
            assert (status, body["code"]) == (403, "forbidden")
            assert "blocked word" in body["detail"]
            await alice.send({"type": "history", "requestId": "h", "channelId": strict})
            history = await alice.expect("history")
            assert [m["content"] for m in history["messages"]] == ["fine"]

    run(scenario())


def rest_edit(server: ServerProcess, channel: str, message_id: str, content: str) -> Any:
    request = urllib.request.Request(
        f"{server.api}/v1/channels/{channel}/messages/{message_id}",
        data=json.dumps({"content": content}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json", "X-Chime-User": "alice"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_word_filter_masks_what_is_stored_and_acked(server: ServerProcess) -> None:
    channel = fresh("masked")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            bob = await cs.connect("bob", [channel])
            ack = await send_message(alice, channel, "Darn it, what the heck")
            (message,) = await received(bob, 1)
            assert message["messageId"] == ack["messageId"]
            assert message["content"] == "**** it, what the ****"
            await bob.send({"type": "history", "requestId": "h", "channelId": channel})
            history = await bob.expect("history")
            assert [m["content"] for m in history["messages"]] == ["**** it, what the ****"]

    run(scenario())


def test_handlers_see_only_their_channels(server: ServerProcess) -> None:
    channel = fresh("general")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await send_message(alice, channel, "darn, no filter here")
            (message,) = await received(alice, 1)
            assert message["content"] == "darn, no filter here"

    run(scenario())


def test_a_hanging_handler_answers_the_sender_after_its_budget(server: ServerProcess) -> None:
    """on_failure reject: unavailable (not stored); the connection goes on serving."""
    channel = fresh("hang")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            for n in range(3):  # pipelined: each is answered, none waits for the others
                await alice.send(
                    {"type": "send", "channelId": channel, "content": "x", "clientMsgId": f"c-{n}"}
                )
            errors = [await expect_error(alice, "unavailable") for _ in range(3)]
            assert sorted(e["clientMsgId"] for e in errors) == ["c-0", "c-1", "c-2"]
            await alice.send({"type": "history", "requestId": "h", "channelId": channel})
            assert (await alice.expect("history"))["messages"] == []

    run(scenario())


def test_a_hanging_handler_with_on_failure_accept_lets_the_message_through(
    server: ServerProcess,
) -> None:
    channel = fresh("open")

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            ack = await send_message(alice, channel, "hello")
            assert ack["messageId"] == "0000000000000001"

    run(scenario())


def install_package(site: Path) -> None:
    """A distribution on ``site`` whose metadata announces a chime.handlers entry point."""
    site.mkdir(parents=True)
    (site / "acme_quiet.py").write_text(
        "from chime_actors.handlers import ACCEPT, Handler, Reject\n"
        "class NoShouting(Handler):\n"
        "    def before_store(self, draft):\n"
        "        if draft.content.isupper():\n"
        "            return Reject('bad_request', 'no shouting, please')\n"
        "        return ACCEPT\n"
        "def make(options):\n"
        "    return NoShouting()\n"
    )
    info = site / "acme_quiet-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-quiet\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[chime.handlers]\nno_shouting = acme_quiet:make\n")


def test_a_handler_installed_with_an_entry_point_is_picked_up(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_package(site)
    handlers = [{"name": "quiet", "use": "no_shouting", "stage": "before_store"}]
    with running_server(
        tmp_path / "server",
        overrides={"handlers": handlers},
        env_overrides={"PYTHONPATH": str(site)},
    ) as server:
        channel = fresh()

        async def scenario() -> None:
            async with clients(server) as cs:
                alice = await cs.connect("alice", [channel])
                await alice.send({"type": "send", "channelId": channel, "content": "HEY"})
                error = await expect_error(alice, "bad_request")
                assert error["message"] == "no shouting, please"
                await send_message(alice, channel, "hey")

        run(scenario())
