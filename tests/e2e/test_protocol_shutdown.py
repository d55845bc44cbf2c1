"""PROTOCOL.md: "Server shutdown closes with 1001 after draining acks already owed"."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import Client
from tests.e2e.conftest import clients, expect_close, fresh, http_get, run, send_message
from tests.support.servers import running_server

pytestmark = pytest.mark.e2e


def _all_history(api: str, channel: str) -> list[dict[str, Any]]:
    """Every stored message of ``channel``, paging backwards over REST."""
    messages: list[dict[str, Any]] = []
    more = True
    while more:
        before = f"&before={messages[0]['messageId']}" if messages else ""
        status, body = http_get(f"{api}/v1/channels/{channel}/messages?limit=100{before}")
        assert status == 200, body
        messages = body["messages"] + messages
        more = body["hasMore"]
    return messages


def test_sigterm_closes_clients_1001_and_acked_messages_survive(tmp_path: Path) -> None:
    channel, flood = fresh(), fresh("flood")
    first = tmp_path / "first"
    acked: dict[str, set[str]] = {channel: set(), flood: set()}

    with running_server(first) as server:

        async def scenario() -> None:
            async with clients(server) as cs:
                # the writer floods a channel of its own: the readers must not be slow
                # consumers of the flood (that would close them with 1008)
                writer = await cs.connect("writer", [channel, flood])
                # enough sockets that both gateways hold some
                readers = [await cs.connect(f"reader{i}", [channel]) for i in range(10)]
                idle = await cs.raw()  # never completed its handshake
                await send_message(writer, channel, "before stop", "keep-1")
                everyone: list[Client] = [writer, *readers, idle]
                closing = [asyncio.create_task(expect_close(c, timeout=30)) for c in everyone]
                # sends keep coming while the signal arrives: acks owed then are drained
                sent = 0

                async def keep_sending() -> None:
                    nonlocal sent
                    with contextlib.suppress(ConnectionClosed):
                        while sent < 1000 and not closing[0].done():
                            await writer.send(
                                {
                                    "type": "send",
                                    "channelId": flood,
                                    "content": f"in flight {sent}",
                                    "clientMsgId": f"f-{sent}",
                                }
                            )
                            sent += 1
                            if sent == 20:
                                stopping.set()
                            await asyncio.sleep(0)

                stopping = asyncio.Event()
                sender = asyncio.create_task(keep_sending())
                await stopping.wait()
                status = await asyncio.to_thread(server.stop)
                codes = await asyncio.gather(*closing)
                await sender
                assert codes == [1001] * len(everyone), codes
                assert status == 0
                for f in writer.frames:
                    if f["type"] == "ack":
                        acked[f["channelId"]].add(f["messageId"])
                answers = [
                    (f["type"], f.get("code"), f.get("clientMsgId"))
                    for f in writer.frames
                    if f["type"] in ("ack", "error")
                    and (f.get("clientMsgId") or "").startswith("f-")
                ]
                assert answers, "not even the sends before the signal were answered"
                # no error but "unavailable"; the answered sends are a prefix of those sent
                assert all(code in (None, "unavailable") for _, code, _ in answers), answers
                assert sorted(int(c[2:]) for _, _, c in answers) == list(range(len(answers)))

        run(scenario(), timeout=90)
    assert server.stopped_status == 0

    # A new server on the same data finds every acked message.
    data = first / "data"
    overrides = {"data_dir": str(data), "storage.sqlite.path": str(data / "chime.db")}
    with running_server(tmp_path / "second", overrides=overrides) as again:
        stored = {c: _all_history(again.api, c) for c in (channel, flood)}
        for name, messages in stored.items():
            ids = [m["messageId"] for m in messages]
            assert acked[name] <= set(ids), sorted(acked[name] - set(ids))
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert [m["content"] for m in stored[channel]] == ["before stop"]
        last = stored[channel][-1]["messageId"]

        async def after_restart() -> None:
            async with clients(again) as cs:
                client = await cs.connect("writer", [channel])
                # idempotency outlives the restart (within its 10 minutes)
                retry = await send_message(client, channel, "before stop", "keep-1")
                assert retry["messageId"] == last
                ack = await send_message(client, channel, "after restart")
                assert ack["messageId"] > last, "ids continue after a restart"

        run(after_restart())
