"""A lane's CPU per message against pickle and Thespian: ``python -m chime_actors.bench.lane_cost``.

First the serializers alone, in this process: a round trip (encode + decode) of
a ``PersistBatch`` of small ``SendRecord``s (about 200 bytes each) with the
lanes' msgspec codec (``runtime.lane_codec``), against pickle protocol 5 of the
same records as the frozen slotted dataclasses they were before (what lanes
pickled until 2026-12-02). Then the lane itself: two processes; the sender
sends ``--count`` records to the receiver, either each alone (one per loop
turn, as a message in a small room travels) or in batches of ``--batch``. The
figure is the CPU time of both processes (user + system, from ``/proc``),
divided by the records delivered. The Thespian run sends the same records
between two ``multiprocTCPBase`` actors.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from thespian.actors import Actor, ActorSystem

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.records import PersistBatch, SendRecord
from chime_actors.runtime.lanes import LaneServer, LaneStats, Router
from chime_actors.runtime.sealed_transport import new_key, seal

KEY = b"bench-key-" + b"0" * 22
CONTENT = "x" * 140


@dataclass(frozen=True, slots=True)
class PickledRecord:
    """``SendRecord`` as the frozen slotted dataclass it was when lanes pickled."""

    token: int
    channel_id: str
    user_id: str
    content: str
    metadata: tuple[tuple[str, str], ...] = ()
    thread_id: str | None = None
    client_msg_id: str | None = None
    attachments: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PickledBatch:
    """``PersistBatch`` as it was when lanes pickled."""

    batch_id: int
    gateway_index: int
    records: tuple[PickledRecord, ...]


def lone(n: int) -> PersistBatch:
    """One small send alone, as a message of a small room travels."""
    return PersistBatch(n, 1, (SendRecord(n, "general", "alice", CONTENT),))


def serializer_us(size: int, rounds: int) -> tuple[float, float]:
    """µs per record of a round trip of a batch of ``size``: (msgspec, pickle 5)."""
    ours = (
        PersistBatch(1, 1, tuple(SendRecord(n, "general", "alice", CONTENT) for n in range(size))),
    )
    theirs = (
        PickledBatch(
            1, 1, tuple(PickledRecord(n, "general", "alice", CONTENT) for n in range(size))
        ),
    )
    assert LANE_CODEC.decode(LANE_CODEC.encode(ours)) == ours
    started = time.process_time()
    for _ in range(rounds):
        LANE_CODEC.decode(LANE_CODEC.encode(ours))
    msgspec_s = time.process_time() - started
    started = time.process_time()
    for _ in range(rounds):
        pickle.loads(pickle.dumps(theirs, protocol=5))
    pickle_s = time.process_time() - started
    per = 1e6 / (rounds * size)
    return msgspec_s * per, pickle_s * per


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _receiver(path: str, count: int, ready: Any, done: Any) -> None:
    async def main() -> None:
        got = 0
        finished = asyncio.Event()

        def deliver(messages: tuple[Any, ...], sender: Any) -> None:
            nonlocal got
            got += len(messages)
            if got >= count:
                finished.set()

        server = LaneServer(Path(path), KEY, deliver, LaneStats(), codec=LANE_CODEC)
        await server.start()
        ready.set()
        await finished.wait()
        done.set()
        await server.close()

    uvloop.run(main())


async def _send_lane(path: str, count: int, batch: int) -> None:
    router = Router("bench-sender", KEY, lambda a, m: None, codec=LANE_CODEC)
    router.update({"receiver": path})
    for n in range(count):
        router.post("receiver", lone(n))
        if (n + 1) % batch == 0:
            await asyncio.sleep(0)  # a loop turn: what was posted leaves as one frame
    await asyncio.sleep(0.05)


class Sink(Actor):  # type: ignore[misc]  # Thespian is untyped
    """Counts what it receives; answers ``"pid"`` and ``"count"``."""

    def __init__(self) -> None:
        super().__init__()
        self.got = 0

    def receiveMessage(self, message: Any, sender: Any) -> None:
        if message == "pid":
            self.send(sender, os.getpid())
        elif message == "count":
            self.send(sender, self.got)
        else:
            self.got += 1


def measure_lane(count: int, batch: int) -> float:
    """CPU µs per record over a lane."""
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="chime-lane-bench-") as tmp:
        path = str(Path(tmp) / "r.sock")
        ready, done = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_receiver, args=(path, count, ready, done))
        proc.start()
        ready.wait(10)
        receiver_before = _cpu_s(proc.pid or 0)
        me_before = time.process_time()
        uvloop.run(_send_lane(path, count, batch))
        done.wait(60)
        cpu = time.process_time() - me_before + _cpu_s(proc.pid or 0) - receiver_before
        proc.join(10)
    return cpu / count * 1e6


def measure_thespian(count: int) -> float:
    """CPU µs per record between two Thespian multiprocTCPBase actors."""
    # Sealed as in a server (loopback, HMAC per frame): the cost Chime pays.
    seal(new_key())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    system = ActorSystem("multiprocTCPBase", {"Admin Port": admin_port})
    try:
        sink = system.createActor(Sink)
        pid = system.ask(sink, "pid", 10)
        sink_before, me_before = _cpu_s(pid), time.process_time()
        for n in range(count):
            system.tell(sink, lone(n))
        while system.ask(sink, "count", 30) < count:
            time.sleep(0.05)
        return (time.process_time() - me_before + _cpu_s(pid) - sink_before) / count * 1e6
    finally:
        system.shutdown()


def main() -> None:
    """Print the CPU per record of each way."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--thespian", action="store_true", help="also measure Thespian")
    args = parser.parse_args()
    for size in (1, args.batch):
        ours, theirs = serializer_us(size, max(1, args.count // size))
        print(
            f"round trip, batches of {size:<4}: msgspec {ours:6.2f} µs, pickle 5 {theirs:6.2f} µs"
            " per record"
        )
    print(f"lane, each record alone: {measure_lane(args.count, 1):8.1f} µs CPU per record")
    print(f"lane, batches of {args.batch:<4}:   {measure_lane(args.count, args.batch):8.1f} µs")
    if args.thespian:
        count = min(args.count, 2000)
        print(f"thespian, each alone:     {measure_thespian(count):8.1f} µs CPU per record")


if __name__ == "__main__":
    main()
