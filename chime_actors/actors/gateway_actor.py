"""``GatewayActor``: a process actor serving WebSocket clients (see gateway.core)."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lanes import Router
from chime_actors.actors.loop_actor import ActorCore, LoopActor
from chime_actors.actors.messages import Configure
from chime_actors.gateway.core import GatewayCore


class GatewayActor(LoopActor):
    """Thin Thespian shell around a ``GatewayCore``."""

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        return GatewayCore(
            configure.actor_id, configure.config, configure.chat_port, router.post, supervisor
        )
