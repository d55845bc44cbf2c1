"""Handlers the e2e tests configure by path (``tests.e2e.handler_fixtures:...``).

The server runs them in its own processes: it finds this module through the
``PYTHONPATH`` the tests give it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chime_actors.handlers import ACCEPT, Draft, Handler, Reply, Verdict
from chime_actors.records import ChimeMessage


class Hang(Handler):
    """before_store: never answers (and shrugs off its first cancellation)."""

    async def before_store(self, draft: Draft) -> Verdict:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)
        return ACCEPT


def hang(options: Mapping[str, Any]) -> Hang:
    return Hang()


class CrashProcess(Handler):
    """after_store: kills its own process at every message (a crash, not a raise)."""

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        os._exit(3)


def crash_process(options: Mapping[str, Any]) -> CrashProcess:
    return CrashProcess()


class Block(Handler):
    """after_store: blocks its thread for an hour on the first message (a synchronous call)."""

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        time.sleep(3600)
        return ()


def block(options: Mapping[str, Any]) -> Block:
    return Block()


class Record(Handler):
    """after_store: appends ``<channel> <id>`` lines to a file (what it was given)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    async def after_store(self, message: ChimeMessage) -> Sequence[Reply]:
        with self._path.open("a") as out:
            out.write(f"{message.channel_id} {message.message_id}\n")
        return ()


def record(options: Mapping[str, Any]) -> Record:
    return Record(Path(str(options["path"])))
