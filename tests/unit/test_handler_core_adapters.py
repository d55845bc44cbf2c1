"""chime_actors.handlers.core: a ``HandlerCore`` on the adapters it is given.

The core builds no adapter (``actors/wiring.py`` builds the real ones), so here
it runs on fakes: a ``MemoryStore``, and for several hosts a fake lease that
grants at once and a feed factory that records what it was asked to follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from chime_actors.config import Config, load_config
from chime_actors.errors import FencedOut
from chime_actors.handlers.core import HandlerCore
from chime_actors.handlers.lease import Attempt
from chime_actors.records import ChannelEvent, ChimeMessage, Deliveries, PersistBatch, SendRecord
from chime_actors.runtime.messages import ActorId, ActorKind, Wiring
from chime_actors.storage import MemoryStore
from tests.support.polling import until
from tests.support.posts import PostLog

HANDLER = ActorId(ActorKind.HANDLER, 1)
FENCE = 7


class Posts(PostLog):
    """The core's ``post``: what it sent to whom, in order."""

    def records(self, address: Any) -> list[SendRecord]:
        return [
            r
            for m in self.of(PersistBatch, to=address)
            for r in m.records
            if isinstance(r, SendRecord)
        ]


class FakeLease:
    """A lease nobody else wants: granted at once under ``FENCE``."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def acquire(self, token: str, ttl_ms: int, floor: int) -> Attempt:
        self.calls.append("acquire")
        return Attempt(FENCE)

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return True

    async def release(self, token: str) -> bool:
        self.calls.append("release")
        return True

    async def close(self) -> None:
        self.calls.append("close")


class FakeFeed:
    """A feed with no other host publishing: runs until cancelled."""

    async def run(self) -> None:
        await asyncio.Event().wait()


class Feeds:
    """The feed factory: records the globs of every feed it makes."""

    def __init__(self) -> None:
        self.globs: list[tuple[str, ...]] = []

    def __call__(
        self,
        globs: Sequence[str],
        offer: Callable[[Sequence[ChannelEvent]], None],
        on_subscribed: Callable[[], None],
    ) -> FakeFeed:
        self.globs.append(tuple(globs))
        return FakeFeed()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "chime.yaml"
    handler = {
        "name": "echo",
        "use": "echo_bot",
        "stage": "after_store",
        "channels": ["bots-*"],
        "options": {"user": "bot", "prefix": "!echo "},
    }
    path.write_text(yaml.safe_dump({"persisters": 1, "handlers": [handler]}))
    return load_config(path, env={})


def message(content: str) -> ChimeMessage:
    return ChimeMessage("bots-1", f"{1:016d}", "alice", content, "2026-11-27T10:00:00.000Z")


def test_one_host_hands_deliveries_over_from_the_start_on_the_given_store(
    config: Config,
) -> None:
    async def scenario() -> None:
        posts = Posts()
        core = HandlerCore(HANDLER, config, posts, store=MemoryStore(), lease=None, feed=None)
        await core.start()
        try:
            core.handle(Wiring(gateways=(), persisters=("p1",), api=None, generation=1), None)
            core.handle(Deliveries((message("!echo hi"),)), None)
            replies = await until(lambda: posts.records("p1"), what="the echo")
            assert [(r.channel_id, r.user_id, r.content) for r in replies] == [
                ("bots-1", "bot", "hi")
            ]
        finally:
            await core.stop()

    asyncio.run(scenario())


def test_with_a_lease_a_hold_claims_its_fence_and_follows_the_handler_s_channels(
    config: Config,
) -> None:
    async def scenario() -> None:
        store, lease, feeds = MemoryStore(), FakeLease(), Feeds()
        core = HandlerCore(HANDLER, config, Posts(), store=store, lease=lease, feed=feeds)
        await core.start()
        try:
            await until(lambda: feeds.globs, what="the hold's feed", interval=0)
            assert feeds.globs == [("bots-*",)]
            with pytest.raises(FencedOut):
                await store.claim_handler_fence("echo", FENCE - 1)
        finally:
            await core.stop()
        assert lease.calls == ["acquire", "release", "close"]

    asyncio.run(scenario())
