"""PROTOCOL.md "Endpoints": the ports file, the ready log line, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from tests.e2e.conftest import clients, fresh, http_get, run, send_message
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$")


def _samples(text: str, name: str) -> dict[str, float]:
    """``process`` label -> value of metric ``name`` (summed over other labels)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
        process = labels.get("process", "")
        found[process] = found.get(process, 0.0) + float(match.group(3))
    return found


def test_ports_file_names_the_real_ports(server: ServerProcess) -> None:
    ports = orjson.loads((server.workdir / "ports.json").read_bytes())
    assert ports == {"chat": server.chat_port, "api": server.api_port}
    assert server.chat_port > 0 and server.api_port > 0
    assert server.chat_port != server.api_port
    # "the server then logs the real ports on one line"
    ready = [
        line
        for line in server.log_lines()
        if line.get("chatPort") == server.chat_port and line.get("apiPort") == server.api_port
    ]
    assert ready, "no log line names both real ports"


def test_chat_accepts_on_any_path(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with clients(server) as cs:
            for path in ("/", "/chat", "/some/deep/path?x=1"):
                client = await cs.raw(path)
                await client.send({"type": "connect", "channels": [fresh()]})
                await client.expect("connected")

    run(scenario())


def test_healthz(server: ServerProcess) -> None:
    status, body = http_get(f"{server.api}/healthz")
    assert status == 200
    assert body == {"status": "ok"}


def test_readyz_all_checks_true_after_start(server: ServerProcess) -> None:
    # Actors report to the API once a second; readiness may lag the ports file by that.
    def ready() -> tuple[int, dict[str, object]] | None:
        status, body = http_get(f"{server.api}/readyz")
        assert status in (200, 503), (status, body)
        return (status, body) if status == 200 else None

    _, body = wait_until(ready, 10, "readyz 200")
    assert body["ready"] is True
    assert body["checks"], body
    assert all(v is True for v in body["checks"].values()), body


def test_metrics_exposes_counters_per_process(server: ServerProcess) -> None:
    channel = fresh()

    async def scenario() -> None:
        async with clients(server) as cs:
            alice = await cs.connect("alice", [channel])
            await send_message(alice, channel, "counted")

            def counted() -> str | None:
                status, text = http_get(f"{server.api}/metrics")
                assert status == 200
                conns = _samples(text, "chime_connections")
                ins = _samples(text, "chime_messages_in_total")
                acks = _samples(text, "chime_acks_total")
                ok = sum(conns.values()) >= 1 and sum(ins.values()) >= 1 and sum(acks.values()) >= 1
                return text if ok else None

            # Metrics are pushed to the API actor once a second: poll.
            text = await asyncio.to_thread(wait_until, counted, 15, "metrics", interval=0.2)
            processes = set(_samples(text, "chime_messages_in_total"))
            assert {"gateway 1", "gateway 2"} <= processes, processes
            assert {"persister 1", "persister 2"} <= processes, processes
            assert "# TYPE chime_messages_in_total counter" in text

    run(scenario())

    # every connection closed above is accounted for: the gauge returns to 0
    def all_closed() -> bool:
        _, text = http_get(f"{server.api}/metrics")
        conns = _samples(text, "chime_connections")
        return {"gateway 1", "gateway 2"} <= set(conns) and sum(conns.values()) == 0

    wait_until(all_closed, 15, "chime_connections back to 0", interval=0.2)
