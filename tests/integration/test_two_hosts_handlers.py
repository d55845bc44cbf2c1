"""Channel handlers on two servers sharing one Redis and one Cassandra (docs/handlers.md).

Both hosts configure the same handlers: a ``before_store`` word filter (each
gateway runs it, nothing is shared), an ``after_store`` webhook and an
``after_store`` echo bot, whose leases let exactly one host run each cursor.
Each host posts to a URL of its own (``/hook/<host>``), so the receiver knows
which host delivered what.

The last test SIGKILLs the host holding the lease; the module's servers are
not used after it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from tests.e2e.conftest import clients, expect_error, received, run, send_message
from tests.e2e.presence_helpers import kill_process_group
from tests.e2e.webhook_receiver import SECRET, Receiver, serving_receiver
from tests.integration.services import backend_overrides, load_services
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.integration

HOSTS = ("a", "b")
LEASE_TTL_MS = 3000
_HELD = re.compile(r'^chime_handler_lease_held\{[^}]*handler="hook"[^}]*\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with serving_receiver() as found:
        yield found


def handlers(receiver: Receiver, host: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "mask",
            "use": "word_filter",
            "stage": "before_store",
            "channels": ["masked-*"],
            "options": {"words": ["darn"], "action": "mask"},
        },
        {
            "name": "strict",
            "use": "word_filter",
            "stage": "before_store",
            "channels": ["strict-*"],
            "options": {"words": ["darn"]},
        },
        {
            "name": "hook",
            "use": "webhook",
            "stage": "after_store",
            "channels": ["hook-*"],
            # Generous: a post that overran the budget would be posted again.
            "timeout_ms": 10_000,
            "lease_ttl_ms": LEASE_TTL_MS,
            "options": {"url": f"http://127.0.0.1:{receiver.port}/hook/{host}", "secret": SECRET},
        },
        {
            "name": "echo",
            "use": "echo_bot",
            "stage": "after_store",
            "channels": ["echo-*"],
            "lease_ttl_ms": LEASE_TTL_MS,
            "options": {"user": "echo-bot", "prefix": "!echo "},
        },
    ]


@pytest.fixture(scope="module")
def two_hosts(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> Iterator[dict[str, ServerProcess]]:
    services = load_services("redis", "cassandra")
    overrides = backend_overrides(services, f"chime_{uuid.uuid4().hex[:10]}")
    with ExitStack() as stack:
        servers = {
            host: stack.enter_context(
                running_server(
                    tmp_path_factory.mktemp(f"host-{host}"),
                    {**overrides, "handlers": handlers(receiver, host)},
                    workers=1,
                )
            )
            for host in HOSTS
        }
        yield servers


def lease_held(server: ServerProcess) -> bool | None:
    """What the host's metrics say of the webhook's lease (None: not reported yet)."""
    try:
        with urllib.request.urlopen(f"{server.api}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    found = _HELD.findall(text)
    return None if not found else float(found[0]) == 1


def holder(servers: dict[str, ServerProcess]) -> str:
    """The one host holding the lease, once every host reports and one holds."""

    def settled() -> str | None:
        held = {host: lease_held(server) for host, server in servers.items()}
        if None in held.values() or sum(bool(v) for v in held.values()) != 1:
            return None
        return next(host for host, value in held.items() if value)

    return wait_until(settled, timeout=60, what="exactly one host holding the lease")


def history_ids(server: ServerProcess, channel: str) -> list[str]:
    url = f"{server.api}/v1/channels/{channel}/messages?limit=100"
    with urllib.request.urlopen(url, timeout=10) as response:
        return sorted(m["messageId"] for m in json.loads(response.read())["messages"])


def posts(receiver: Receiver, channel: str) -> list[tuple[str, str]]:
    """(host, message id) of every accepted post of ``channel``, in arrival order."""
    with receiver.lock:
        return [
            (sender, body["messageId"])
            for sender, body in receiver.senders
            if "type" not in body and body["channelId"] == channel
        ]


def test_a_before_store_handler_judges_sends_on_both_hosts(
    two_hosts: dict[str, ServerProcess],
) -> None:
    tag = uuid.uuid4().hex[:8]
    masked, strict = f"masked-{tag}", f"strict-{tag}"

    async def scenario() -> None:
        async with clients(two_hosts["a"]) as on_a, clients(two_hosts["b"]) as on_b:
            alice = await on_a.connect("alice", [masked, strict])
            bob = await on_b.connect("bob", [masked, strict])
            for sender, host in ((alice, "a"), (bob, "b")):
                await send_message(sender, masked, f"oh darn, from {host}")
                await sender.send(
                    {"type": "send", "channelId": strict, "content": "darn", "clientMsgId": "x"}
                )
                error = await expect_error(sender, "forbidden")
                assert "darn" in error["message"]
            # Masked where it was sent, and so delivered to both hosts' subscribers.
            for subscriber in (alice, bob):
                got = await received(subscriber, 2, masked)
                assert [m["content"] for m in got] == ["oh ****, from a", "oh ****, from b"]

    run(scenario())
    for server in two_hosts.values():
        assert history_ids(server, strict) == []
        assert len(history_ids(server, masked)) == 2


def test_an_after_store_handler_runs_on_exactly_one_host(
    two_hosts: dict[str, ServerProcess], receiver: Receiver
) -> None:
    channel = f"hook-{uuid.uuid4().hex[:8]}"
    before = holder(two_hosts)

    async def scenario() -> list[str]:
        sent: list[str] = []
        async with clients(two_hosts["a"]) as on_a, clients(two_hosts["b"]) as on_b:
            senders = [await on_a.connect("alice", [channel]), await on_b.connect("bob", [channel])]
            for i in range(30):
                ack = await send_message(senders[i % 2], channel, f"m{i}")
                sent.append(ack["messageId"])
        return sent

    sent = run(scenario())
    wait_until(lambda: {i for _, i in posts(receiver, channel)} >= set(sent), what="every post")
    got = posts(receiver, channel)
    assert sorted(i for _, i in got) == sorted(sent), "each message posted exactly once"
    assert [i for _, i in got] == sorted(sent), "in the channel's order"
    assert {h for h, _ in got} == {before}, "by the one host holding the lease"
    assert holder(two_hosts) == before
    assert receiver.bad_signatures == 0


def test_the_echo_bot_answers_each_prompt_once_whichever_host_it_was_sent_on(
    two_hosts: dict[str, ServerProcess],
) -> None:
    """One host runs the bot; a prompt sent on either host gets one reply, on both."""
    channel = f"echo-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with clients(two_hosts["a"]) as on_a, clients(two_hosts["b"]) as on_b:
            alice = await on_a.connect("alice", [channel])
            bob = await on_b.connect("bob", [channel])
            await send_message(alice, channel, "!echo from a")
            await send_message(bob, channel, "!echo from b")
            await send_message(alice, channel, "just talking")
            for watcher in (alice, bob):
                got = await received(watcher, 5, channel, timeout=30)
                replies = sorted(m["content"] for m in got if m["userId"] == "echo-bot")
                assert replies == ["from a", "from b"], got
            # Nothing more comes: a bot running on both hosts would answer twice.
            await send_message(alice, channel, "!echo last")
            for watcher in (alice, bob):
                got = await received(watcher, 7, channel, timeout=30)
                assert [m["content"] for m in got if m["userId"] == "echo-bot"].count("from a") == 1
                assert got[-1]["content"] == "last" and got[-1]["userId"] == "echo-bot", got

    run(scenario())


def test_when_the_holder_is_killed_the_other_host_takes_over_and_misses_nothing(
    two_hosts: dict[str, ServerProcess], receiver: Receiver
) -> None:
    channel = f"hook-{uuid.uuid4().hex[:8]}"
    doomed = holder(two_hosts)
    (survivor,) = (h for h in HOSTS if h != doomed)
    figures: dict[str, float] = {}

    async def burst(server: ServerProcess, user: str, count: int, tag: str) -> list[str]:
        async with clients(server) as cs:
            sender = await cs.connect(user, [channel])
            return [
                (await send_message(sender, channel, f"{tag}{i}"))["messageId"]
                for i in range(count)
            ]

    async def takeover() -> None:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(lease_held, two_hosts[survivor]):
            assert time.monotonic() < deadline, "the survivor never took the lease"
            await asyncio.sleep(0.1)
        figures["held"] = time.monotonic()

    async def scenario() -> None:
        # Sends on both hosts, the holder's webhook posting as they come ...
        await asyncio.gather(
            burst(two_hosts[doomed], "alice", 15, "d"), burst(two_hosts[survivor], "bob", 15, "s")
        )
        # ... then the holder loses power while posts may still be on the way,
        with receiver.lock:
            figures["posts before"] = len(receiver.senders)
            figures["killed"] = kill_process_group(two_hosts[doomed])
        # and sends go on on the survivor meanwhile.
        await asyncio.gather(burst(two_hosts[survivor], "carol", 15, "after"), takeover())

    run(scenario())
    with receiver.lock:
        early = receiver.senders[: int(figures["posts before"])]
    assert survivor not in {sender for sender, _ in early}, "nobody posted beside the holder"
    stored = history_ids(two_hosts[survivor], channel)
    assert len(stored) >= 45  # every acked send, perhaps one the holder stored unacked
    wait_until(
        lambda: {i for _, i in posts(receiver, channel)} >= set(stored),
        timeout=60,
        what="every stored message posted",
    )
    got = posts(receiver, channel)
    by_host = {h: [i for s, i in got if s == h] for h in HOSTS}
    for host, ids in by_host.items():
        # Each host posts in order and never twice.
        assert ids == sorted(ids) and len(set(ids)) == len(ids), host
    repeats = [i for i, n in collections.Counter(i for _, i in got).items() if n > 1]
    # At least once: only what the dead holder posted and had not saved its
    # cursor past yet (up to ~0.5 s of posts) is posted again, by the survivor.
    assert set(repeats) <= set(by_host[doomed]) & set(by_host[survivor])
    assert {i for _, i in got} == set(stored)
    takeover_ms = (figures["held"] - figures["killed"]) * 1000
    print(
        f"\nafter_store across hosts: holder SIGKILL -> lease held on the other host"
        f" within {takeover_ms:.0f} ms (lease_ttl_ms {LEASE_TTL_MS}, metrics every 1 s);"
        f" {len(repeats)} of {len(stored)} messages posted twice around the takeover"
    )
