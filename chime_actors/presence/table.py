"""Who is online in which channel, and the typing throttle: pure, no I/O.

Presence is kept as sets of ``(channel, user)`` per **origin**: the process's own
connections (``LOCAL``), each other gateway of this host (``gw:<index>``) and
each other host (``host:<id>``). Every origin is owned by exactly one writer (a
gateway owns its connections, a host's Redis bridge owns that host), so nothing
is ever merged from two writers: a replica of an origin is replaced or updated
only by what that origin said. A user is online in a channel while *any* origin
holds them there; :class:`PresenceTable` reports the moments that count (the
first origin arrives, the last one leaves) as :class:`PresenceChange`, which is
exactly when docs/protocol.md sends ``presence_changed``. An origin that dies is
dropped whole (:meth:`PresenceTable.drop_origin`), which takes its users offline
unless another origin still holds them.

:class:`TypingThrottle` passes on at most one ``typing`` per user and channel per
interval (docs/protocol.md: every 3 s).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LOCAL = ""
"""The origin of the process's own connections."""

TYPING_INTERVAL_S = 3.0
"""docs/protocol.md: at most one ``typing`` per user and channel every 3 s is passed on."""


def gateway_origin(index: int) -> str:
    """The origin of gateway ``index`` of this host."""
    return f"gw:{index}"


def host_origin(host: str) -> str:
    """The origin of another host (its Redis bridge's id)."""
    return _HOST_PREFIX + host


_HOST_PREFIX = "host:"


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A user came online in a channel (first origin) or went offline (last one)."""

    channel_id: str
    user_id: str
    online: bool


class PresenceTable:
    """Online users per channel as the union of every origin's sets."""

    __slots__ = ("_by_origin", "_holders")

    def __init__(self) -> None:
        # origin -> channel -> users that origin holds there
        self._by_origin: dict[str, dict[str, set[str]]] = {}
        # channel -> user -> how many origins hold the user there (>= 1)
        self._holders: dict[str, dict[str, int]] = {}

    def online(self, channel_id: str, *, hosts: bool = True) -> list[str]:
        """The users online in ``channel_id``, sorted.

        With ``hosts`` False, only those held by this host (this process and its
        other gateways), not by other hosts.
        """
        if hosts:
            return sorted(self._holders.get(channel_id, ()))
        users: set[str] = set()
        for origin, channels in self._by_origin.items():
            if not origin.startswith(_HOST_PREFIX):
                users.update(channels.get(channel_id, ()))
        return sorted(users)

    def is_online(self, channel_id: str, user_id: str) -> bool:
        """True while some origin holds ``user_id`` in ``channel_id``."""
        return user_id in self._holders.get(channel_id, {})

    def channels(self) -> list[str]:
        """Every channel someone is online in."""
        return list(self._holders)

    def origins(self) -> list[str]:
        """Every origin that holds someone."""
        return [origin for origin, channels in self._by_origin.items() if channels]

    def entries(self, origin: str) -> tuple[tuple[str, str], ...]:
        """``(channel, user)`` pairs ``origin`` holds, sorted."""
        channels = self._by_origin.get(origin, {})
        return tuple(sorted((c, u) for c, users in channels.items() for u in users))

    def users_of(self, origin: str, channel_id: str) -> frozenset[str]:
        """The users ``origin`` holds in ``channel_id``."""
        return frozenset(self._by_origin.get(origin, {}).get(channel_id, ()))

    def set(
        self, origin: str, channel_id: str, user_id: str, online: bool
    ) -> PresenceChange | None:
        """``origin`` holds (or no longer holds) the user; idempotent."""
        channels = self._by_origin.setdefault(origin, {})
        users = channels.get(channel_id)
        if online:
            if users is None:
                users = channels[channel_id] = set()
            elif user_id in users:
                return None
            users.add(user_id)
            return self._hold(channel_id, user_id)
        if users is None or user_id not in users:
            return None
        users.discard(user_id)
        if not users:
            del channels[channel_id]
        if not channels:
            del self._by_origin[origin]
        return self._release(channel_id, user_id)

    def replace_channel(
        self, origin: str, channel_id: str, users: Iterable[str]
    ) -> list[PresenceChange]:
        """``origin`` now holds exactly ``users`` in ``channel_id``."""
        wanted = set(users)
        current = self.users_of(origin, channel_id)
        changes = [self.set(origin, channel_id, u, False) for u in sorted(current - wanted)]
        changes += [self.set(origin, channel_id, u, True) for u in sorted(wanted - current)]
        return [change for change in changes if change is not None]

    def replace_origin(
        self, origin: str, entries: Iterable[tuple[str, str]]
    ) -> list[PresenceChange]:
        """``origin`` now holds exactly ``entries`` (a snapshot of it)."""
        wanted = set(entries)
        current = set(self.entries(origin))
        changes = [self.set(origin, c, u, False) for c, u in sorted(current - wanted)]
        changes += [self.set(origin, c, u, True) for c, u in sorted(wanted - current)]
        return [change for change in changes if change is not None]

    def drop_origin(self, origin: str) -> list[PresenceChange]:
        """``origin`` is gone (its gateway or host died): it holds nobody now."""
        return self.replace_origin(origin, ())

    def _hold(self, channel_id: str, user_id: str) -> PresenceChange | None:
        holders = self._holders.setdefault(channel_id, {})
        count = holders.get(user_id, 0)
        holders[user_id] = count + 1
        return PresenceChange(channel_id, user_id, True) if count == 0 else None

    def _release(self, channel_id: str, user_id: str) -> PresenceChange | None:
        holders = self._holders[channel_id]
        count = holders[user_id] - 1
        if count:
            holders[user_id] = count
            return None
        del holders[user_id]
        if not holders:
            del self._holders[channel_id]
        return PresenceChange(channel_id, user_id, False)


class LocalCounts:
    """How many of this process's connections hold each ``(channel, user)``.

    One user may have several connections in a channel: only the first one in
    and the last one out change the process's own presence.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, channel_id: str, user_id: str) -> bool:
        """Count one more connection; True when it is the user's first here."""
        key = (channel_id, user_id)
        count = self._counts.get(key, 0)
        self._counts[key] = count + 1
        return count == 0

    def remove(self, channel_id: str, user_id: str) -> bool:
        """Count one connection less; True when it was the user's last here."""
        key = (channel_id, user_id)
        count = self._counts.get(key, 0)
        if count <= 1:
            self._counts.pop(key, None)
            return count == 1
        self._counts[key] = count - 1
        return False


class TypingThrottle:
    """At most one ``typing`` per ``(channel, user)`` every ``interval_s``.

    Memory is bounded by the typing of the last ``interval_s``: entries are kept
    in the order they were last passed, so the expired ones are at the front and
    are dropped as each new one is checked.
    """

    __slots__ = ("_clock", "_interval_s", "_passed")

    def __init__(self, clock: Callable[[], float], interval_s: float = TYPING_INTERVAL_S) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._passed: OrderedDict[tuple[str, str], float] = OrderedDict()

    def allow(self, channel_id: str, user_id: str) -> bool:
        """True (and remembered) unless this user's typing in the channel passed lately."""
        now = self._clock()
        passed = self._passed
        horizon = now - self._interval_s
        while passed:
            key, stamp = next(iter(passed.items()))
            if stamp > horizon:
                break
            del passed[key]
        key = (channel_id, user_id)
        if key in passed:
            return False
        passed[key] = now
        return True

    def __len__(self) -> int:
        return len(self._passed)
