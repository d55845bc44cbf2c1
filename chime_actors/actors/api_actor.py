"""``ApiActor``: the process actor serving the HTTP API (see api.core)."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.actors.wiring import api_adapters
from chime_actors.api.core import ApiCore
from chime_actors.runtime.lanes import Router
from chime_actors.runtime.loop_actor import ActorCore, LoopActor
from chime_actors.runtime.messages import Configure


class ApiActor(LoopActor):
    """Thin Thespian shell around an ``ApiCore``."""

    lane_codec = LANE_CODEC

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        adapters = api_adapters(configure.config)
        return ApiCore(
            configure.actor_id,
            configure.config,
            configure.api_port,
            configure.chat_port,
            post=router.post,
            store=adapters.store,
        )
