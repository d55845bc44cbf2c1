"""ApiCore's readiness names each after_store handler without making the server unready."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from chime_actors.actors.wiring import api_adapters
from chime_actors.api.core import ApiCore
from chime_actors.config import load_config
from chime_actors.handlers.metrics import HandlerMetrics
from chime_actors.metrics import MetricsRegistry
from chime_actors.runtime.messages import ActorId, ActorKind, MetricsReport, RestartNotice, Wiring

GATEWAY = ActorId(ActorKind.GATEWAY, 1)
PERSISTER = ActorId(ActorKind.PERSISTER, 1)
HANDLER = ActorId(ActorKind.HANDLER, 1)


def report(actor_id: ActorId, *, stuck: bool = False) -> MetricsReport:
    registry = MetricsRegistry()
    if actor_id.kind is ActorKind.HANDLER:
        HandlerMetrics.register(registry).stuck.labels(handler="hook").set(1 if stuck else 0)
    return MetricsReport(actor_id, registry.snapshot(str(actor_id)))


def test_a_handler_is_named_but_never_makes_the_server_unready(tmp_path: Path) -> None:
    path = tmp_path / "chime.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"sqlite": {"path": str(tmp_path / "chime.db")}},
                "handlers": [
                    {
                        "name": "filter",
                        "use": "word_filter",
                        "stage": "before_store",
                        "options": {"words": ["x"]},
                    },
                    {
                        "name": "hook",
                        "use": "webhook",
                        "stage": "after_store",
                        "options": {"url": "http://127.0.0.1:9/", "secret": "s"},
                    },
                ],
            }
        )
    )
    config = load_config(path, env={})

    async def scenario() -> None:
        core = ApiCore(ActorId(ActorKind.API, 1), config, 0, store=api_adapters(config).store)
        await core._store.open()
        try:
            core.handle(Wiring(gateways=("g",), persisters=("p",), api="a", generation=1), None)
            core.handle(report(GATEWAY), None)
            core.handle(report(PERSISTER), None)
            readiness = await core.readiness()
            assert readiness.ready
            assert readiness.checks["handler hook"] is False  # never reported
            assert "handler filter" not in readiness.checks  # before_store: in the gateways
            core.handle(report(HANDLER), None)
            assert (await core.readiness()).checks["handler hook"] is True
            core.handle(report(HANDLER, stuck=True), None)
            stuck = await core.readiness()
            assert stuck.checks["handler hook"] is False
            assert stuck.ready
            core.handle(report(HANDLER), None)
            core.handle(RestartNotice(HANDLER, 12.0), None)  # a crash loop shows for a while
            assert (await core.readiness()).checks["handler hook"] is False
        finally:
            await core._store.close()

    asyncio.run(scenario())
