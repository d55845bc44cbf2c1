"""The supervisor's decisions (actors.supervision): its children, the restart
backoff, when it gives up, and the Wiring it sends. Plain state on a fake clock."""

from __future__ import annotations

from chime_actors.actors.supervision import (
    FIRST_BACKOFF_S,
    INTENSITY,
    MAX_BACKOFF_S,
    STABLE_AFTER_S,
    STOP_ORDER,
    Child,
    Restarts,
    actor_ids,
    wiring_of,
)
from chime_actors.config import load_config
from chime_actors.gateway.local_supervisor import RestartPolicy
from chime_actors.runtime.messages import ActorId, ActorKind
from tests.support.clock import FakeClock

GATEWAY_1 = ActorId(ActorKind.GATEWAY, 1)
GATEWAY_2 = ActorId(ActorKind.GATEWAY, 2)
PERSISTER_1 = ActorId(ActorKind.PERSISTER, 1)
API = ActorId(ActorKind.API, 1)
BRIDGE = ActorId(ActorKind.REDIS_BRIDGE, 1)
HANDLER_1 = ActorId(ActorKind.HANDLER, 1)

WEBHOOK = {
    "name": "hook",
    "use": "webhook",
    "stage": "after_store",
    "options": {"url": "http://127.0.0.1:9/", "secret": "s"},
}
FILTER = {
    "name": "filter",
    "use": "word_filter",
    "stage": "before_store",
    "options": {"words": ["x"]},
}


# --- the children ---------------------------------------------------------------------


def test_the_children_are_persisters_gateways_then_the_api() -> None:
    config = load_config(env={}, overrides={"workers": 2, "persisters": 3})
    assert [str(a) for a in actor_ids(config)] == [
        "persister 1",
        "persister 2",
        "persister 3",
        "gateway 1",
        "gateway 2",
        "api",
    ]


def test_the_redis_bus_adds_the_bridge() -> None:
    config = load_config(env={}, overrides={"workers": 1, "persisters": 1, "bus.backend": "redis"})
    assert actor_ids(config) == [PERSISTER_1, GATEWAY_1, API, BRIDGE]


def test_each_after_store_handler_gets_an_actor_and_a_before_store_one_none() -> None:
    config = load_config(
        env={},
        overrides={
            "workers": 1,
            "persisters": 1,
            "handlers": [FILTER, WEBHOOK, {**WEBHOOK, "name": "hook2"}],
        },
    )
    # before_store handlers run inside the gateways (and the API).
    assert actor_ids(config) == [
        PERSISTER_1,
        GATEWAY_1,
        API,
        HANDLER_1,
        ActorId(ActorKind.HANDLER, 2),
    ]


# --- restarts -------------------------------------------------------------------------


def test_a_child_comes_back_at_once_then_after_a_doubling_backoff_up_to_the_cap() -> None:
    clock = FakeClock()
    restarts = Restarts(RestartPolicy(max_restarts=100, within_s=60.0), clock)
    child = Child(GATEWAY_1)
    delays = [restarts.after_exit(child, clock()) for _ in range(9)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert (FIRST_BACKOFF_S, MAX_BACKOFF_S) == (0.1, 5.0)  # supervisor.py's table


def test_the_backoff_resets_once_the_child_stayed_up_past_the_stable_time() -> None:
    clock = FakeClock(1000.0)
    restarts = Restarts(RestartPolicy(max_restarts=100, within_s=60.0), clock)
    child = Child(GATEWAY_1)
    for _ in range(4):
        restarts.after_exit(child, clock())
    assert child.backoff_s == 0.8
    child.ready_at = clock()  # restarted, and up for exactly the stable time: not yet
    clock.advance(STABLE_AFTER_S)
    assert restarts.after_exit(child, clock()) == 0.8
    child.ready_at = clock()
    clock.advance(STABLE_AFTER_S + 0.1)  # up longer than that: a fresh start
    assert restarts.after_exit(child, clock()) == 0.0
    child.ready_at = clock()  # back, and failing again soon: backing off again
    clock.advance(1.0)
    assert restarts.after_exit(child, clock()) == 0.1


def test_a_child_that_crash_loops_before_ready_keeps_backing_off_after_a_long_life() -> None:
    """A child up for an hour crashes: it comes back at once (it was stable). Its
    next incarnations crash before they are ever ready: each of those waits longer
    than the one before, because only a *ready* incarnation's life resets the delay."""
    clock = FakeClock(1000.0)
    restarts = Restarts(RestartPolicy(max_restarts=100, within_s=60.0), clock)
    child = Child(GATEWAY_1)
    child.ready_at = clock()
    clock.advance(3600.0)
    assert restarts.after_exit(child, clock()) == 0.0
    delays = []
    for _ in range(4):
        clock.advance(0.5)  # recreated, and dead again before its Ready
        delays.append(restarts.after_exit(child, clock()))
    assert delays == [0.1, 0.2, 0.4, 0.8]


def test_each_child_has_its_own_backoff() -> None:
    clock = FakeClock()
    restarts = Restarts(RestartPolicy(max_restarts=100, within_s=60.0), clock)
    flapping, other = Child(GATEWAY_1), Child(PERSISTER_1)
    for _ in range(5):
        restarts.after_exit(flapping, clock())
    assert restarts.after_exit(other, clock()) == 0.0  # its first failure: at once


def test_more_than_ten_restarts_in_sixty_seconds_gives_up() -> None:
    assert RestartPolicy(max_restarts=10, within_s=60.0) == INTENSITY
    clock = FakeClock()
    restarts = Restarts(INTENSITY, clock)
    children = [Child(GATEWAY_1), Child(GATEWAY_2), Child(PERSISTER_1)]
    for n in range(10):  # restarts of any children count together
        clock.advance(5.0)
        assert restarts.after_exit(children[n % 3], clock()) is not None
    assert restarts.counted == 10
    clock.advance(5.0)  # t=55: all ten within the window
    assert restarts.after_exit(children[0], clock()) is None


def test_restarts_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    restarts = Restarts(INTENSITY, clock)
    child = Child(GATEWAY_1)
    for _ in range(10):
        assert restarts.after_exit(child, clock()) is not None
    clock.advance(60.0)  # exactly 60 s old: still in the window
    assert restarts.after_exit(child, clock()) is None
    clock.advance(0.1)
    assert restarts.after_exit(child, clock()) is not None
    assert restarts.counted == 1


def test_a_handler_is_restarted_with_backoff_but_never_counted() -> None:
    clock = FakeClock()
    restarts = Restarts(RestartPolicy(max_restarts=2, within_s=60.0), clock)
    handler = Child(HANDLER_1)
    delays = [restarts.after_exit(handler, clock()) for _ in range(20)]
    assert None not in delays  # its crash loop never stops the chat
    assert delays[:4] == [0.0, 0.1, 0.2, 0.4] and delays[-1] == MAX_BACKOFF_S
    assert restarts.counted == 0
    gateway = Child(GATEWAY_1)  # ... nor uses up the budget of the others
    assert restarts.after_exit(gateway, clock()) is not None
    assert restarts.after_exit(gateway, clock()) is not None
    assert restarts.after_exit(gateway, clock()) is None


# --- the wiring -----------------------------------------------------------------------


def ready(actor_id: ActorId, address: str, lane: str | None = None) -> Child:
    return Child(actor_id, address=address, ready=True, lane=(address, lane) if lane else None)


def test_the_wiring_names_each_ready_peer_by_index_and_none_for_one_restarting() -> None:
    children = [
        ready(GATEWAY_2, "g2", lane="/run/g2.sock"),  # in any order
        Child(GATEWAY_1, address="g1-old"),  # exited, being restarted: not ready
        ready(ActorId(ActorKind.PERSISTER, 2), "p2"),
        ready(PERSISTER_1, "p1", lane="/run/p1.sock"),
        ready(API, "api"),
        ready(HANDLER_1, "h1"),
    ]
    wiring = wiring_of(children, 7)
    assert wiring.gateways == (None, "g2")
    assert wiring.persisters == ("p1", "p2")
    assert wiring.api == "api"
    assert wiring.redis_bridge is None  # the local bus: there is none
    assert wiring.handlers == ("h1",)
    assert wiring.generation == 7
    assert sorted(wiring.lanes) == [("g2", "/run/g2.sock"), ("p1", "/run/p1.sock")]


def test_a_restarting_api_or_bridge_is_wired_as_none_and_its_lane_left_out() -> None:
    children = [
        Child(API, address="api-old", lane=("api-old", "/run/api.sock")),
        Child(BRIDGE, address=None),
        ready(GATEWAY_1, "g1"),
    ]
    wiring = wiring_of(children, 1)
    assert (wiring.api, wiring.redis_bridge, wiring.lanes) == (None, None, ())
    assert wiring.persisters == () and wiring.handlers == ()


def test_every_kind_is_stopped_once_gateways_first_persisters_next_the_api_last() -> None:
    assert sorted(STOP_ORDER, key=lambda k: k.value) == sorted(ActorKind, key=lambda k: k.value)
    assert STOP_ORDER[:2] == (ActorKind.GATEWAY, ActorKind.PERSISTER)
    assert STOP_ORDER[-1] is ActorKind.API
