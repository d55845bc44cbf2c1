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
import collections
import contextlib
import itertools
import json
import os
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.e2e.server_process import ServerProcess, running_server

pytestmark = pytest.mark.e2e

T = TypeVar("T")

ACK_TIMEOUT_MS = 3000
# A send may be answered one maintenance tick (0.5 s) after the ack timeout; the
# rest is scheduling slack on a loaded 2-core machine.
SILENCE_LIMIT_S = ACK_TIMEOUT_MS / 1000 + 1.5
RESTART_TIMEOUT_S = 20.0
CATCH_UP_TIMEOUT_S = 20.0
OVERRIDES: dict[str, Any] = {
    "chat.ack_timeout_ms": ACK_TIMEOUT_MS,
    # The load below is far above a human's rate; the rate limit is not under test.
    "limits.messages_per_10s": 1_000_000,
}
SEND_PACE_S = 0.005
SEND_WINDOW = 8
FIRST_ID = "0" * 16  # ``after`` this id = from the start of a channel


# --- polling (never a bare sleep to synchronise) -------------------------------------


def poll(cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.005) -> T:
    """Return ``cond()`` once it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


async def apoll(
    cond: Callable[[], T | None], timeout: float, what: str, interval: float = 0.01
) -> T:
    """``poll`` for coroutines: yields to the loop between checks."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


# --- the server's processes ------------------------------------------------------------


def _cmdline(pid: int | str) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").strip().decode(errors="replace")


def _alive(pid: int | str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def server_pids(server: ServerProcess, title: str | None = None) -> list[int]:
    """Live processes of ``server`` (titled ``title``, if given).

    ``ServerProcess.pids_by_title`` plus every process whose working directory is
    the server's: Thespian's admin detaches into a session of its own, but every
    process of the server inherits the directory ``running_server`` starts it in.
    """
    found = set(server.pids_by_title(title)) if title is not None else set()
    workdir = server.workdir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != workdir:
                continue
            if title is not None and _cmdline(entry.name) != title:
                continue
        except OSError:
            continue
        if _alive(entry.name):
            found.add(int(entry.name))
    return sorted(found)


def one_pid(server: ServerProcess, title: str) -> int:
    pids = poll(lambda: server_pids(server, title), 10, f"a process titled {title!r}")
    assert len(pids) == 1, f"{title!r}: {pids}"
    return pids[0]


@contextlib.contextmanager
def chime_server(tmp: Path, workers: int = 2) -> Iterator[ServerProcess]:
    """``running_server`` with this module's config; asserts nothing outlives it."""
    workdir = tmp / "server"
    with running_server(workdir, OVERRIDES, workers=workers) as server:
        yield server
    # running_server checks its process group; Thespian's actors live in another
    # one, so check (and clean up) by working directory as well.
    leftovers = server_pids(server)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert leftovers == [], f"server processes left behind: {leftovers}"


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


def restart_logged(server: ServerProcess, actor: str, after_line: int) -> dict[str, Any] | None:
    """The supervisor's "actor restarted" line for ``actor`` past line ``after_line``."""
    for line in server.log_lines()[after_line:]:
        if line.get("message") == "actor restarted" and line.get("actor") == actor:
            return line
    return None


async def kill_and_wait_restart(server: ServerProcess, actor: str) -> dict[str, float]:
    """SIGKILL ``chime: <actor>``; wait for its successor; return the timings (ms)."""
    title = f"chime: {actor}"
    old = one_pid(server, title)
    log_mark = len(server.log_lines())
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    new = await apoll(
        lambda: [p for p in server_pids(server, title) if p != old],
        RESTART_TIMEOUT_S,
        f"a new {title!r}",
        interval=0.002,
    )
    titled_at = time.monotonic()
    line = await apoll(
        lambda: restart_logged(server, actor, log_mark),
        RESTART_TIMEOUT_S,
        f"'actor restarted' for {actor}",
        interval=0.005,
    )
    logged_at = time.monotonic()
    assert not _alive(old), f"{title} {old} survived SIGKILL"
    assert len(new) == 1, f"more than one {title!r}: {new}"
    return {
        "kill_to_new_titled_process_ms": round((titled_at - killed_at) * 1000, 1),
        "kill_to_restart_logged_ms": round((logged_at - killed_at) * 1000, 1),
        "supervisor_restart_ms": float(line["restartMs"]),
    }


def record_restart_times(tmp: Path, times: dict[str, Any]) -> None:
    path = tmp / "restart_times.json"
    path.write_text(json.dumps(times, indent=2, sort_keys=True))
    print(f"\nrestart times ({path}):\n{json.dumps(times, indent=2, sort_keys=True)}")


# --- REST -----------------------------------------------------------------------------


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def rest_history(server: ServerProcess, channel: str) -> list[dict[str, Any]]:
    """Every message of ``channel``, oldest first, paging the REST API."""
    messages: list[dict[str, Any]] = []
    after = FIRST_ID
    while True:
        query = urllib.parse.urlencode({"after": after, "limit": 100})
        status, body = http_get(f"{server.api}/v1/channels/{channel}/messages?{query}", 10)
        assert status == 200, (status, body[:300])
        page = orjson.loads(body)["messages"]
        if not page:
            return messages
        messages.extend(page)
        after = page[-1]["messageId"]


def channel_owned_by(persister_index: int, prefix: str, pool_size: int = 2) -> str:
    """A channel id that persister ``persister_index`` (1-based) sequences.

    Mirrors the server's placement (crc32 of the id modulo the pool size); the
    test checks it by seeing the restarted persister's channel fail, not this.
    """
    for n in range(1000):
        channel = f"{prefix}-{n}"
        if zlib.crc32(channel.encode()) % pool_size == persister_index - 1:
            return channel
    raise AssertionError("no channel found")


# --- clients --------------------------------------------------------------------------


async def open_client(
    url: str, user: str, channels: list[str], resume: dict[str, str] | None = None
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect and hand-shake; on any failure nothing is left open (raises)."""
    ws = await websockets.connect(url, open_timeout=5, close_timeout=2)
    try:
        frame: dict[str, Any] = {"type": "connect", "channels": channels, "userId": user}
        if resume:
            frame["resume"] = resume
        await ws.send(orjson.dumps(frame).decode())
        connected = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert connected.get("type") == "connected", connected
        return ws, connected
    except BaseException:
        await ws.close()
        raise


RECONNECT_ERRORS = (OSError, TimeoutError, ConnectionClosed, InvalidHandshake, AssertionError)


class Sender:
    """Sends continuously on one channel; remembers every outcome.

    At most ``SEND_WINDOW`` sends are unanswered at a time. A send answered
    ``unavailable``, or lost with its connection, is sent again later with the same
    ``clientMsgId`` (what a client does; the server must store it at most once).
    """

    def __init__(self, url: str, user: str, channel: str, *, retry_unavailable: bool = True):
        self.retry_unavailable = retry_unavailable
        self.url = url
        self.user = user
        self.channel = channel
        self.ws: ClientConnection | None = None
        self.acked: dict[str, str] = {}  # clientMsgId -> messageId
        self.acked_at: dict[str, float] = {}
        self.errors: list[tuple[str, str, str]] = []  # (clientMsgId, code, message)
        self.unexpected: list[Any] = []
        self.latencies: list[float] = []
        self.silent: list[tuple[str, float]] = []  # unanswered past SILENCE_LIMIT_S
        self.pending: dict[str, float] = {}  # clientMsgId -> sent at (this connection)
        self.retry: collections.deque[str] = collections.deque()
        self.lost = 0  # sends whose connection died before an answer
        self.disconnects = 0
        self.sent = 0
        self._next = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 10)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await asyncio.wait_for(self._task, SILENCE_LIMIT_S + 10)

    def acks_since(self, moment: float) -> int:
        return sum(1 for at in self.acked_at.values() if at > moment)

    def errors_with(self, code: str) -> list[tuple[str, str, str]]:
        return [e for e in self.errors if e[1] == code]

    async def _run(self) -> None:
        while not self._stopping:
            try:
                self.ws, _ = await open_client(self.url, self.user, [self.channel])
            except RECONNECT_ERRORS:
                await asyncio.sleep(0.05)  # reconnect pacing, not synchronisation
                continue
            self._connected.set()
            try:
                await self._session(self.ws)
            finally:
                await self.ws.close()
            if self.pending:  # the connection died with sends unanswered
                self.lost += len(self.pending)
                self.retry.extend(self.pending)
                self.pending.clear()
            if not self._stopping:
                self.disconnects += 1

    async def _session(self, ws: ClientConnection) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            while not self._stopping and not reader.done():
                self._check_silence()
                if len(self.pending) >= SEND_WINDOW:
                    await asyncio.wait([reader], timeout=0.005)
                    continue
                cmid = self.retry.popleft() if self.retry else self._new_id()
                self.pending[cmid] = time.monotonic()
                self.sent += 1
                frame = {"type": "send", "channelId": self.channel, "content": cmid}
                frame["clientMsgId"] = cmid
                try:
                    await ws.send(orjson.dumps(frame).decode())
                except ConnectionClosed:
                    break
                await asyncio.wait([reader], timeout=SEND_PACE_S)
            # Stopping: every send still owed must be answered in time.
            deadline = time.monotonic() + SILENCE_LIMIT_S + 0.5
            while self.pending and not reader.done() and time.monotonic() < deadline:
                await asyncio.wait([reader], timeout=0.01)
            if not reader.done():
                now = time.monotonic()
                self.silent.extend((cmid, now - at) for cmid, at in self.pending.items())
                self.pending.clear()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _new_id(self) -> str:
        self._next += 1
        return f"{self.user}-{self._next}"

    def _check_silence(self) -> None:
        now = time.monotonic()
        for cmid, at in list(self.pending.items()):
            if now - at > SILENCE_LIMIT_S:
                self.silent.append((cmid, now - at))
                del self.pending[cmid]

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "ack":
                    self._on_ack(frame)
                elif kind == "error":
                    self._on_error(frame)
                elif kind not in ("message", "pong", "presence_changed"):
                    self.unexpected.append(frame)

    def _on_ack(self, frame: dict[str, Any]) -> None:
        cmid = frame.get("clientMsgId")
        sent_at = self.pending.pop(cmid, None) if isinstance(cmid, str) else None
        if cmid is None or sent_at is None:
            self.unexpected.append(frame)
            return
        self.latencies.append(time.monotonic() - sent_at)
        earlier = self.acked.get(cmid)
        if earlier is not None and earlier != frame["messageId"]:
            self.unexpected.append(("acked twice with different ids", cmid, earlier, frame))
        self.acked[cmid] = frame["messageId"]
        self.acked_at[cmid] = time.monotonic()

    def _on_error(self, frame: dict[str, Any]) -> None:
        cmid = frame.get("clientMsgId")
        sent_at = self.pending.pop(cmid, None) if isinstance(cmid, str) else None
        if cmid is None or sent_at is None:
            self.unexpected.append(frame)
            return
        self.latencies.append(time.monotonic() - sent_at)
        self.errors.append((cmid, frame.get("code", ""), frame.get("message", "")))
        if self.retry_unavailable and frame.get("code") == "unavailable" and cmid not in self.acked:
            self.retry.append(cmid)


class Watcher:
    """A subscriber that records every message id; resumes after a disconnect."""

    def __init__(self, url: str, user: str, channels: list[str], *, reconnect: bool = True):
        self.url = url
        self.user = user
        self.channels = channels
        self.reconnect = reconnect
        self.ws: ClientConnection | None = None
        self.ids: dict[str, list[str]] = {c: [] for c in channels}
        self.received_at: dict[str, list[float]] = {c: [] for c in channels}
        self.frames: list[dict[str, Any]] = []  # everything but messages
        self.disconnects = 0
        self.close_codes: list[int | None] = []  # of connections the server closed
        self.resumed: list[dict[str, Any]] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.ws, _ = await open_client(self.url, self.user, self.channels)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 15)

    def last(self, channel: str) -> str | None:
        ids = self.ids[channel]
        return ids[-1] if ids else None

    def count_since(self, channel: str, moment: float) -> int:
        return sum(1 for at in self.received_at[channel] if at > moment)

    async def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(orjson.dumps(frame).decode())

    async def _run(self) -> None:
        while True:
            assert self.ws is not None
            with contextlib.suppress(ConnectionClosed):
                async for raw in self.ws:
                    frame = orjson.loads(raw)
                    if frame.get("type") == "message":
                        message = frame["message"]
                        self.ids[message["channelId"]].append(message["messageId"])
                        self.received_at[message["channelId"]].append(time.monotonic())
                    else:
                        if frame.get("type") == "resumed":
                            self.resumed.append(frame)
                        self.frames.append(frame)
            if self._stopping:
                return
            self.close_codes.append(self.ws.close_code)
            if not self.reconnect:
                return
            self.disconnects += 1
            await self._resume()

    async def _resume(self) -> None:
        resume = {c: ids[-1] for c, ids in self.ids.items() if ids}
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                self.ws, _ = await open_client(self.url, self.user, self.channels, resume)
                return
            except RECONNECT_ERRORS:
                if time.monotonic() > deadline or self._stopping:
                    raise
                await asyncio.sleep(0.05)  # reconnect pacing, not synchronisation


# --- checks ---------------------------------------------------------------------------


def check_senders(senders: list[Sender], allowed_errors: set[str]) -> None:
    """Every send was answered in time, with only the allowed error codes."""
    for sender in senders:
        assert not sender.unexpected, f"{sender.user}: unexpected frames {sender.unexpected[:5]}"
        assert not sender.silent, (
            f"{sender.user}: {len(sender.silent)} sends unanswered beyond {SILENCE_LIMIT_S} s: "
            f"{sender.silent[:5]}"
        )
        if sender.latencies:
            assert max(sender.latencies) <= SILENCE_LIMIT_S, (sender.user, max(sender.latencies))
        bad = [e for e in sender.errors if e[1] not in allowed_errors]
        assert not bad, f"{sender.user}: errors {bad[:5]}"
        assert sender.acked, f"{sender.user}: not a single ack"


def check_durable(
    server: ServerProcess, senders: list[Sender], channels: list[str]
) -> dict[str, list[str]]:
    """Acked means durable; each (user, clientMsgId) stored once; ids contiguous.

    Returns each channel's message ids from REST history.
    """
    stored: dict[tuple[str, str, str], str] = {}
    history_ids: dict[str, list[str]] = {}
    for channel in channels:
        messages = rest_history(server, channel)
        ids = [m["messageId"] for m in messages]
        history_ids[channel] = ids
        assert ids, f"{channel}: empty history"
        seqs = [int(i) for i in ids]
        assert seqs == list(range(1, len(ids) + 1)), f"{channel}: ids not contiguous from 1"
        for message in messages:
            key = (channel, message["userId"], message["clientMsgId"])
            assert key not in stored, f"stored twice: {key} as {stored[key]} and {message}"
            stored[key] = message["messageId"]
    missing = []
    for sender in senders:
        for cmid, message_id in sender.acked.items():
            found = stored.get((sender.channel, sender.user, cmid))
            if found != message_id:
                missing.append((sender.channel, sender.user, cmid, message_id, found))
    acked = sum(len(s.acked) for s in senders)
    assert not missing, f"{len(missing)} of {acked} acked messages not in history: {missing[:5]}"
    return history_ids


async def settle_and_check_watchers(
    server: ServerProcess, watchers: list[Watcher], senders: list[Sender], channels: list[str]
) -> dict[str, list[str]]:
    """Wait until every (running) watcher has each channel's last stored message,
    stop the watchers, then compare what each received with history."""

    def history_now() -> dict[str, list[str]]:
        return {c: [m["messageId"] for m in rest_history(server, c)] for c in channels}

    def caught_up() -> dict[str, list[str]] | None:
        history = history_now()
        for watcher in watchers:
            for channel in watcher.channels:
                if watcher.last(channel) != history[channel][-1]:
                    return None
        return history

    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    history: dict[str, list[str]] | None = None
    while time.monotonic() < deadline:
        history = await asyncio.get_running_loop().run_in_executor(None, caught_up)
        if history is not None:
            break
        await asyncio.sleep(0.1)
    final = await asyncio.get_running_loop().run_in_executor(
        None, check_durable, server, senders, channels
    )
    wheres = {id(w): gateway_of(server, w.ws) if w.ws is not None else None for w in watchers}
    await asyncio.gather(*(w.stop() for w in watchers))
    wrong = []
    for watcher in watchers:
        for channel in watcher.channels:
            got = watcher.ids[channel]
            expected_all = final[channel]
            assert got, f"{watcher.user}: nothing received on {channel}"
            start = expected_all.index(got[0])
            expected = expected_all[start:]
            if got != expected:
                dups = [i for i, n in collections.Counter(got).items() if n > 1]
                gaps = sorted(set(expected) - set(got))
                where = wheres[id(watcher)]
                wrong.append(
                    f"{watcher.user} ({where}, {watcher.disconnects} reconnects) on "
                    f"{channel}: received {len(got)}, history has {len(expected)} since "
                    f"its first; duplicates {dups[:5]}, missing {gaps[:5]}, last received "
                    f"{got[-3:]} vs {expected[-3:]}"
                )
    assert not wrong, "\n".join(wrong)
    for watcher in watchers:
        problems = [f for f in watcher.frames if f.get("type") in ("error", "resume_failed")]
        assert not problems, f"{watcher.user}: {problems[:5]}"
    assert history is not None, "watchers did not catch up with history"
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


async def wait_flowing(senders: list[Sender], watchers: list[Watcher], count: int = 5) -> None:
    """Wait until every sender has ``count`` acks and every watcher ``count`` messages."""
    await apoll(
        lambda: (
            all(len(s.acked) >= count for s in senders)
            and all(len(w.ids[c]) >= count for w in watchers for c in w.channels)
        ),
        15,
        "the load to flow",
    )


async def stop_all(senders: list[Sender], watchers: list[Watcher]) -> None:
    await asyncio.gather(*(s.stop() for s in senders))
    await asyncio.gather(*(w.stop() for w in watchers))


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

            async def make_sender(n: int) -> Sender:
                sender = Sender(server.url, f"s{n}", channel)
                await sender.start()
                senders.append(sender)
                return sender

            async def make_watcher(n: int) -> Watcher:
                watcher = Watcher(server.url, f"w{n}", [channel])
                await watcher.start()
                watchers.append(watcher)
                return watcher

            try:
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
                await apoll(
                    lambda: all(w.count_since(channel, killed_at) >= 5 for w in survivors),
                    5,
                    "gateway 2's watchers to receive after the kill",
                )
                times["gateway"]["survivor_max_stall_ms"] = round(
                    max(max_stall(w, channel, killed_at, restarted_at) for w in survivors) * 1000,
                    1,
                )
                # The killed gateway's clients noticed, and resumed.
                await apoll(
                    lambda: (
                        all(w.disconnects >= 1 for w in watchers_on["chime: gateway 1"])
                        and all(s.disconnects >= 1 for s in senders_on["chime: gateway 1"])
                    ),
                    10,
                    "gateway 1's clients to notice the kill",
                )
                await apoll(
                    lambda: all(s.acks_since(restarted_at) >= 10 for s in senders),
                    20,
                    "every sender to be acked again after the restart",
                )
                # The new gateway 1 serves: a client that lands on it sends and receives.
                fresh = await on_each_gateway(server, make_watcher, 1)
                probe_watcher = fresh["chime: gateway 1"][-1]
                await apoll(
                    lambda: len(probe_watcher.ids[channel]) >= 5,
                    10,
                    "the restarted gateway to deliver",
                )
                probe = await on_each_gateway(server, make_sender, 1)
                probe_sender = probe["chime: gateway 1"][-1]
                await apoll(
                    lambda: len(probe_sender.acked) >= 5, 10, "the restarted gateway to ack"
                )
            except BaseException:
                await stop_all(senders, watchers)
                raise
            try:
                await stop_all(senders, [])
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
            finally:
                await stop_all([], watchers)

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
    channels = [channel_owned_by(1, "faults-p"), channel_owned_by(2, "faults-p")]
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [Sender(server.url, f"s{n}", channels[n % 2]) for n in range(4)]
            watchers = [Watcher(server.url, f"w{n}", channels) for n in range(3)]
            try:
                for client in [*watchers, *senders]:
                    await client.start()
                await wait_flowing(senders, watchers)
                for index in (1, 2):
                    actor = f"persister {index}"
                    own = [s for s in senders if s.channel == channels[index - 1]]
                    errors_before = sum(len(s.errors) for s in own)
                    times[actor] = await kill_and_wait_restart(server, actor)
                    restarted_at = time.monotonic()
                    await apoll(
                        lambda own=own, at=restarted_at: all(s.acks_since(at) >= 20 for s in own),
                        20,
                        f"sends to {actor}'s channel to succeed again",
                    )
                    times[actor]["unavailable_answers"] = (
                        sum(len(s.errors) for s in own) - errors_before
                    )
            except BaseException:
                await stop_all(senders, watchers)
                raise
            try:
                await stop_all(senders, [])
                check_senders(senders, allowed_errors={"unavailable"})
                for watcher in watchers:
                    assert watcher.disconnects == 0, watcher.user
                await settle_and_check_watchers(server, watchers, senders, channels)
                for key in ("persister 1", "persister 2"):
                    times[key]["messages_acked"] = sum(len(s.acked) for s in senders)
                    times[key]["slowest_answer_ms"] = round(
                        max(max(s.latencies) for s in senders) * 1000, 1
                    )
            finally:
                await stop_all([], watchers)

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
            senders = [Sender(server.url, f"s{n}", channel) for n in range(3)]
            watchers = [Watcher(server.url, f"w{n}", [channel]) for n in range(2)]
            try:
                for client in [*watchers, *senders]:
                    await client.start()
                await wait_flowing(senders, watchers)
                old = one_pid(server, "chime: api")
                killed_at = time.monotonic()
                os.kill(old, signal.SIGKILL)

                def healthy() -> bool:
                    with contextlib.suppress(OSError):
                        return http_get(f"{server.api}/healthz", 1.0)[0] == 200
                    return False

                loop = asyncio.get_running_loop()
                # Down first (the kill took), then up again on the same port.
                await apoll(lambda: not _alive(old), 5, "the API process to die")
                while not await loop.run_in_executor(None, healthy):
                    assert time.monotonic() - killed_at < RESTART_TIMEOUT_S, "no /healthz"
                    await asyncio.sleep(0.005)
                healthy_at = time.monotonic()
                line = await apoll(
                    lambda: restart_logged(server, "api", 0), 10, "'actor restarted' for api"
                )
                assert one_pid(server, "chime: api") != old
                times["api"] = {
                    "kill_to_healthz_ok_ms": round((healthy_at - killed_at) * 1000, 1),
                    "supervisor_restart_ms": float(line["restartMs"]),
                }

                def ready() -> bool:
                    return http_get(f"{server.api}/readyz", 3.0)[0] == 200

                while not await loop.run_in_executor(None, ready):
                    assert time.monotonic() - killed_at < RESTART_TIMEOUT_S, "never ready"
                    await asyncio.sleep(0.05)
                times["api"]["kill_to_readyz_ok_ms"] = round(
                    (time.monotonic() - killed_at) * 1000, 1
                )
                status, body = await loop.run_in_executor(None, http_get, f"{server.api}/metrics")
                assert status == 200
                assert re.search(rb'chime_actor_restarts_total\{[^}]*kind="api"[^}]*\} 1', body), (
                    body.decode()[:2000]
                )
                await apoll(
                    lambda: all(s.acks_since(healthy_at) >= 5 for s in senders), 10, "more acks"
                )
            except BaseException:
                await stop_all(senders, watchers)
                raise
            try:
                await stop_all(senders, [])
                # The API is not on the chat path: nothing there may even notice.
                check_senders(senders, allowed_errors=set())
                for client in [*senders, *watchers]:
                    assert client.disconnects == 0
                await settle_and_check_watchers(server, watchers, senders, [channel])
            finally:
                await stop_all([], watchers)

        asyncio.run(scenario())
    record_restart_times(tmp_path, times)


def test_connection_actor_exception(tmp_path: Path) -> None:
    """An exception in one ConnectionActor's handler: that client gets ``internal``
    naming a correlation id (logged), keeps its connection and its sends are acked;
    its neighbours on the same channel notice nothing."""
    channel = "faults-conn"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [Sender(server.url, f"s{n}", channel) for n in range(3)]
            watchers = [Watcher(server.url, f"w{n}", [channel]) for n in range(2)]
            victim = Watcher(server.url, "victim", [channel], reconnect=False)
            doomed = Watcher(server.url, "doomed", [channel], reconnect=False)
            try:
                for client in [*watchers, *senders, victim, doomed]:
                    await client.start()
                await wait_flowing(senders, [*watchers, victim])
                correlations = []
                for attempt in range(3):
                    await victim.send({"type": "debug_crash", "target": "connection"})
                    error = await apoll(
                        lambda n=attempt: [f for f in victim.frames if f.get("type") == "error"][
                            n:
                        ],
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
                    await apoll(
                        lambda n=attempt: any(
                            f.get("type") == "ack" and f.get("clientMsgId") == f"victim-{n}"
                            for f in victim.frames
                        ),
                        10,
                        "the victim's ack after the crash",
                    )
                # Escalation: the 6th failure within 10 s closes the connection 1011.
                for _ in range(6):
                    await doomed.send({"type": "debug_crash", "target": "connection"})
                await apoll(lambda: doomed.close_codes, 10, "the doomed connection to close")
                assert doomed.close_codes == [1011], doomed.close_codes
                internal = [f for f in doomed.frames if f.get("code") == "internal"]
                assert len(internal) == 6, doomed.frames
                mark = time.monotonic()
                await apoll(
                    lambda: (
                        all(s.acks_since(mark) >= 5 for s in senders)
                        and victim.count_since(channel, mark) >= 5
                    ),
                    10,
                    "traffic after the crashes",
                )
            except BaseException:
                await stop_all(senders, [*watchers, victim, doomed])
                raise
            try:
                await stop_all(senders, [])
                logged = {
                    line.get("correlationId")
                    for line in server.log_lines()
                    if line.get("message") == "connection handler failed"
                }
                assert set(correlations) <= logged, (correlations, logged)
                assert victim.disconnects == 0
                check_senders(senders, allowed_errors=set())
                for client in [*senders, *watchers]:
                    assert client.disconnects == 0
                victim.frames = [f for f in victim.frames if f.get("type") != "error"]
                await settle_and_check_watchers(server, [*watchers, victim], senders, [channel])
            finally:
                await stop_all([], [*watchers, victim, doomed])

        asyncio.run(scenario())


def test_channel_actor_exception(tmp_path: Path) -> None:
    """An exception in a ChannelActor (on every gateway that has one): its
    subscribers keep receiving, with no gap and no duplicate; another channel's
    subscribers notice nothing; senders notice nothing."""
    hit, other = "faults-chan-hit", "faults-chan-other"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [Sender(server.url, f"s{n}", (hit, other)[n % 2]) for n in range(4)]
            hit_watchers: list[Watcher] = []
            other_watchers: list[Watcher] = []

            async def make_hit(n: int) -> Watcher:
                watcher = Watcher(server.url, f"h{n}", [hit])
                await watcher.start()
                hit_watchers.append(watcher)
                return watcher

            try:
                # A subscriber of ``hit`` on each gateway; each crashes its own
                # gateway's ChannelActor for ``hit``.
                crashers = await on_each_gateway(server, make_hit, 1)
                other_watchers = [Watcher(server.url, f"o{n}", [other]) for n in range(2)]
                for client in [*other_watchers, *senders]:
                    await client.start()
                watchers = [*hit_watchers, *other_watchers]
                await wait_flowing(senders, watchers)
                log_mark = len(server.log_lines())
                for placed in crashers.values():
                    for crasher in placed[:1]:
                        await crasher.send(
                            {"type": "debug_crash", "target": "channel", "channelId": hit}
                        )

                def failures() -> list[dict[str, Any]]:
                    return [
                        line
                        for line in server.log_lines()[log_mark:]
                        if line.get("message") == "channel actor failed"
                    ]

                logged = await apoll(
                    lambda: len(failures()) >= len(crashers) and failures(),
                    10,
                    "the channel actors to fail",
                )
                assert {line.get("channelId") for line in logged} == {hit}
                assert {line.get("process") for line in logged} == {
                    title.removeprefix("chime: ") for title in crashers
                }
                mark = time.monotonic()
                await apoll(
                    lambda: all(w.count_since(w.channels[0], mark) >= 10 for w in watchers),
                    10,
                    "messages after the crash",
                )
            except BaseException:
                await stop_all(senders, [*hit_watchers, *other_watchers])
                raise
            try:
                await stop_all(senders, [])
                check_senders(senders, allowed_errors=set())
                for client in [*senders, *hit_watchers, *other_watchers]:
                    assert client.disconnects == 0, client.user
                await settle_and_check_watchers(
                    server, [*hit_watchers, *other_watchers], senders, [hit, other]
                )
            finally:
                await stop_all([], [*hit_watchers, *other_watchers])

        asyncio.run(scenario())


def test_channel_actor_escalation(tmp_path: Path) -> None:
    """Six failures of one ChannelActor within 10 s: it escalates, closing its
    subscribers with 1011; they resume and miss nothing; the same channel's
    subscribers on the other gateway notice nothing."""
    channel = "faults-chan-escalate"
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [Sender(server.url, f"s{n}", channel) for n in range(3)]
            watchers: list[Watcher] = []

            async def make_watcher(n: int) -> Watcher:
                watcher = Watcher(server.url, f"w{n}", [channel])
                await watcher.start()
                watchers.append(watcher)
                return watcher

            try:
                placed = await on_each_gateway(server, make_watcher, 2)
                for sender in senders:
                    await sender.start()
                await wait_flowing(senders, watchers)
                doomed, spared = placed["chime: gateway 1"], placed["chime: gateway 2"]
                for _ in range(6):
                    await doomed[0].send(
                        {"type": "debug_crash", "target": "channel", "channelId": channel}
                    )
                await apoll(
                    lambda: all(w.close_codes for w in doomed), 10, "the subscribers' close"
                )
                for watcher in doomed:
                    assert watcher.close_codes[0] == 1011, watcher.close_codes
                mark = time.monotonic()
                await apoll(
                    lambda: all(w.count_since(channel, mark) >= 10 for w in watchers),
                    15,
                    "every subscriber to receive again",
                )
            except BaseException:
                await stop_all(senders, watchers)
                raise
            try:
                await stop_all(senders, [])
                check_senders(senders, allowed_errors=set())
                for watcher in spared:
                    assert watcher.disconnects == 0, watcher.user
                for watcher in doomed:
                    assert watcher.resumed, watcher.user
                await settle_and_check_watchers(server, watchers, senders, [channel])
            finally:
                await stop_all([], watchers)

        asyncio.run(scenario())


def test_acked_means_durable_through_every_fault(tmp_path: Path) -> None:
    """One server, continuous load on a channel of each persister, and every fault
    in turn: handler exceptions, then SIGKILL of gateway 1, persister 1, persister 2,
    the API and gateway 2. At the end every acked messageId of the whole run is in
    history, nothing is stored twice, and every watcher (resuming after each
    disconnect) holds each channel's ids exactly once."""
    channels = [channel_owned_by(1, "faults-all"), channel_owned_by(2, "faults-all")]
    times: dict[str, Any] = {}
    with chime_server(tmp_path) as server:

        async def scenario() -> None:
            senders = [Sender(server.url, f"s{n}", channels[n % 2]) for n in range(4)]
            watchers = [Watcher(server.url, f"w{n}", channels) for n in range(4)]
            try:
                for client in [*watchers, *senders]:
                    await client.start()
                await wait_flowing(senders, watchers)

                async def progress(what: str) -> None:
                    mark = time.monotonic()
                    await apoll(
                        lambda: all(s.acks_since(mark) >= 10 for s in senders),
                        20,
                        f"every sender to be acked after {what}",
                    )

                await watchers[0].send({"type": "debug_crash", "target": "connection"})
                for channel in channels:
                    await watchers[1].send(
                        {"type": "debug_crash", "target": "channel", "channelId": channel}
                    )
                await progress("the handler exceptions")
                await apoll(
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
                await apoll(
                    lambda: [p for p in server_pids(server, "chime: api") if p != old_api],
                    RESTART_TIMEOUT_S,
                    "a new API process",
                )
                await progress("the kill of the API")
            except BaseException:
                await stop_all(senders, watchers)
                raise
            try:
                await stop_all(senders, [])
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
            finally:
                await stop_all([], watchers)

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
            try:
                for sender in senders:
                    await sender.start()
                await wait_flowing(senders, [])
                for _ in range(3):
                    await kill_and_wait_restart(server, "persister 1")
                    mark = time.monotonic()
                    await apoll(
                        lambda at=mark: all(s.acks_since(at) >= 10 for s in senders),
                        20,
                        "acks after the restart",
                    )
            finally:
                await stop_all(senders, [])
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
