"""Tests for chime_actors.records.server_client_msg_id: keys that never repeat."""

from __future__ import annotations

import os

from chime_actors.records import SERVER_CLIENT_MSG_ID_PREFIX, server_client_msg_id


def test_keys_are_reserved_and_never_repeat_in_a_process() -> None:
    keys = [server_client_msg_id() for _ in range(10_000)]
    assert len(set(keys)) == len(keys)
    assert all(key.startswith(SERVER_CLIENT_MSG_ID_PREFIX) for key in keys)


def test_a_forked_process_makes_keys_of_its_own() -> None:
    # Gateways may be forked from one parent: with a shared prefix and counter
    # two of them would make the same keys, and one's send would be deduped
    # as a repeat of the other's.
    before = server_client_msg_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next key and leave at once
        os.write(write_end, server_client_msg_id().encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        in_child = pipe.read()
    os.waitpid(pid, 0)
    after = server_client_msg_id()
    prefix = before.rsplit("-", 1)[0]
    assert after.startswith(prefix + "-")
    assert not in_child.startswith(prefix + "-")
    assert in_child not in (before, after)
