"""One load process: its connections, its senders, its receivers.

The parent starts ``--processes`` of these (``multiprocessing``, spawn), each
with its own uvloop event loop, and drives them through phases with commands on
a pipe (see :mod:`chime_actors.bench.runner`). A load process never prints per
message: it keeps latencies in compact arrays and counts, and reports once per
phase.

Connections use the bench's own WebSocket client (:mod:`chime_actors.bench.wire`,
far cheaper per frame than ``websockets``): no reader task, the client calls
:meth:`LoadWorker._on_frame` for each message. It parses each frame once
(orjson, from bytes: no UTF-8 decode) and dispatches on ``type``: ``message``
feeds the delivery log and the send→deliver latency (from the send time the
sender put in ``metadata.t``, same host clock), ``ack`` the send→ack latency,
``error`` the error counts, ``history``/``pong`` wake whoever waits for them,
``typing`` and ``presence_changed`` are counted (the presence scenario's typists
send ``typing`` every ``typing_interval`` while the senders run).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import resource
import time
import traceback
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop

from chime_actors.bench.options import (
    CheckReport,
    ConnectReport,
    ExpectDeliveries,
    Finish,
    HistoryReport,
    RunHistory,
    SendReport,
    StartSending,
    WorkerFailed,
    WorkerPlan,
)
from chime_actors.bench.stats import NS_PER_S, Completeness, DeliveryLog, PacingSchedule
from chime_actors.bench.stats import check_connection as account_connection
from chime_actors.bench.wire import CLOSE_TIMEOUT_S, BenchSocket, SocketClosed, open_connection

CONNECT_TIMEOUT_S = 60.0
ACK_WAIT_S = 15.0
PING_TIMEOUT_S = 20.0
HISTORY_TIMEOUT_S = 30.0


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_main(plan: WorkerPlan, pipe: Connection) -> None:
    """Entry point of a load process (``multiprocessing`` target)."""
    raise_fd_limit()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(LoadWorker(plan, pipe).run())
    except Exception:
        with contextlib.suppress(OSError):
            pipe.send(WorkerFailed(traceback.format_exc()))
    finally:
        pipe.close()


class BenchConnection:
    """One client connection of the load generator."""

    __slots__ = (
        "channel",
        "close_code",
        "closed_at_ns",
        "connect_reply",
        "index",
        "log",
        "pong",
        "sock",
    )

    def __init__(self, index: int, channel: str) -> None:
        self.index = index
        self.channel = channel
        # Set once the WebSocket is open; the connection exists before, because
        # the socket's callbacks are bound to it.
        self.sock: BenchSocket | None = None
        self.log = DeliveryLog()
        self.closed_at_ns: int | None = None
        self.close_code: int | None = None
        self.pong: asyncio.Future[None] | None = None
        # The server's answer to our connect frame (``connected`` or ``error``),
        # awaited by _open; None once it came, and frames are dispatched normally.
        self.connect_reply: asyncio.Future[dict[str, Any]] | None = None

    def send_text(self, data: bytes) -> None:
        """Send one text frame; raises SocketClosed if the connection is closed."""
        if self.sock is None:
            raise SocketClosed("never opened")
        self.sock.send_text(data)


class LoadWorker:
    """The state of one load process across its phases."""

    def __init__(self, plan: WorkerPlan, pipe: Connection) -> None:
        self.plan = plan
        self.pipe = pipe
        self.conns: dict[int, BenchConnection] = {}
        self.errors: Counter[str] = Counter()
        self.finishing = False
        # senders
        self.pending: dict[str, tuple[str, int]] = {}  # clientMsgId -> (channel, sent ns)
        self.given_up: set[str] = set()  # no answer within ACK_WAIT_S
        self.acked: dict[str, list[tuple[str, int]]] = {}
        self.ack_us: array[int] = array("q")
        self.lag_us: array[int] = array("q")
        self.sent = 0
        self.first_send_ns: int | None = None
        self.last_send_ns: int | None = None
        self.acks_done = asyncio.Event()
        # receivers
        self.delivery_us: array[int] = array("q")
        self.first_recv_ns: int | None = None
        self.last_recv_ns: int | None = None
        self.history_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # presence scenario
        self.typing_sent = 0
        self.typing_received = 0
        self.presence_received = 0

    async def run(self) -> None:
        """Connect, then obey the parent's commands until ``Finish``."""
        self.pipe.send(await self.connect_all())
        try:
            while True:
                command = await asyncio.to_thread(self.pipe.recv)
                if isinstance(command, StartSending):
                    self.pipe.send(await self.send_all(command))
                elif isinstance(command, ExpectDeliveries):
                    self.pipe.send(await self.check(command))
                elif isinstance(command, RunHistory):
                    self.pipe.send(await self.history(command))
                elif isinstance(command, Finish):
                    break
        finally:
            await self.close_all()

    # --- connect ------------------------------------------------------------------

    async def connect_all(self) -> ConnectReport:
        gate = asyncio.Semaphore(self.plan.connect_concurrency)
        started = time.time_ns()
        results = await asyncio.gather(
            *(self._open(index, channel, gate) for index, channel in self.plan.connections)
        )
        finished = time.time_ns()
        connected = sum(1 for ok in results if ok)
        return ConnectReport(
            connected=connected,
            failed=len(results) - connected,
            errors=dict(self.errors),
            started_ns=started,
            finished_ns=finished,
        )

    async def _open(self, index: int, channel: str, gate: asyncio.Semaphore) -> bool:
        conn = BenchConnection(index, channel)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.connect_reply = reply
        async with gate:
            try:
                # No client pings (the server pings; 20k client pings/20 s is
                # load), no compression: the client has neither.
                conn.sock = await open_connection(
                    self.plan.url,
                    timeout=CONNECT_TIMEOUT_S,
                    on_message=functools.partial(self._on_frame, conn),
                    on_close=functools.partial(self._on_close, conn),
                )
            except Exception as exc:
                self.errors[f"connect:{type(exc).__name__}"] += 1
                return False
            try:
                frame = {"type": "connect", "channels": [channel], "userId": f"u{index}"}
                conn.send_text(orjson.dumps(frame))
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    answer = await reply
                if answer.get("type") == "error":
                    raise ConnectionError(f"refused: {answer.get('code')}")
            except Exception as exc:
                self.errors[f"handshake:{type(exc).__name__}"] += 1
                if reply.done() and not reply.cancelled():
                    reply.exception()  # retrieved: the failure is counted above
                conn.sock.abort()
                return False
        self.conns[index] = conn
        return True

    # --- receive ------------------------------------------------------------------

    def _on_frame(self, conn: BenchConnection, raw: bytes) -> None:
        """One message from the server on ``conn`` (the client's on_message callback)."""
        now = time.time_ns()
        try:
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if conn.connect_reply is not None:  # only the answer to our connect counts
                if kind in ("connected", "error"):
                    if not conn.connect_reply.done():
                        conn.connect_reply.set_result(frame)
                    conn.connect_reply = None
            elif kind == "message":
                message = frame["message"]
                if conn.log.record(message["channelId"], message["messageId"]):
                    sent = message.get("metadata", {}).get("t")
                    if sent is not None:
                        self.delivery_us.append((now - int(sent)) // 1000)
                    if self.first_recv_ns is None:
                        self.first_recv_ns = now
                    self.last_recv_ns = now
            elif kind == "ack":
                self._on_ack(frame, now)
            elif kind == "error":
                self._on_error(frame)
            elif kind == "history":
                waiter = self.history_waiters.pop(str(frame.get("requestId")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
            elif kind == "typing":
                self.typing_received += 1
            elif kind == "presence_changed":
                self.presence_received += 1
            elif kind == "pong" and conn.pong is not None and not conn.pong.done():
                conn.pong.set_result(None)
        except Exception as exc:
            # Raised into the client's data_received it would drop the connection:
            # count the bad frame and keep reading instead.
            self.errors[f"frame:{type(exc).__name__}"] += 1

    def _on_close(self, conn: BenchConnection, code: int | None) -> None:
        """``conn``'s TCP connection is gone (the client's on_close callback)."""
        reply = conn.connect_reply
        if reply is not None and not reply.done():
            reply.set_exception(SocketClosed(f"closed before connected (code {code})"))
        if not self.finishing:
            conn.closed_at_ns = time.time_ns()
            conn.close_code = code

    def _on_ack(self, frame: dict[str, Any], now: int) -> None:
        client_msg_id = str(frame.get("clientMsgId"))
        entry = self.pending.pop(client_msg_id, None)
        if entry is None:
            late = client_msg_id in self.given_up
            self.errors["ack:after_wait" if late else "ack:unknown_clientMsgId"] += 1
            return
        channel, sent_ns = entry
        self.ack_us.append((now - sent_ns) // 1000)
        self.acked.setdefault(channel, []).append((str(frame["messageId"]), sent_ns))
        if not self.pending:
            self.acks_done.set()

    def _on_error(self, frame: dict[str, Any]) -> None:
        self.errors[str(frame.get("code"))] += 1
        client_msg_id = frame.get("clientMsgId")
        if client_msg_id is not None:
            self.pending.pop(str(client_msg_id), None)
            if not self.pending:
                self.acks_done.set()
        request_id = frame.get("requestId")
        if request_id is not None:
            waiter = self.history_waiters.pop(str(request_id), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)

    # --- send ---------------------------------------------------------------------

    async def send_all(self, command: StartSending) -> SendReport:
        schedule = PacingSchedule(self.plan.rate, self.plan.total_senders, command.start_ns)
        content = "x" * self.plan.content_bytes
        tasks = [
            asyncio.get_running_loop().create_task(
                self._send_loop(sender, self.conns.get(index), schedule, command.total, content)
            )
            for sender, index in self.plan.senders
        ]
        stop_typing = asyncio.Event()
        typists = [
            asyncio.get_running_loop().create_task(self._type_loop(conn, stop_typing))
            for index in self.plan.typists
            if (conn := self.conns.get(index)) is not None
        ]
        await asyncio.gather(*tasks)
        stop_typing.set()
        await asyncio.gather(*typists)
        if self.pending:
            self.acks_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.acks_done.wait(), ACK_WAIT_S)
        unacked = len(self.pending)
        if unacked:
            self.errors["no_ack"] += unacked
        self.given_up.update(self.pending)
        self.pending.clear()
        return SendReport(
            sent=self.sent,
            acked=self.acked,
            ack_us=self.ack_us,
            lag_us=self.lag_us,
            errors=dict(self.errors),
            unacked=unacked,
            first_send_ns=self.first_send_ns,
            last_send_ns=self.last_send_ns,
            typing_sent=self.typing_sent,
        )

    async def _type_loop(self, conn: BenchConnection, stop: asyncio.Event) -> None:
        """``typing`` every ``typing_interval`` until the senders are done."""
        frame = orjson.dumps({"type": "typing", "channelId": conn.channel})
        interval = self.plan.typing_interval
        # Spread the typists over the interval, as people are.
        await asyncio.sleep(random.uniform(0, interval))
        while not stop.is_set():
            try:
                conn.send_text(frame)
            except SocketClosed:
                return
            self.typing_sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _send_loop(
        self,
        sender: int,
        conn: BenchConnection | None,
        schedule: PacingSchedule,
        total: int,
        content: str,
    ) -> None:
        count = schedule.count_for(sender, total)
        if conn is None:  # its connection never opened
            self.errors["send:not_connected"] += count
            return
        dumps = orjson.dumps
        channel = conn.channel
        for k in range(count):
            due = schedule.due_ns(sender, k)
            now = time.time_ns()
            if due > now:
                await asyncio.sleep((due - now) / NS_PER_S)
                now = time.time_ns()
            self.lag_us.append(max(0, now - due) // 1000)
            client_msg_id = f"{sender}-{k}"
            frame = {
                "type": "send",
                "channelId": channel,
                "content": content,
                "clientMsgId": client_msg_id,
                "metadata": {"t": str(now)},
            }
            self.pending[client_msg_id] = (channel, now)
            try:
                conn.send_text(dumps(frame))
            except SocketClosed:
                self.pending.pop(client_msg_id, None)
                self.errors["send:closed"] += count - k
                return
            self.sent += 1
            if self.first_send_ns is None:
                self.first_send_ns = now
            self.last_send_ns = now

    # --- completeness -------------------------------------------------------------

    async def check(self, command: ExpectDeliveries) -> CheckReport:
        owed = {channel: len(messages) for channel, messages in command.acked.items()}
        started = time.monotonic()
        deadline = started + command.drain_timeout_s
        while time.monotonic() < deadline:
            if all(
                c.closed_at_ns is not None or c.log.received(c.channel) >= owed.get(c.channel, 0)
                for c in self.conns.values()
            ):
                break
            await asyncio.sleep(0.05)
        drain_s = time.monotonic() - started
        total = Completeness()
        for conn in self.conns.values():
            total += account_connection(command.acked, [conn.channel], conn.log, conn.closed_at_ns)
        alive = await self._ping_all()
        closed = Counter(
            str(c.close_code) for c in self.conns.values() if c.closed_at_ns is not None
        )
        return CheckReport(
            completeness=total,
            delivery_us=self.delivery_us,
            first_recv_ns=self.first_recv_ns,
            last_recv_ns=self.last_recv_ns,
            alive=alive,
            closed=dict(closed),
            errors=dict(self.errors),
            drain_s=drain_s,
            typing_received=self.typing_received,
            presence_received=self.presence_received,
        )

    async def _ping_all(self) -> int:
        """Ping every open connection at the protocol level; how many answer."""
        loop = asyncio.get_running_loop()
        live = [c for c in self.conns.values() if c.closed_at_ns is None]
        for conn in live:
            conn.pong = loop.create_future()
            with contextlib.suppress(SocketClosed):
                conn.send_text(b'{"type":"ping"}')
        waiters = [c.pong for c in live if c.pong is not None]
        if waiters:
            await asyncio.wait(waiters, timeout=PING_TIMEOUT_S)
        return sum(1 for w in waiters if w.done() and not w.cancelled())

    # --- history ------------------------------------------------------------------

    async def history(self, command: RunHistory) -> HistoryReport:
        conns = [c for c in self.conns.values() if c.channel == command.channel_id]
        latency: array[int] = array("q")
        counts = Counter[str]()
        examples: list[str] = []
        rng = random.Random(command.seed)
        ids = command.ordered_ids
        started = time.monotonic()
        remaining = [command.pages]

        async def one_reader(conn: BenchConnection, reader: int) -> None:
            while remaining[0] > 0 and conn.closed_at_ns is None:
                remaining[0] -= 1
                position = rng.randrange(1, len(ids) + 1)
                before = ids[position - 1]
                request_id = f"h{reader}-{remaining[0]}"
                waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self.history_waiters[request_id] = waiter
                frame = {
                    "type": "history",
                    "requestId": request_id,
                    "channelId": command.channel_id,
                    "before": before,
                    "limit": command.limit,
                }
                sent = time.perf_counter_ns()
                try:
                    conn.send_text(orjson.dumps(frame))
                    reply = await asyncio.wait_for(waiter, HISTORY_TIMEOUT_S)
                except (SocketClosed, TimeoutError) as exc:
                    self.history_waiters.pop(request_id, None)
                    counts[f"history:{type(exc).__name__}"] += 1
                    continue
                latency.append((time.perf_counter_ns() - sent) // 1000)
                counts["pages"] += 1
                if reply.get("type") != "history":
                    counts[f"history:{reply.get('code')}"] += 1
                    continue
                want = ids[max(0, position - 1 - command.limit) : position - 1]
                got = tuple(m["messageId"] for m in reply.get("messages", ()))
                more = reply.get("hasMore")
                if got != want or more is not (position - 1 > command.limit):
                    counts["bad_pages"] += 1
                    if len(examples) < 5:
                        examples.append(
                            f"before={before}: got {len(got)} ids ({got[:1]}..{got[-1:]}), "
                            f"hasMore={more}; want {len(want)} ({want[:1]}..{want[-1:]})"
                        )

        readers = [conns[i % len(conns)] for i in range(min(command.concurrency, command.pages))]
        if readers:
            await asyncio.gather(*(one_reader(c, i) for i, c in enumerate(readers)))
        pages = counts.pop("pages", 0)
        bad = counts.pop("bad_pages", 0)
        return HistoryReport(
            latency_us=latency,
            pages=pages,
            bad_pages=bad,
            errors=dict(counts),
            elapsed_s=time.monotonic() - started,
            examples=examples,
        )

    # --- end ----------------------------------------------------------------------

    async def close_all(self) -> None:
        self.finishing = True
        socks = [c.sock for c in self.conns.values() if c.sock is not None]
        # Each close waits at most CLOSE_TIMEOUT_S for the server, then drops TCP
        # (also when the outer timeout cancels it).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S + 1):
                await asyncio.gather(*(s.close() for s in socks), return_exceptions=True)
