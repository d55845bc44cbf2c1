"""``HandlerActor``: the process actor of one after_store handler (see handlers.core)."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.actors.wiring import handler_adapters
from chime_actors.handlers.core import HandlerCore
from chime_actors.runtime.lanes import Router
from chime_actors.runtime.loop_actor import ActorCore, LoopActor
from chime_actors.runtime.messages import Configure


class HandlerActor(LoopActor):
    """Thin Thespian shell around a ``HandlerCore``."""

    lane_codec = LANE_CODEC

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        adapters = handler_adapters(configure.config, configure.actor_id.index)
        return HandlerCore(
            configure.actor_id,
            configure.config,
            router.post,
            store=adapters.store,
            lease=adapters.lease,
            feed=adapters.feed,
        )
