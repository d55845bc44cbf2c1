"""``RedisBridgeActor``: the process actor linking this host to the others via Redis."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.loop_actor import ActorCore, LoopActor
from chime_actors.actors.loop_bridge import LoopBridge
from chime_actors.actors.messages import Configure
from chime_actors.bus.redis_bridge import RedisBridgeCore


class RedisBridgeActor(LoopActor):
    """Thin Thespian shell around a ``RedisBridgeCore``."""

    def make_core(self, configure: Configure, bridge: LoopBridge, supervisor: Any) -> ActorCore:
        return RedisBridgeCore(configure.actor_id, configure.config, bridge.post)
