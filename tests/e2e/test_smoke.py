from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from tests.e2e.client import Client
from tests.support.servers import running_server


def test_send_ack_broadcast_history(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:

        async def scenario() -> None:
            alice = await Client.connect(server.url, "alice", ["general"])
            bob = await Client.connect(server.url, "bob", ["general"])
            await alice.send(
                {"type": "send", "channelId": "general", "content": "hi", "clientMsgId": "c-1"}
            )
            ack = await alice.expect("ack")
            got = await bob.messages(1)
            assert got[0]["messageId"] == ack["messageId"]
            assert got[0]["content"] == "hi"
            await alice.send({"type": "history", "requestId": "r1", "channelId": "general"})
            hist = await alice.expect("history")
            assert [m["content"] for m in hist["messages"]] == ["hi"]
            await alice.close()
            await bob.close()

        asyncio.run(scenario())
        with urllib.request.urlopen(f"{server.api}/v1/channels/general/messages", timeout=5) as r:
            body = json.loads(r.read())
        assert [m["content"] for m in body["messages"]] == ["hi"]
