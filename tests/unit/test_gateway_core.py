"""GatewayCore: sends to the owning persister, deliveries to local subscribers,
the bridge told of interest, catch-ups after a persister restart or a resync.

The core is built with a ``MemoryStore``, a recording ``post`` and a
``FakeClock``, and driven through ``handle`` and its ``GatewayServices``
methods; nothing listens (``start`` is not called). Subscribers are small fakes
of the ``Member`` interface.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from chime_actors.bus.messages import Interest, InterestSnapshot, Resync
from chime_actors.config import Config, load_config
from chime_actors.gateway.core import GatewayCore
from chime_actors.persister.sequencer import owner_index
from chime_actors.protocol.wire_frames import WireFrame
from chime_actors.records import (
    ChimeMessage,
    Deliveries,
    PersistBatch,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from chime_actors.runtime.messages import ActorId, ActorKind, Drain, Drained, MetricsReport, Wiring
from chime_actors.storage import MemoryStore
from tests.support.clock import FakeClock
from tests.support.polling import until

GATEWAY = ActorId(ActorKind.GATEWAY, 1)
WIRING = Wiring(
    gateways=("gateway-1", "gateway-2"),
    persisters=("persister-1", "persister-2"),
    api="api",
    generation=1,
)
# One channel owned by each persister (owner_index over 2).
OWNED = {owner_index(c, 2): c for c in (f"room-{n}" for n in range(20))}


class Posts:
    """The core's ``post``: what it sent to whom, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))

    def to(self, address: Any, kind: type) -> list[Any]:
        return [m for a, m in self.sent if a == address and isinstance(m, kind)]


class Member:
    """A connection as its channels and presence see it: records message ids."""

    def __init__(self, connection_id: str, user_id: str = "alice") -> None:
        self._connection_id = connection_id
        self._user_id = user_id
        self.frames: list[dict[str, Any]] = []

    @property
    def connection_id(self) -> str:
        return self._connection_id

    @property
    def user_id(self) -> str:
        return self._user_id

    def push(self, frame: str | WireFrame) -> None:
        self.frames.append(json.loads(frame if isinstance(frame, str) else frame.text))

    def offer(self, frame: WireFrame, on_room: Callable[[], None]) -> bool:
        self.push(frame)
        return True

    def abort(self, code: int, reason: str) -> None:
        raise AssertionError(f"aborted {code} {reason}")

    def ids(self, channel: str) -> list[str]:
        return [
            f["message"]["messageId"]
            for f in self.frames
            if f.get("type") == "message" and f["message"]["channelId"] == channel
        ]


def message(channel: str, seq: int) -> ChimeMessage:
    return ChimeMessage(channel, f"{seq:016d}", "bob", f"m{seq}", "2026-11-27T10:00:00.000Z")


def ids(*seqs: int) -> list[str]:
    return [f"{seq:016d}" for seq in seqs]


class Harness:
    def __init__(self, core: GatewayCore, store: MemoryStore, posts: Posts) -> None:
        self.core = core
        self.store = store
        self.posts = posts

    async def stored(self, channel: str, *seqs: int) -> tuple[ChimeMessage, ...]:
        """Store these messages (as a persister does), not delivered yet."""
        messages = tuple(message(channel, seq) for seq in seqs)
        await self.store.append(messages)
        return messages

    async def join(self, channel: str, connection_id: str) -> Member:
        member = Member(connection_id)
        await self.core.join_channel(channel, member, None)
        return member


Scenario = Callable[[Harness], Awaitable[None]]


def config(**overrides: object) -> Config:
    return load_config(env={}, overrides={"persisters": 2, "workers": 2, **overrides})


def run(scenario: Scenario, cfg: Config | None = None) -> None:
    async def main() -> None:
        store, posts = MemoryStore(), Posts()
        core = GatewayCore(
            GATEWAY, cfg or config(), 0, posts, "supervisor", store=store, clock=FakeClock()
        )
        await store.open()
        try:
            await scenario(Harness(core, store, posts))
        finally:
            await core.stop()

    asyncio.run(main())


def answered(batch: PersistBatch) -> PersistResult:
    """A persister's answer: every record stored (ids 1, 2 ...)."""
    outcomes = []
    for n, record in enumerate(batch.records, start=1):
        assert isinstance(record, SendRecord)
        outcomes.append(SendOutcome(record.token, message=message(record.channel_id, n)))
    return PersistResult(batch.batch_id, tuple(outcomes))


# --- sends ------------------------------------------------------------------------


def test_a_send_goes_to_the_persister_owning_its_channel_and_is_acked_by_its_answer() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        futures = {
            index: h.core.submit_send(
                SendRecord(token=10 + index, channel_id=OWNED[index], user_id="a", content="x")
            )
            for index in (0, 1)
        }
        await until(lambda: len([m for _, m in h.posts.sent if isinstance(m, PersistBatch)]) == 2)
        for index, address in enumerate(WIRING.persisters):
            (batch,) = h.posts.to(address, PersistBatch)
            assert batch.gateway_index == GATEWAY.index
            assert [r.channel_id for r in batch.records] == [OWNED[index]]
        assert not any(f.done() for f in futures.values())  # nothing stored: no ack
        # persister 2 answers first; only its send is acked
        h.core.handle(answered(h.posts.to("persister-2", PersistBatch)[0]), "persister-2")
        assert futures[1].done() and not futures[0].done()
        assert futures[1].result().message is not None
        h.core.handle(answered(h.posts.to("persister-1", PersistBatch)[0]), "persister-1")
        assert futures[0].result().message is not None

    run(scenario)


def test_sends_wait_for_a_persister_that_is_not_wired_yet() -> None:
    async def scenario(h: Harness) -> None:
        future = h.core.submit_send(
            SendRecord(token=1, channel_id=OWNED[0], user_id="a", content="x")
        )
        for _ in range(10):
            await asyncio.sleep(0)
        assert h.posts.sent == [] and not future.done()
        h.core.handle(WIRING, None)
        (batch,) = await until(lambda: h.posts.to("persister-1", PersistBatch), interval=0)
        h.core.handle(answered(batch), "persister-1")
        assert future.result().message is not None

    run(scenario)


# --- deliveries ---------------------------------------------------------------------


def test_deliveries_reach_local_subscribers_of_their_channel_in_order_once() -> None:
    async def scenario(h: Harness) -> None:
        a, b = OWNED[0], OWNED[1]
        alice = await h.join(a, "c1")
        bob = await h.join(a, "c2")
        carol = await h.join(b, "c3")
        sent = (*await h.stored(a, 1, 2), *await h.stored("nobody-here", 1), *await h.stored(b, 1))
        h.core.handle(Deliveries(sent), "persister-1")
        await until(lambda: alice.ids(a) and bob.ids(a) and carol.ids(b), interval=0)
        more = await h.stored(a, 3)
        h.core.handle(Deliveries(more), "redis-bridge")  # from another host
        await until(lambda: len(bob.ids(a)) == 3, interval=0)
        assert alice.ids(a) == bob.ids(a) == ids(1, 2, 3)
        assert carol.ids(b) == ids(1)
        assert not carol.ids(a) and not alice.ids(b)

    run(scenario)


def test_a_persister_restart_catches_its_channels_up_from_storage() -> None:
    """Messages it stored and died before delivering reach the subscribers."""

    async def scenario(h: Harness) -> None:
        h.core.handle(WIRING, None)
        a, b = OWNED[0], OWNED[1]
        alice = await h.join(a, "c1")
        bob = await h.join(b, "c2")
        await h.stored(a, 1)  # stored by persister 1, which then died
        await h.stored(b, 1)  # persister 2 is alive: it will deliver this itself
        h.core.handle(Wiring(WIRING.gateways, (None, "persister-2"), "api", 2), None)
        h.core.handle(Wiring(WIRING.gateways, ("persister-1b", "persister-2"), "api", 3), None)
        await until(lambda: alice.ids(a), interval=0)
        assert alice.ids(a) == ids(1)
        for _ in range(20):
            await asyncio.sleep(0)
        assert bob.ids(b) == []  # not caught up: its persister did not change

    run(scenario)


def test_a_resync_catches_the_named_channels_up_from_storage() -> None:
    async def scenario(h: Harness) -> None:
        a, b = OWNED[0], OWNED[1]
        alice = await h.join(a, "c1")
        bob = await h.join(b, "c2")
        await h.stored(a, 1, 2)  # published while the bridge's subscription was down
        await h.stored(b, 1)
        h.core.handle(Resync((a, "not-joined-here")), "redis-bridge")
        await until(lambda: len(alice.ids(a)) == 2, interval=0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert bob.ids(b) == []

    run(scenario)


# --- the bridge ---------------------------------------------------------------------


def test_the_bridge_hears_of_a_channel_s_first_and_last_subscriber() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(Wiring((), (), None, 1, redis_bridge="bridge"), None)
        assert h.posts.to("bridge", InterestSnapshot) == [InterestSnapshot(1, ())]
        await h.join("general", "c1")
        await h.join("general", "c2")  # not the first: nothing more
        assert h.posts.to("bridge", Interest) == [Interest(1, "general", subscribed=True)]
        h.core.leave_channel("general", "c1")
        h.core.leave_channel("general", "c2")
        await until(lambda: len(h.posts.to("bridge", Interest)) == 2, interval=0)
        assert h.posts.to("bridge", Interest)[1] == Interest(1, "general", subscribed=False)

    run(scenario)


def test_a_new_bridge_gets_every_channel_with_subscribers() -> None:
    async def scenario(h: Harness) -> None:
        await h.join("zeta", "c1")  # before any bridge: told nobody
        await h.join("alpha", "c2")
        assert h.posts.sent == []
        h.core.handle(Wiring((), (), None, 1, redis_bridge="bridge-1"), None)
        h.core.handle(Wiring((), (), None, 2, redis_bridge="bridge-1"), None)  # same one
        h.core.handle(Wiring((), (), None, 3, redis_bridge="bridge-2"), None)  # restarted
        assert h.posts.to("bridge-1", InterestSnapshot) == [InterestSnapshot(1, ("alpha", "zeta"))]
        assert h.posts.to("bridge-2", InterestSnapshot) == [InterestSnapshot(1, ("alpha", "zeta"))]

    run(scenario, config(**{"bus.backend": "redis"}))


# --- metrics, drain, the rest ---------------------------------------------------------


def test_wiring_reports_metrics_at_once_with_the_queue_gauges() -> None:
    async def scenario(h: Harness) -> None:
        await h.join("general", "c1")
        h.core.submit_send(SendRecord(token=1, channel_id="general", user_id="a", content="x"))
        h.core.handle(WIRING, None)
        (report,) = h.posts.to("api", MetricsReport)
        assert report.actor_id == GATEWAY
        assert report.snapshot.value("chime_queue_depth", "persist_link") == 1
        assert report.snapshot.value("chime_queue_depth", "channels") == 1

    run(scenario)


def test_drain_with_no_connections_answers_drained_at_once() -> None:
    async def scenario(h: Harness) -> None:
        h.core.handle(Drain(), "supervisor")
        await until(lambda: h.posts.to("supervisor", Drained), interval=0)
        assert h.posts.to("supervisor", Drained) == [Drained(GATEWAY)]

    run(scenario)


def test_history_reads_the_given_store_and_unknown_messages_are_ignored() -> None:
    async def scenario(h: Harness) -> None:
        await h.stored("general", 1, 2, 3)
        page = await h.core.history("general", before=None, after=None, limit=2, thread_id=None)
        assert [m.seq for m in page.messages] == [2, 3] and page.has_more
        h.core.handle("what is this", "someone")
        assert h.posts.sent == []

    run(scenario)
