"""The floor under Chime's chatty figure: the least a Python server of Chime's shape can spend.

Not Chime: a measuring tool. It speaks just enough of Chime's protocol for
``../shared/peers/loadgen.js --target chime`` (``connect`` -> ``connected``,
``send`` -> ``ack`` to the sender and ``message`` to every member) and does
nothing else: no auth, no validation, no ids, no dedupe, no metrics, no logs,
no flow control, no supervision. It uses what Chime uses where Chime spends
its time (uvloop, websockets' asyncio server, orjson, msgspec over Unix
sockets, sqlite3 in WAL mode on a worker thread, frames encoded once), so its
CPU per message is a lower bound for any server of that shape.

Modes:

* ``full``: Chime's process shape: two gateway processes sharing the port
  (``SO_REUSEPORT``) and one persister process; a send goes gateway ->
  persister (one INSERT and COMMIT with ``synchronous = FULL``, group commit of
  whatever is queued) -> every gateway -> its members.
* ``nosync``: the same with ``synchronous = NORMAL`` (no fsync per commit).
* ``nostore``: the same processes, the persister stores nothing.
* ``single``: one process, no persister, no store: a Python WebSocket relay.

Usage: .venv/bin/python docs/perf/floor_server.py PORT MODE DIR   (runs until SIGTERM)
docs/perf/floor.sh runs it under the peers' load generator (docs/performance.md,
"The floor under chatty").
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import struct
import sys
import time
from collections import defaultdict
from typing import Any

import msgspec
import orjson
import uvloop
import websockets
from websockets.asyncio.server import ServerConnection

_LEN = struct.Struct("!I")
_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder()


def text_frame(payload: bytes) -> bytes:
    """An unmasked text frame, built once for every member."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Lane:
    """Frames to one peer: everything posted in a loop turn goes in one write."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[Any] = []

    def post(self, item: Any) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(item)

    def _flush(self) -> None:
        body = _ENC.encode(self._pending)
        self._pending = []
        self._writer.write(_LEN.pack(len(body)) + body)


async def read_frames(reader: asyncio.StreamReader) -> Any:
    while True:
        (size,) = _LEN.unpack(await reader.readexactly(4))
        yield _DEC.decode(await reader.readexactly(size))


class Gateway:
    def __init__(self, index: int, deliver_locally: bool) -> None:
        self.index = index
        self.members: dict[str, list[Any]] = defaultdict(list)
        self.waiting: dict[int, Any] = {}
        self.tokens = 0
        self.lane: Lane | None = None
        self.deliver_locally = deliver_locally

    async def serve(self, ws: ServerConnection) -> None:
        transport = ws.transport
        channels: list[str] = []
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                kind = frame.get("type")
                if kind == "connect":
                    channels = list(frame.get("channels", []))
                    for ch in channels:
                        self.members[ch].append(transport)
                    await ws.send(
                        orjson.dumps({"type": "connected", "channels": channels}).decode()
                    )
                elif kind == "send":
                    self.tokens += 1
                    record = [self.index, self.tokens, frame["channelId"], frame["content"]]
                    if self.deliver_locally:
                        self.deliver([record])
                        transport.write(
                            text_frame(orjson.dumps({"type": "ack", "token": self.tokens}))
                        )
                    else:
                        self.waiting[self.tokens] = transport
                        assert self.lane is not None
                        self.lane.post(record)
        finally:
            for ch in channels:
                self.members[ch].remove(transport)

    def deliver(self, records: list[Any]) -> None:
        for origin, token, channel, content in records:
            data = text_frame(
                orjson.dumps(
                    {"type": "message", "message": {"channelId": channel, "content": content}}
                )
            )
            for transport in self.members.get(channel, ()):
                if not transport.is_closing():
                    transport.write(data)
            if origin == self.index:
                sender = self.waiting.pop(token, None)
                if sender is not None and not sender.is_closing():
                    sender.write(text_frame(orjson.dumps({"type": "ack", "token": token})))

    async def run(self, port: int, lane_path: str | None) -> None:
        if lane_path is not None:
            reader, writer = await asyncio.open_unix_connection(lane_path)
            self.lane = Lane(writer)

            async def pump() -> None:
                async for batch in read_frames(reader):
                    self.deliver(batch)

            asyncio.get_running_loop().create_task(pump())
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1024)
        sock.setblocking(False)
        async with websockets.serve(
            self.serve, sock=sock, compression=None, ping_interval=None, max_queue=16
        ):
            await asyncio.Future()


class Persister:
    def __init__(self, path: str | None, synchronous: str) -> None:
        self.lanes: list[Lane] = []
        self.queue: list[Any] = []
        self.wake = asyncio.Event()
        self.conn: sqlite3.Connection | None = None
        if path is not None:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute(
                "CREATE TABLE messages (channel_id TEXT, seq INTEGER, content TEXT,"
                " PRIMARY KEY (channel_id, seq)) WITHOUT ROWID"
            )
            self.conn = conn
        self.seq = 0

    def _store(self, rows: list[tuple[str, int, str]]) -> None:
        assert self.conn is not None
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany("INSERT INTO messages VALUES (?, ?, ?)", rows)
        self.conn.execute("COMMIT")

    async def writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.queue = self.queue, []
            if self.conn is not None:
                rows = []
                for _, _, channel, content in batch:
                    self.seq += 1
                    rows.append((channel, self.seq, content))
                await loop.run_in_executor(None, self._store, rows)
            for lane in self.lanes:
                for record in batch:
                    lane.post(record)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.lanes.append(Lane(writer))
        async for batch in read_frames(reader):
            self.queue.extend(batch)
            self.wake.set()

    async def run(self, lane_path: str) -> None:
        asyncio.get_running_loop().create_task(self.writer())
        server = await asyncio.start_unix_server(self.accept, path=lane_path)
        async with server:
            await asyncio.Future()


def _child(target: Any) -> int:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            uvloop.run(target())
        finally:
            os._exit(0)
    return pid


def main() -> None:
    port, mode, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    lane_path = os.path.join(directory, "lane.sock")
    pids: list[int] = []
    if mode == "single":
        pids.append(_child(lambda: Gateway(1, True).run(port, None)))
    else:
        db = None if mode == "nostore" else os.path.join(directory, "floor.db")
        sync = "NORMAL" if mode == "nosync" else "FULL"
        pids.append(_child(lambda: Persister(db, sync).run(lane_path)))
        while not os.path.exists(lane_path):
            time.sleep(0.05)
        for index in (1, 2):
            pids.append(_child(lambda index=index: Gateway(index, False).run(port, lane_path)))

    def stop(*_: Any) -> None:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for pid in pids:
        os.waitpid(pid, 0)  # retried after the SIGTERM handler runs (PEP 475)


if __name__ == "__main__":
    main()
