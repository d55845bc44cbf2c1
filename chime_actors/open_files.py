"""Raise the open-file limit to what the connection cap needs (``chat.max_connections``).

Every WebSocket is a file descriptor, and Linux's default soft limit (often 1024)
would make a gateway fail its accepts long before ``chat.max_connections``. The
main process raises its soft ``RLIMIT_NOFILE`` once at start; every actor forked
from it inherits the new limit. The soft limit can be raised up to the hard
limit without privileges; a hard limit below the need is logged, clearly, with
both numbers and the fix (``ulimit -Hn`` / ``LimitNOFILE=`` for systemd).
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from dataclasses import dataclass

from chime_actors.config import Config

# Descriptors a gateway uses besides its clients: storage, persister links,
# Thespian sockets, logs, the event loop's own.
RESERVE_FDS = 1024

Limits = tuple[int, int]


@dataclass(frozen=True, slots=True)
class NofileOutcome:
    """What :func:`raise_open_file_limit` did.

    Attributes:
        needed: descriptors one gateway may need (its share of connections + reserve).
        soft: the soft limit now in force.
        hard: the hard limit (only root can raise it).
    """

    needed: int
    soft: int
    hard: int

    @property
    def sufficient(self) -> bool:
        """True when the soft limit covers the need."""
        return self.soft >= self.needed


def needed_fds(config: Config) -> int:
    """Descriptors one gateway needs for its share of ``chat.max_connections``."""
    share = -(-config.chat.max_connections // max(1, config.workers))
    return share + RESERVE_FDS


def raise_open_file_limit(
    needed: int,
    *,
    get: Callable[[int], Limits] = resource.getrlimit,
    set_: Callable[[int, Limits], None] = resource.setrlimit,
) -> NofileOutcome:
    """Raise the soft ``RLIMIT_NOFILE`` to ``needed`` (at most the hard limit).

    Never lowers it. ``get``/``set_`` are the ``resource`` functions (replaced in tests).
    """
    soft, hard = get(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    target = needed if unlimited else min(needed, hard)
    if target > soft:
        try:
            set_(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # soft stays as it was; the caller logs that it is not enough
    return NofileOutcome(needed=needed, soft=soft, hard=hard)
