"""Refusals before the upgrade, over real sockets (PROTOCOL.md "Handshake" and limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import run
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

CONNECTS_PER_10S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {
        "limits.connects_per_ip_per_10s": CONNECTS_PER_10S,
        "chat.max_connections": 40,
        "chat.allowed_origins": ["https://chat.example.com"],
    }
    with running_server(tmp_path_factory.mktemp("admission"), overrides, workers=1) as srv:
        yield srv


async def status_of(server: ServerProcess, **kwargs: object) -> int:
    """101 when the upgrade succeeded, else the HTTP status of the refusal."""
    try:
        ws = await websockets.connect(server.url, open_timeout=10, **kwargs)  # type: ignore[arg-type]
    except InvalidStatus as exc:
        return int(exc.response.status_code)
    await ws.close()
    return 101


def test_a_foreign_origin_gets_403_and_own_origins_connect(server: ServerProcess) -> None:
    async def scenario() -> list[int]:
        return [
            await status_of(server, origin="https://evil.example"),
            await status_of(server, origin=f"http://127.0.0.1:{server.api_port}"),
            await status_of(server, origin="http://localhost:1234"),
            await status_of(server, origin="https://chat.example.com"),
            await status_of(server),
        ]

    assert run(scenario()) == [403, 101, 101, 101, 101]


def test_two_authorization_headers_get_a_clear_400(server: ServerProcess) -> None:
    async def scenario() -> tuple[int, int]:
        doubled = await status_of(
            server,
            additional_headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
        )
        # The gateway that refused it still serves.
        return doubled, await status_of(server)

    assert run(scenario()) == (400, 101)
    assert not [line for line in server.log_lines() if line.get("level") == "error"]


def test_connect_rate_per_address_gets_429(server: ServerProcess) -> None:
    async def scenario() -> list[int]:
        # Everything earlier in this module counted too; 2x the limit must overflow.
        return [await status_of(server) for _ in range(2 * CONNECTS_PER_10S)]

    statuses = run(scenario())
    assert 429 in statuses
    assert set(statuses) <= {101, 429}
    assert statuses.count(101) <= CONNECTS_PER_10S


def test_a_full_server_answers_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    overrides = {"chat.max_connections": 2}
    with running_server(tmp_path_factory.mktemp("full"), overrides, workers=1) as full:

        async def scenario() -> tuple[int, int]:
            held = [await websockets.connect(full.url, open_timeout=10) for _ in range(2)]
            try:
                refused = await status_of(full)
            finally:
                for ws in held:
                    await ws.close()
            # Room again once they are gone (the gateway counts open connections).
            for _ in range(100):
                if (after := await status_of(full)) == 101:
                    break
                await asyncio.sleep(0.05)
            return refused, after

        assert run(scenario()) == (503, 101)
