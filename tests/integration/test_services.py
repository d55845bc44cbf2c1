"""Round trips against the real Redis and Cassandra that `bin/services up` starts.

Run with, for example:

    bin/services up
    CHIME_SERVICES_JSON=.services/services.json .venv/bin/python -m pytest \
        tests/integration/test_services.py -m integration
    bin/services down

Skipped when CHIME_SERVICES_JSON is unset.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.services import load_services

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return load_services("redis", "cassandra")


@pytest.fixture(scope="module")
def cassandra_session(services: dict[str, Any]) -> Iterator[Any]:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    c = services["cassandra"]
    kwargs: dict[str, Any] = {
        "contact_points": [c["host"]],
        "port": int(c["port"]),
        "execution_profiles": {
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=RoundRobinPolicy(), request_timeout=30
            )
        },
        "connect_timeout": 10,
    }
    if c.get("protocol_version") is not None:
        kwargs["protocol_version"] = int(c["protocol_version"])
    cluster = Cluster(**kwargs)
    session = cluster.connect()
    try:
        yield session
    finally:
        cluster.shutdown()


def test_redis_set_get(services: dict[str, Any]) -> None:
    import redis

    r = services["redis"]
    client = redis.Redis(
        host=r["host"], port=int(r["port"]), password=r.get("password"), socket_timeout=5
    )
    try:
        key = f"chime:test:{uuid.uuid4().hex}"
        assert client.set(key, "héllo", ex=60)
        assert client.get(key) == "héllo".encode()
        assert client.delete(key) == 1
        assert client.get(key) is None
    finally:
        client.close()


def test_cassandra_round_trip(services: dict[str, Any], cassandra_session: Any) -> None:
    session = cassandra_session
    ks = f"chime_test_{uuid.uuid4().hex[:12]}"
    session.execute(
        f"CREATE KEYSPACE {ks} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    try:
        session.execute(
            f"CREATE TABLE {ks}.messages ("
            " channel text, id timeuuid, author text, body text,"
            " PRIMARY KEY (channel, id)) WITH CLUSTERING ORDER BY (id DESC)"
        )
        insert = session.prepare(
            f"INSERT INTO {ks}.messages (channel, id, author, body) VALUES (?, now(), ?, ?)"
        )
        for i in range(3):
            session.execute(insert, ("general", "ada", f"message {i}"))
        rows = list(
            session.execute(
                f"SELECT author, body FROM {ks}.messages WHERE channel = %s", ("general",)
            )
        )
        assert [r.body for r in rows] == ["message 2", "message 1", "message 0"]
        assert {r.author for r in rows} == {"ada"}
        version = session.execute("SELECT release_version FROM system.local").one()
        assert version.release_version == services["cassandra"]["version"]
    finally:
        session.execute(f"DROP KEYSPACE {ks}")
