"""``chime serve --config config/production.example.yaml``, pointed at real services.

The example file is used as shipped; only ``CHIME_*`` environment variables point
it at the local Redis and Cassandra of ``bin/services`` and at free ports, the way
an operator keeps secrets and addresses out of the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.e2e.client import Client
from tests.integration.services import load_services
from tests.support.servers import running_server

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "production.example.yaml"
SECRET = "production-example-secret-" + "z" * 40


def test_production_example_serves_the_protocol(tmp_path: Path) -> None:
    services = load_services("redis", "cassandra")
    redis, cassandra = services["redis"], services["cassandra"]
    env = {
        "CHIME_CHAT_HOST": "127.0.0.1",
        "CHIME_CHAT_PORT": "0",
        "CHIME_API_HOST": "127.0.0.1",
        "CHIME_API_PORT": "0",
        "CHIME_WORKERS": "2",
        "CHIME_PERSISTERS": "2",
        "CHIME_AUTH_JWT_SECRET": SECRET,
        "CHIME_STORAGE_CASSANDRA_HOSTS": cassandra["host"],
        "CHIME_STORAGE_CASSANDRA_PORT": str(cassandra["port"]),
        "CHIME_STORAGE_CASSANDRA_KEYSPACE": f"chime_prod_{uuid.uuid4().hex[:8]}",
        "CHIME_STORAGE_CASSANDRA_LOCAL_DC": "datacenter1",
        "CHIME_STORAGE_CASSANDRA_USERNAME": "",
        "CHIME_STORAGE_CASSANDRA_REPLICATION_FACTOR": "1",
        "CHIME_BUS_REDIS_HOST": redis["host"],
        "CHIME_BUS_REDIS_PORT": str(redis["port"]),
        "CHIME_BUS_REDIS_USERNAME": "",
        "CHIME_DATA_DIR": str(tmp_path / "data"),
    }
    minted = subprocess.run(
        [
            *(sys.executable, "-m", "chime_actors", "token"),
            *("--config", str(EXAMPLE), "--user", "alice", "--ttl", "10m"),
        ],
        # Only CHIME_* and PATH, as an operator's shell would have; COVERAGE_* so that
        # bin/test's coverage measures this process too.
        env={**env, "PATH": "/usr/bin:/bin", **_coverage_env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = minted.stdout.strip()
    with running_server(tmp_path, config_file=EXAMPLE, env_overrides=env) as server:
        titles = {
            title: server.pids_by_title(title)
            for title in ("chime: supervisor", "chime: redis-bridge", "chime: api")
        }
        assert all(titles.values()), titles

        async def scenario() -> None:
            alice = await Client.connect(server.url)
            try:
                await alice.send({"type": "connect", "channels": ["general"], "token": token})
                assert (await alice.expect("connected"))["userId"] == "alice"
                await alice.send({"type": "send", "channelId": "general", "content": "hello prod"})
                ack = await alice.expect("ack")
                (message,) = await alice.messages(1)
                assert message["messageId"] == ack["messageId"]
            finally:
                # A failure here must not leave the socket for a later test's
                # ResourceWarning (CI once failed a second test that way).
                await alice.close()

        asyncio.run(scenario())
        request = urllib.request.Request(
            f"{server.api}/v1/channels/general/messages",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        assert [m["content"] for m in body["messages"]] == ["hello prod"]


def _coverage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")}
