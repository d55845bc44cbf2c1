"""Many clients over both gateways all receive one broadcast."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.client import Client
from tests.e2e.conftest import clients, fresh, received, run, send_message, wait_until
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS = 200


def test_200_clients_over_two_gateways_all_receive_a_broadcast(server: ServerProcess) -> None:
    channel = fresh("crowd")
    users = {f"crowd{i}-{channel}" for i in range(CLIENTS)}

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

            # the kernel spread the connections over both gateways (their log says so)
            def by_gateway() -> dict[str, int] | None:
                counts: dict[str, int] = {}
                for line in server.log_lines():
                    if line.get("message") == "connection opened" and line.get("userId") in users:
                        counts[line["process"]] = counts.get(line["process"], 0) + 1
                return counts if sum(counts.values()) == CLIENTS else None

            counts = await asyncio.to_thread(wait_until, by_gateway, 10, 0.1, "open logs")
            assert set(counts) == {"gateway 1", "gateway 2"}, counts

    started = time.monotonic()
    run(scenario(), timeout=120)
    assert time.monotonic() - started < 60
