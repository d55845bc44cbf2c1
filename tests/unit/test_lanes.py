"""Lanes: batching per loop turn, authentication, failure and backpressure (real Unix sockets)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import pickle
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from chime_actors.actors.lane_records import LANE_CODEC as CODEC
from chime_actors.bus.messages import Resync
from chime_actors.errors import ActorError
from chime_actors.presence.messages import TypingEvent
from chime_actors.records import ChimeMessage, Deliveries, FrozenRecord, PersistBatch, SendRecord
from chime_actors.runtime.lane_codec import LaneCodec
from chime_actors.runtime.lanes import LaneServer, LaneStats, Router
from tests.support.polling import until

KEY = b"k" * 32


def rec(n: int | str) -> TypingEvent:
    """A small lane record, told apart by ``n``."""
    return TypingEvent("general", f"user-{n}")


class Received:
    """What a lane server delivered: (messages, sender) per frame."""

    def __init__(self) -> None:
        self.frames: list[tuple[tuple[Any, ...], Any]] = []

    def __call__(self, messages: tuple[Any, ...], sender: Any) -> None:
        self.frames.append((messages, sender))

    @property
    def messages(self) -> list[Any]:
        return [m for frame, _ in self.frames for m in frame]


def run(scenario: Callable[[Path], Awaitable[None]], tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(scenario(tmp_path), 30))


def test_a_loop_turns_posts_travel_as_one_frame_with_the_senders_address(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        fallback: list[Any] = []
        router = Router("me-address", KEY, lambda a, m: fallback.append((a, m)), codec=CODEC)
        router.update({"peer-address": str(tmp / "peer.sock")})
        for n in range(5):
            router.post("peer-address", rec(n))
        await until(lambda: len(got.messages) == 5)
        router.post("peer-address", rec("later"))
        await until(lambda: len(got.messages) == 6)
        assert got.messages == [rec(n) for n in range(5)] + [rec("later")]
        assert [sender for _, sender in got.frames] == ["me-address"] * len(got.frames)
        assert len(got.frames) <= 3  # the first five shared a frame (or two around the connect)
        # No lane known: Thespian carries it; no address: dropped.
        router.post("someone-else", "via thespian")
        router.post(None, "nowhere")
        assert fallback == [("someone-else", "via thespian")]
        assert router.stats.batches_out == len(got.frames)
        router.close()
        await server.close()

    run(scenario, tmp_path)


def test_a_stranger_without_the_key_is_refused_before_anything_is_unpickled(
    tmp_path: Path,
) -> None:
    proof = tmp_path / "pwned"

    class CreateFile:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(proof), "w"))

    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        payload = pickle.dumps(CreateFile())
        frame = struct.pack(">I", len(payload)) + payload

        def attack(answer: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5)
                sock.connect(str(tmp / "peer.sock"))
                sock.recv(32)  # the challenge
                sock.sendall(answer + frame + frame)
                try:
                    return sock.recv(100)
                except (TimeoutError, ConnectionError):
                    return b""

        for answer in (b"\0" * 32, b"", frame[:32]):
            assert await asyncio.to_thread(attack, answer) == b""  # closed on us
        assert not proof.exists()
        assert got.frames == []
        # The server still takes its own peers.
        router = Router("friend", KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "peer.sock")})
        router.post("peer", rec("hello"))
        await until(lambda: got.messages == [rec("hello")])
        router.close()
        await server.close()

    run(scenario, tmp_path)


def test_a_peer_that_is_gone_drops_its_messages_without_raising(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        router = Router("me", KEY, lambda a, m: None, codec=CODEC)
        router.update({"dead": str(tmp / "nobody.sock")})
        router.post("dead", rec("lost"))
        await until(lambda: router.stats.dropped == 1)
        router.post("dead", rec("lost too"))
        await until(lambda: router.stats.dropped == 2)

    run(scenario, tmp_path)


def test_new_wiring_moves_a_lane_to_the_restarted_peer(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        first, second = Received(), Received()
        old = LaneServer(tmp / "old.sock", KEY, first, LaneStats(), codec=CODEC)
        new = LaneServer(tmp / "new.sock", KEY, second, LaneStats(), codec=CODEC)
        await old.start()
        await new.start()
        router = Router("me", KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "old.sock")})
        router.post("peer", rec(1))
        await until(lambda: first.messages == [rec(1)])
        router.update({"peer": str(tmp / "new.sock")})  # the peer restarted elsewhere
        router.post("peer", rec(2))
        await until(lambda: second.messages == [rec(2)])
        assert first.messages == [rec(1)]
        router.close()
        await old.close()
        await new.close()

    run(scenario, tmp_path)


def test_a_producer_without_a_window_is_stopped(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        router = Router("me", KEY, lambda a, m: None, codec=CODEC, max_pending=10)
        router.update({"peer": str(tmp / "slow.sock")})  # never connects: all stays queued
        for n in range(10):
            router.post("peer", rec(n))
        with pytest.raises(ActorError, match="no window"):
            router.post("peer", rec(10))
        router.close()

    run(scenario, tmp_path)


def test_a_peer_that_closes_is_noticed_and_its_lane_drops(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        router = Router("me", KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "peer.sock")})
        router.post("peer", rec("hello"))
        await until(lambda: got.messages == [rec("hello")])
        await server.close()  # the peer died
        await until(lambda: "peer" not in router._lanes)  # noticed, and forgotten
        router.post("peer", rec("lost"))  # a new lane tries, the connect fails: dropped
        await until(lambda: router.stats.dropped == 1)

    run(scenario, tmp_path)


def test_wait_writable_holds_a_producer_until_the_reader_catches_up(tmp_path: Path) -> None:
    path = tmp_path / "stuck.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen()
    release = threading.Event()
    drained = threading.Event()

    def stuck_peer() -> None:
        """Answers the handshake's challenge side, then reads nothing until released."""
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"n" * 32)
            release.wait(20)
            conn.settimeout(1)
            try:
                while conn.recv(1 << 20):
                    pass
            except TimeoutError:
                drained.set()

    peer = threading.Thread(target=stuck_peer, daemon=True)
    peer.start()

    async def scenario(tmp: Path) -> None:
        router = Router("me", KEY, lambda a, m: None, codec=CODEC, high_water_bytes=64 * 1024)
        router.update({"peer": str(path)})
        blob = Resync(("x" * 256 * 1024,))
        lane = None
        for _ in range(64):
            router.post("peer", blob)
            await asyncio.sleep(0.01)
            lane = router._lanes["peer"]
            if lane.congested:
                break
        assert lane is not None and lane.congested
        waiter = asyncio.get_running_loop().create_task(router.wait_writable())
        await asyncio.sleep(0.3)
        assert not waiter.done()  # held while the reader is stuck
        release.set()
        await asyncio.wait_for(waiter, 10)  # let go once it reads
        assert not lane.congested
        writer = lane._writer
        router.close()
        # close() lets the transport write out what it still holds: wait for that,
        # or the loop ends with the transport open and a later test gets its
        # ResourceWarning when it is collected (seen under coverage).
        assert writer is not None
        await asyncio.wait_for(writer.wait_closed(), 10)

    try:
        run(scenario, tmp_path)
    finally:
        release.set()
        peer.join(10)
        listener.close()


def test_a_lane_that_broke_reconnects_to_a_peer_that_is_still_alive(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        router = Router("me", KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "peer.sock")})
        router.post("peer", rec(1))
        await until(lambda: got.messages == [rec(1)])
        # The server drops our connection but keeps listening (not a restart).
        for writer in list(server._connections.values()):
            writer.transport.abort()
        await until(lambda: "peer" not in router._lanes)
        router.post("peer", rec(2))
        await until(lambda: got.messages == [rec(1), rec(2)])
        router.close()
        await server.close()

    run(scenario, tmp_path)


class _Exploit:
    """Pickles to a call of ``open(path, "w")``: proof that a payload was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _framed(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _as_a_peer(path: Path, address_frame: bytes, frames: list[bytes]) -> bytes:
    """Connect as a peer holding the key, send ``frames``; what came back before EOF."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        nonce = sock.recv(32)
        answer = hmac.new(KEY, b"chime-lane\0" + nonce, hashlib.sha256).digest()
        sock.sendall(answer + address_frame + b"".join(frames))
        try:
            return sock.recv(100)  # the server writes nothing: b"" is its close
        except (TimeoutError, ConnectionError):
            return b"timed out"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(msgspec.msgpack.encode([["NotALaneRecord", 1, "x"]]), id="unknown-tag"),
        pytest.param(msgspec.msgpack.encode([["TypingEvent", 1, 2]]), id="wrong-field-type"),
        pytest.param(msgspec.msgpack.encode({"channel_id": "c"}), id="not-an-array"),
        pytest.param(b"pickle", id="pickle"),
    ],
)
def test_a_frame_of_anything_but_lane_records_is_refused_and_its_lane_closed(
    tmp_path: Path, payload: bytes
) -> None:
    proof = tmp_path / "pwned"
    if payload == b"pickle":
        payload = pickle.dumps((_Exploit(proof),), protocol=5)

    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        good = _framed(msgspec.msgpack.encode([rec("before")]))
        address = _framed(pickle.dumps("authenticated-peer", protocol=5))
        # A good frame is delivered; the bad one closes the lane, and the good
        # frame behind it on the same connection is never read.
        closed = await asyncio.to_thread(
            _as_a_peer, tmp / "peer.sock", address, [good, _framed(payload), good]
        )
        assert closed == b""
        assert got.messages == [rec("before")]
        assert not proof.exists()
        await server.close()

    run(scenario, tmp_path)


def test_a_handshake_address_that_is_not_an_actor_address_is_refused(tmp_path: Path) -> None:
    proof = tmp_path / "pwned"

    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        address = _framed(pickle.dumps(_Exploit(proof), protocol=5))
        good = _framed(msgspec.msgpack.encode([rec("never")]))
        closed = await asyncio.to_thread(_as_a_peer, tmp / "peer.sock", address, [good])
        assert closed == b""
        assert got.frames == []
        assert not proof.exists()
        await server.close()

    run(scenario, tmp_path)


def test_a_thespian_address_travels_in_the_handshake(tmp_path: Path) -> None:
    me = ActorAddress(TCPv4ActorAddress("127.0.0.1", 1900, external=False))

    async def scenario(tmp: Path) -> None:
        got = Received()
        server = LaneServer(tmp / "peer.sock", KEY, got, LaneStats(), codec=CODEC)
        await server.start()
        router = Router(me, KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "peer.sock")})
        router.post("peer", rec(1))
        await until(lambda: got.messages == [rec(1)])
        assert [sender for _, sender in got.frames] == [me]
        router.close()
        await server.close()

    run(scenario, tmp_path)


def test_posting_what_is_not_a_lane_record_raises_at_once(tmp_path: Path) -> None:
    async def scenario(tmp: Path) -> None:
        router = Router("me", KEY, lambda a, m: None, codec=CODEC)
        router.update({"peer": str(tmp / "peer.sock")})
        for message in ("text", ("a", "tuple"), _Exploit(tmp / "x")):
            with pytest.raises(ActorError, match="not a lane record"):
                router.post("peer", message)
        assert router.depth == 0
        router.close()

    run(scenario, tmp_path)


def test_every_lane_record_survives_a_round_trip_and_a_codec_takes_only_tagged_structs() -> None:
    for record in CODEC.records:
        assert issubclass(record, FrozenRecord)
    batch = (
        PersistBatch(1, 2, (SendRecord(1, "c", "u", "hi", metadata=(("k", "v"),)),)),
        Deliveries((ChimeMessage("c", "0000000000000001", "u", "hi", "2026-12-02T00:00:00.000Z"),)),
        rec(1),
    )
    assert CODEC.decode(CODEC.encode(batch)) == batch
    with pytest.raises(ValueError, match="tagged"):
        LaneCodec((Received,))
