"""The page against a scripted chat server: every frame the page renders, and the
exact frames of a reconnect.

A real ``chime serve`` cannot be made to send a frame at a chosen moment (an
``unavailable`` answer to a send, a drop right after one). Here a small
WebSocket server of the test's own (PROTOCOL.md's frames, scripted) stands in
for the chat port, and the page's own files are served by
``api.web.WebClient`` with REST history from a list. The page runs in the same
headless Chromium as test_web_client.py.
"""

from __future__ import annotations

import contextlib
import http.server
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

from chime_actors.api.http_server import HttpRequest
from chime_actors.api.web import ClientConfig, WebClient
from tests.e2e.browser import Page, browsers, require_chromium

pytestmark = pytest.mark.e2e

WAIT_S = 10.0


def mid(n: int) -> str:
    return f"{n:016d}"


def chime_message(n: int, user: str, content: str, channel: str = "general", **extra: Any) -> Any:
    return {
        "channelId": channel,
        "channelName": None,
        "messageId": mid(n),
        "userId": user,
        "content": content,
        "createdAt": "2026-11-27T10:00:00.000Z",
        "editedAt": None,
        "metadata": {},
        "threadId": None,
        "clientMsgId": None,
        **extra,
    }


@dataclass
class FakeChat:
    """A scripted chat port: records what the page sends, sends what the test says.

    It answers ``connect`` with ``connected`` (``unread`` as set) and ``presence``
    requests with ``online``; everything else waits for the test.
    """

    unread: dict[str, int] = field(default_factory=dict)
    online: list[str] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    received: queue.Queue[tuple[int, dict[str, Any]]] = field(default_factory=queue.Queue)
    connections: list[ServerConnection] = field(default_factory=list)

    def handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        number = len(self.connections)
        try:
            for raw in ws:
                frame = orjson.loads(raw)
                self.received.put((number, frame))
                if frame.get("type") == "connect":
                    reply = {
                        "type": "connected",
                        "userId": frame.get("userId", "anon"),
                        "connectionId": f"{number:016x}",
                        "channels": frame["channels"],
                        "heartbeatMs": 25000,
                        "unread": self.unread,
                    }
                    ws.send(orjson.dumps(reply).decode())
                elif frame.get("type") == "presence":
                    online = {"online": self.online, "channelId": frame["channelId"]}
                    answer = {"type": "presence", "requestId": frame["requestId"], **online}
                    ws.send(orjson.dumps(answer).decode())
        except ConnectionClosed:
            pass

    def push(self, frame: dict[str, Any], connection: int = -1) -> None:
        """Send ``frame`` on a connection (default: the newest)."""
        self.connections[connection].send(orjson.dumps(frame).decode())

    def next_frame(self, kind: str) -> tuple[int, dict[str, Any]]:
        """The next frame of type ``kind`` the page sent: (connection number, frame)."""
        while True:
            number, frame = self.received.get(timeout=WAIT_S)
            if frame.get("type") == kind:
                return number, frame


@contextlib.contextmanager
def fake_servers(chat: FakeChat) -> Iterator[str]:
    """Run the fake chat port and an HTTP server of the page; yields the page's base URL."""
    with serve(chat.handle, "127.0.0.1", 0) as ws_server:
        chat_port = ws_server.socket.getsockname()[1]
        web = WebClient(ClientConfig("insecure", chat_port, 4000, 10 * 1024 * 1024))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                response = web.handle(HttpRequest("GET", url.path, headers=headers))
                if response is None:
                    channel = url.path.split("/")[3]
                    before = parse_qs(url.query).get("before", [None])[0]
                    messages = [
                        m
                        for m in chat.history.get(channel, [])
                        if before is None or m["messageId"] < before
                    ]
                    body = orjson.dumps({"messages": messages, "hasMore": False})
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                else:
                    body = response.body
                    self.send_response(response.status)
                    self.send_header("Content-Type", response.content_type)
                    for name, value in response.headers.items():
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as http_server:
            threads = [
                threading.Thread(target=ws_server.serve_forever, daemon=True),
                threading.Thread(target=http_server.serve_forever, daemon=True),
            ]
            for thread in threads:
                thread.start()
            try:
                yield f"http://127.0.0.1:{http_server.server_address[1]}"
            finally:
                http_server.shutdown()
                ws_server.shutdown()
                for thread in threads:
                    thread.join(WAIT_S)


@pytest.fixture(autouse=True)
def chromium() -> None:
    require_chromium()


def extras(page: Page, message_id: str) -> str:
    return str(
        page.driver.execute_script(
            "const li = document.querySelector(`li[data-message-id='${arguments[0]}']`);"
            "return li ? li.querySelector('.extras').textContent : null;",
            message_id,
        )
    )


def test_edits_deletes_reactions_typing_presence_and_unread_are_shown() -> None:
    chat = FakeChat(
        unread={"other": 3},
        online=["alice", "bob"],
        history={
            "general": [
                chime_message(1, "bob", "first"),
                chime_message(2, "alice", "second", reactions={"👍": ["bob"]}),
            ]
        },
    )
    with fake_servers(chat) as api, browsers(api) as open_window:
        page = open_window().open("alice", ["general", "other"])
        page.wait_connected()
        page.wait_contents(["first", "second"])
        assert extras(page, mid(2)) == "👍 1"
        page.wait(lambda: page.element("presence").text == "Online: alice, bob", "presence")
        badge = "#channel-list li[data-channel=other] .unread"
        page.wait(
            lambda: (
                page.driver.find_element("css selector", badge).get_attribute("aria-label")
                == "3 unread"
            ),
            "the unread count from connected",
        )

        edited = chime_message(1, "bob", "first, edited", editedAt="2026-11-27T10:05:00.000Z")
        chat.push({"type": "message_edited", "message": edited})
        page.wait_contents(["first, edited", "second"], "the edit")
        assert extras(page, mid(1)) == "(edited)"

        for emoji, user, op in (("🎉", "alice", "add"), ("👍", "bob", "remove")):
            frame = {"channelId": "general", "emoji": emoji, "userId": user, "op": op}
            chat.push({"type": "reaction", "messageId": mid(1 if op == "add" else 2), **frame})
        page.wait(lambda: extras(page, mid(1)) == "(edited)🎉 1", "the added reaction")
        page.wait(lambda: extras(page, mid(2)) == "", "the removed reaction")

        chat.push({"type": "message_deleted", "channelId": "general", "messageId": mid(2)})
        page.wait_contents(["first, edited"], "the delete")

        chat.push({"type": "typing", "channelId": "general", "userId": "bob"})
        page.wait(lambda: page.element("typing").text == "bob is typing…", "typing")
        presence = {"channelId": "general", "userId": "carol", "status": "online"}
        chat.push({"type": "presence_changed", **presence})
        page.wait(
            lambda: page.element("presence").text == "Online: alice, bob, carol", "carol online"
        )

        chat.push({"type": "message", "message": chime_message(1, "bob", "elsewhere", "other")})
        page.wait(
            lambda: page.driver.find_element("css selector", badge).text == "4",
            "a live message to count as unread in the channel not shown",
        )
        # A frame type this page does not know yet changes nothing and breaks nothing.
        chat.push({"type": "from_the_future", "channelId": "general"})
        chat.push({"type": "message", "message": chime_message(3, "bob", "still fine")})
        page.wait_contents(["first, edited", "still fine"])
        assert page.element("chat-error").text == ""
        assert page.browser_errors() == []


def test_unavailable_sends_are_retried_and_refused_ones_marked() -> None:
    """``unavailable`` (not stored) makes the page send again with the same
    clientMsgId; a refusal for good marks the message "Not sent" with the reason."""
    chat = FakeChat(history={"general": []})
    with fake_servers(chat) as api, browsers(api) as open_window:
        page = open_window().open("alice", ["general"])
        page.wait_connected()
        page.type_and_enter("try again")
        _, send = chat.next_frame("send")
        unavailable = {"code": "unavailable", "message": "storage unavailable"}
        chat.push({"type": "error", "clientMsgId": send["clientMsgId"], **unavailable})
        _, again = chat.next_frame("send")
        assert again["clientMsgId"] == send["clientMsgId"]
        chat.push(
            {
                "type": "error",
                "code": "forbidden",
                "message": "this channel is not granted",
                "clientMsgId": send["clientMsgId"],
            }
        )
        page.wait(lambda: page.messages()[-1].status == "failed", "the refusal to show")
        status = page.driver.find_element("css selector", "#messages li .status").text
        assert status == "Not sent: this channel is not granted"
        assert page.element("chat-error").text == ""


def test_reconnect_resumes_from_the_last_id_and_resends_unacked() -> None:
    """After a drop the page's connect carries ``resume`` with the last id seen of
    each channel, and it resends its unacked send with the same clientMsgId;
    a replayed message already shown is not shown twice."""
    chat = FakeChat(history={"general": [chime_message(1, "bob", "one")], "other": []})
    with fake_servers(chat) as api, browsers(api) as open_window:
        page = open_window().open("alice", ["general", "other"])
        _, first = chat.next_frame("connect")
        assert "resume" not in first and first["userId"] == "alice"
        page.wait_connected()
        page.wait_contents(["one"])
        chat.push({"type": "message", "message": chime_message(2, "bob", "two")})
        page.wait_contents(["one", "two"])

        page.type_and_enter("not acked yet")
        _, send = chat.next_frame("send")
        page.wait(lambda: page.messages()[-1].status == "pending", "the send to be pending")

        chat.connections[-1].close(1012, "restart")
        number, again = chat.next_frame("connect")
        assert number == 2
        # "other" had no message: it is caught up from history instead of resumed.
        assert again["resume"] == {"general": mid(2)}
        assert again["channels"] == ["general", "other"]
        _, resent = chat.next_frame("send")
        assert (resent["clientMsgId"], resent["content"]) == (send["clientMsgId"], send["content"])

        # The replay overlaps what the page has: it shows each message once.
        chat.push({"type": "message", "message": chime_message(2, "bob", "two")})
        stored = chime_message(3, "alice", "not acked yet", clientMsgId=send["clientMsgId"])
        chat.push({"type": "message", "message": stored})
        chat.push({"type": "resumed", "channelId": "general", "count": 2})
        ack = {"clientMsgId": send["clientMsgId"], "channelId": "general"}
        chat.push({"type": "ack", "messageId": mid(3), "createdAt": stored["createdAt"], **ack})
        shown = page.wait_contents(["one", "two", "not acked yet"])
        assert [m.message_id for m in shown] == [mid(1), mid(2), mid(3)]
        assert page.browser_errors() == []


def test_an_unacked_send_survives_a_reload() -> None:
    """A send still pending when the page reloads is shown pending again and sent
    again with the same clientMsgId by the reloaded page (kept in sessionStorage)."""
    chat = FakeChat(history={"general": []})
    with fake_servers(chat) as api, browsers(api) as open_window:
        page = open_window().open("alice", ["general"])
        page.wait_connected()
        page.type_and_enter("across the reload")
        _, send = chat.next_frame("send")
        page.reload()
        page.wait(
            lambda: (
                [(m.content, m.status) for m in page.messages()]
                == [("across the reload", "pending")]
            ),
            "the pending send to be shown after the reload",
        )
        number, connect_frame = chat.next_frame("connect")
        assert number == 2 and connect_frame["userId"] == "alice"
        _, resent = chat.next_frame("send")
        assert resent["clientMsgId"] == send["clientMsgId"]
        stored = chime_message(1, "alice", "across the reload", clientMsgId=send["clientMsgId"])
        chat.push({"type": "message", "message": stored})
        ack = {"clientMsgId": send["clientMsgId"], "channelId": "general", "messageId": mid(1)}
        chat.push({"type": "ack", "createdAt": stored["createdAt"], **ack})
        assert [m.message_id for m in page.wait_contents(["across the reload"])] == [mid(1)]
