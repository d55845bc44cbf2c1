"""``PostLog``: a fake of a core's ``post(address, message)``, its one way out.

In production ``post`` puts a message on a lane (or Thespian); a unit test
hands the core a ``PostLog`` and reads back what was sent to whom, in order.
Test modules subclass it with the queries their assertions read best with.
"""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")

_ANYONE = object()


class PostLog:
    """Records every ``(address, message)`` posted, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))

    def of(self, kind: type[T], to: Any = _ANYONE) -> list[T]:
        """The messages of ``kind`` posted (only those to ``to``, if given), in order."""
        return [m for a, m in self.sent if isinstance(m, kind) and (to is _ANYONE or a == to)]
