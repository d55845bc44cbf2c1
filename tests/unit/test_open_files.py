"""The open-file limit is raised to what the connection cap needs, never lowered."""

from __future__ import annotations

import resource

from msgspec.structs import replace

from chime_actors.config import load_config
from chime_actors.open_files import RESERVE_FDS, needed_fds, raise_open_file_limit


class FakeLimits:
    """The two ``resource`` calls, over one (soft, hard) pair."""

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        soft, hard = limits
        if hard != self.limits[1] or (hard != resource.RLIM_INFINITY and soft > hard):
            raise ValueError("not allowed")
        self.limits = limits


def test_needed_is_a_gateways_share_plus_a_reserve() -> None:
    config = load_config(None, env={})
    config = replace(config, workers=2, chat=replace(config.chat, max_connections=10001))
    assert needed_fds(config) == 5001 + RESERVE_FDS


def test_the_soft_limit_is_raised_to_the_need() -> None:
    fake = FakeLimits(1024, 1_000_000)
    outcome = raise_open_file_limit(30_000, get=fake.get, set_=fake.set)
    assert fake.limits == (30_000, 1_000_000)
    assert outcome.sufficient and outcome.soft == 30_000


def test_a_low_hard_limit_is_reported_not_exceeded() -> None:
    fake = FakeLimits(1024, 4096)
    outcome = raise_open_file_limit(30_000, get=fake.get, set_=fake.set)
    assert fake.limits == (4096, 4096)
    assert not outcome.sufficient
    assert (outcome.needed, outcome.soft, outcome.hard) == (30_000, 4096, 4096)


def test_a_higher_limit_is_never_lowered() -> None:
    fake = FakeLimits(65_536, 65_536)
    outcome = raise_open_file_limit(2_000, get=fake.get, set_=fake.set)
    assert fake.limits == (65_536, 65_536) and outcome.sufficient


def test_an_unlimited_hard_limit_takes_the_need() -> None:
    fake = FakeLimits(1024, resource.RLIM_INFINITY)
    raise_open_file_limit(9_000, get=fake.get, set_=fake.set)
    assert fake.limits[0] == 9_000
