"""Fault injection on real processes, under load.

Every test runs a real ``chime serve`` (``running_server``) with a few senders
sending continuously (each send carries a ``clientMsgId``) and a few watchers
subscribed, and injects a fault while the load runs:

* SIGKILL of a gateway, a persister or the API process (the supervisor restarts it);
* an exception injected into a ConnectionActor or a ChannelActor (``debug_crash``,
  behind ``testing.fault_injection``).

Then it checks what PROTOCOL.md promises: every send is answered (``ack`` or
``unavailable``) within ``chat.ack_timeout_ms``, an ``ack`` means durable (every
acked ``messageId`` is in REST history with that sender's ``clientMsgId``), a
``(userId, clientMsgId)`` is stored once however often it was re-sent, and every
subscriber sees each channel's ids contiguous, in order, exactly once (resuming
after a reconnect with ``resume``).

Restart times (kill -> new process with the same title; kill -> the supervisor's
"actor restarted" log line and its ``restartMs``) are printed (``pytest -s``) and
written to ``restart_times.json`` in the test's tmp dir.

Clients are not told which gateway they land on (the kernel spreads accepts over
the ``SO_REUSEPORT`` listeners), so ``gateway_of`` looks it up in ``/proc``: the
server-side socket of the connection, and which gateway process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from websockets.asyncio.client import ClientConnection

from tests.e2e.client import Client
from tests.e2e.load import (
    OVERRIDES,
    RESTART_TIMEOUT_S,
    Sender,
    Watcher,
    alive,
    channel_owned_by,
    check_senders,
    check_stored,
    check_watchers_received,
    http_get,
    kill_and_wait_restart,
    kill_leftovers,
    ms,
    one_pid,
    open_client,
    persister_channels,
    rest_history,
    restart_logged,
    server_pids,
    start_all,
    start_flowing,
    stopping,
    wait_acked_since,
    wait_caught_up,
    wait_flowing,
    write_times,
)
from tests.support.polling import until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

C = TypeVar("C", Sender, Watcher)

CATCH_UP_TIMEOUT_S = 20.0


# --- the server's processes ------------------------------------------------------------


@contextlib.contextmanager
def chime_server(tmp: Path, workers: int = 2) -> Iterator[ServerProcess]:
    """``running_server`` with the load's config; asserts nothing outlives it."""
    workdir = tmp / "server"
    with running_server(workdir, OVERRIDES, workers=workers) as server:
        yield server
    kill_leftovers([server])


def gateway_of(server: ServerProcess, ws: ClientConnection, workers: int = 2) -> str | None:
    """Title of the gateway process serving the client connection ``ws``."""
    client_port = ws.local_address[1]
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if local_port == server.chat_port and remote_port == client_port:
                    sockets.add(f"socket:[{fields[9]}]")
    for index in range(1, workers + 1):
        title = f"chime: gateway {index}"
        for pid in server_pids(server, title):
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) in sockets:
                            return title
    return None


def record_restart_times(tmp: Path, times: dict[str, Any]) -> None:
    write_times(tmp / "restart_times.json", "restart times", times)


# --- checks ---------------------------------------------------------------------------


def check_durable(
    server: ServerProcess, senders: list[Sender], channels: list[str]
) -> dict[str, list[str]]:
    """Acked means durable; each (user, clientMsgId) stored once; ids contiguous.

    Returns each channel's message ids from REST history.
    """
    histories = {channel: rest_history(server, channel) for channel in channels}
    check_stored(senders, histories)
    ids = {channel: [m["messageId"] for m in messages] for channel, messages in histories.items()}
    for channel, channel_ids in ids.items():
        seqs = [int(i) for i in channel_ids]
        assert seqs == list(range(1, len(seqs) + 1)), f"{channel}: ids not contiguous from 1"
    return ids


async def settle_and_check_watchers(
    server: ServerProcess, watchers: list[Watcher], senders: list[Sender], channels: list[str]
) -> dict[str, list[str]]:
    """Wait until every (running) watcher has each channel's last stored message,
    stop the watchers, then compare what each received with history."""
    caught_up = await wait_caught_up(server, watchers, channels, CATCH_UP_TIMEOUT_S)
    final = await asyncio.get_running_loop().run_in_executor(
        None, check_durable, server, senders, channels
    )
    await check_watchers_received(
        watchers, final, lambda w: gateway_of(server, w.ws) if w.ws is not None else None
    )
    assert caught_up, "watchers did not catch up with history"
    return final


def max_stall(watcher: Watcher, channel: str, start: float, end: float) -> float:
    """The longest time ``watcher`` went without a message of ``channel`` around
    [start, end] (from its last message before ``start`` to its first after ``end``)."""
    times = watcher.received_at[channel]
    before = [t for t in times if t <= start][-1:]
    during = [t for t in times if start < t <= end]
    after = [t for t in times if t > end][:1]
    points = before + during + after
    return max((b - a for a, b in itertools.pairwise(points)), default=0.0)


async def on_each_gateway(
    server: ServerProcess, make: Callable[[int], Awaitable[Any]], need: int, workers: int = 2
) -> dict[str, list[Any]]:
    """Create clients (``make(n)``, which returns an object with ``ws``) until each
    gateway serves at least ``need`` of them. Returns them by gateway title."""
    placed: dict[str, list[Any]] = {f"chime: gateway {i + 1}": [] for i in range(workers)}
    for n in range(40):
        if all(len(v) >= need for v in placed.values()):
            return placed
        client = await make(n)
        title = gateway_of(server, client.ws, workers)
        assert title is not None, "could not find the gateway of a connection"
        placed[title].append(client)
    raise AssertionError(f"the kernel did not spread 40 connections over the gateways: {placed}")


def starter(clients: list[C], make: Callable[[int], C]) -> Callable[[int], Awaitable[C]]:
    """For ``on_each_gateway``: ``make(n)``, start it, add it to ``clients``."""

    async def start(n: int) -> C:
        client = make(n)
        await client.start()
        clients.append(client)
        return client

    return start


def clients_on(
    server: ServerProcess, channels: list[str], senders: int, watchers: int = 0
) -> tuple[list[Sender], list[Watcher]]:
    """``senders`` senders ``s<n>``, on each of ``channels`` in turn, and ``watchers``
    watchers ``w<n>`` of all of ``channels`` (not started)."""
    return (
        [Sender(server.url, f"s{n}", channels[n % len(channels)]) for n in range(senders)],
        [Watcher(server.url, f"w{n}", channels) for n in range(watchers)],
    )


CRASH_CONNECTION = {"type": "debug_crash", "target": "connection"}


def crash_channel(channel: str) -> dict[str, str]:
    return {"type": "debug_crash", "target": "channel", "channelId": channel}


def assert_no_disconnects(clients: Iterable[Sender | Watcher]) -> None:
    for client in clients:
        assert client.disconnects == 0, client.user


# --- the tests ------------------------------------------------------------------------


def test_gateway_sigkill_under_load(tmp_path: Path) -> None:
    """SIGKILL ``chime: gateway 1`` while senders and watchers run on both gateways.

    The other gateway's clients keep receiving without a disconnect; the killed
    gateway's watchers resume with ``resume`` and get every message exactly once;
    the killed gateway's senders re-send what was unanswered (same clientMsgId) and
    nothing is stored twice; the gateway comes back and serves clients again.
    """
    channel = "faults-gw"
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders: list[Sender] = []
            watchers: list[Watcher] = []
            make_sender = starter(senders, lambda n: Sender(server.url, f"s{n}", channel))
            make_watcher = starter(watchers, lambda n: Watcher(server.url, f"w{n}", [channel]))
            async with stopping(watchers):
                async with stopping(senders):
                    watchers_on = await on_each_gateway(server, make_watcher, 2)
                    senders_on = await on_each_gateway(server, make_sender, 1)
                    await wait_flowing(senders, watchers)
                    survivors = watchers_on["chime: gateway 2"]
                    surviving_senders = senders_on["chime: gateway 2"]
                    killed_at = time.monotonic()
                    times["gateway"] = await kill_and_wait_restart(server, "gateway 1")
                    restarted_at = time.monotonic()
                    # The other gateway's watchers keep receiving (they are never
                    # disconnected: checked at the end).
                    await until(
                        lambda: all(w.count_since(channel, killed_at) >= 5 for w in survivors),
                        5,
                        "gateway 2's watchers to receive after the kill",
                    )
                    times["gateway"]["survivor_max_stall_ms"] = ms(
                        max(max_stall(w, channel, killed_at, restarted_at) for w in survivors)
                    )
                    # The killed gateway's clients noticed, and resumed.
                    await until(
                        lambda: (
                            all(w.disconnects >= 1 for w in watchers_on["chime: gateway 1"])
                            and all(s.disconnects >= 1 for s in senders_on["chime: gateway 1"])
                        ),
                        10,
                        "gateway 1's clients to notice the kill",
                    )
                    await wait_acked_since(
                        senders,
                        restarted_at,
                        10,
                        20,
                        "every sender to be acked again after the restart",
                    )
                    # The new gateway 1 serves: a client that lands on it sends and receives.
                    fresh = await on_each_gateway(server, make_watcher, 1)
                    probe_watcher = fresh["chime: gateway 1"][-1]
                    await until(
                        lambda: len(probe_watcher.ids[channel]) >= 5,
                        10,
                        "the restarted gateway to deliver",
                    )
                    probe = await on_each_gateway(server, make_sender, 1)
                    probe_sender = probe["chime: gateway 1"][-1]
                    await until(
                        lambda: len(probe_sender.acked) >= 5, 10, "the restarted gateway to ack"
                    )
                check_senders(senders, allowed_errors={"unavailable"})
                for sender in surviving_senders:
                    assert sender.disconnects == 0 and not sender.errors, sender.user
                for watcher in survivors:
                    assert watcher.disconnects == 0, watcher.user
                for watcher in watchers_on["chime: gateway 1"]:
                    assert watcher.resumed, f"{watcher.user} did not resume"
                await settle_and_check_watchers(server, watchers, senders, [channel])
                times["gateway"]["messages_acked"] = sum(len(s.acked) for s in senders)
                times["gateway"]["sends_resent_after_disconnect"] = sum(s.lost for s in senders)

        asyncio.run(scenario())
    record_restart_times(tmp_path, times)


def test_persister_sigkill_under_load(tmp_path: Path) -> None:
    """SIGKILL ``chime: persister 1``, then ``chime: persister 2``, under load.

    Senders get an ack or ``unavailable`` for every send, never silence beyond
    ``chat.ack_timeout_ms``; sends to the killed persister's channels succeed again
    after its restart; no acked message is missing from history, and nothing is
    stored twice although senders re-send every ``unavailable`` with the same
    clientMsgId; live subscribers see every id of every channel exactly once.
    """
    channels = persister_channels("faults-p")
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders, watchers = clients_on(server, channels, senders=4, watchers=3)
            async with stopping(watchers):
                async with stopping(senders):
                    await start_flowing(senders, watchers)
                    for index in (1, 2):
                        actor = f"persister {index}"
                        own = [s for s in senders if s.channel == channels[index - 1]]
                        errors_before = sum(len(s.errors) for s in own)
                        times[actor] = await kill_and_wait_restart(server, actor)
                        await wait_acked_since(
                            own,
                            time.monotonic(),
                            20,
                            20,
                            f"sends to {actor}'s channel to succeed again",
                        )
                        times[actor]["unavailable_answers"] = (
                            sum(len(s.errors) for s in own) - errors_before
                        )
                check_senders(senders, allowed_errors={"unavailable"})
                assert_no_disconnects(watchers)
                await settle_and_check_watchers(server, watchers, senders, channels)
                for key in ("persister 1", "persister 2"):
                    times[key]["messages_acked"] = sum(len(s.acked) for s in senders)
                    times[key]["slowest_answer_ms"] = ms(max(max(s.latencies) for s in senders))

        asyncio.run(scenario())
    record_restart_times(tmp_path, times)


def test_api_sigkill_under_load(tmp_path: Path) -> None:
    """SIGKILL ``chime: api``: /healthz answers again on the same port, /readyz
    becomes ready again, REST history works; chat traffic never notices."""
    channel = "faults-api"
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:
        status, _ = http_get(f"{server.api}/healthz")
        assert status == 200

        async def scenario() -> None:
            senders, watchers = clients_on(server, [channel], senders=3, watchers=2)
            async with stopping(watchers):
                async with stopping(senders):
                    await start_flowing(senders, watchers)
                    old = one_pid(server, "chime: api")
                    killed_at = time.monotonic()
                    os.kill(old, signal.SIGKILL)

                    def healthy() -> bool:
                        with contextlib.suppress(OSError):
                            return http_get(f"{server.api}/healthz", 1.0)[0] == 200
                        return False

                    loop = asyncio.get_running_loop()
                    # Down first (the kill took), then up again on the same port.
                    await until(lambda: not alive(old), 5, "the API process to die")
                    while not await loop.run_in_executor(None, healthy):
                        assert time.monotonic() - killed_at < RESTART_TIMEOUT_S, "no /healthz"
                        await asyncio.sleep(0.005)
                    healthy_at = time.monotonic()
                    line = await until(
                        lambda: restart_logged(server, "api", 0), 10, "'actor restarted' for api"
                    )
                    assert one_pid(server, "chime: api") != old
                    times["api"] = {
                        "kill_to_healthz_ok_ms": ms(healthy_at - killed_at),
                        "supervisor_restart_ms": float(line["restartMs"]),
                    }

                    def ready() -> bool:
                        return http_get(f"{server.api}/readyz", 3.0)[0] == 200

                    while not await loop.run_in_executor(None, ready):
                        assert time.monotonic() - killed_at < RESTART_TIMEOUT_S, "never ready"
                        await asyncio.sleep(0.05)
                    times["api"]["kill_to_readyz_ok_ms"] = ms(time.monotonic() - killed_at)
                    status, body = await loop.run_in_executor(
                        None, http_get, f"{server.api}/metrics"
                    )
                    assert status == 200
                    assert re.search(
                        rb'chime_actor_restarts_total\{[^}]*kind="api"[^}]*\} 1', body
                    ), body.decode()[:2000]
                    await wait_acked_since(senders, healthy_at, 5, 10, "more acks")
                # The API is not on the chat path: nothing there may even notice.
                check_senders(senders, allowed_errors=set())
                assert_no_disconnects([*senders, *watchers])
                await settle_and_check_watchers(server, watchers, senders, [channel])

        asyncio.run(scenario())
    record_restart_times(tmp_path, times)


def test_connection_actor_exception(tmp_path: Path) -> None:
    """An exception in one ConnectionActor's handler: that client gets ``internal``
    naming a correlation id (logged), keeps its connection and its sends are acked;
    its neighbours on the same channel notice nothing."""
    channel = "faults-conn"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders, watchers = clients_on(server, [channel], senders=3, watchers=2)
            victim = Watcher(server.url, "victim", [channel], reconnect=False)
            doomed = Watcher(server.url, "doomed", [channel], reconnect=False)
            async with stopping([*watchers, victim, doomed]):
                async with stopping(senders):
                    await start_all([*watchers, *senders, victim, doomed])
                    await wait_flowing(senders, [*watchers, victim])
                    correlations = []
                    for attempt in range(3):
                        await victim.send(CRASH_CONNECTION)
                        error = await until(
                            lambda n=attempt: [
                                f for f in victim.frames if f.get("type") == "error"
                            ][n:],
                            10,
                            "the internal error",
                        )
                        assert error[0]["code"] == "internal", error
                        match = re.search(r"correlation id ([0-9a-f]+)", error[0]["message"])
                        assert match, error[0]
                        correlations.append(match.group(1))
                        # The connection still works: a send on it is acked.
                        await victim.send(
                            {
                                "type": "send",
                                "channelId": channel,
                                "content": "after the crash",
                                "clientMsgId": f"victim-{attempt}",
                            }
                        )
                        await until(
                            lambda n=attempt: any(
                                f.get("type") == "ack" and f.get("clientMsgId") == f"victim-{n}"
                                for f in victim.frames
                            ),
                            10,
                            "the victim's ack after the crash",
                        )
                    # Escalation: the 6th failure within 10 s closes the connection 1011.
                    for _ in range(6):
                        await doomed.send(CRASH_CONNECTION)
                    await until(lambda: doomed.close_codes, 10, "the doomed connection to close")
                    assert doomed.close_codes == [1011], doomed.close_codes
                    internal = [f for f in doomed.frames if f.get("code") == "internal"]
                    assert len(internal) == 6, doomed.frames
                    mark = time.monotonic()
                    await until(
                        lambda: (
                            all(s.acks_since(mark) >= 5 for s in senders)
                            and victim.count_since(channel, mark) >= 5
                        ),
                        10,
                        "traffic after the crashes",
                    )
                logged = {
                    line.get("correlationId")
                    for line in server.log_lines()
                    if line.get("message") == "connection handler failed"
                }
                assert set(correlations) <= logged, (correlations, logged)
                assert victim.disconnects == 0
                check_senders(senders, allowed_errors=set())
                assert_no_disconnects([*senders, *watchers])
                victim.frames = [f for f in victim.frames if f.get("type") != "error"]
                await settle_and_check_watchers(server, [*watchers, victim], senders, [channel])

        asyncio.run(scenario())


def test_channel_actor_exception(tmp_path: Path) -> None:
    """An exception in a ChannelActor (on every gateway that has one): its
    subscribers keep receiving, with no gap and no duplicate; another channel's
    subscribers notice nothing; senders notice nothing."""
    hit, other = "faults-chan-hit", "faults-chan-other"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders, _ = clients_on(server, [hit, other], senders=4)
            watchers: list[Watcher] = []  # of ``hit``, then of ``other``
            make_hit = starter(watchers, lambda n: Watcher(server.url, f"h{n}", [hit]))
            async with stopping(watchers):
                async with stopping(senders):
                    # A subscriber of ``hit`` on each gateway; each crashes its own
                    # gateway's ChannelActor for ``hit``.
                    crashers = await on_each_gateway(server, make_hit, 1)
                    other_watchers = [Watcher(server.url, f"o{n}", [other]) for n in range(2)]
                    watchers.extend(other_watchers)
                    await start_all([*other_watchers, *senders])
                    await wait_flowing(senders, watchers)
                    log_mark = len(server.log_lines())
                    for placed in crashers.values():
                        for crasher in placed[:1]:
                            await crasher.send(crash_channel(hit))

                    def failures() -> list[dict[str, Any]]:
                        return [
                            line
                            for line in server.log_lines()[log_mark:]
                            if line.get("message") == "channel actor failed"
                        ]

                    logged = await until(
                        lambda: len(failures()) >= len(crashers) and failures(),
                        10,
                        "the channel actors to fail",
                    )
                    assert {line.get("channelId") for line in logged} == {hit}
                    assert {line.get("process") for line in logged} == {
                        title.removeprefix("chime: ") for title in crashers
                    }
                    mark = time.monotonic()
                    await until(
                        lambda: all(w.count_since(w.channels[0], mark) >= 10 for w in watchers),
                        10,
                        "messages after the crash",
                    )
                check_senders(senders, allowed_errors=set())
                assert_no_disconnects([*senders, *watchers])
                await settle_and_check_watchers(server, watchers, senders, [hit, other])

        asyncio.run(scenario())


def test_channel_actor_escalation(tmp_path: Path) -> None:
    """Six failures of one ChannelActor within 10 s: it escalates, closing its
    subscribers with 1011; they resume and miss nothing; the same channel's
    subscribers on the other gateway notice nothing."""
    channel = "faults-chan-escalate"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders, watchers = clients_on(server, [channel], senders=3)
            make_watcher = starter(watchers, lambda n: Watcher(server.url, f"w{n}", [channel]))
            async with stopping(watchers):
                async with stopping(senders):
                    placed = await on_each_gateway(server, make_watcher, 2)
                    await start_all(senders)
                    await wait_flowing(senders, watchers)
                    doomed, spared = placed["chime: gateway 1"], placed["chime: gateway 2"]
                    for _ in range(6):
                        await doomed[0].send(crash_channel(channel))
                    await until(
                        lambda: all(w.close_codes for w in doomed), 10, "the subscribers' close"
                    )
                    for watcher in doomed:
                        assert watcher.close_codes[0] == 1011, watcher.close_codes
                    mark = time.monotonic()
                    await until(
                        lambda: all(w.count_since(channel, mark) >= 10 for w in watchers),
                        15,
                        "every subscriber to receive again",
                    )
                check_senders(senders, allowed_errors=set())
                assert_no_disconnects(spared)
                for watcher in doomed:
                    assert watcher.resumed, watcher.user
                await settle_and_check_watchers(server, watchers, senders, [channel])

        asyncio.run(scenario())


def test_acked_means_durable_through_every_fault(tmp_path: Path) -> None:
    """One server, continuous load on a channel of each persister, and every fault
    in turn: handler exceptions, then SIGKILL of gateway 1, persister 1, persister 2,
    the API and gateway 2. At the end every acked messageId of the whole run is in
    history, nothing is stored twice, and every watcher (resuming after each
    disconnect) holds each channel's ids exactly once."""
    channels = persister_channels("faults-all")
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders, watchers = clients_on(server, channels, senders=4, watchers=4)
            async with stopping(watchers):
                async with stopping(senders):
                    await start_flowing(senders, watchers)

                    async def progress(what: str) -> None:
                        await wait_acked_since(
                            senders,
                            time.monotonic(),
                            10,
                            20,
                            f"every sender to be acked after {what}",
                        )

                    await watchers[0].send(CRASH_CONNECTION)
                    for channel in channels:
                        await watchers[1].send(crash_channel(channel))
                    await progress("the handler exceptions")
                    await until(
                        lambda: [f for f in watchers[0].frames if f.get("code") == "internal"],
                        10,
                        "the injected connection failure's error",
                    )
                    watchers[0].frames = [f for f in watchers[0].frames if f.get("type") != "error"]
                    for actor in ("gateway 1", "persister 1", "persister 2", "gateway 2"):
                        times[actor] = await kill_and_wait_restart(server, actor)
                        await progress(f"the kill of {actor}")
                    old_api = one_pid(server, "chime: api")
                    os.kill(old_api, signal.SIGKILL)
                    await until(
                        lambda: [p for p in server_pids(server, "chime: api") if p != old_api],
                        RESTART_TIMEOUT_S,
                        "a new API process",
                    )
                    await progress("the kill of the API")
                check_senders(senders, allowed_errors={"unavailable"})
                # Connections were lost only to the gateway kills, and all resumed.
                for watcher in watchers:
                    assert watcher.disconnects <= 2 and len(watcher.resumed) >= watcher.disconnects
                final = await settle_and_check_watchers(server, watchers, senders, channels)
                times["run"] = {
                    "messages_stored": sum(len(ids) for ids in final.values()),
                    "messages_acked": sum(len(s.acked) for s in senders),
                    "unavailable_answers": sum(len(s.errors) for s in senders),
                    "sends_resent_after_disconnect": sum(s.lost for s in senders),
                }

        asyncio.run(scenario())
    record_restart_times(tmp_path, times)


def test_unavailable_means_not_stored(tmp_path: Path) -> None:
    """PROTOCOL.md: ``unavailable`` means the request was not carried out. Senders
    that never re-send: no message answered ``unavailable`` may be in history, and
    every acked one is (checked by ``check_senders``)."""
    channel = channel_owned_by(1, "faults-unknown")
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [
                Sender(server.url, f"s{n}", channel, retry_unavailable=False) for n in range(4)
            ]
            async with stopping(senders):
                await start_flowing(senders, [])
                for _ in range(3):
                    await kill_and_wait_restart(server, "persister 1")
                    await wait_acked_since(
                        senders, time.monotonic(), 10, 20, "acks after the restart"
                    )
            check_senders(senders, allowed_errors={"unavailable"})
            history = await asyncio.get_running_loop().run_in_executor(
                None, rest_history, server, channel
            )
            stored = {(m["userId"], m["clientMsgId"]) for m in history}
            refused = {(s.user, cmid) for s in senders for cmid, _, _ in s.errors}
            # Sends with a clientMsgId that were in flight to the killed persister
            # are retried by the gateway (deduped by the new persister), so most
            # kills refuse nothing; whatever *was* refused must not be stored.
            wrongly = sorted(refused & stored)
            assert not wrongly, (
                f"{len(wrongly)} of {len(refused)} sends answered 'unavailable' were stored: "
                f"{wrongly[:5]}"
            )

        asyncio.run(scenario())


class BareSender:
    """Sends one message at a time *without* a clientMsgId and notes each answer.

    One at a time, so each answer belongs to the content just sent.
    """

    def __init__(self, url: str, user: str, channel: str) -> None:
        self.url, self.user, self.channel = url, user, channel
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.stopping = False

    async def run(self) -> None:
        ws, _ = await open_client(self.url, self.user, [self.channel])
        try:
            for n in itertools.count():
                if self.stopping:
                    return
                content = f"{self.user}-{n}"
                frame = {"type": "send", "channelId": self.channel, "content": content}
                await ws.send(orjson.dumps(frame).decode())
                while True:
                    answer = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                    if answer.get("type") == "ack":
                        assert answer["clientMsgId"] is None, answer  # what it sent
                        self.acked.append(content)
                        break
                    if answer.get("type") == "error":
                        assert answer["code"] == "unavailable", answer
                        self.refused.append(content)
                        break
        finally:
            await ws.close()


def test_unavailable_means_not_stored_without_a_client_msg_id(tmp_path: Path) -> None:
    """A send without a clientMsgId in flight to a persister that dies is settled
    inside the server (retried under a server-made key, deduplicated by the new
    persister): it is acked, or refused and never stored, and never stored twice."""
    channel = channel_owned_by(1, "faults-bare")
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [BareSender(server.url, f"b{n}", channel) for n in range(6)]
            tasks = [asyncio.get_running_loop().create_task(s.run()) for s in senders]
            try:
                await until(lambda: all(len(s.acked) >= 5 for s in senders), 20, "sends flow")
                for _ in range(3):
                    await kill_and_wait_restart(server, "persister 1")
                    mark = {s.user: len(s.acked) for s in senders}
                    await until(
                        lambda mark=mark: all(len(s.acked) > mark[s.user] + 3 for s in senders),
                        30,
                        "acks after the restart",
                    )
            finally:
                for sender in senders:
                    sender.stopping = True
                await asyncio.gather(*tasks)
            history = await asyncio.get_running_loop().run_in_executor(
                None, rest_history, server, channel
            )
            contents = [m["content"] for m in history]
            assert all(m["clientMsgId"] is None for m in history)
            assert len(contents) == len(set(contents)), "a message was stored twice"
            acked = {c for s in senders for c in s.acked}
            refused = {c for s in senders for c in s.refused}
            assert acked <= set(contents), "an acked message is missing"
            wrongly = sorted(refused & set(contents))
            assert not wrongly, f"answered 'unavailable' yet stored: {wrongly[:5]}"

        asyncio.run(scenario())


def test_changes_in_flight_to_a_killed_persister_are_settled(tmp_path: Path) -> None:
    """SIGKILL the persister of a channel while a client streams reactions, several
    in flight at once. Every request is answered (its confirmation, or
    ``unavailable``: not made) within the ack timeout's reach; the reactions left
    are the ones the last confirmation of each says; a watcher gets each change
    once, in order, and ends with what history shows."""
    channel = channel_owned_by(1, "faults-changes")
    emojis = [f"e{i}" for i in range(12)]
    requests = 360
    window = 8

    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            alice = await Client.connect(server.url, "alice", [channel])
            watcher = await Client.connect(server.url, "watcher", [channel])
            bob = await Client.connect(server.url, "bob", [channel])
            try:
                await alice.send({"type": "send", "channelId": channel, "content": "react"})
                target = (await alice.expect("ack"))["messageId"]
                answers: dict[str, dict[str, Any]] = {}
                pending: dict[str, asyncio.Future[dict[str, Any]]] = {}

                async def read_answers() -> None:
                    while True:
                        frame = await bob.recv(timeout=60)
                        future = pending.pop(str(frame.get("requestId")), None)
                        if future is not None:
                            future.set_result(frame)

                reader = asyncio.get_running_loop().create_task(read_answers())
                slots = asyncio.Semaphore(window)
                wanted: dict[str, str] = {}  # emoji -> op of its last confirmed request

                async def react(n: int) -> None:
                    emoji = emojis[n % len(emojis)]
                    op = "add" if (n // len(emojis)) % 2 == 0 else "remove"
                    request_id = f"r{n}"
                    pending[request_id] = asyncio.get_running_loop().create_future()
                    await bob.send(
                        {
                            "type": "react",
                            "requestId": request_id,
                            "channelId": channel,
                            "messageId": target,
                            "emoji": emoji,
                            "op": op,
                        }
                    )
                    answers[request_id] = await asyncio.wait_for(pending[request_id], 30)
                    slots.release()

                async def stream() -> None:
                    tasks = []
                    for n in range(requests):
                        await slots.acquire()
                        tasks.append(asyncio.get_running_loop().create_task(react(n)))
                        await asyncio.sleep(0.005)
                    await asyncio.gather(*tasks)

                streaming = asyncio.get_running_loop().create_task(stream())
                await until(lambda: len(answers) >= requests // 4, 30, "a quarter answered")
                await kill_and_wait_restart(server, "persister 1")
                await asyncio.wait_for(streaming, 120)
                reader.cancel()
                for n in range(requests):
                    answer = answers[f"r{n}"]
                    if answer["type"] == "error":
                        assert answer["code"] == "unavailable", answer
                        continue
                    assert answer["type"] == "reaction", answer
                    wanted[answer["emoji"]] = answer["op"]
                (stored,) = rest_history(server, channel)
                reactions = stored["reactions"]
                expected = {e: ["bob"] for e, op in wanted.items() if op == "add"}
                assert reactions == expected

                def watched() -> dict[str, list[str]] | None:
                    frames = [f for f in watcher.frames if f.get("type") == "reaction"]
                    ids = [f["eventId"] for f in frames]
                    assert ids == sorted(set(ids)), "each change once, in order"
                    state: dict[str, list[str]] = {}
                    for f in frames:
                        if f["op"] == "add":
                            state[f["emoji"]] = ["bob"]
                        else:
                            state.pop(f["emoji"], None)
                    return state if state == expected else None

                async def watch() -> None:
                    while watched() is None:
                        await watcher.recv(timeout=30)

                await asyncio.wait_for(watch(), 60)
            finally:
                for client in (alice, watcher, bob):
                    await client.close()

        asyncio.run(scenario())
