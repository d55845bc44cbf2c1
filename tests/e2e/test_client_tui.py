"""``chime client`` as a person uses it: driven in tmux, read off the screen.

A real terminal (tmux ``send-keys`` to type, ``capture-pane`` to read), a real
server, and a loopback relay (:mod:`tests.e2e.tcp_proxy`) between the two so
that a send can be held "pending" on cue: the relay drops what the server sends
back (the message is stored, its ack never arrives) until the test cuts the
connection; the client then reconnects and resends, and the ack arrives.

tmux runs on a socket of its own (``-L``), killed at the end: other people's
tmux sessions on the machine are never touched.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chime_actors.client import ChimeClient, Message
from tests.e2e.conftest import fresh, http_request, run
from tests.e2e.load import rest_history
from tests.e2e.tcp_proxy import TcpProxy
from tests.support.polling import until, wait_until
from tests.support.servers import ServerProcess, restart_overrides, running_server

pytestmark = pytest.mark.e2e

CHIME = str(Path(sys.executable).with_name("chime"))
WAIT_S = 30.0


class Tmux:
    """One tmux server (its own socket) running one session."""

    def __init__(self) -> None:
        self.socket = f"chime-test-{uuid.uuid4().hex[:8]}"
        self.session = "client"

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=10,
        )

    def start(self, command: list[str], width: int = 120, height: int = 40) -> None:
        self._tmux(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
            shlex.join(command),
        )  # fmt: skip

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", self.session, "-l", text)
        if enter:
            self._tmux("send-keys", "-t", self.session, "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def screen(self) -> list[str]:
        result = self._tmux("capture-pane", "-p", "-t", self.session, check=False)
        return [line.rstrip() for line in result.stdout.splitlines()]

    def text(self) -> str:
        return "\n".join(self.screen())

    def alive(self) -> bool:
        return self._tmux("has-session", "-t", self.session, check=False).returncode == 0

    def kill(self) -> None:
        self._tmux("kill-server", check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing: install Debian's tmux package")
        pytest.skip("tmux is not installed")
    terminal = Tmux()
    try:
        yield terminal
    finally:
        terminal.kill()


def input_row(screen: list[str], channel: str) -> int | None:
    """The index of the input line (the prompt), if it is on the screen now.

    Not while the client is printing a line: prompt_toolkit erases the prompt,
    prints above it and draws it again, and a capture can fall in between.
    """
    rows = [i for i, line in enumerate(screen) if line.startswith(f"#{channel}>")]
    return rows[-1] if rows else None


def row_of(screen: list[str], pattern: str) -> int | None:
    rows = [i for i, line in enumerate(screen) if re.search(pattern, line)]
    return rows[-1] if rows else None


def test_the_terminal_client_shows_pending_acked_and_live_messages(
    server: ServerProcess, tmux: Tmux
) -> None:
    channel, side = fresh("tui"), fresh("side")

    async def scenario() -> None:
        proxy = await TcpProxy(server.chat_port).start()
        bob = ChimeClient(server.url, user_id="bob", channels=[channel])
        bob_seen: list[str] = []

        async def collect() -> None:
            async for event in bob.events():
                if isinstance(event, Message):
                    bob_seen.append(event.message.content)

        collector: asyncio.Future[None] | None = None
        try:
            tmux.start(
                [CHIME, "client", "--url", proxy.url, "--user", "alice", "--channel", channel]
            )
            await until(lambda: "connected as alice" in tmux.text(), WAIT_S, "the client")
            await bob.connect()
            collector = asyncio.ensure_future(collect())

            # Half a line typed; a message from bob prints above it, the input stays.
            tmux.type("half typed", enter=False)
            await until(lambda: "half typed" in tmux.text(), WAIT_S, "the typing")
            await bob.send(channel, "hi from bob")

            def bob_above_the_input(screen: list[str]) -> bool:
                bob_row = row_of(screen, r"^\d\d:\d\d bob: hi from bob #1$")
                typing = input_row(screen, channel)
                return (
                    bob_row is not None
                    and typing is not None
                    and bob_row < typing
                    and screen[typing] == f"#{channel}> half typed"
                )

            await until(lambda: bob_above_the_input(tmux.screen()), WAIT_S, "bob's line above")
            tmux.keys("C-u")

            # The server stores alice's line but its ack is lost: shown pending.
            proxy.drop_replies = True
            tmux.type("hello from alice")
            await until(lambda: "hello from alice" in bob_seen, WAIT_S, "it to be stored")
            await until(
                lambda: '1 sending: "hello from alice" …' in tmux.text(), WAIT_S, "pending mark"
            )
            assert row_of(tmux.screen(), r"alice: hello from alice") is None
            # The connection drops; the client reconnects, resends, is acked: ✓ and the id.
            proxy.drop_replies = False
            proxy.cut()
            await until(
                lambda: row_of(tmux.screen(), r"^\d\d:\d\d alice: hello from alice ✓ #2$"),
                WAIT_S,
                "the acked line",
            )
            await until(
                lambda: input_row(tmux.screen(), channel) and "sending" not in tmux.text(),
                WAIT_S,
                "no pending mark",
            )
            screen = tmux.screen()
            assert sum("hello from alice" in line for line in screen) == 1, "\n".join(screen)
            assert row_of(screen, "reconnected") is not None

            # /join switches the input line to the new channel; /who answers either way.
            tmux.type(f"/join {side}")
            await until(
                lambda: any(line.startswith(f"#{side}>") for line in tmux.screen()),
                WAIT_S,
                "the new prompt",
            )
            await until(lambda: row_of(tmux.screen(), f"joined #{side}"), WAIT_S, "joined")
            tmux.type("/who")
            await until(
                lambda: row_of(tmux.screen(), r"^-- (/who: this server does not support presence"
                               r" yet|online in #)"),
                WAIT_S,
                "the /who answer",
            )  # fmt: skip

            tmux.type("/quit")
            await until(lambda: not tmux.alive(), WAIT_S, "the client to exit")
        finally:
            await bob.close()
            if collector is not None:
                await asyncio.wait_for(collector, 10)
            await proxy.close()

    run(scenario())
    history = rest_history(server, channel)
    assert [m["content"] for m in history] == ["hi from bob", "hello from alice"]


def test_piped_lines_are_sent_and_stored(server: ServerProcess) -> None:
    channel = fresh("pipe")
    result = subprocess.run(
        [CHIME, "client", "--url", server.url, "--user", "script", "--channel", channel],
        input="one\ntwo\n/history 5\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\d\d:\d\d script: one ✓ #1$", result.stdout, re.M), result.stdout
    assert re.search(r"^\d\d:\d\d script: two ✓ #2$", result.stdout, re.M), result.stdout
    assert "-- history of #" in result.stdout
    assert [m["content"] for m in rest_history(server, channel)] == ["one", "two"]


# Down for a few seconds, then the client's backoff may wait up to 30 s
# (``Backoff.max_s``) before its next try.
FULL_RESTART_TIMEOUT_S = 90.0


def post_as(server: ServerProcess, user: str, channel: str, content: str) -> None:
    """Send ``content`` over REST as ``user`` (insecure mode) and check it was stored."""
    status, body = http_request(
        "POST",
        f"{server.api}/v1/channels/{channel}/messages",
        headers={"X-Chime-User": user},
        body={"content": content, "clientMsgId": f"py-{uuid.uuid4().hex[:12]}"},
    )
    assert status == 201, body


def test_the_terminal_client_survives_a_full_server_restart(tmp_path: Path, tmux: Tmux) -> None:
    """SIGTERM the whole ``chime serve`` under a running ``chime client`` and start
    it again on the same ports with the same data: a line typed while the server
    is down waits as pending, is stored once after the restart and shown acked
    once; what others send before and after is shown once each, in order."""
    channel = fresh("tui")
    overrides = restart_overrides(tmp_path)
    url = f"ws://127.0.0.1:{overrides['chat.port']}/"

    def lines(pattern: str) -> list[str]:
        return [line for line in tmux.screen() if re.search(pattern, line)]

    with running_server(tmp_path / "run1", overrides) as server:
        tmux.start([CHIME, "client", "--url", url, "--user", "alice", "--channel", channel])
        wait_until(lambda: "connected as alice" in tmux.text(), WAIT_S, what="the client")
        post_as(server, "bob", channel, "bob before")
        wait_until(lambda: lines(r"^\d\d:\d\d bob: bob before #1$"), WAIT_S, what="bob's line")
        tmux.type("alice before")
        wait_until(
            lambda: lines(r"^\d\d:\d\d alice: alice before ✓ #2$"), WAIT_S, what="alice's line"
        )
        assert server.stop() == 0  # SIGTERM; it has exited
    wait_until(lambda: lines("connection lost"), WAIT_S, what="the client to notice")
    tmux.type("while the server is down")
    wait_until(
        lambda: '1 sending: "while the server is down" …' in tmux.text(),
        WAIT_S,
        what="the pending mark",
    )
    with running_server(tmp_path / "run2", overrides) as server:
        wait_until(
            lambda: lines(r"^\d\d:\d\d alice: while the server is down ✓ #3$"),
            FULL_RESTART_TIMEOUT_S,
            what="the pending line stored after the restart",
        )
        assert lines("reconnected")
        post_as(server, "bob", channel, "bob after")
        wait_until(lambda: lines(r"^\d\d:\d\d bob: bob after #4$"), WAIT_S, what="bob again")
        wait_until(lambda: "sending" not in tmux.text(), WAIT_S, what="no pending mark")
        contents = ["bob before", "alice before", "while the server is down", "bob after"]
        for content in contents:
            assert len(lines(f": {content}( ✓)? #")) == 1, tmux.text()
        assert [m["content"] for m in rest_history(server, channel)] == contents
        tmux.type("/quit")
        wait_until(lambda: not tmux.alive(), WAIT_S, what="the client to exit")
