"""Load, watchers and checks shared by the fault tests under load.

``tests/e2e/test_faults.py`` (one server, its processes killed or failing) and
``tests/integration/test_backend_faults.py`` (two servers, their Redis and
Cassandra failing) run the same load: ``Sender``s sending continuously (each send
carries a ``clientMsgId`` and is re-sent with it after ``unavailable`` or a lost
connection) and ``Watcher``s recording every message id (resuming after a
disconnect). They check the same promises of PROTOCOL.md with the helpers here:
every send answered in time (``check_senders``), every ack in history and each
``(userId, clientMsgId)`` stored once (``check_stored``), every watcher holding
each channel's history from its first message on, exactly once
(``check_watchers_received``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support.polling import until, wait_until
from tests.support.servers import ServerProcess

# The names these pollers had here (branches written before tests/support use them).
poll = wait_until
apoll = until

ACK_TIMEOUT_MS = 3000
# A send may be answered one maintenance tick (0.5 s) after the ack timeout; the
# rest is scheduling slack on a loaded 2-core machine.
SILENCE_LIMIT_S = ACK_TIMEOUT_MS / 1000 + 1.5
RESTART_TIMEOUT_S = 20.0
OVERRIDES: dict[str, Any] = {
    "chat.ack_timeout_ms": ACK_TIMEOUT_MS,
    # The load here is far above a human's rate; the rate limit is not under test.
    "limits.messages_per_10s": 1_000_000,
}
SEND_PACE_S = 0.005
SEND_WINDOW = 8
FIRST_ID = "0" * 16  # ``after`` this id = from the start of a channel


# --- the server's processes ------------------------------------------------------------


def _cmdline(pid: int | str) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").strip().decode(errors="replace")


def alive(pid: int | str) -> bool:
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
        if alive(entry.name):
            found.add(int(entry.name))
    return sorted(found)


def one_pid(server: ServerProcess, title: str) -> int:
    pids = wait_until(
        lambda: server_pids(server, title), 10, f"a process titled {title!r}", interval=0.005
    )
    assert len(pids) == 1, f"{title!r}: {pids}"
    return pids[0]


def kill_leftovers(servers: Iterable[ServerProcess]) -> None:
    """Assert no process of the (stopped) ``servers`` is left; SIGKILL any that is.

    ``running_server`` checks its process group; Thespian's actors live in another
    one, so this checks (and cleans up) by working directory as well.
    """
    leftovers = [pid for server in servers for pid in server_pids(server)]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert leftovers == [], f"server processes left behind: {leftovers}"


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
    new = await until(
        lambda: [p for p in server_pids(server, title) if p != old],
        RESTART_TIMEOUT_S,
        f"a new {title!r}",
        interval=0.002,
    )
    titled_at = time.monotonic()
    line = await until(
        lambda: restart_logged(server, actor, log_mark),
        RESTART_TIMEOUT_S,
        f"'actor restarted' for {actor}",
        interval=0.005,
    )
    logged_at = time.monotonic()
    assert not alive(old), f"{title} {old} survived SIGKILL"
    assert len(new) == 1, f"more than one {title!r}: {new}"
    return {
        "kill_to_new_titled_process_ms": round((titled_at - killed_at) * 1000, 1),
        "kill_to_restart_logged_ms": round((logged_at - killed_at) * 1000, 1),
        "supervisor_restart_ms": float(line["restartMs"]),
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def write_times(path: Path, name: str, times: dict[str, Any]) -> None:
    """Write measured ``times`` to ``path`` and print them (``pytest -s``)."""
    text = json.dumps(times, indent=2, sort_keys=True)
    path.write_text(text)
    print(f"\n{name} ({path}):\n{text}")


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


def history_ids(server: ServerProcess, channels: Iterable[str]) -> dict[str, list[str]]:
    return {c: [m["messageId"] for m in rest_history(server, c)] for c in channels}


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


def persister_channels(prefix: str) -> list[str]:
    """A channel of persister 1, then one of persister 2."""
    return [channel_owned_by(index, prefix) for index in (1, 2)]


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

    def _answered(self, frame: dict[str, Any]) -> str | None:
        """The clientMsgId of the pending send ``frame`` answers (its latency
        recorded); None, and ``frame`` is unexpected, if it answers none."""
        cmid = frame.get("clientMsgId")
        sent_at = self.pending.pop(cmid, None) if isinstance(cmid, str) else None
        if cmid is None or sent_at is None:
            self.unexpected.append(frame)
            return None
        self.latencies.append(time.monotonic() - sent_at)
        return cmid

    def _on_ack(self, frame: dict[str, Any]) -> None:
        cmid = self._answered(frame)
        if cmid is None:
            return
        earlier = self.acked.get(cmid)
        if earlier is not None and earlier != frame["messageId"]:
            self.unexpected.append(("acked twice with different ids", cmid, earlier, frame))
        self.acked[cmid] = frame["messageId"]
        self.acked_at[cmid] = time.monotonic()

    def _on_error(self, frame: dict[str, Any]) -> None:
        cmid = self._answered(frame)
        if cmid is None:
            return
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


def check_stored(
    senders: list[Sender], histories: dict[str, list[dict[str, Any]]]
) -> dict[tuple[str, str, str], str]:
    """Acked means durable: no channel's history is empty, each (channel, user,
    clientMsgId) is stored once, and every acked message is stored with the acked
    id. Returns the stored ids by (channel, user, clientMsgId)."""
    stored: dict[tuple[str, str, str], str] = {}
    for channel, messages in histories.items():
        assert messages, f"{channel}: empty history"
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
    return stored


async def wait_caught_up(
    server: ServerProcess, watchers: list[Watcher], channels: list[str], timeout: float
) -> bool:
    """Wait until every watcher holds each of its channels' last stored message;
    False if it did not within ``timeout`` s (the caller's comparison says what is
    missing)."""
    loop = asyncio.get_running_loop()

    def caught_up() -> bool:
        history = history_ids(server, channels)
        return all(w.last(c) == history[c][-1] for w in watchers for c in w.channels)

    deadline = time.monotonic() + timeout
    while not await loop.run_in_executor(None, caught_up):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)  # polling storage, bounded by the deadline
    return True


async def check_watchers_received(
    watchers: list[Watcher],
    final: dict[str, list[str]],
    where: Callable[[Watcher], str | None] = lambda _: None,
) -> None:
    """Stop the watchers, then check each received every channel's history
    (``final``) from its first message on, in order, exactly once, and no error.
    ``where(watcher)`` (asked before they stop) names its host or gateway."""
    wheres = {id(w): where(w) for w in watchers}
    await asyncio.gather(*(w.stop() for w in watchers))
    wrong = []
    for watcher in watchers:
        for channel in watcher.channels:
            got = watcher.ids[channel]
            assert got, f"{watcher.user}: nothing received on {channel}"
            expected = final[channel][final[channel].index(got[0]) :]
            if got != expected:
                dups = [i for i, n in collections.Counter(got).items() if n > 1]
                gaps = sorted(set(expected) - set(got))
                extra = sorted(set(got) - set(expected))
                at = f"{wheres[id(watcher)]}, " if wheres[id(watcher)] else ""
                wrong.append(
                    f"{watcher.user} ({at}{watcher.disconnects} reconnects) on {channel}: "
                    f"received {len(got)}, history has {len(expected)} since its first; "
                    f"duplicates {dups[:5]}, missing {gaps[:5]}, not in history {extra[:5]}, "
                    f"out of order: {got != sorted(got)}, last {got[-3:]} vs {expected[-3:]}"
                )
    assert not wrong, "\n".join(wrong)
    for watcher in watchers:
        problems = [f for f in watcher.frames if f.get("type") in ("error", "resume_failed")]
        assert not problems, f"{watcher.user}: {problems[:5]}"


async def wait_flowing(senders: list[Sender], watchers: list[Watcher], count: int = 5) -> None:
    """Wait until every sender has ``count`` acks and every watcher ``count`` messages."""
    await until(
        lambda: (
            all(len(s.acked) >= count for s in senders)
            and all(len(w.ids[c]) >= count for w in watchers for c in w.channels)
        ),
        15,
        "the load to flow",
    )


async def start_all(clients: Iterable[Sender | Watcher]) -> None:
    """Start ``clients`` one after the other (connected when this returns)."""
    for client in clients:
        await client.start()


async def start_flowing(senders: list[Sender], watchers: list[Watcher]) -> None:
    """Start the watchers, then the senders; wait until the load flows."""
    await start_all([*watchers, *senders])
    await wait_flowing(senders, watchers)


@contextlib.asynccontextmanager
async def stopping(clients: Sequence[Sender | Watcher]) -> AsyncIterator[None]:
    """Stop every one of ``clients`` (as the list is when the block ends) when the
    block ends, however it ends. Stopping a client twice, or one never started, is
    harmless."""
    try:
        yield
    finally:
        await asyncio.gather(*(c.stop() for c in clients))


async def wait_acked_since(
    senders: list[Sender], moment: float, count: int, timeout: float, what: str
) -> None:
    """Wait until every sender has ``count`` acks after ``moment``."""
    await until(lambda: all(s.acks_since(moment) >= count for s in senders), timeout, what)
