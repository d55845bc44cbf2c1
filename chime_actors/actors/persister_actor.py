"""``PersisterActor``: a process actor of the persister pool (see persister.core)."""

from __future__ import annotations

from typing import Any

from chime_actors.actors.lane_records import LANE_CODEC
from chime_actors.actors.wiring import persister_adapters
from chime_actors.persister.core import PersisterCore
from chime_actors.runtime.lanes import Router
from chime_actors.runtime.loop_actor import ActorCore, LoopActor
from chime_actors.runtime.messages import Configure


class PersisterActor(LoopActor):
    """Thin Thespian shell around a ``PersisterCore``."""

    lane_codec = LANE_CODEC

    def make_core(self, configure: Configure, router: Router, supervisor: Any) -> ActorCore:
        adapters = persister_adapters(configure.config)
        return PersisterCore(
            configure.actor_id,
            configure.config,
            router.post,
            store=adapters.store,
            ids=adapters.ids,
            wait_writable=router.wait_writable,
        )
