"""MetricsReporter: reports go to the API's current address, at once when it changes."""

from __future__ import annotations

import asyncio
from typing import Any

from chime_actors.actors import metrics_reporter as reporter_module
from chime_actors.actors.messages import ActorId, ActorKind, MetricsReport
from chime_actors.actors.metrics_reporter import MetricsReporter
from chime_actors.metrics import ChimeMetrics, MetricsRegistry

GATEWAY = ActorId(ActorKind.GATEWAY, 1)


class Posts:
    """The ``post`` a core gets: records (address, message)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, Any]] = []

    def __call__(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))


def make() -> tuple[MetricsReporter, Posts, ChimeMetrics, list[int]]:
    registry = MetricsRegistry()
    metrics = ChimeMetrics.register(registry)
    posts = Posts()
    refreshed: list[int] = []
    reporter = MetricsReporter(GATEWAY, registry, posts, lambda: refreshed.append(1))
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
    reporter.set_api("api-1")  # the same address: no extra report
    assert len(posts.sent) == 1
    reporter.set_api("api-2")  # a restarted API: reported at once
    assert [a for a, _ in posts.sent] == ["api-1", "api-2"]


def test_run_reports_every_interval(monkeypatch: Any) -> None:
    monkeypatch.setattr(reporter_module, "INTERVAL_S", 0.01)
    reporter, posts, _, _ = make()
    reporter.set_api("api")

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(reporter.run())
        async with asyncio.timeout(5):
            while len(posts.sent) < 4:
                await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(main())
    assert len(posts.sent) >= 4
