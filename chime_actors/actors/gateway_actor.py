"""``GatewayActor``: a process actor serving WebSocket clients (see gateway.core)."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.actors.wiring import gateway_adapters
from chime_actors.gateway.core import GatewayCore
from chime_actors.runtime.lanes import Router
from chime_actors.runtime.loop_actor import ActorCore, LoopActor
from chime_actors.runtime.messages import Configure


class GatewayActor(LoopActor):
    """Thin Thespian shell around a ``GatewayCore``."""

    lane_codec = LANE_CODEC

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        adapters = gateway_adapters(configure.config)
        return GatewayCore(
            configure.actor_id,
            configure.config,
            configure.chat_port,
            router.post,
            supervisor,
            store=adapters.store,
        )
