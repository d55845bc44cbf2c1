"""Moved to ``tests.support.servers``; this name stays for branches written against it."""

from tests.support.servers import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ServerProcess,
    group_pids,
    kill_group,
    restart_overrides,
    running_hosts,
    running_server,
)

__all__ = [
    "START_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "ServerProcess",
    "group_pids",
    "kill_group",
    "restart_overrides",
    "running_hosts",
    "running_server",
]
