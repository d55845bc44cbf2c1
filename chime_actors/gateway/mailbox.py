"""A lightweight actor's mailbox: bounded, one reader, and small while idle.

``asyncio.Queue`` would do the job, but an idle one holds four deques (its
items, its getters, its putters and the waiters of its ``join`` event), and a
deque holds a 64-slot block from the start: 3 KB of the 6.2 KB an idle
``ChannelActor`` held, and a gateway keeps one actor per channel that has local
members (docs/performance.md, stop 13, "What changed"). This mailbox holds
the deque of its items and nothing else until somebody waits: the one reader (the
actor's loop) as a future, writers waiting for room in a list made on first need.

Nothing here is thread-safe: everything runs on the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A FIFO of at most ``maxsize`` items with one reader (see the module docstring)."""

    __slots__ = ("_items", "_maxsize", "_reader", "_writers")

    def __init__(self, maxsize: int) -> None:
        """An empty mailbox that refuses (``offer``) or holds back (``put``) past ``maxsize``."""
        if maxsize < 1:
            raise ValueError(f"a mailbox holds at least one item, not {maxsize}")
        self._items: collections.deque[T] = collections.deque()
        self._maxsize = maxsize
        self._reader: asyncio.Future[None] | None = None
        self._writers: list[asyncio.Future[None]] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        """True when nothing waits to be read."""
        return not self._items

    def offer(self, item: T) -> bool:
        """Append ``item`` unless the mailbox is full; False (and dropped) when it is."""
        if len(self._items) >= self._maxsize:
            return False
        self._items.append(item)
        self._wake_reader()
        return True

    async def put(self, item: T) -> None:
        """Append ``item``, waiting for room first if the mailbox is full.

        Waits as long as it takes: bound it with the caller's timeout. A writer
        given room that is cancelled before it takes it passes the room on.
        """
        while len(self._items) >= self._maxsize:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if self._writers is None:
                self._writers = []
            writers = self._writers
            writers.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in writers:
                    writers.remove(waiter)
                elif not waiter.cancelled():
                    # Woken for room it will not take: the next writer may.
                    self._wake_writer()
                raise
        self._items.append(item)
        self._wake_reader()

    async def get(self) -> T:
        """Take the oldest item, waiting for one if the mailbox is empty (one reader only)."""
        while not self._items:
            if self._reader is not None:
                raise RuntimeError("a mailbox has one reader")
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        return self.get_nowait()

    def get_nowait(self) -> T:
        """Take the oldest item; ``IndexError`` if there is none."""
        item = self._items.popleft()
        self._wake_writer()
        return item

    def peek(self) -> T | None:
        """The item ``get`` would return next, left in the mailbox; None if empty."""
        return self._items[0] if self._items else None

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    def _wake_writer(self) -> None:
        writers = self._writers
        while writers:
            waiter = writers.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
