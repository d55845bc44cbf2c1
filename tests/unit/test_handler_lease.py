"""chime_actors.handlers.lease: one holder at a time, takeover, loss, fencing, release.

Virtual time: every keeper and the fake lease sleep on one ``VirtualTime``, whose
``advance`` fires their timers in order, so hours of leases run in milliseconds
and every instant is exact. ``FakeLease`` is Redis as the keeper sees it
(``Lease``), with a latency per request and switches to fail, hang or steal.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from chime_actors.errors import BusUnavailable, FencedOut, StoreUnavailable
from chime_actors.handlers.lease import RENEWALS_PER_TTL, Attempt, LeaseKeeper

_T = TypeVar("_T")

TTL_MS = 3000
TTL_S = TTL_MS / 1000
LATENCY_S = 0.001


class VirtualTime:
    """A clock and a sleep whose time moves only in ``advance``."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Run every task, firing the timers due within ``seconds``, in time order."""
        end = self.now + seconds
        while True:
            await _settle()
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)  # cancelled sleeps
            if not self._timers or self._timers[0][0] > end:
                break
            when, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            future.set_result(None)
        self.now = end
        await _settle()

    async def until(self, condition: Callable[[], bool], limit_s: float = 600.0) -> float:
        """Advance in small steps until ``condition``; the virtual time it took."""
        start = self.now
        while not condition():
            if self.now - start > limit_s:
                raise AssertionError("condition not met in virtual time")
            await self.advance(0.01)
        return self.now - start


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@dataclass
class FakeLease:
    """One key with a ttl and a fence counter, as ``RedisLease`` keeps them."""

    time: VirtualTime
    holder: str | None = None
    expires_at: float = 0.0
    counter: int = 0
    failing: bool = False
    hanging: bool = False
    requests: int = 0

    def _holder_now(self) -> str | None:
        if self.holder is not None and self.time.now >= self.expires_at:
            self.holder = None
        return self.holder

    async def _request(self) -> None:
        self.requests += 1
        if self.failing:
            raise BusUnavailable("redis: connection refused")
        if self.hanging:
            await asyncio.get_running_loop().create_future()  # never answered
        await self.time.sleep(LATENCY_S)  # processed a little after it was sent

    async def acquire(self, token: str, ttl_ms: int, floor: int) -> Attempt:
        await self._request()
        holder = self._holder_now()
        if holder is not None and holder != token:
            return Attempt(None, self.expires_at - self.time.now)
        self.holder, self.expires_at = token, self.time.now + ttl_ms / 1000
        self.counter = max(self.counter + 1, floor + 1)
        return Attempt(self.counter)

    async def renew(self, token: str, ttl_ms: int) -> bool:
        await self._request()
        if self._holder_now() != token:
            return False
        self.expires_at = self.time.now + ttl_ms / 1000
        return True

    async def release(self, token: str) -> bool:
        await self._request()
        if self._holder_now() != token:
            return False
        self.holder = None
        return True

    def steal(self, token: str = "thief") -> None:
        """Someone else's key now (Redis lost ours and another host took it)."""
        self.holder, self.expires_at = token, self.time.now + TTL_S


@dataclass
class Holder:
    """``LeaseHolder`` recording its holds as (fence, began at, ended at)."""

    time: VirtualTime
    holds: list[list[Any]] = field(default_factory=list)
    refuse: list[BaseException] = field(default_factory=list)

    async def begin(self, fence: int) -> None:
        if self.refuse:
            self.holds.append([fence, self.time.now, None, "refused"])
            raise self.refuse.pop(0)
        self.holds.append([fence, self.time.now, None, "held"])

    async def end(self) -> None:
        if self.holds and self.holds[-1][2] is None:
            self.holds[-1][2] = self.time.now

    @property
    def holding(self) -> bool:
        return bool(self.holds) and self.holds[-1][2] is None and self.holds[-1][3] == "held"

    def fences(self) -> list[int]:
        return [h[0] for h in self.holds if h[3] == "held"]


class Host:
    """A keeper and its holder: one host's handler process."""

    def __init__(self, name: str, lease: FakeLease, time: VirtualTime) -> None:
        self.holder = Holder(time)
        self.keeper = LeaseKeeper(
            "hook",
            lease,
            self.holder,
            ttl_ms=TTL_MS,
            clock=time.clock,
            sleep=time.sleep,
            token=name,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.keeper.run())

    async def die(self) -> None:
        """SIGKILL: the keeper stops dead, ends nothing, releases nothing."""
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def run(scenario: Callable[[VirtualTime], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        return await asyncio.wait_for(scenario(VirtualTime()), 30)

    return asyncio.run(main())


def test_one_of_two_hosts_holds_and_keeps_holding_while_it_renews() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a, b = Host("a", lease, time), Host("b", lease, time)
        a.start()
        await time.advance(0.1)
        b.start()
        await time.advance(20 * TTL_S)
        assert a.holder.holding and a.holder.fences() == [1]
        assert b.holder.holds == []
        assert (a.keeper.held, b.keeper.held) == (True, False)
        # A standby asks about once per renewal interval, not in a busy loop.
        assert lease.requests < 3 * 20 * RENEWALS_PER_TTL
        await a.die()
        await b.die()

    run(scenario)


def test_a_dead_holder_is_taken_over_within_the_ttl_with_a_higher_fence() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a, b = Host("a", lease, time), Host("b", lease, time)
        a.start()
        await time.advance(0.1)
        b.start()
        await time.advance(2.3 * TTL_S)
        await a.die()
        waited = await time.until(lambda: b.holder.holding)
        assert waited <= TTL_S + 0.05  # one ttl after its last renewal, at most
        assert b.holder.fences() == [2]
        await b.die()

    run(scenario)


def test_a_clean_stop_releases_the_lease_so_the_standby_need_not_wait_the_ttl() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a, b = Host("a", lease, time), Host("b", lease, time)
        a.keeper.start()
        await time.advance(0.1)
        b.start()
        await time.advance(TTL_S)
        stopping = asyncio.get_running_loop().create_task(a.keeper.stop())
        await time.until(stopping.done)
        assert not a.holder.holding and not a.keeper.held
        await time.until(lambda: b.holder.holding)
        # At the standby's next try, not once the ttl ran out.
        assert b.holder.holds[0][1] - a.holder.holds[0][2] <= TTL_S / RENEWALS_PER_TTL + 0.01
        await b.die()

    run(scenario)


def test_a_refused_renewal_ends_the_hold_at_once() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a = Host("a", lease, time)
        a.start()
        await time.advance(TTL_S)
        lease.steal()
        stolen_at = time.now
        await time.until(lambda: not a.holder.holding)
        # Ended at the next renewal, not at the end of its own ttl.
        assert a.holder.holds[0][2] - stolen_at <= TTL_S / RENEWALS_PER_TTL + 0.01
        assert not a.keeper.held
        await time.advance(0.5 * TTL_S)
        assert not a.holder.holding  # the thief holds it: a stands by
        await time.until(lambda: a.holder.holding)  # the thief's lease ran out
        assert a.holder.fences() == [1, 2]
        await a.die()

    run(scenario)


def test_a_failed_renewal_ends_the_hold_and_a_lease_still_ours_comes_back_fenced_anew() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a = Host("a", lease, time)
        a.start()
        await time.advance(TTL_S)
        lease.failing = True
        await time.until(lambda: not a.holder.holding)
        assert a.holder.holds[0][2] < lease.expires_at  # stopped before anyone else could start
        lease.failing = False
        await time.until(lambda: a.holder.holding)
        assert a.holder.fences() == [1, 2]
        await a.die()

    run(scenario)


def test_an_unanswered_renewal_ends_the_hold_before_another_host_can_begin() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a, b = Host("a", lease, time), Host("b", lease, time)
        a.start()
        await time.advance(0.1)
        b.start()
        await time.advance(TTL_S)
        lease.hanging = True  # a's renewals (and b's tries) get no answer
        await time.until(lambda: not a.holder.holding)
        ended = a.holder.holds[0][2]
        assert ended <= lease.expires_at
        lease.hanging = False
        await time.until(lambda: b.holder.holding or a.holder.holding)
        started = (b.holder.holds or a.holder.holds[1:])[0][1]
        assert started >= ended
        await a.die()
        await b.die()

    run(scenario)


def test_lose_ends_the_hold_now() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a = Host("a", lease, time)
        a.start()
        await time.advance(TTL_S / RENEWALS_PER_TTL / 2)
        asked_at = time.now
        a.keeper.lose()
        await time.advance(0)
        assert a.holder.holds[0][2] == asked_at
        await a.die()

    run(scenario)


def test_a_fence_storage_already_passed_raises_the_floor() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a = Host("a", lease, time)
        # Redis lost its counter: storage has fence 41 from before.
        a.holder.refuse.append(FencedOut("hook", 41))
        a.start()
        await time.until(lambda: a.holder.holding)
        assert a.holder.fences() == [42]
        await a.die()

    run(scenario)


def test_storage_down_at_the_start_of_a_hold_gives_the_lease_back_and_tries_again() -> None:
    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a = Host("a", lease, time)
        a.holder.refuse.append(StoreUnavailable("down"))
        a.start()
        await time.advance(0.1)
        assert not a.keeper.held and lease.holder is None  # released at once
        await time.until(lambda: a.holder.holding)
        assert [h[3] for h in a.holder.holds] == ["refused", "held"]
        await a.die()

    run(scenario)


def test_a_key_redis_lost_lets_a_second_host_begin_under_a_higher_fence() -> None:
    """The one case where two holds overlap (until the next renewal): the fence
    then tells storage which one's cursor writes to take (test_store_* contract)."""

    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        a, b = Host("a", lease, time), Host("b", lease, time)
        a.start()
        await time.advance(0.1)
        b.start()
        await time.advance(TTL_S)
        lease.holder = None  # evicted, or a failover to a replica without it
        await time.until(lambda: b.holder.holding)
        assert b.holder.fences() == [2] and a.holder.fences() == [1]
        await time.until(lambda: not a.holder.holding)  # its next renewal is refused
        assert a.holder.holds[0][2] - b.holder.holds[0][1] <= TTL_S / RENEWALS_PER_TTL + 0.01
        await a.die()
        await b.die()

    run(scenario)


@pytest.mark.parametrize("seed", range(8))
def test_holds_never_overlap_and_fences_only_grow_whatever_fails(seed: int) -> None:
    """Three hosts; Redis fails and hangs; hosts die (SIGKILL) and come back."""
    rng = random.Random(seed)

    async def scenario(time: VirtualTime) -> None:
        lease = FakeLease(time)
        generation = itertools.count()
        slots: list[Host | None] = [Host(f"{n}{next(generation)}", lease, time) for n in "abc"]
        ended: list[Host] = []
        for host in slots:
            assert host is not None
            host.start()
        for _ in range(150):
            event = rng.random()
            if event < 0.08:
                lease.failing = not lease.failing
            elif event < 0.12:
                lease.hanging = not lease.hanging
            elif event < 0.2:
                index = rng.randrange(len(slots))
                host = slots[index]
                if host is not None:
                    await host.die()
                    if host.holder.holding:
                        host.holder.holds[-1][2] = time.now  # dead: it hands nothing over
                    ended.append(host)
                    slots[index] = None
                else:  # a new process, with a token of its own
                    born = Host(f"{'abc'[index]}{next(generation)}", lease, time)
                    born.start()
                    slots[index] = born
            await time.advance(rng.uniform(0, TTL_S))
        lease.failing = lease.hanging = False
        await time.advance(3 * TTL_S)
        for host in slots:
            if host is not None:
                await host.die()
                ended.append(host)
        holds = sorted(
            (h[1], h[2] if h[2] is not None else time.now, h[0])
            for host in ended
            for h in host.holder.holds
            if h[3] == "held"
        )
        assert holds, "somebody held the lease at some point"
        for (_, end_1, fence_1), (start_2, _, fence_2) in itertools.pairwise(holds):
            assert end_1 <= start_2, f"two holds overlap: {holds}"
            assert fence_1 < fence_2

    run(scenario)
