"""ApiCore: readiness from heartbeats, REST sends and changes through the owning
persister, who may write, rate limits, presence lookups, restarts and metrics.

The core is built with a ``MemoryStore``, a recording ``post`` and a
``FakeClock``; nothing listens (``start`` is not called).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import pytest

from chime_actors.api.core import STALE_AFTER_S, ApiCore
from chime_actors.config import Config, load_config
from chime_actors.errors import PresenceUnavailable, ProtocolError
from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.persister.sequencer import owner_index
from chime_actors.presence.messages import PresenceLookup, PresenceLookupResult
from chime_actors.records import (
    API_ORIGIN,
    ChangeKind,
    ChimeMessage,
    PersistBatch,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.messages import (
    ActorId,
    ActorKind,
    MetricsReport,
    RestartNotice,
    Wiring,
)
from chime_actors.storage import MemoryStore
from tests.support.clock import FakeClock
from tests.support.polling import until

API = ActorId(ActorKind.API, 1)
GATEWAYS = (ActorId(ActorKind.GATEWAY, 1), ActorId(ActorKind.GATEWAY, 2))
PERSISTER = ActorId(ActorKind.PERSISTER, 1)
BRIDGE = ActorId(ActorKind.REDIS_BRIDGE, 1)
WIRING = Wiring(
    gateways=("gateway-1", "gateway-2"),
    persisters=("persister-1", "persister-2"),
    api="api",
    generation=1,
)
SECRET = "s" * 32


class Posts:
    """The core's ``post``: what it sent to whom, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))

    def batches(self) -> list[tuple[Any, PersistBatch]]:
        return [(a, m) for a, m in self.sent if isinstance(m, PersistBatch)]


class Harness:
    def __init__(self, core: ApiCore, store: MemoryStore, posts: Posts, clock: FakeClock) -> None:
        self.core = core
        self.store = store
        self.posts = posts
        self.clock = clock

    def report(self, actor_id: ActorId) -> None:
        registry = MetricsRegistry()
        ChimeMetrics.register(registry).messages_in.inc(actor_id.index)
        self.core.handle(MetricsReport(actor_id, registry.snapshot(str(actor_id))), actor_id)

    def answer(self, address: Any, batch: PersistBatch) -> None:
        """The persister at ``address`` stores ``batch``: ids 1, 2 ... in order."""
        outcomes = []
        for n, record in enumerate(batch.records, start=1):
            assert isinstance(record, SendRecord)
            stored = ChimeMessage(
                record.channel_id,
                f"{n:016d}",
                record.user_id,
                record.content,
                "2026-11-27T10:00:00.000Z",
            )
            outcomes.append(SendOutcome(record.token, message=stored))
        self.core.handle(PersistResult(batch.batch_id, tuple(outcomes)), address)


Scenario = Callable[[Harness], Awaitable[None]]


def config(**overrides: object) -> Config:
    return load_config(env={}, overrides={"persisters": 2, "workers": 2, **overrides})


def run(scenario: Scenario, cfg: Config | None = None, *, post: bool = True) -> None:
    async def main() -> None:
        store, posts, clock = MemoryStore(), Posts(), FakeClock(50.0)
        core = ApiCore(
            API, cfg or config(), 0, post=posts if post else None, store=store, clock=clock
        )
        await store.open()
        try:
            await scenario(Harness(core, store, posts, clock))
        finally:
            await core.stop()

    asyncio.run(main())


def token(sub: str = "alice", channels: list[str] | None = None) -> str:
    claims: dict[str, object] = {"sub": sub, "exp": int(time.time()) + 600}
    if channels is not None:
        claims["channels"] = channels
    return jwt.encode(claims, SECRET, "HS256")


# --- readiness --------------------------------------------------------------------


def test_not_ready_until_wired_and_every_expected_actor_has_reported() -> None:
    async def scenario(h: Harness) -> None:
        before = await h.core.readiness()
        assert not before.ready
        assert before.checks == {"storage": True, "actors wired": False}
        h.core.handle(WIRING, None)
        waiting = await h.core.readiness()
        assert not waiting.ready
        assert waiting.checks == {
            "storage": True,
            "gateway 1": False,
            "gateway 2": False,
            "persister 1": False,
            "persister 2": False,
            "actors wired": True,
        }
        for actor_id in (*GATEWAYS, PERSISTER, ActorId(ActorKind.PERSISTER, 2)):
            h.report(actor_id)
        assert (await h.core.readiness()).ready

    run(scenario)


def test_an_actor_whose_reports_stop_makes_the_server_unready() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        for actor_id in (*GATEWAYS, PERSISTER, ActorId(ActorKind.PERSISTER, 2)):
            h.report(actor_id)
        h.clock.advance(STALE_AFTER_S)  # exactly that old: still fresh
        assert (await h.core.readiness()).ready
        h.clock.advance(0.5)
        for actor_id in (GATEWAYS[0], PERSISTER, ActorId(ActorKind.PERSISTER, 2)):
            h.report(actor_id)  # all but gateway 2 keep reporting
        stale = await h.core.readiness()
        assert not stale.ready
        assert [name for name, ok in stale.checks.items() if not ok] == ["gateway 2"]
        h.report(GATEWAYS[1])  # back (its restart reported again)
        assert (await h.core.readiness()).ready

    run(scenario)


def test_storage_down_makes_the_server_unready() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        for actor_id in (*GATEWAYS, PERSISTER, ActorId(ActorKind.PERSISTER, 2)):
            h.report(actor_id)
        h.store.set_available(False)
        down = await h.core.readiness()
        assert not down.ready and down.checks["storage"] is False
        h.store.set_available(True)
        assert (await h.core.readiness()).ready

    run(scenario)


def test_with_the_redis_bus_the_bridge_is_expected_too() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        for actor_id in (*GATEWAYS, PERSISTER, ActorId(ActorKind.PERSISTER, 2)):
            h.report(actor_id)
        without = await h.core.readiness()
        assert not without.ready and without.checks["redis-bridge"] is False
        h.report(BRIDGE)
        assert (await h.core.readiness()).ready

    run(scenario, config(**{"bus.backend": "redis"}))


# --- REST sends and changes -------------------------------------------------------


def test_a_rest_send_goes_to_the_channel_s_persister_and_resolves_only_with_its_answer() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        channels = {owner_index(c, 2): c for c in (f"room-{n}" for n in range(20))}
        for index in (0, 1):
            record = SendRecord(
                token=index + 1, channel_id=channels[index], user_id="a", content="hi"
            )
            pending = asyncio.get_running_loop().create_task(h.core.send(record))
            (address, batch), *_ = await until(lambda i=index: h.posts.batches()[i:], interval=0)
            assert address == WIRING.persisters[index]
            assert batch.gateway_index == API_ORIGIN  # answered to the API, not a gateway
            assert batch.records == (record,)
            for _ in range(10):
                await asyncio.sleep(0)
            assert not pending.done()  # no answer before the persister stored it
            h.answer(address, batch)
            outcome = await pending
            assert outcome.message is not None and outcome.message.content == "hi"

    run(scenario)


def test_a_change_is_sent_again_to_a_restarted_persister() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        channel = next(c for c in (f"room-{n}" for n in range(20)) if owner_index(c, 2) == 0)
        change = asyncio.get_running_loop().create_task(
            h.core.change(channel, "0000000000000001", "alice", ChangeKind.REACTION_ADD, emoji="👍")
        )
        ((first_address, _),) = await until(h.posts.batches, interval=0)
        assert first_address == "persister-1"
        # persister 1 dies before answering, and comes back at a new address
        h.core.handle(Wiring(("gateway-1", "gateway-2"), (None, "persister-2"), "api", 2), None)
        h.core.handle(Wiring(("gateway-1", "gateway-2"), ("new-1", "persister-2"), "api", 3), None)
        ((address, again),) = await until(lambda: h.posts.batches()[1:], interval=0)
        assert address == "new-1"
        (record,) = again.records
        assert getattr(record, "retried", False)  # checked against storage as it finds it
        h.core.handle(PersistResult(again.batch_id, (SendOutcome(record.token),)), address)
        assert (await change).error_code is None

    run(scenario)


def test_without_a_post_rest_sends_and_changes_are_unavailable() -> None:
    async def scenario(h: Harness) -> None:
        sent = await h.core.send(SendRecord(token=1, channel_id="c", user_id="a", content="x"))
        assert sent.error_code == "unavailable"
        changed = await h.core.change("c", "0000000000000001", "a", ChangeKind.DELETE)
        assert changed.error_code == "unavailable"

    run(scenario, post=False)


def test_the_rate_limit_counts_per_user_and_refills_with_time() -> None:
    async def scenario(h: Harness) -> None:
        assert [h.core.take_rate("alice") for _ in range(3)] == [None, None, None]
        wait = h.core.take_rate("alice")
        assert wait is not None and wait == pytest.approx(10 / 3)  # one per 10 s / 3
        assert h.core.take_rate("bob") is None  # bob has his own budget
        h.clock.advance(wait)
        assert h.core.take_rate("alice") is None

    run(scenario, config(**{"limits.messages_per_10s": 3}))


# --- who may write (REST) -----------------------------------------------------------


def test_insecure_mode_takes_the_writer_from_x_chime_user() -> None:
    async def scenario(h: Harness) -> None:
        assert h.core.writer({"x-chime-user": "bob"}, "general") == "bob"
        for headers in ({}, {"x-chime-user": "no spaces"}):
            with pytest.raises(ProtocolError) as refused:
                h.core.writer(headers, "general")
            assert refused.value.code == "unauthorized"
        assert h.core.authorize({}, "general") is None  # every channel is readable
        assert h.core.caller({"x-chime-user": "bob"}).user_id == "bob"
        assert h.core.caller({}).user_id is None

    run(scenario)


def test_jwt_mode_needs_a_token_that_grants_the_channel() -> None:
    async def scenario(h: Harness) -> None:
        granted = {"authorization": f"Bearer {token(channels=['general'])}"}
        assert h.core.writer(granted, "general") == "alice"
        assert h.core.authorize(granted, "general") is None
        assert h.core.caller(granted).user_id == "alice"
        with pytest.raises(ProtocolError) as forbidden:
            h.core.writer(granted, "secret")
        assert forbidden.value.code == "forbidden"
        assert h.core.authorize(granted, "secret") == "forbidden"
        with pytest.raises(ProtocolError) as missing:
            h.core.writer({"x-chime-user": "alice"}, "general")  # no header trust in jwt mode
        assert missing.value.code == "unauthorized"
        assert h.core.authorize({}, "general") == "unauthorized"
        forged = {"authorization": f"Bearer {jwt.encode({'sub': 'eve'}, 'x' * 32, 'HS256')}"}
        assert h.core.authorize(forged, "general") == "unauthorized"

    run(scenario, config(**{"auth.mode": "jwt", "auth.jwt.secret": SECRET}))


# --- presence, restarts, metrics ----------------------------------------------------


def test_presence_asks_the_gateways_in_turn() -> None:
    async def scenario(h: Harness) -> None:
        with pytest.raises(PresenceUnavailable):
            await h.core.presence_online("general")  # no gateway wired yet
        h.core.handle(WIRING, None)
        for expected in ("gateway-1", "gateway-2", "gateway-1"):
            asked = asyncio.get_running_loop().create_task(h.core.presence_online("general"))
            await until(
                lambda: h.posts.sent and isinstance(h.posts.sent[-1][1], PresenceLookup),
                interval=0,
            )
            address, lookup = h.posts.sent.pop()
            assert address == expected and lookup.channel_id == "general"
            h.core.handle(PresenceLookupResult(lookup.token, ("alice", "bob")), address)
            assert await asked == ["alice", "bob"]

    run(scenario)


def test_restarts_are_counted_by_kind_and_every_report_is_in_the_metrics_text() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(RestartNotice(GATEWAYS[1], 120.0), None)
        h.core.handle(RestartNotice(GATEWAYS[0], 80.0), None)
        h.core.handle(RestartNotice(PERSISTER, 95.0), None)
        own = h.core.registry.snapshot("api 1")
        assert own.value("chime_actor_restarts_total", "gateway") == 2
        assert own.value("chime_actor_restarts_total", "persister") == 1
        h.report(GATEWAYS[1])
        h.report(PERSISTER)
        h.report(GATEWAYS[1])  # the latest report of each process counts
        text = h.core.metrics_text()
        samples = [line for line in text.splitlines() if line.startswith("chime_messages_in_total")]
        assert sorted(samples) == [
            'chime_messages_in_total{process="api"} 0.0',  # its own
            'chime_messages_in_total{process="gateway 2"} 2.0',
            'chime_messages_in_total{process="persister 1"} 1.0',
        ]

    run(scenario)
