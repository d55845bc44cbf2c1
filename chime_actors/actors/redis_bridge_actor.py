"""``RedisBridgeActor``: the process actor linking this host to the others via Redis."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.actors.wiring import bridge_adapters
from chime_actors.bus.redis_bridge import RedisBridgeCore
from chime_actors.runtime.lanes import Router
from chime_actors.runtime.loop_actor import ActorCore, LoopActor
from chime_actors.runtime.messages import Configure


class RedisBridgeActor(LoopActor):
    """Thin Thespian shell around a ``RedisBridgeCore``."""

    lane_codec = LANE_CODEC

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        adapters = bridge_adapters(configure.config)
        return RedisBridgeCore(
            configure.actor_id, configure.config, router.post, connect=adapters.connect
        )
