"""Many clients over both gateways all receive one broadcast."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import (
    clients,
    fresh,
    http_get,
    received,
    run,
    send_message,
)
from tests.support.polling import wait_until
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS = 200
CONNECTIONS = re.compile(r'chime_connections\{process="(?P<process>gateway \d+)"\} (?P<value>\S+)')


def test_200_clients_over_two_gateways_all_receive_a_broadcast(server: ServerProcess) -> None:
    channel = fresh("crowd")

    async def scenario() -> None:
        async with clients(server) as cs:
            crowd: list[Client] = []
            for start in range(0, CLIENTS, 50):
                crowd += await asyncio.gather(
                    *(
                        cs.connect(f"crowd{i}-{channel}", [channel])
                        for i in range(start, start + 50)
                    )
                )
            assert len(crowd) == CLIENTS
            ack = await send_message(crowd[0], channel, "hello crowd")
            got = await asyncio.gather(*(received(c, 1, channel, timeout=30) for c in crowd))
            assert all(g[0]["messageId"] == ack["messageId"] for g in got)
            assert all(g[0]["content"] == "hello crowd" for g in got)

            # The kernel spread the connections over both gateways: each gateway's
            # chime_connections gauge (pushed to the API once a second) says so.
            def by_gateway() -> dict[str, float] | None:
                status, body = http_get(f"{server.api}/metrics")
                counts: dict[str, float] = {}
                for match in CONNECTIONS.finditer(str(body) if status == 200 else ""):
                    counts[match["process"]] = float(match["value"])
                return counts if sum(counts.values()) >= CLIENTS else None

            counts = await asyncio.to_thread(wait_until, by_gateway, 15, "gauges", interval=0.2)
            assert set(counts) == {"gateway 1", "gateway 2"}, counts
            assert all(value > 0 for value in counts.values()), counts

    started = time.monotonic()
    run(scenario(), timeout=120)
    assert time.monotonic() - started < 60
