"""The Redis key layout of chime_actors.persister.redis_ids: pure functions."""

from __future__ import annotations

import itertools

from chime_actors.persister.redis_ids import cmid_key, escape_part, seq_key


def test_colons_in_ids_never_make_two_sends_share_a_claim() -> None:
    # User "b:c" in channel "a" and user "c" in channel "a:b": the same key
    # ``chime:cmid:a:b:c:m-1`` before the escape.
    assert cmid_key("a", "b:c", "m-1") != cmid_key("a:b", "c", "m-1")
    assert cmid_key("a", "b:c", "m-1") == "chime:cmid:a:b%3Ac:m-1"
    assert cmid_key("a:b", "c", "m-1") == "chime:cmid:a%3Ab:c:m-1"


def test_every_triple_of_tricky_parts_has_a_key_of_its_own() -> None:
    # Exhaustive over short parts made of the separator, the escape character
    # and what an escape is spelled with: no two triples share a key.
    alphabet = ("a", ":", "%", "3", "A")
    parts = ["".join(p) for n in range(3) for p in itertools.product(alphabet, repeat=n)]
    keys = {cmid_key(*triple) for triple in itertools.product(parts, repeat=3)}
    assert len(keys) == len(parts) ** 3


def test_the_escape_is_reversible_and_leaves_plain_ids_alone() -> None:
    for part in ("general", "alice@example.com", "c-1", "a.b_c-d", ""):
        assert escape_part(part) == part
    for part in ("a:b", "50%", "%3A", "%25", "::%%"):
        escaped = escape_part(part)
        assert ":" not in escaped
        assert escaped.replace("%3A", ":").replace("%25", "%") == part


def test_plain_ids_keep_the_keys_of_earlier_versions() -> None:
    # Old and new hosts share these keys during a rolling upgrade.
    assert cmid_key("general", "alice", "c-1") == "chime:cmid:general:alice:c-1"
    assert seq_key("general") == "chime:seq:general"


def test_seq_keys_are_the_channel_id_after_a_prefix() -> None:
    # Not escaped (see seq_key): the id is the whole rest of the key, which is
    # enough for distinct channels to have distinct counters.
    assert seq_key("a:b") == "chime:seq:a:b"
    assert seq_key("a:b") != seq_key("a") != seq_key("b")
    assert not seq_key("cmid:a").startswith("chime:cmid:")
