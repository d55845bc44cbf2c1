"""bin/services' readiness probes against the real Redis and Cassandra it starts.

A probe must say "ready" for a service that answers and "not ready", without
raising, for a port where nothing listens: ``up`` polls with them while a
service starts.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from chime_actors.devservices.probes import cassandra_release_version, redis_ping
from chime_actors.devservices.procs import free_port
from tests.integration.services import load_services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load_services("redis", "cassandra")


def closed_port() -> int:
    """A loopback port nobody listens on (free_port closes what it bound)."""
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def test_redis_ping_answers_for_the_running_redis(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis_ping(redis["host"], int(redis["port"]), redis.get("password"))


def test_redis_ping_is_false_where_nothing_listens() -> None:
    assert not redis_ping("127.0.0.1", closed_port(), None, timeout=0.5)


def test_cassandra_probe_reads_the_release_version(services: dict[str, Any]) -> None:
    cassandra = services["cassandra"]
    probe = cassandra_release_version(
        cassandra["host"], int(cassandra["port"]), protocol_version=cassandra["protocol_version"]
    )
    assert probe.version == cassandra["version"]
    assert probe.error == ""


def test_cassandra_probe_says_why_where_nothing_listens() -> None:
    probe = cassandra_release_version("127.0.0.1", closed_port(), timeout=1.0)
    assert probe.version is None
    assert "NoHostAvailable" in probe.error
