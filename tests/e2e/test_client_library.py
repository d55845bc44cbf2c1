"""``chime_actors.client`` against a real ``chime serve``.

Send, ack and receive; subscribe, history; a connection cut while acks are in
flight; a server restart on the same port. The network failures are made on cue
by a loopback relay (:mod:`tests.e2e.tcp_proxy`), so each scenario is
deterministic: no test depends on which of two clients reconnects first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from chime_actors.client import (
    Ack,
    Attachment,
    Backoff,
    ChimeClient,
    ClientError,
    ClientOptions,
    Connected,
    ConnectFailed,
    Disconnected,
    Event,
    GapFilled,
    Message,
    RequestFailed,
    Resumed,
    ResumeFailed,
    upload,
)
from chime_actors.config import AttachmentsConfig
from chime_actors.errors import ConnectionLost
from tests.e2e import attachment_http
from tests.e2e.conftest import TIGHT_MAX_RESUME, fresh, run
from tests.e2e.load import kill_leftovers, rest_history
from tests.e2e.tcp_proxy import TcpProxy
from tests.support.polling import until
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

FAST = ClientOptions(backoff=Backoff(initial_s=0.05, max_s=0.5), request_timeout_s=20)
WAIT_S = 30.0


class Recorder:
    """A ``ChimeClient`` whose events are collected by a task, as an application would."""

    def __init__(self, client: ChimeClient) -> None:
        self.client = client
        self.events: list[Event] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Recorder:
        await self.client.connect()
        self._task = asyncio.ensure_future(self._collect())
        return self

    async def _collect(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    async def stop(self) -> None:
        await self.client.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def ids(self, channel: str) -> list[int]:
        return [
            int(e.message.message_id) for e in self.of(Message) if e.message.channel_id == channel
        ]


@contextlib.asynccontextmanager
async def recorders(*clients: ChimeClient) -> AsyncIterator[list[Recorder]]:
    started: list[Recorder] = []
    try:
        for client in clients:
            started.append(await Recorder(client).start())
        yield started
    finally:
        for recorder in started:
            await recorder.stop()


def own_history(server: ServerProcess, channel: str, user: str) -> list[str | None]:
    """clientMsgIds of ``user``'s stored messages in ``channel``, in order."""
    return [m["clientMsgId"] for m in rest_history(server, channel) if m["userId"] == user]


def test_send_is_acked_and_received_by_everyone(server: ServerProcess) -> None:
    channel = fresh("lib")

    async def scenario() -> None:
        alice = ChimeClient(server.url, user_id="alice", channels=[channel], options=FAST)
        bob = ChimeClient(server.url, user_id="bob", channels=[channel], options=FAST)
        async with recorders(alice, bob) as (a, b):
            assert alice.user_id == "alice" and alice.is_connected
            ack = await alice.send(channel, "hello", metadata={"lang": "en"})
            assert isinstance(ack, Ack) and ack.channel_id == channel
            assert alice.pending == ()
            await until(lambda: b.ids(channel) and a.ids(channel), WAIT_S, "the message")
            (got,) = b.of(Message)
            assert got.message.message_id == ack.message_id
            assert (got.message.user_id, got.message.content) == ("alice", "hello")
            assert got.message.metadata_dict == {"lang": "en"}
            assert not got.replayed
            assert alice.last_seen == {channel: ack.message_id}
            page = await bob.history(channel, limit=10)
            assert [m.message_id for m in page.messages] == [ack.message_id]
            connected = a.of(Connected)
            assert len(connected) == 1 and not connected[0].reconnect

    run(scenario())


def test_subscribe_unsubscribe_and_requests_the_server_lacks(server: ServerProcess) -> None:
    first, second = fresh("lib"), fresh("lib")

    async def scenario() -> None:
        alice = ChimeClient(server.url, user_id="alice", channels=[first], options=FAST)
        bob = ChimeClient(server.url, user_id="bob", channels=[first], options=FAST)
        async with recorders(alice, bob) as (a, _):
            subscribed = await alice.subscribe([second])
            assert subscribed is not None and second in subscribed.channels
            assert alice.channels == (first, second)
            await bob.subscribe([second])
            ack = await bob.send(second, "in the second channel")
            await until(lambda: a.ids(second) == [int(ack.message_id)], WAIT_S, "second")
            unsubscribed = await alice.unsubscribe([first])
            assert unsubscribed is not None and first in unsubscribed.channels
            assert alice.channels == (second,)
            # Presence and edits are parsed by the server but may not be built yet:
            # the client reports the server's answer either way.
            try:
                presence = await alice.presence(second)
            except RequestFailed as exc:
                assert exc.code == "bad_request" and "not supported" in exc.message
            else:
                assert "alice" in presence.online
            mine = await alice.send(second, "typo")
            try:
                edited = await alice.edit(second, mine.message_id, "fixed")
            except RequestFailed as exc:
                assert exc.code == "bad_request" and "not supported" in exc.message
            else:
                assert edited.message.content == "fixed"

    run(scenario())


def test_acks_lost_with_the_connection_are_resent_and_stored_once(
    server: ServerProcess,
) -> None:
    """The server stores three sends but their acks never arrive; the connection
    drops; after the reconnect the client resends them with the same clientMsgIds
    and is acked with the original ids; nothing is stored twice, nobody sees a
    message twice."""
    channel = fresh("lib")

    async def scenario() -> None:
        proxy = await TcpProxy(server.chat_port).start()
        try:
            sender = ChimeClient(proxy.url, user_id="sender", channels=[channel], options=FAST)
            watcher = ChimeClient(server.url, user_id="watcher", channels=[channel], options=FAST)
            async with recorders(sender, watcher) as (s, w):
                await sender.send(channel, "before")
                # Nothing in flight to the sender when replies start to be dropped
                # (half a frame dropped would break the stream, not lose an ack).
                await until(lambda: s.ids(channel) == [1], WAIT_S, "the sender's own copy")
                proxy.drop_replies = True
                sent = [sender.send_nowait(channel, f"lost ack {n}") for n in range(3)]
                # Stored (the watcher has them) though the sender heard nothing.
                await until(lambda: len(w.ids(channel)) == 4, WAIT_S, "the watcher's copies")
                assert len(sender.pending) == 3
                proxy.drop_replies = False
                proxy.cut()
                await until(lambda: not sender.pending, WAIT_S, "the resent sends' acks")
                acks = {a.client_msg_id: a.message_id for a in s.of(Ack)}
                stored = {m.message.client_msg_id: m.message.message_id for m in w.of(Message)}
                for pending in sent:
                    assert acks[pending.client_msg_id] == stored[pending.client_msg_id]
                assert s.of(Disconnected) and s.of(Connected)[-1].reconnect
                # The sender's resume replays its own three messages, once each.
                await until(lambda: s.ids(channel) == [1, 2, 3, 4], WAIT_S, "the replay")
                assert w.ids(channel) == [1, 2, 3, 4]
            history = await asyncio.get_running_loop().run_in_executor(
                None, own_history, server, channel, "sender"
            )
            assert len(history) == 4 and len(set(history)) == 4
        finally:
            await proxy.close()

    run(scenario())


def test_a_server_restart_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Stop the server while a send is pending and a watcher is away; start it again
    on the same port and data. The pending send is resent and stored once; the
    watcher resumes and gets every message it missed, then live ones, each once."""
    channel = fresh("restart")
    workdir = tmp_path / "server"

    with contextlib.ExitStack() as stack:
        first = stack.enter_context(running_server(workdir))
        ports = {"chat.port": first.chat_port, "api.port": first.api_port}
        servers = [first]

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            proxy = await TcpProxy(first.chat_port).start()
            try:
                sender = ChimeClient(first.url, user_id="s", channels=[channel], options=FAST)
                watcher = ChimeClient(proxy.url, user_id="w", channels=[channel], options=FAST)
                async with recorders(sender, watcher) as (s, w):
                    for n in range(5):
                        await sender.send(channel, f"before {n}")
                    await until(lambda: w.ids(channel) == [1, 2, 3, 4, 5], WAIT_S, "1..5")
                    proxy.hold()  # the watcher stays away until released
                    assert await loop.run_in_executor(None, first.stop) == 0
                    while_down = [sender.send_nowait(channel, f"while down {n}") for n in range(3)]
                    await until(lambda: s.of(Disconnected), WAIT_S, "the sender to notice")
                    second = await loop.run_in_executor(
                        None, stack.enter_context, running_server(workdir, ports)
                    )
                    servers.append(second)
                    await until(lambda: not sender.pending, WAIT_S, "the resent sends")
                    for n in range(4):
                        await sender.send(channel, f"after {n}")
                    proxy.release()
                    await until(lambda: w.of(Resumed), WAIT_S, "the watcher to resume")
                    assert w.of(Resumed)[-1].count == 7
                    for n in range(2):
                        await sender.send(channel, f"live {n}")
                    await until(lambda: len(w.ids(channel)) >= 14, WAIT_S, "the live ones")
                    assert w.ids(channel) == list(range(1, 15))
                    replayed = [e.replayed for e in w.of(Message)]
                    assert replayed == [False] * 5 + [True] * 7 + [False] * 2
                    acked = {a.client_msg_id for a in s.of(Ack)}
                    assert {p.client_msg_id for p in while_down} <= acked
                history = await loop.run_in_executor(None, own_history, servers[-1], channel, "s")
                assert len(history) == 14 and len(set(history)) == 14
            finally:
                await proxy.close()

        run(scenario(), timeout=180)
    kill_leftovers(servers)


SECRET = "client-e2e-secret-" + "x" * 32


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": SECRET}
    with running_server(tmp_path_factory.mktemp("jwt"), overrides) as srv:
        yield srv


def test_a_token_connects_and_a_refused_one_is_not_retried(jwt_server: ServerProcess) -> None:
    def token(secret: str) -> str:
        return jwt.encode({"sub": "carol", "exp": int(time.time()) + 300}, secret, "HS256")

    async def scenario() -> None:
        client = ChimeClient(jwt_server.url, token=token(SECRET), channels=["general"])
        async with client:
            assert client.user_id == "carol"
            await client.send("general", "signed in")
        refused = ChimeClient(jwt_server.url, token=token("y" * 40), channels=["general"])
        with pytest.raises(ConnectFailed) as caught:
            await refused.connect()
        # Refused for good (close 4001), not retried until the connect timeout
        # (which would raise ConnectFailed without a code).
        assert caught.value.code == "unauthorized"
        assert refused.closed

    run(scenario())


def test_a_gap_too_large_to_replay_is_paged_from_history(tight_server: ServerProcess) -> None:
    """Past ``chat.max_resume_messages`` the server answers ``resume_failed``; the
    client pages the gap from history itself, then delivers the live messages:
    every id once, in order."""
    channel = fresh("gap")
    missed = TIGHT_MAX_RESUME * 3

    async def scenario() -> None:
        proxy = await TcpProxy(tight_server.chat_port).start()
        try:
            sender = ChimeClient(tight_server.url, user_id="s", channels=[channel], options=FAST)
            watcher = ChimeClient(proxy.url, user_id="w", channels=[channel], options=FAST)
            async with recorders(sender, watcher) as (_, w):
                await sender.send(channel, "first")
                await until(lambda: w.ids(channel) == [1], WAIT_S, "the first message")
                proxy.hold()
                for n in range(missed):
                    await sender.send(channel, f"missed {n}")
                proxy.release()
                await until(lambda: w.of(GapFilled), WAIT_S, "the gap to be paged")
                assert w.of(ResumeFailed)[-1].reason == "too_many"
                assert w.of(GapFilled)[-1] == GapFilled(channel, missed, complete=True)
                await sender.send(channel, "live")
                await until(lambda: len(w.ids(channel)) >= missed + 2, WAIT_S, "the live one")
                assert w.ids(channel) == list(range(1, missed + 3))
        finally:
            await proxy.close()

    run(scenario())


def test_a_malformed_connect_is_refused_at_once(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = ChimeClient(server.url, user_id="not a valid id!", channels=["general"])
        with pytest.raises(ConnectFailed) as caught:
            await client.connect()
        # Refused, not retried until the connect timeout (that has no code).
        assert caught.value.code == "bad_request"
        assert client.closed

    run(scenario())


def listed(attachment: Attachment) -> Attachment:
    """An upload's record as a message lists it (messages carry no sha256)."""
    return dataclasses.replace(attachment, sha256=None)


def test_files_are_uploaded_sent_with_their_ids_and_received(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Alice uploads a file from disk (``ChimeClient.upload``: streamed, its name
    and type from the path) and bytes (``upload``), sends a message listing both
    ids; Bob receives it listing them, history lists them too, and the download
    route serves the exact bytes. Refusals come back in the server's words: an
    empty file (400), one over ``attachments.max_bytes`` (413, answered before the
    body is sent), a send listing another user's file; a client made without
    ``api_url`` says so, and a closed port is ``ConnectionLost``."""
    channel = fresh("lib")
    report = tmp_path / "report.csv"
    report.write_bytes(b"day,sent\nmon,3\n" * 500)
    picture = b"\x89PNG\r\n\x1a\n not really a picture"

    async def scenario() -> None:
        alice = ChimeClient(
            server.url, user_id="alice", channels=[channel], options=FAST, api_url=server.api
        )
        bob = ChimeClient(server.url, user_id="bob", channels=[channel], options=FAST)
        async with recorders(alice, bob) as (_, b):
            from_disk = await alice.upload(report)
            assert (from_disk.filename, from_disk.content_type) == ("report.csv", "text/csv")
            assert from_disk.size == report.stat().st_size
            assert from_disk.sha256 == hashlib.sha256(report.read_bytes()).hexdigest()
            in_memory = await upload(
                server.api, picture, "pic.png", "image/png", user_id="alice", timeout_s=20
            )
            assert (in_memory.content_type, in_memory.size) == ("image/png", len(picture))

            ids = [from_disk.attachment_id, in_memory.attachment_id]
            ack = await alice.send(channel, "this week", attachments=ids)
            got = (await until(lambda: b.of(Message), WAIT_S, "the message at bob"))[0].message
            assert got.message_id == ack.message_id
            assert got.attachments == (listed(from_disk), listed(in_memory))
            (stored,) = (await bob.history(channel)).messages
            assert stored.attachments == got.attachments
            served = attachment_http.download(server.api_port, from_disk.attachment_id)
            assert (served.status, served.body) == (200, report.read_bytes())

            with pytest.raises(RequestFailed) as empty:
                await alice.upload(b"", "empty.txt")
            assert (empty.value.code, empty.value.message) == ("bad_request", "the file is empty")
            # A sparse file: its size says it is over the limit, and no byte is sent.
            limit = AttachmentsConfig().max_bytes
            big = tmp_path / "big.bin"
            with big.open("wb") as f:
                f.truncate(limit + 1)
            with pytest.raises(RequestFailed) as too_large:
                await alice.upload(big)
            assert too_large.value.code == "too_large"
            assert too_large.value.message == (
                f"the file is larger than attachments.max_bytes ({limit} bytes)"
            )
            with pytest.raises(RequestFailed) as foreign:
                await bob.send(channel, "mine now", attachments=[from_disk.attachment_id])
            assert foreign.value.code == "bad_request"
            with pytest.raises(ClientError, match="api_url"):
                await bob.upload(report)
            with pytest.raises(ClientError, match="filename"):
                await alice.upload(b"no name")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with pytest.raises(ConnectionLost):
            await upload(closed, report, user_id="alice")

    run(scenario())


def test_an_upload_with_a_token_is_the_token_subjects(jwt_server: ServerProcess) -> None:
    """In jwt mode ``upload`` sends the client's token: the file is its subject's,
    who may send it; without a token the server refuses the upload (401)."""
    token = jwt.encode({"sub": "dora", "exp": int(time.time()) + 300}, SECRET, "HS256")

    async def scenario() -> None:
        client = ChimeClient(
            jwt_server.url, token=token, channels=["general"], api_url=jwt_server.api
        )
        async with client:
            attachment = await client.upload(b"signed", "signed.txt")
            ack = await client.send(
                "general", "with a token", attachments=[attachment.attachment_id]
            )
            page = await client.history("general", limit=100)
            sent = next(m for m in page.messages if m.message_id == ack.message_id)
            assert sent.attachments == (listed(attachment),)
        with pytest.raises(RequestFailed) as anonymous:
            await upload(jwt_server.api, b"anonymous", "a.txt")
        assert anonymous.value.code == "unauthorized"

    run(scenario())
