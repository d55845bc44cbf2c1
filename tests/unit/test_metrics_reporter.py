"""MetricsReporter: reports go to the API's current address, at once when it changes,
and then every interval (on a fake clock: no test waits a real second)."""

from __future__ import annotations

import asyncio

from chime_actors.metrics import ChimeMetrics, MetricsRegistry
from chime_actors.runtime.messages import ActorId, ActorKind, MetricsReport
from chime_actors.runtime.metrics_reporter import MetricsReporter
from tests.support.clock import FakeClock
from tests.support.polling import until
from tests.support.posts import PostLog

GATEWAY = ActorId(ActorKind.GATEWAY, 1)


class Posts(PostLog):
    """The ``post`` a core gets: records (address, message)."""

    def depths(self) -> list[float | None]:
        """The ``persist_link`` queue depth each report carried."""
        return [m.snapshot.value("chime_queue_depth", "persist_link") for _, m in self.sent]


def make(
    clock: FakeClock | None = None,
) -> tuple[MetricsReporter, Posts, ChimeMetrics, list[int]]:
    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    posts = Posts()
    refreshed: list[int] = []

    def refresh() -> None:
        refreshed.append(1)
        metrics.queue_depth.labels(queue="persist_link").set(len(refreshed))

    if clock is None:
        return MetricsReporter(GATEWAY, registry, posts, refresh), posts, metrics, refreshed
    reporter = MetricsReporter(GATEWAY, registry, posts, refresh, interval_s=2.0, sleep=clock.sleep)
    return reporter, posts, metrics, refreshed


def test_nothing_is_sent_while_the_api_is_unknown() -> None:
    reporter, posts, _, refreshed = make()
    reporter.report()
    reporter.set_api(None)
    assert posts.sent == [] and refreshed == []


def test_a_new_api_address_gets_a_report_at_once_with_fresh_gauges() -> None:
    reporter, posts, metrics, refreshed = make()
    metrics.messages_in.inc(3)
    reporter.set_api("api-1")
    ((address, report),) = posts.sent
    assert address == "api-1" and isinstance(report, MetricsReport)
    assert report.actor_id == GATEWAY
    assert report.snapshot.process == "gateway 1"
    assert report.snapshot.value("chime_messages_in_total") == 3
    assert refreshed == [1]
    assert posts.depths() == [1]  # refreshed before the snapshot was taken
    reporter.set_api("api-1")  # the same address: no extra report
    assert len(posts.sent) == 1
    reporter.set_api("api-2")  # a restarted API: reported at once
    assert [a for a, _ in posts.sent] == ["api-1", "api-2"]


def test_run_reports_once_per_interval_to_the_current_api() -> None:
    async def main() -> None:
        clock = FakeClock()
        reporter, posts, _, refreshed = make(clock)
        task = asyncio.get_running_loop().create_task(reporter.run())
        try:
            await until(lambda: clock.pending == [2.0], interval=0)
            clock.advance(2.0)  # nothing yet: the API is unknown
            await until(lambda: clock.pending == [2.0], interval=0)
            assert posts.sent == [] and refreshed == []
            reporter.set_api("api-1")  # one at once ...
            for _ in range(3):  # ... and one per interval, no more
                clock.advance(1.5)
                assert clock.pending == [0.5]
                clock.advance(0.5)
                await until(lambda: clock.pending == [2.0], interval=0)
            assert [a for a, _ in posts.sent] == ["api-1"] * 4
            assert posts.depths() == [1, 2, 3, 4]  # gauges refreshed for each report
            reporter.set_api("api-2")
            clock.advance(2.0)
            await until(lambda: clock.pending == [2.0], interval=0)
            assert [a for a, _ in posts.sent][4:] == ["api-2", "api-2"]
        finally:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert clock.pending == []  # a cancelled run leaves no timer behind

    asyncio.run(main())


def test_an_api_set_to_none_stops_the_reports() -> None:
    async def main() -> None:
        clock = FakeClock()
        reporter, posts, _, _ = make(clock)
        reporter.set_api("api-1")
        task = asyncio.get_running_loop().create_task(reporter.run())
        try:
            await until(lambda: clock.pending == [2.0], interval=0)
            reporter.set_api(None)  # the API died: Wiring names none until it is back
            clock.advance(2.0)
            await until(lambda: clock.pending == [2.0], interval=0)
            assert len(posts.sent) == 1
            reporter.set_api("api-1")  # back at the same address: reported at once
            assert len(posts.sent) == 2
        finally:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
