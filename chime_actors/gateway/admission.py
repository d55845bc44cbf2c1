"""Who may open a WebSocket, decided before the upgrade (docs/protocol.md, "Handshake" and limits).

Pure: no I/O, the clock injected. The gateway asks :meth:`Admission.check` from
websockets' ``process_request`` hook with the peer's address and the request
headers, and answers a refusal with a plain HTTP response instead of upgrading:

======  ==============================================================  ==============
status  when                                                            checked
======  ==============================================================  ==============
400     more than one ``Authorization`` or ``Origin`` header            first
403     an ``Origin`` that is not the chat or API host's, nor allowed   second
503     the server holds ``chat.max_connections`` connections           third
429     the address opened ``limits.connects_per_ip_per_10s`` already   last
======  ==============================================================  ==============

The per-address buckets are bounded (``rate_limit.MAX_KEYS``): an attacker
rotating source addresses evicts the oldest bucket, not our memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from chime_actors.config import Config
from chime_actors.gateway.rate_limit import KeyedBuckets

# Names a browser may use for a loopback host; any of them matches any other.
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "0:0:0:0:0:0:0:1"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer instead of an upgrade."""

    status: int
    reason: str
    retry_after_s: int | None = None


def origin_hosts(config: Config) -> frozenset[str]:
    """Hosts whose pages may connect from any port: the chat and API hosts."""
    hosts: set[str] = set()
    for host in (config.chat.host, config.api.host):
        name = host.strip("[]").lower()
        if name in _LOOPBACK_NAMES or name.startswith("127."):
            hosts |= _LOOPBACK_NAMES
        elif name not in _WILDCARD_HOSTS:
            # A wildcard bind names no host a browser could show: such a server
            # lists its public origins in chat.allowed_origins.
            hosts.add(name)
    return frozenset(hosts)


class Admission:
    """The checks before an upgrade, for one gateway (module docstring)."""

    def __init__(
        self,
        config: Config,
        *,
        open_connections: Callable[[], int],
        clock: Callable[[], float],
    ) -> None:
        self._hosts = origin_hosts(config)
        self._origins = frozenset(config.chat.allowed_origins)
        self._max_connections = config.chat.max_connections
        self._open_connections = open_connections
        self._rate = KeyedBuckets(config.limits.connects_per_ip_per_10s, clock)

    def origin_allowed(self, origin: str) -> bool:
        """docs/protocol.md: the chat or API host (any port), or a configured origin."""
        if "*" in self._origins or origin.rstrip("/").lower() in self._origins:
            return True
        try:
            host = urlsplit(origin).hostname
        except ValueError:
            return False
        return host is not None and host in self._hosts

    def check(self, address: str, header: Callable[[str], Iterable[str]]) -> Refusal | None:
        """Refuse the upgrade, or None to let it through.

        Args:
            address: the peer's IP address.
            header: all values of a request header, by name.
        """
        for name in ("Authorization", "Origin"):
            if len(list(header(name))) > 1:
                return Refusal(400, f"more than one {name} header")
        origins = list(header("Origin"))
        if origins and not self.origin_allowed(origins[0]):
            return Refusal(403, "this origin may not connect")
        if self._open_connections() >= self._max_connections:
            return Refusal(503, "the server is full; try again later", retry_after_s=5)
        wait_s = self._rate.take(address)
        if wait_s is not None:
            return Refusal(429, "too many connections from this address", max(1, round(wait_s)))
        return None
