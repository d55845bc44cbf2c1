"""chime_actors.handlers.before_store: the chain in the send path, on a plain loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import Any

import pytest

from chime_actors.config import HandlerConfig, HandlerFailure, HandlerStage
from chime_actors.handlers import ACCEPT, Draft, Handler, Reject, Rewrite, Verdict
from chime_actors.handlers.before_store import BeforeStore
from chime_actors.handlers.metrics import HandlerMetrics
from chime_actors.handlers.registry import LoadedHandler
from chime_actors.metrics import MetricsRegistry
from chime_actors.records import ChangeKind, ChangeRecord, PersistRecord, SendOutcome, SendRecord

WAIT_S = 10.0  # generous bound for "resolves"; no test measures time


class FakeLinks:
    """Stands in for the persist links: records what it is given, answers on demand."""

    def __init__(self) -> None:
        self.records: list[PersistRecord] = []
        self.futures: list[asyncio.Future[SendOutcome]] = []

    def submit(self, record: PersistRecord) -> asyncio.Future[SendOutcome]:
        self.records.append(record)
        future: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


class Fixed(Handler):
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.seen: list[Draft] = []

    def before_store(self, draft: Draft) -> Verdict:
        self.seen.append(draft)
        return self.verdict


class Upper(Handler):
    def before_store(self, draft: Draft) -> Verdict:
        return Rewrite(content=draft.content.upper(), metadata=(("checked", "yes"),))


class Gated(Handler):
    """Awaits a gate per call (so a test decides when it answers)."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Event] = []

    async def _judge(self, gate: asyncio.Event) -> Verdict:
        await gate.wait()
        return ACCEPT

    def before_store(self, draft: Draft) -> Awaitable[Verdict]:
        gate = asyncio.Event()
        self.gates.append(gate)
        return self._judge(gate)


class Stubborn(Handler):
    """Hangs, and ignores its first cancellation: the budget must hold anyway."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def before_store(self, draft: Draft) -> Verdict:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await self.release.wait()  # still "running" after its budget
        return ACCEPT


class Broken(Handler):
    def before_store(self, draft: Draft) -> Verdict:
        raise RuntimeError("bug")


def loaded(
    handler: Handler,
    name: str = "h",
    *,
    channels: tuple[str, ...] = ("*",),
    timeout_ms: int = 1000,
    on_failure: HandlerFailure = HandlerFailure.REJECT,
) -> LoadedHandler:
    spec = HandlerConfig(
        name=name,
        use="test",
        stage=HandlerStage.BEFORE_STORE,
        channels=channels,
        timeout_ms=timeout_ms,
        on_failure=on_failure,
    )
    return LoadedHandler(spec, handler)


def chain(
    links: FakeLinks, *handlers: LoadedHandler, registry: MetricsRegistry | None = None
) -> BeforeStore:
    return BeforeStore(
        handlers,
        links.submit,
        max_content_chars=20,
        metrics=HandlerMetrics.register(registry or MetricsRegistry()),
    )


_tokens = iter(range(1, 1_000_000))


def record(content: str = "hello", channel: str = "general") -> SendRecord:
    return SendRecord(
        token=next(_tokens), channel_id=channel, user_id="alice", content=content, client_msg_id="c"
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_a_channel_no_handler_matches_goes_straight_to_its_link() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        handler = Fixed(Reject("forbidden", "no"))
        before = chain(links, loaded(handler, channels=("room-*",)))
        future = before.submit(record(channel="general"))
        assert future is links.futures[0]
        assert handler.seen == []

    run(scenario())


def test_a_synchronous_accept_submits_in_the_same_turn_unchanged() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        sent = record()
        before = chain(links, loaded(Fixed(ACCEPT)))
        future = before.submit(sent)
        assert links.records == [sent]  # no loop turn, no task
        links.futures[0].set_result(SendOutcome(sent.token))
        assert (await future).token == sent.token

    run(scenario())


def test_a_reject_answers_the_sender_and_stores_nothing() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        registry = MetricsRegistry()
        before = chain(links, loaded(Fixed(Reject("forbidden", "not here"))), registry=registry)
        sent = record()
        outcome = await before.submit(sent)
        assert outcome == SendOutcome(sent.token, error_code="forbidden", error_message="not here")
        assert links.records == []
        snapshot = registry.snapshot("gateway 1")
        assert snapshot.value("chime_handler_rejected_total", "h") == 1
        assert snapshot.value("chime_handler_handled_total", "h") == 1

    run(scenario())


def test_handlers_run_in_order_each_on_the_previous_rewrite() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        second = Fixed(ACCEPT)
        before = chain(links, loaded(Upper(), "upper"), loaded(second, "second"))
        before.submit(record("hi"))
        (stored,) = links.records
        assert stored.content == "HI"
        assert stored.metadata == (("checked", "yes"),)
        assert second.seen[0].content == "HI"

    run(scenario())


def test_a_reject_stops_the_chain() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        later = Fixed(ACCEPT)
        before = chain(links, loaded(Fixed(Reject("bad_request", "x")), "a"), loaded(later, "b"))
        outcome = await before.submit(record())
        assert outcome.error_code == "bad_request"
        assert later.seen == []

    run(scenario())


@pytest.mark.parametrize(
    "bad",
    [
        Rewrite(content="x" * 21),
        Rewrite(content="   "),
        Rewrite(metadata=tuple((f"k{i}", "v") for i in range(17))),
        Rewrite(metadata=(("k", "v" * 257),)),
        Rewrite(metadata={"a": "b"}),  # type: ignore[arg-type]
        Reject("internal", "not a code a handler may use"),  # type: ignore[arg-type]
        "yes",
    ],
)
def test_an_invalid_answer_is_a_failure(bad: Any) -> None:
    async def scenario() -> None:
        links = FakeLinks()
        registry = MetricsRegistry()
        before = chain(links, loaded(Fixed(bad)), registry=registry)
        outcome = await before.submit(record())
        assert outcome.error_code == "unavailable"
        assert links.records == []
        assert registry.snapshot("g").value("chime_handler_failures_total", "h") == 1

    run(scenario())


@pytest.mark.parametrize(
    ("on_failure", "stored"), [(HandlerFailure.REJECT, False), (HandlerFailure.ACCEPT, True)]
)
def test_a_raise_is_decided_by_on_failure(on_failure: HandlerFailure, stored: bool) -> None:
    async def scenario() -> None:
        links = FakeLinks()
        before = chain(links, loaded(Broken(), on_failure=on_failure))
        sent = record()
        future = before.submit(sent)
        if stored:
            assert links.records == [sent]
        else:
            outcome = await future
            assert outcome.error_code == "unavailable"
            assert "could not be checked" in outcome.error_message
            assert links.records == []

    run(scenario())


@pytest.mark.parametrize("on_failure", [HandlerFailure.REJECT, HandlerFailure.ACCEPT])
def test_a_hanging_handler_does_not_hold_the_sender_past_its_budget(
    on_failure: HandlerFailure,
) -> None:
    async def scenario() -> None:
        links = FakeLinks()
        stubborn = Stubborn()
        before = chain(links, loaded(stubborn, timeout_ms=20, on_failure=on_failure))
        sent = record()
        future = before.submit(sent)
        if on_failure is HandlerFailure.ACCEPT:
            while not links.records:
                await asyncio.sleep(0.01)
            assert links.records == [sent]
        else:
            outcome = await asyncio.wait_for(future, WAIT_S)
            assert outcome.error_code == "unavailable"
        assert not stubborn.release.is_set()  # decided while the handler still ran
        stubborn.release.set()
        await before.close()

    run(scenario())


def test_records_of_a_channel_leave_in_arrival_order() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        gated = Gated()
        before = chain(links, loaded(gated, channels=("slow",)), loaded(Fixed(ACCEPT), "any"))
        first, second = record("1", channel="slow"), record("2", channel="slow")
        other = record("3", channel="fast")
        before.submit(first)
        before.submit(second)
        before.submit(other)
        assert links.records == [other]  # another channel does not wait
        gated.gates[1].set()  # the second is judged first ...
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert links.records == [other]  # ... but waits for the first
        gated.gates[0].set()
        while len(links.records) < 3:
            await asyncio.sleep(0.01)
        assert [r.content for r in links.records] == ["3", "1", "2"]

    run(scenario())


def test_a_decided_record_behind_a_pending_one_waits_for_it() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        gated = Gated()
        switch = {"gate": True}

        class Sometimes(Handler):
            def before_store(self, draft: Draft) -> Verdict | Awaitable[Verdict]:
                if switch["gate"]:
                    return gated.before_store(draft)
                return ACCEPT

        before = chain(links, loaded(Sometimes()))
        before.submit(record("1"))
        switch["gate"] = False
        before.submit(record("2"))
        assert links.records == []
        gated.gates[0].set()
        while len(links.records) < 2:
            await asyncio.sleep(0.01)
        assert [r.content for r in links.records] == ["1", "2"]

    run(scenario())


def test_close_answers_what_is_still_being_judged() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        before = chain(links, loaded(Gated()))
        sent = record()
        future = before.submit(sent)
        await before.close()
        outcome = await future
        assert outcome.token == sent.token
        assert outcome.error_code == "unavailable"

    run(scenario())


def edit(content: str, channel: str = "general") -> ChangeRecord:
    return ChangeRecord(
        token=next(_tokens),
        channel_id=channel,
        message_id="0000000000000001",
        user_id="alice",
        kind=ChangeKind.EDIT,
        content=content,
    )


def test_an_edit_is_judged_like_a_send_and_only_its_content_rewritten() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        seen = Fixed(ACCEPT)
        before = chain(links, loaded(seen, "seen"), loaded(Upper(), "upper"))
        before.submit(edit("fixed"))
        (stored,) = links.records
        assert isinstance(stored, ChangeRecord)
        assert stored.content == "FIXED"
        assert seen.seen[0].edit_of == "0000000000000001"

    run(scenario())


def test_a_rejected_edit_is_not_made_and_deletes_and_reactions_pass() -> None:
    async def scenario() -> None:
        links = FakeLinks()
        judge = Fixed(Reject("forbidden", "no"))
        before = chain(links, loaded(judge))
        outcome = await before.submit(edit("bad"))
        assert outcome.error_code == "forbidden"
        for kind in (ChangeKind.DELETE, ChangeKind.REACTION_ADD):
            change = ChangeRecord(
                token=next(_tokens),
                channel_id="general",
                message_id="0000000000000001",
                user_id="alice",
                kind=kind,
                emoji="+1" if kind is ChangeKind.REACTION_ADD else None,
            )
            before.submit(change)
        kinds = [r.kind for r in links.records if isinstance(r, ChangeRecord)]
        assert kinds == [ChangeKind.DELETE, ChangeKind.REACTION_ADD]
        assert len(judge.seen) == 1

    run(scenario())
