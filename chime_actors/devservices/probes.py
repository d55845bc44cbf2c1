"""Readiness probes: is the Redis or Cassandra that ``up`` started answering?

They speak to the service with the clients Chime itself uses, redis-py and
cassandra-driver, so "ready" means what the tests and the server will need: a
Redis that answers ``PING`` (after ``AUTH`` when a password is set), and a
Cassandra that answers a CQL query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

# The driver logs every refused connection while a node starts; the probe reports
# why it is not ready itself, and Python's last-resort handler would print them.
logging.getLogger("cassandra").addHandler(logging.NullHandler())


def redis_ping(host: str, port: int, password: str | None, timeout: float = 1.0) -> bool:
    """True when the Redis at ``host:port`` answers ``PING`` (authenticated if asked)."""
    client = redis.Redis(
        host=host,
        port=port,
        password=password or None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a CQL probe found: the node's ``release_version``, or why there is none."""

    version: str | None
    error: str = ""


def cassandra_release_version(
    host: str, port: int, *, protocol_version: int | None = None, timeout: float = 5.0
) -> ProbeResult:
    """``SELECT release_version FROM system.local`` on the node at ``host:port``.

    Args:
        protocol_version: pin the native protocol (3 for the 2.1 fallback); None
            lets the driver negotiate.
        timeout: for the connection and for the query, in seconds.
    """
    options = {} if protocol_version is None else {"protocol_version": protocol_version}
    cluster = Cluster(
        contact_points=[host],
        port=port,
        connect_timeout=timeout,
        control_connection_timeout=timeout,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=RoundRobinPolicy(), request_timeout=timeout
            )
        },
        **options,
    )
    try:
        row = cluster.connect().execute("SELECT release_version FROM system.local").one()
    except Exception as exc:  # the driver raises many kinds while a node starts
        return ProbeResult(None, f"{type(exc).__name__}: {exc}")
    finally:
        cluster.shutdown()
    if row is None or not row.release_version:
        return ProbeResult(None, "system.local has no release_version")
    return ProbeResult(str(row.release_version))
