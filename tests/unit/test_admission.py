"""Admission before the upgrade: duplicate headers, origins, the connection cap, connect rate."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from msgspec.structs import replace

from chime_actors.config import Config, load_config
from chime_actors.gateway.admission import Admission
from tests.support.clock import FakeClock


def config(**chat: object) -> Config:
    base = load_config(None, env={})
    limits = replace(base.limits, connects_per_ip_per_10s=3)
    return replace(base, chat=replace(base.chat, **chat), limits=limits)  # type: ignore[arg-type]


def headers(**values: list[str]) -> Callable[[str], Iterable[str]]:
    def get_all(name: str) -> Iterable[str]:
        return values.get(name, [])

    return get_all


def admission(cfg: Config | None = None, open_now: int = 0) -> tuple[Admission, FakeClock]:
    clock = FakeClock(1000.0)
    return Admission(cfg or config(), open_connections=lambda: open_now, clock=clock), clock


def test_no_origin_is_accepted() -> None:
    gate, _ = admission()
    assert gate.check("10.0.0.1", headers()) is None


@pytest.mark.parametrize(
    "origin",
    ["http://127.0.0.1:3142", "http://localhost:8080", "http://[::1]:3143", "HTTP://LOCALHOST"],
)
def test_the_loopback_hosts_own_pages_are_accepted(origin: str) -> None:
    gate, _ = admission()
    assert gate.check("127.0.0.1", headers(Origin=[origin])) is None


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example", "file://"]
)
def test_a_foreign_origin_is_refused_with_403(origin: str) -> None:
    gate, _ = admission()
    refusal = gate.check("127.0.0.1", headers(Origin=[origin]))
    assert refusal is not None and refusal.status == 403


def test_configured_origins_are_accepted_exactly() -> None:
    gate, _ = admission(config(allowed_origins=("https://chat.example.com",)))
    ok = gate.check("1.2.3.4", headers(Origin=["https://chat.example.com"]))
    other = gate.check("1.2.3.4", headers(Origin=["https://chat.example.com:444"]))
    assert ok is None
    assert other is not None and other.status == 403


def test_a_wildcard_bind_needs_configured_origins() -> None:
    gate, _ = admission(config(host="0.0.0.0"))
    refusal = gate.check("1.2.3.4", headers(Origin=["http://0.0.0.0:3143"]))
    assert refusal is not None and refusal.status == 403


@pytest.mark.parametrize("name", ["Authorization", "Origin"])
def test_two_headers_of_a_kind_are_a_clear_400(name: str) -> None:
    gate, _ = admission()
    refusal = gate.check("127.0.0.1", headers(**{name: ["Bearer a", "Bearer b"]}))
    assert refusal is not None and refusal.status == 400 and name in refusal.reason


def test_a_full_server_answers_503() -> None:
    gate, _ = admission(config(max_connections=5), open_now=5)
    refusal = gate.check("127.0.0.1", headers())
    assert refusal is not None and refusal.status == 503 and refusal.retry_after_s


def test_connects_per_address_are_limited_and_refill() -> None:
    gate, clock = admission()
    assert [gate.check("10.0.0.1", headers()) for _ in range(3)] == [None] * 3
    refusal = gate.check("10.0.0.1", headers())
    assert refusal is not None and refusal.status == 429
    assert refusal.retry_after_s is not None and 1 <= refusal.retry_after_s <= 4
    # Another address is not affected; after a third of the window one token is back.
    assert gate.check("10.0.0.2", headers()) is None
    clock.now += 10 / 3 + 0.01
    assert gate.check("10.0.0.1", headers()) is None
    assert gate.check("10.0.0.1", headers()) is not None
