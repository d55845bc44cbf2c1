"""The actor transport is closed to strangers (ARCHITECTURE.md, "Thespian facts").

Thespian's TCP transport binds every actor (and its admin) to all interfaces and
unpickles whatever arrives. These tests attack a real server the way anyone who
reaches the host could: they list every socket its processes listen on, and send
a pickle whose unpickling creates a file to every port that is not the chat or
API port. The file must never appear, and the server must go on serving.
"""

from __future__ import annotations

import contextlib
import pickle
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.e2e.conftest import clients, fresh, run, send_message
from tests.support.servers import ServerProcess, group_pids, running_server

pytestmark = pytest.mark.e2e

LOOPBACK = {"127.0.0.1", "::1"}


class _CreateFile:
    """Unpickling this opens (so creates) ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("transport")) as srv:
        yield srv


def listening(server: ServerProcess) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket the server's processes listen on."""
    found = []
    for pid in group_pids(server.proc.pid, server.sessions):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def assert_still_serving(server: ServerProcess) -> None:
    """After an attack: the server runs and acks a send."""

    async def scenario() -> None:
        channel = fresh("after-attack")
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            ack = await send_message(alice, channel, "still here")
            assert ack["messageId"]

    run(scenario())
    assert server.proc.poll() is None


def thespian_frame(payload: bytes) -> bytes:
    """A frame as Thespian's TCP transport reads one: ``<length>>`` then the pickle."""
    return b"%d>" % len(payload) + payload


def attack(port: int, frame: bytes) -> None:
    """Send ``frame`` to ``port`` and read until it closes (a refused port is fine)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(frame)
            sock.settimeout(2)
            while sock.recv(4096):
                pass
    except (TimeoutError, ConnectionError):
        pass


def test_only_chat_and_api_listen_beyond_loopback(server: ServerProcess) -> None:
    sockets = listening(server)
    ports = {port for _, _, port in sockets}
    # The admin, the supervisor, the gateways, the persisters, the API actor...
    assert len(ports - {server.chat_port, server.api_port}) >= 4, sockets
    exposed = [
        (pid, ip, port)
        for pid, ip, port in sockets
        if ip not in LOOPBACK and port not in (server.chat_port, server.api_port)
    ]
    assert exposed == [], f"actor ports listening beyond loopback: {exposed}"


def test_a_pickle_from_a_stranger_never_runs(server: ServerProcess, tmp_path: Path) -> None:
    targets = sorted(
        {port for _, _, port in listening(server)} - {server.chat_port, server.api_port}
    )
    assert targets, "no actor ports found"
    proofs = []
    for port in targets:
        proof = tmp_path / f"pwned-{port}"
        proofs.append(proof)
        # Both forms: a bare pickle, and one shaped like Thespian's (address, message).
        for body in (_CreateFile(proof), (None, _CreateFile(proof))):
            attack(port, thespian_frame(pickle.dumps(body)))
    # Give any process that did unpickle it time to act.
    time.sleep(1.0)
    assert [p.name for p in proofs if p.exists()] == []

    assert_still_serving(server)


def test_a_frame_with_a_huge_length_is_dropped(server: ServerProcess) -> None:
    """A length header announcing gigabytes does not make an actor buffer them."""
    targets = sorted(
        {port for _, _, port in listening(server)} - {server.chat_port, server.api_port}
    )
    for port in targets:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"99999999999999>")
            sock.settimeout(5)
            try:
                sock.sendall(b"\0" * 65536)
                closed = sock.recv(1) == b""
            except (TimeoutError, ConnectionError):
                closed = True
            assert closed, f"port {port} kept reading a frame it can never accept"

    assert_still_serving(server)


def lane_sockets(server: ServerProcess) -> list[str]:
    """The lane socket of every process actor (each logs it when it starts)."""
    return [
        line["lane"]
        for line in server.log_lines()
        if line.get("message") == "actor started" and line.get("lane")
    ]


def test_lanes_are_private_and_refuse_a_stranger(server: ServerProcess, tmp_path: Path) -> None:
    """The data plane's Unix sockets: owner-only, and a pickle without the key never runs."""
    paths = lane_sockets(server)
    assert len(paths) >= 5, paths  # 2 persisters, 2 gateways, the API
    run_dir = Path(paths[0]).parent
    assert run_dir.stat().st_mode & 0o777 == 0o700
    proof = tmp_path / "pwned-lane"
    payload = pickle.dumps(_CreateFile(proof))
    frame = len(payload).to_bytes(4, "big") + payload
    for path in paths:
        assert Path(path).stat().st_mode & 0o077 == 0
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.recv(32)  # the challenge we cannot answer
            sock.sendall(b"\0" * 32 + frame + frame)
            with contextlib.suppress(ConnectionError):
                assert sock.recv(100) == b""  # closed on us
    time.sleep(0.5)
    assert not proof.exists()

    assert_still_serving(server)
