"""``auth.mode: jwt`` end to end: tokens at connect, channel grants, REST Bearer."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.client import Client
from tests.support.servers import ServerProcess, running_server

pytestmark = pytest.mark.e2e

SECRET = "e2e-secret-" + "x" * 32
LEEWAY_S = 1


def token(sub: str = "alice", *, secret: str = SECRET, **claims: Any) -> str:
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A short leeway, so that the lifetime tests wait seconds, not the default 10 s.
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": SECRET, "auth.jwt.leeway_s": LEEWAY_S}
    with running_server(tmp_path_factory.mktemp("jwt"), overrides) as srv:
        yield srv


async def _refused(url: str, frame: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    async with websockets.connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps(frame))
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return error, ws.close_code


def test_valid_token_connects_as_its_subject(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        await client.send({"type": "connect", "channels": ["general"], "token": token()})
        connected = await client.expect("connected")
        assert connected["userId"] == "alice"
        await client.send({"type": "send", "channelId": "general", "content": "hi"})
        (message,) = await client.messages(1)
        assert message["userId"] == "alice"
        await client.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "connect", "channels": ["general"]},
        {"type": "connect", "channels": ["general"], "token": "garbage"},
        {"type": "connect", "channels": ["general"], "token": token(secret="y" * 40)},
        {"type": "connect", "channels": ["general"], "token": token(exp=int(time.time()) - 5)},
        {"type": "connect", "channels": ["general"], "token": token(), "userId": "mallory"},
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "other-user"],
)
def test_bad_tokens_get_unauthorized_and_close_4001(
    server: ServerProcess, frame: dict[str, Any]
) -> None:
    error, code = asyncio.run(_refused(server.url, frame))
    assert error["type"] == "error" and error["code"] == "unauthorized"
    assert code == 4001


def test_token_in_query_or_bearer_header(server: ServerProcess) -> None:
    async def scenario() -> None:
        by_query = await Client.connect(f"{server.url}?token={token('bob')}")
        await by_query.send({"type": "connect", "channels": ["general"]})
        assert (await by_query.expect("connected"))["userId"] == "bob"
        await by_query.close()
        ws = await websockets.connect(
            server.url,
            additional_headers={"Authorization": f"Bearer {token('carol')}"},
            open_timeout=10,
        )
        by_header = Client(ws)
        await by_header.send({"type": "connect", "channels": ["general"]})
        assert (await by_header.expect("connected"))["userId"] == "carol"
        await by_header.close()

    asyncio.run(scenario())


def test_channels_claim_limits_what_the_user_may_join_and_read(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        limited = token(channels=["general"])
        await client.send({"type": "connect", "channels": ["general", "secret"], "token": limited})
        forbidden = await client.expect("error")
        assert forbidden["code"] == "forbidden"
        connected = await client.expect("connected")
        assert connected["channels"] == ["general"]
        await client.send({"type": "subscribe", "channels": ["secret"]})
        assert (await client.expect("error"))["code"] == "forbidden"
        await client.send({"type": "history", "requestId": "h1", "channelId": "secret"})
        denied = await client.expect("error")
        assert denied["code"] == "forbidden" and denied["requestId"] == "h1"
        await client.close()

    asyncio.run(scenario())


def test_rest_history_needs_a_bearer_token(server: ServerProcess) -> None:
    url = f"{server.api}/v1/channels/general/messages"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    refused.value.close()
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token()}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert "messages" in json.loads(response.read())


def _rest_status(url: str, bearer: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            body = json.loads(exc.read())
            assert body["code"] == "forbidden", body
            return int(exc.code)


def test_rest_history_enforces_the_channels_grant(server: ServerProcess) -> None:
    """A token granted ``general`` (or ``team-*``) reads only what it was granted."""
    limited = token(channels=["general", "team-*"])
    base = f"{server.api}/v1/channels"
    assert _rest_status(f"{base}/general/messages", limited) == 200
    assert _rest_status(f"{base}/team-red/messages", limited) == 200
    assert _rest_status(f"{base}/secret/messages", limited) == 403
    assert _rest_status(f"{base}/generalx/messages", limited) == 403


def test_channels_claim_may_hold_glob_patterns(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        limited = token(channels=["team-*"])
        await client.send({"type": "connect", "channels": ["team-blue"], "token": limited})
        assert (await client.expect("connected"))["channels"] == ["team-blue"]
        await client.send({"type": "subscribe", "channels": ["other"]})
        assert (await client.expect("error"))["code"] == "forbidden"
        await client.close()

    asyncio.run(scenario())


def test_a_token_that_expires_during_the_connection_closes_it_with_4001(
    server: ServerProcess,
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        short = token(exp=int(time.time()) + 2)
        await client.send({"type": "connect", "channels": ["general"], "token": short})
        await client.expect("connected")
        error = await client.expect("error", timeout=15)
        assert error["code"] == "unauthorized" and "expired" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

    asyncio.run(scenario())


def test_refresh_extends_the_connection_and_replaces_the_grants(server: ServerProcess) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        first = token(exp=int(time.time()) + 3, channels=["general", "team-*"])
        await client.send({"type": "connect", "channels": ["general", "team-a"], "token": first})
        assert (await client.expect("connected"))["channels"] == ["general", "team-a"]
        later = int(time.time()) + 300
        await client.send(
            {"type": "refresh", "token": token(exp=later, channels=["general"]), "requestId": "r"}
        )
        refreshed = await client.expect("refreshed")
        assert refreshed["requestId"] == "r"
        assert refreshed["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(later))
        # team-a is no longer granted: left, and said so.
        assert (await client.expect("unsubscribed"))["channels"] == ["team-a"]
        await client.send({"type": "subscribe", "channels": ["team-b"]})
        assert (await client.expect("error"))["code"] == "forbidden"
        # Past the first token's exp (and the leeway) the connection still serves.
        await asyncio.sleep(3 + LEEWAY_S + 1.5)
        await client.send({"type": "ping"})
        await client.expect("pong")
        assert not [f for f in client.frames if f.get("code") == "unauthorized"]
        await client.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "bad",
    [token("mallory"), token(secret="y" * 40), "garbage"],
    ids=["other-user", "wrong-secret", "garbage"],
)
def test_a_bad_refresh_is_refused_and_the_connection_goes_on(
    server: ServerProcess, bad: str
) -> None:
    async def scenario() -> None:
        client = await Client.connect(server.url)
        await client.send({"type": "connect", "channels": ["general"], "token": token()})
        await client.expect("connected")
        await client.send({"type": "refresh", "token": bad, "requestId": "r1"})
        error = await client.expect("error")
        assert error["code"] == "unauthorized" and error["requestId"] == "r1"
        await client.send({"type": "ping"})
        await client.expect("pong")
        await client.close()

    asyncio.run(scenario())


def test_changes_in_a_channel_the_token_does_not_grant_are_forbidden(
    server: ServerProcess,
) -> None:
    """WebSocket and REST alike: a grant is needed to react, edit or delete."""
    channel = f"secret-{uuid.uuid4().hex[:8]}"
    limited = token("bob", channels=["general"])

    async def scenario() -> str:
        alice = await Client.connect(server.url)
        await alice.send({"type": "connect", "channels": [channel], "token": token()})
        await alice.expect("connected")
        await alice.send({"type": "send", "channelId": channel, "content": "for alice only"})
        message_id = str((await alice.expect("ack"))["messageId"])
        bob = await Client.connect(server.url)
        await bob.send({"type": "connect", "channels": ["general"], "token": limited})
        await bob.expect("connected")
        for frame in (
            {"type": "react", "emoji": "👍", "op": "add"},
            {"type": "edit", "content": "x"},
            {"type": "delete"},
        ):
            await bob.send(
                {**frame, "requestId": "r1", "channelId": channel, "messageId": message_id}
            )
            refused = await bob.expect("error")
            assert (refused["code"], refused["requestId"]) == ("forbidden", "r1")
        await alice.send({"type": "ping"})
        await alice.expect("pong")
        assert not [f for f in alice.frames if f["type"] in ("reaction", "message_deleted")]
        await alice.close()
        await bob.close()
        return message_id

    message_id = asyncio.run(scenario())
    path = f"{server.api}/v1/channels/{channel}/messages/{message_id}"
    cases = [
        ("PUT", f"{path}/reactions/x", {"Authorization": f"Bearer {limited}"}, 403, "forbidden"),
        ("DELETE", path, {"Authorization": f"Bearer {limited}"}, 403, "forbidden"),
        # Granted every channel, but not the author.
        ("DELETE", path, {"Authorization": f"Bearer {token('bob')}"}, 403, "forbidden"),
        # jwt mode ignores X-Chime-User: no token, no user.
        ("DELETE", path, {"X-Chime-User": "alice"}, 401, "unauthorized"),
        ("PUT", f"{path}/reactions/x", {"Authorization": "Bearer garbage"}, 401, "unauthorized"),
    ]
    for method, url, headers, status, code in cases:
        request = urllib.request.Request(url, method=method, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        with refused.value as error:
            assert error.code == status, (method, url, headers)
            assert json.loads(error.read())["code"] == code
    request = urllib.request.Request(
        f"{path}/reactions/x", method="PUT", headers={"Authorization": f"Bearer {token('bob')}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204  # granted: anyone may react
