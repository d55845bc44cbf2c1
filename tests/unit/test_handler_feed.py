"""chime_actors.handlers.redis_feed: which topics a handler's globs subscribe to."""

from __future__ import annotations

import fnmatch

from chime_actors.handlers.redis_feed import feed_patterns


def test_feed_patterns_are_the_globs_where_redis_reads_them_alike() -> None:
    assert feed_patterns(["deploys", "public-*", "room-?"]) == [
        "channel:deploys",
        "channel:public-*",
        "channel:room-?",
    ]
    assert feed_patterns(["*", "a"]) == ["channel:*"]


def test_a_bracket_glob_subscribes_wider_never_narrower() -> None:
    # Redis spells fnmatch's [!x] as [^x]: cut at the bracket, the worker narrows.
    (pattern,) = feed_patterns(["team-[!x]y"])
    assert pattern == "channel:team-*"
    for channel in ("team-ay", "team-xy", "team-"):
        if fnmatch.fnmatchcase(channel, "team-[!x]y"):
            assert fnmatch.fnmatchcase("channel:" + channel, pattern)
