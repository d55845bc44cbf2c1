"""Tests for chime_actors.persister.link: batching, window, timeouts, rewiring."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from msgspec.structs import replace

from chime_actors.ids import format_message_id
from chime_actors.persister.link import PersistLink, next_token
from chime_actors.records import (
    ChangeKind,
    ChangeRecord,
    ChimeMessage,
    PersistBatch,
    PersistResult,
    SendOutcome,
    SendRecord,
)
from tests.support.clock import FakeClock

GATEWAY = 3


class Posts:
    """The ``post`` function: records ``(address, message)`` pairs."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, PersistBatch]] = []

    def __call__(self, address: Any, message: Any) -> None:
        assert isinstance(message, PersistBatch)
        self.sent.append((address, message))

    @property
    def batches(self) -> list[PersistBatch]:
        return [batch for _, batch in self.sent]


def rec(token: int) -> SendRecord:
    return SendRecord(token=token, channel_id="general", user_id="alice", content=f"m{token}")


def acked(batch: PersistBatch) -> PersistResult:
    """The persister's answer: every record stored, ids in order."""
    return PersistResult(
        batch.batch_id,
        tuple(
            SendOutcome(
                r.token,
                message=ChimeMessage(
                    channel_id=r.channel_id,
                    message_id=format_message_id(n),
                    user_id=r.user_id,
                    content=r.content,
                    created_at="2026-11-27T10:00:00.000Z",
                ),
            )
            for n, r in enumerate(batch.records, start=1)
        ),
    )


async def next_iteration() -> None:
    """Let the loop run the flush scheduled with ``call_soon``."""
    await asyncio.sleep(0)


Scenario = Callable[[PersistLink, Posts, FakeClock], Awaitable[None]]


def run(scenario: Scenario, *, address: Any = "persister-1", **options: Any) -> None:
    async def main() -> None:
        posts = Posts()
        clock = FakeClock(1000.0)
        link = PersistLink(GATEWAY, posts, clock=clock, **options)
        link.rewire(address)
        await scenario(link, posts, clock)

    asyncio.run(main())


def test_records_of_one_loop_iteration_form_one_batch() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        futures = [link.submit(rec(t)) for t in (1, 2, 3)]
        assert posts.sent == []  # nothing is sent before the loop iterates
        assert link.pending == 3
        await next_iteration()
        ((address, batch),) = posts.sent
        assert address == "persister-1"
        assert batch.gateway_index == GATEWAY
        assert [r.token for r in batch.records] == [1, 2, 3]
        assert link.owns(batch.batch_id)
        assert not any(f.done() for f in futures)
        link.submit(rec(4))
        await next_iteration()
        assert [[r.token for r in b.records] for b in posts.batches] == [[1, 2, 3], [4]]
        assert posts.batches[0].batch_id != posts.batches[1].batch_id

    run(scenario)


def test_result_resolves_the_futures() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        futures = [link.submit(rec(t)) for t in (1, 2)]
        await next_iteration()
        (batch,) = posts.batches
        result = acked(batch)
        link.on_result(result)
        assert [f.result() for f in futures] == list(result.outcomes)
        assert not link.owns(batch.batch_id)
        assert link.pending == 0
        link.on_result(result)  # a repeat is ignored

    run(scenario)


def test_unknown_batch_is_not_owned_and_ignored() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        future = link.submit(rec(1))
        await next_iteration()
        assert not link.owns(-1)
        link.on_result(PersistResult(-1, (SendOutcome(1, error_code="unavailable"),)))
        assert not future.done()

    run(scenario)


def test_batches_are_capped_at_max_batch() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        for t in range(1, 6):
            link.submit(rec(t))
        await next_iteration()
        assert [len(b.records) for b in posts.batches] == [2, 2, 1]

    run(scenario, max_batch=2, window=32)


def test_full_window_holds_records_until_a_result_arrives() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        link.submit(rec(1))
        await next_iteration()
        link.submit(rec(2))
        link.submit(rec(3))
        await next_iteration()
        assert len(posts.batches) == 1  # window of one: 2 and 3 wait
        assert link.pending == 3
        link.on_result(acked(posts.batches[0]))
        assert [[r.token for r in b.records] for b in posts.batches] == [[1], [2, 3]]

    run(scenario, window=1)


def test_past_max_pending_submit_fails_at_once() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        first = link.submit(rec(1))
        second = link.submit(rec(2))
        third = link.submit(rec(3))
        assert third.result() == SendOutcome(
            3, error_code="unavailable", error_message="server overloaded"
        )
        assert link.pending == 2
        await next_iteration()
        (batch,) = posts.batches
        assert [r.token for r in batch.records] == [1, 2]
        link.on_result(acked(batch))
        assert first.done() and second.done()
        assert not link.submit(rec(4)).done()  # room again

    run(scenario, max_pending=2)


def test_without_a_persister_records_wait_until_the_ack_timeout() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        waiting = link.submit(rec(1))
        await next_iteration()
        assert posts.sent == [] and not waiting.done()
        clock.now += 5.0
        link.expire()
        assert waiting.result() == SendOutcome(
            1, error_code="unavailable", error_message="persister unavailable"
        )
        assert link.pending == 0

    run(scenario, address=None)


def test_records_waiting_for_a_restarted_persister_go_to_it() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        waiting = link.submit(rec(1))
        clock.now += 1.0
        link.rewire("persister-2")
        (batch,) = posts.batches
        assert posts.sent[0][0] == "persister-2"
        link.on_result(acked(batch))
        assert waiting.result().message is not None

    run(scenario, address=None)


def rec_with_id(token: int) -> SendRecord:
    return SendRecord(
        token=token,
        channel_id="general",
        user_id="alice",
        content=f"m{token}",
        client_msg_id=f"c-{token}",
    )


def test_rewire_retries_in_flight_records_that_have_a_client_id() -> None:
    """The old persister may have stored them: the new one dedupes the retry."""

    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        safe = link.submit(rec_with_id(1))
        unsafe = link.submit(rec(2))
        await next_iteration()
        waiting = link.submit(rec(3))
        await next_iteration()
        old_batch = posts.batches[0]
        link.rewire("persister-1")  # the same address changes nothing
        assert not safe.done() and not unsafe.done()
        link.rewire(None)  # it died: the unsafe record's outcome is unknown
        assert unsafe.result() == SendOutcome(
            2, error_code="unavailable", error_message="persister failed; outcome unknown"
        )
        assert not safe.done() and not waiting.done()
        assert not link.owns(old_batch.batch_id)
        link.rewire("persister-2")
        assert posts.sent[-1][0] == "persister-2"
        # The retried record goes first, then what waited behind the window.
        assert [r.token for r in posts.sent[-1][1].records] == [1, 3]
        link.on_result(acked(old_batch))  # the old persister's late answer is ignored
        assert not safe.done()
        link.on_result(acked(posts.sent[-1][1]))
        assert safe.result().message is not None
        assert waiting.result().message is not None

    run(scenario, window=1)


def test_expire_sheds_records_that_waited_too_long_to_be_sent() -> None:
    """Never sent, so certainly not stored: 'server overloaded' is the truth."""

    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        flying = link.submit(rec(1))
        await next_iteration()
        clock.now += 3
        waiting = link.submit(rec(2))  # the window of one is full
        await next_iteration()
        assert len(posts.batches) == 1
        clock.now += 4.9
        link.expire()
        assert not waiting.done()
        clock.now += 0.1  # waited exactly the ack timeout
        link.expire()
        assert waiting.result() == SendOutcome(
            2, error_code="unavailable", error_message="server overloaded"
        )
        assert not flying.done()  # in flight: the persister will answer

    run(scenario, window=1, ack_timeout_s=5.0, in_flight_timeout_s=30.0)


def test_expire_gives_up_on_a_batch_in_flight_only_after_the_backstop() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        flying = link.submit(rec(1))
        await next_iteration()
        clock.now += 29.9
        link.expire()
        assert not flying.done()
        clock.now += 0.1
        link.expire()
        assert flying.result() == SendOutcome(
            1,
            error_code="unavailable",
            error_message="storage did not answer in time; outcome unknown",
        )
        assert link.pending == 0

    run(scenario, ack_timeout_s=5.0, in_flight_timeout_s=30.0)


def test_fail_all_fails_buffered_and_in_flight() -> None:
    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        flying = link.submit(rec(1))
        await next_iteration()
        waiting = link.submit(rec(2))
        link.fail_all("gateway stopped")
        for future in (flying, waiting):
            assert future.result().error_message == "gateway stopped"
        assert link.pending == 0
        assert not link.owns(posts.batches[0].batch_id)
        await next_iteration()
        assert len(posts.sent) == 1  # the scheduled flush finds nothing

    run(scenario, window=1)


def test_next_token_is_unique_and_increasing() -> None:
    tokens = [next_token() for _ in range(100)]
    assert tokens == sorted(set(tokens))


def test_by_default_two_batches_fly_and_the_rest_merges_into_the_next() -> None:
    """A small window makes records merge in the link instead of queueing in Thespian."""

    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        for token in (1, 2):
            link.submit(rec(token))
            await next_iteration()  # one batch per loop turn while the window has room
        for token in (3, 4, 5):
            link.submit(rec(token))
            await next_iteration()
        assert [[r.token for r in b.records] for b in posts.batches] == [[1], [2]]
        link.on_result(acked(posts.batches[0]))
        assert [[r.token for r in b.records] for b in posts.batches] == [[1], [2], [3, 4, 5]]

    run(scenario)


def test_rewire_retries_in_flight_changes_marked_retried() -> None:
    """A change may have landed at the old persister: the new one checks it again."""

    async def scenario(link: PersistLink, posts: Posts, clock: FakeClock) -> None:
        record = ChangeRecord(
            7, "general", format_message_id(1), "alice", ChangeKind.DELETE, retried=False
        )
        future = link.submit(record)
        await next_iteration()
        link.rewire(None)
        link.rewire("persister-2")
        address, batch = posts.sent[-1]
        assert address == "persister-2"
        assert batch.records == (replace(record, retried=True),)
        link.on_result(PersistResult(batch.batch_id, (SendOutcome(7),)))
        assert future.result() == SendOutcome(7)

    run(scenario)
