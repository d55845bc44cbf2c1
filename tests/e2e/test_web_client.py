"""The web chat page in a real browser (headless Chromium driven by Selenium).

Each test runs the page that a real ``chime serve`` serves at ``/`` and uses it
as a person would: the labelled message box, Enter to send, reload, buttons. The
Python side talks to the same server over the WebSocket and REST, so the page is
checked against what the server stored, not against itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.e2e import attachment_http
from tests.e2e.browser import PHONE, Page, browsers, gateways_serving, require_chromium
from tests.e2e.conftest import fresh, http_get, http_request
from tests.e2e.load import RESTART_TIMEOUT_S, alive, server_pids
from tests.support.servers import ServerProcess, restart_overrides, running_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    """Fail (CI) or skip (elsewhere) before any server starts if there is no browser."""
    require_chromium()


# Small, so a test can pick a file just over it (the page refuses it before uploading).
ATTACHMENT_MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    overrides = {"attachments.max_bytes": ATTACHMENT_MAX_BYTES}
    with running_server(tmp_path_factory.mktemp("web"), overrides) as srv:
        yield srv


class ChatSocket:
    """A plain WebSocket client (Python's ``websockets``) on the same server."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    def expect(self, kind: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        while True:
            frame: dict[str, Any] = orjson.loads(self.ws.recv(timeout))
            self.frames.append(frame)
            if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame
            assert frame.get("type") != "error", frame

    def send(self, channel: str, content: str, thread_id: str | None = None) -> dict[str, Any]:
        client_msg_id = f"py-{uuid.uuid4().hex[:12]}"
        frame = {"type": "send", "channelId": channel, "content": content, "threadId": thread_id}
        self.ws.send(orjson.dumps({**frame, "clientMsgId": client_msg_id}).decode())
        return self.expect("ack", clientMsgId=client_msg_id)

    def received(self, content: str, timeout: float = 10) -> dict[str, Any]:
        for frame in self.frames:
            if frame.get("type") == "message" and frame["message"]["content"] == content:
                message: dict[str, Any] = frame["message"]
                return message
        frame = self.expect("message", timeout)
        while frame["message"]["content"] != content:
            frame = self.expect("message", timeout)
        message = frame["message"]
        return message


@contextlib.contextmanager
def chat_socket(server: ServerProcess, user: str, channels: list[str]) -> Iterator[ChatSocket]:
    """A connected ``ChatSocket`` as ``user`` in ``channels``, closed on the way out."""
    with connect(server.url, open_timeout=10, close_timeout=5) as ws:
        client = ChatSocket(ws)
        ws.send(orjson.dumps({"type": "connect", "userId": user, "channels": channels}).decode())
        client.expect("connected")
        yield client


def stored(server: ServerProcess, channel: str) -> list[dict[str, Any]]:
    """Every message of ``channel`` in REST history, oldest first."""
    messages: list[dict[str, Any]] = []
    before = ""
    while True:
        status, body = http_get(
            f"{server.api}/v1/channels/{channel}/messages?limit=100&before={before}"
        )
        assert status == 200, body
        messages[:0] = body["messages"]
        if not body["hasMore"]:
            return messages
        before = body["messages"][0]["messageId"]


def files_released(pid: int) -> bool:
    """True once every thread of process ``pid`` has exited, and so closed its files.

    The leader turns zombie (and its own ``/proc/PID/fd`` empties) as soon as it
    dies; the sockets it shares with its other threads close with the last thread.
    """
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return threads == [str(pid)] and not alive(pid)


def assert_shown_once_in_order(page: Page, server: ServerProcess, channel: str) -> None:
    """The page shows exactly the channel's stored messages: same ids, in order, once."""
    ids = [m.message_id for m in page.messages()]
    assert ids == [m["messageId"] for m in stored(server, channel)], ids


def test_page_is_served_with_its_security_headers(server: ServerProcess) -> None:
    """``/`` serves the page (strict CSP, no-cache), and the page loads with no
    console error, so its CSP admits everything it really uses."""
    status, body = http_get(f"{server.api}/")
    assert status == 200 and "<title>Chime</title>" in body
    with browsers(server.api) as open_window:
        page = open_window().open("alice", [fresh()])
        page.wait_connected()
        assert page.browser_errors() == []


def test_two_windows_chat(server: ServerProcess) -> None:
    """Alice (opened by URL) and Bob (through the login form) chat in two windows:
    each message is shown stored to its sender once acked, live to the other,
    with its author and time; Shift+Enter is a new line, not a send."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    with browsers(server.api) as open_window:
        alice = open_window().open("alice", [channel])
        bob = open_window().open()
        # Bob logs in by keyboard: the form's fields, then Enter.
        bob.element("user-input").send_keys("bob")
        channels_box = bob.element("channels-input")
        channels_box.clear()
        channels_box.send_keys(channel + Keys.ENTER)
        alice.wait_connected()
        bob.wait_connected()
        assert bob.channel_names() == [channel]

        sent = alice.send("hello bob")
        assert sent.user == "alice" and sent.time and sent.datetime.endswith("Z")
        got = bob.wait_contents(["hello bob"])[0]
        assert got.message_id == sent.message_id and got.user == "alice" and got.time

        box = bob.composer()
        box.send_keys("hi alice,")
        box.send_keys(Keys.SHIFT, Keys.ENTER)
        box.send_keys("two lines")
        assert bob.contents() == ["hello bob"]  # Shift+Enter did not send
        box.send_keys(Keys.ENTER)
        alice.wait_contents(["hello bob", "hi alice,\ntwo lines"])
        bob.wait_contents(["hello bob", "hi alice,\ntwo lines"])
        assert_shown_once_in_order(alice, server, channel)
        assert_shown_once_in_order(bob, server, channel)
        assert alice.browser_errors() == [] and bob.browser_errors() == []
        # Nothing the page asked (presence, read markers, typing) was refused.
        assert alice.element("chat-error").text == "" == bob.element("chat-error").text


def test_reload_resumes_with_history_and_no_duplicates(server: ServerProcess) -> None:
    """Bob reloads: the page comes back as Bob in the same channels, shows the
    earlier messages from history once each, and goes on receiving live ones."""
    channel = fresh("web")
    with browsers(server.api) as open_window:
        alice = open_window().open("alice", [channel])
        bob = open_window().open("bob", [channel])
        alice.wait_connected()
        bob.wait_connected()
        for text in ("one", "two", "three"):
            alice.send(text)
        bob.wait_contents(["one", "two", "three"])

        bob.reload()
        bob.wait_connected()
        assert bob.driver.current_url.rstrip("/") == server.api  # no parameters left
        assert bob.channel_names() == [channel]
        bob.wait_contents(["one", "two", "three"], "the earlier messages after the reload")
        alice.send("four")
        bob.wait_contents(["one", "two", "three", "four"])
        bob.send("five from bob")
        alice.wait_contents(["one", "two", "three", "four", "five from bob"])
        assert_shown_once_in_order(bob, server, channel)
        assert bob.messages()[-1].user == "bob"


def test_message_from_a_websocket_client_appears_in_the_page(server: ServerProcess) -> None:
    """A message sent by a Python WebSocket client shows up live in the page, with
    its author; and the page's message reaches the Python client."""
    channel = fresh("web")
    with browsers(server.api) as open_window:
        page = open_window().open("alice", [channel])
        page.wait_connected()
        with chat_socket(server, "carol", [channel]) as carol:
            ack = carol.send(channel, "hello from python")
            shown = page.wait_contents(["hello from python"])[0]
            assert shown.message_id == ack["messageId"] and shown.user == "carol"
            sent = page.send("hello carol")
            message = carol.received("hello carol")
            assert message["userId"] == "alice" and message["messageId"] == sent.message_id


def test_scrolling_back_pages_older_history(server: ServerProcess) -> None:
    """120 stored messages: the page opens on the newest and pages older ones in
    as the reader scrolls to the top, until the channel's start; each once, in order."""
    channel = fresh("web")
    with chat_socket(server, "dave", [channel]) as writer:
        for n in range(120):
            writer.send(channel, f"m{n}")
    with browsers(server.api) as open_window:
        page = open_window().open("alice", [channel])
        page.wait_connected()
        newest = page.wait(lambda: len(page.messages()) >= 50 and page.messages(), "a page")
        assert [m.content for m in newest] == [f"m{n}" for n in range(70, 120)]

        def scrolled_to_start() -> bool:
            page.driver.execute_script("document.getElementById('scroller').scrollTop = 0")
            return page.element("history-start").is_displayed()

        page.wait(scrolled_to_start, "scrolling back to reach the channel's start")
        page.wait_contents([f"m{n}" for n in range(120)])
        assert_shown_once_in_order(page, server, channel)


def test_join_and_leave_channels_on_a_phone(server: ServerProcess) -> None:
    """On a phone-sized viewport the channel list is a panel behind a button; a
    channel joined there shows its history, and a channel left is gone from the list."""
    first, second = fresh("web"), fresh("web")
    with chat_socket(server, "erin", [second]) as writer:
        writer.send(second, "already here")
    with browsers(server.api) as open_window:
        page = open_window(PHONE).open("alice", [first])
        page.wait_connected()
        # The panel does not slide (see browsers()), so a click cannot miss it.
        assert page.driver.execute_script(
            "return matchMedia('(prefers-reduced-motion: reduce)').matches"
        )
        toggle = page.element("channels-toggle")
        assert toggle.is_displayed() and not page.element("join-input").is_displayed()
        toggle.click()
        page.wait(lambda: page.element("join-input").is_displayed(), "the channel panel")
        page.element("join-input").send_keys(second + "\n")
        page.wait(lambda: page.channel_names() == [first, second], "the joined channel")
        page.wait_contents(["already here"], "the joined channel's history")
        page.send("now me too")
        # The panel may have closed itself after the join (phone layout): open it
        # again only if it is closed, then wait until the button can be clicked.
        if not page.element("join-input").is_displayed():
            toggle.click()
        page.wait(lambda: page.element("join-input").is_displayed(), "the channel panel again")

        def leave_button() -> Any:
            return page.driver.find_element("css selector", f'button[aria-label="Leave {first}"]')

        from selenium.common.exceptions import (
            ElementClickInterceptedException,
            ElementNotInteractableException,
        )

        def click_leave() -> bool:
            # Until the panel is shown the button is not interactable yet, so
            # the click is retried until it lands.
            try:
                leave_button().click()
            except (ElementNotInteractableException, ElementClickInterceptedException):
                return False
            return True

        page.wait(click_leave, "the leave button to take the click")
        page.wait(lambda: page.channel_names() == [second], "the left channel to go")


def test_gateway_restart_is_survived(tmp_path: Path) -> None:
    """SIGKILL the gateway the page is connected to, with a message of the page
    still unacked: the supervisor restarts it, the page reconnects, resumes (a
    message sent while it was away appears, nothing twice) and resends the unacked
    message with its clientMsgId, which is then shown stored, and stored once."""
    channel = fresh("web")
    with (
        running_server(tmp_path / "server", workers=2) as server,
        browsers(server.api) as open_window,
    ):
        page = open_window().open("alice", [channel])
        page.wait_connected()
        page.send("before the fault")
        serving = page.wait(lambda: gateways_serving(server), "the page's gateway")
        assert len(serving) == 1, serving
        title = serving.pop()
        (pid,) = server_pids(server, title)

        # Stopped, the gateway cannot answer: the message stays pending, for sure.
        os.kill(pid, signal.SIGSTOP)
        try:
            assert gateways_serving(server) == {title}
            page.type_and_enter("sent while the gateway hangs")
            pending = page.wait(
                lambda: next((m for m in page.messages() if m.status == "pending"), None),
                "the unacked message to show as pending",
            )
            assert pending.content == "sent while the gateway hangs" and pending.client_msg_id
        finally:
            os.kill(pid, signal.SIGKILL)
        # Until its last thread is gone its listening socket may still take (and
        # drop) a connect.
        page.wait(lambda: files_released(pid), f"{title} {pid} to close its sockets")
        # Sent while the page is away or just back (the reconnect is quick, so which
        # is a race): either way the page must show it exactly once. The pending
        # message can only be stored through a new connection (its gateway is dead).
        with chat_socket(server, "bob", [channel]) as other:
            other.send(channel, "sent by bob meanwhile")
        page.wait_connected()
        # Bob's message and the resend race each other to storage: either order is right.
        expected = {"before the fault", "sent by bob meanwhile", "sent while the gateway hangs"}
        shown = page.wait(
            lambda: (
                (messages := page.messages())
                and len(messages) == len(expected)
                and {m.content for m in messages} == expected
                and all(m.status == "stored" for m in messages)
                and messages
            ),
            "the page to show all three messages stored",
        )
        page.wait(
            lambda: [p for p in server_pids(server, title) if p != pid],
            f"a new {title!r}",
            timeout=RESTART_TIMEOUT_S,
        )
        history = stored(server, channel)
        assert [m["content"] for m in history] == [m.content for m in shown]
        resent = [m for m in history if m["clientMsgId"] == pending.client_msg_id]
        assert len(resent) == 1, history
        assert_shown_once_in_order(page, server, channel)


# A restart takes a few seconds, and by then the page's backoff may wait up to
# 15 s (chime.js's backoffMaxMs) before it tries again.
FULL_RESTART_TIMEOUT_S = 90.0


def _reconnect_attempt(page: Page) -> int:
    """The attempt the connection line counts ("reconnecting in 2 s (attempt 3)…"), or 0."""
    found = re.search(r"\(attempt (\d+)\)", page.element("connection").text)
    return int(found.group(1)) if found else 0


def test_a_full_server_restart_is_survived(tmp_path: Path) -> None:
    """SIGTERM the whole ``chime serve`` and start it again on the same ports with
    the same data, the page open all along: the page retries with backoff while
    the server is down, a message written meanwhile waits as pending, and after
    the restart it is stored once and shown stored once; a WebSocket client's
    message after the restart appears once; the page shows exactly what is stored."""
    channel = fresh("web")
    overrides = restart_overrides(tmp_path)
    with browsers(f"http://127.0.0.1:{overrides['api.port']}") as open_window:
        with running_server(tmp_path / "run1", overrides) as server:
            page = open_window().open("alice", [channel])
            page.wait_connected()
            page.send("before the restart")
            with chat_socket(server, "bob", [channel]) as bob:
                bob.send(channel, "bob before the restart")
            page.wait_contents(["before the restart", "bob before the restart"])
            assert server.stop() == 0  # SIGTERM; it has exited
        page.wait(
            lambda: _reconnect_attempt(page) >= 2, "the page to retry, waiting longer each time"
        )
        page.type_and_enter("sent while the server is down")
        pending = page.wait(
            lambda: next((m for m in page.messages() if m.status == "pending"), None),
            "the message to wait as pending",
        )
        with running_server(tmp_path / "run2", overrides) as server:
            page.wait_connected(FULL_RESTART_TIMEOUT_S)
            before = ["before the restart", "bob before the restart"]
            page.wait_contents(
                [*before, "sent while the server is down"], "the pending message stored"
            )
            with chat_socket(server, "bob", [channel]) as bob:
                bob.send(channel, "bob after the restart")
            shown = page.wait_contents(
                [*before, "sent while the server is down", "bob after the restart"]
            )
            history = stored(server, channel)
            assert [m["messageId"] for m in history] == [m.message_id for m in shown]
            resent = [m for m in history if m["clientMsgId"] == pending.client_msg_id]
            assert len(resent) == 1, history
            assert_shown_once_in_order(page, server, channel)
            assert page.element("chat-error").text == ""


JWT_SECRET = "web-e2e-secret-" + "x" * 32


def jwt_token(sub: str, **claims: Any) -> str:
    body = {"sub": sub, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def test_jwt_mode_signs_in_with_a_pasted_token(tmp_path: Path) -> None:
    """In jwt mode the page asks for a token instead of a name; with it the page
    reads REST history (Bearer) and chats as the token's subject; the token does
    not stay in the address bar; a refused token brings the form back with why."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": JWT_SECRET}
    with running_server(tmp_path / "jwt", overrides) as server:
        with connect(server.url, open_timeout=10, close_timeout=5) as ws:
            writer = ChatSocket(ws)
            frame = {"type": "connect", "channels": [channel], "token": jwt_token("bob")}
            ws.send(orjson.dumps(frame).decode())
            writer.expect("connected")
            writer.send(channel, "stored before alice came")
        with browsers(server.api) as open_window:
            page = open_window().open()
            assert not page.element("user-input").is_displayed()
            page.element("token-input").send_keys(jwt_token("alice", channels=[channel]))
            channels_box = page.element("channels-input")
            channels_box.clear()
            channels_box.send_keys(channel + Keys.ENTER)
            page.wait_connected()
            page.wait_contents(["stored before alice came"], "history read with the token")
            assert page.send("signed in by token").user == "alice"

            other = open_window().open(token=jwt_token("carol"), channels=[channel])
            other.wait_connected()
            assert "token" not in other.driver.current_url
            other.wait_contents(["stored before alice came", "signed in by token"])

            refused = open_window().open(token="not-a-jwt", channels=[channel])
            refused.wait(
                lambda: refused.element("login-error").text.startswith("The server refused"),
                "the refused token to be reported",
            )
            assert refused.element("token-input").is_displayed()


def test_edit_react_and_delete_from_the_page(server: ServerProcess) -> None:
    """Bob edits and deletes his message and Alice reacts to it, with the page's
    buttons; each change reaches the other window as the server broadcasts it."""
    channel = fresh("web")
    with browsers(server.api) as open_window:
        alice = open_window().open("alice", [channel])
        bob = open_window().open("bob", [channel])
        alice.wait_connected()
        bob.wait_connected()
        bob.send("teh typo")
        alice.wait_contents(["teh typo"])

        def button(page: Page, label: str) -> Any:
            return page.driver.find_element("css selector", f'button[aria-label="{label}"]')

        button(bob, "Edit message").click()
        prompt = bob.wait(lambda: _alert(bob), "the edit prompt")
        prompt.send_keys("the typo, fixed")
        prompt.accept()
        alice.wait_contents(["the typo, fixed"], "the edit to reach alice")
        assert alice.wait(lambda: "(edited)" in _extras(alice), "the edited mark")
        assert [
            b.accessible_name
            for b in alice.driver.find_elements("css selector", ".message .actions button")
        ] == ["React 👍", "Reply in thread"]  # not hers: no edit or delete

        button(alice, "React 👍").click()
        bob.wait(lambda: "👍 1" in _extras(bob), "alice's reaction at bob")
        button(alice, "React 👍").click()  # again: taken back
        bob.wait(lambda: "👍" not in _extras(bob), "the reaction taken back")

        button(bob, "Delete message").click()
        bob.wait(lambda: _alert(bob), "the delete confirmation").accept()
        alice.wait(lambda: alice.contents() == [], "the delete to reach alice")
        assert bob.browser_errors() == [] and alice.browser_errors() == []


def _alert(page: Page) -> Any:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = page.driver.switch_to.alert
        _ = alert.text
        return alert
    except NoAlertPresentException:
        return None


def _extras(page: Page) -> str:
    return str(
        page.driver.execute_script(
            "return Array.from(document.querySelectorAll('.message .extras'))"
            ".map((p) => p.textContent).join(' ')"
        )
    )


def test_typing_in_one_window_shows_in_the_other(server: ServerProcess) -> None:
    """Alice types without sending: Bob's window says "alice is typing…" (hers
    does not), and it goes away when her message arrives."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    with browsers(server.api) as open_window:
        alice = open_window().open("alice", [channel])
        bob = open_window().open("bob", [channel])
        alice.wait_connected()
        bob.wait_connected()
        alice.composer().send_keys("hel")
        bob.wait(lambda: bob.element("typing").text == "alice is typing…", "alice's typing")
        assert alice.element("typing").text == ""  # nobody is told about themselves
        alice.composer().send_keys("lo" + Keys.ENTER)
        bob.wait_contents(["hello"])
        bob.wait(lambda: bob.element("typing").text == "", "the typing line to clear")
        assert alice.browser_errors() == [] and bob.browser_errors() == []


def _badge(page: Page, channel: str) -> str | None:
    """The unread badge of ``channel`` in the channel list (None: no badge)."""
    value = page.driver.execute_script(
        "const b = document.querySelector("
        "`#channel-list li[data-channel='${arguments[0]}'] .unread`);"
        "return b ? b.textContent : null;",
        channel,
    )
    return None if value is None else str(value)


def _show_channel(page: Page, channel: str) -> None:
    page.driver.find_element(
        "css selector", f"#channel-list li[data-channel='{channel}'] .channel-open"
    ).click()
    page.wait(lambda: page.element("channel-title").text == f"# {channel}", f"# {channel}")


def _server_unread(server: ServerProcess, user: str, channel: str) -> int:
    status, body = http_request(
        "GET", f"{server.api}/v1/me/unread?channels={channel}", headers={"X-Chime-User": user}
    )
    assert status == 200, body
    return int(body["unread"][channel])


def test_read_markers_keep_unread_counts_across_reloads(server: ServerProcess) -> None:
    """The page marks what it shows as read (a ``read`` for the newest message of
    the channel shown), so the unread badges after a reload, which come from the
    server's ``connected.unread``, agree with what Alice saw: a channel she read
    has no badge, one she did not read keeps its count."""
    first, second = fresh("web"), fresh("web")
    with chat_socket(server, "bob", [first, second]) as bob:
        for channel in (first, second):
            bob.send(channel, f"{channel} one")
            bob.send(channel, f"{channel} two")
        with browsers(server.api) as open_window:
            page = open_window().open("alice", [first, second])
            page.wait_connected()
            page.wait_contents([f"{first} one", f"{first} two"])
            # Unread on the server, never opened here: its badge comes from `connected`.
            assert _badge(page, second) == "2" and _badge(page, first) is None
            page.wait(lambda: _server_unread(server, "alice", first) == 0, "first read")
            _show_channel(page, second)
            page.wait_contents([f"{second} one", f"{second} two"])
            assert _badge(page, second) is None
            page.wait(lambda: _server_unread(server, "alice", second) == 0, "second read")

            page.reload()
            page.wait_connected()  # `connected` (and its unread counts) is in
            assert page.element("channel-title").text == f"# {second}"
            assert _badge(page, first) is None, "read before the reload"

            bob.send(first, "new one")
            bob.send(first, "new two")
            page.wait(lambda: _badge(page, first) == "2", "the live count of the other channel")
            page.reload()
            page.wait_connected()
            assert _badge(page, first) == "2", "the server's count after the reload"
            assert _server_unread(server, "alice", second) == 0

            _show_channel(page, first)
            page.wait_contents([f"{first} one", f"{first} two", "new one", "new two"])
            page.wait(lambda: _server_unread(server, "alice", first) == 0, "first read again")
            _show_channel(page, second)
            page.reload()
            page.wait_connected()
            assert _badge(page, first) is None and _badge(page, second) is None
            assert page.browser_errors() == []


def _thread_contents(page: Page) -> list[tuple[str, str]]:
    """(author, content) of each stored message of the open thread panel, in order."""
    rows = page.driver.execute_script(
        "return Array.from(document.querySelectorAll('#thread-messages > li.message'))"
        ".filter((li) => li.dataset.status === 'stored')"
        ".map((li) => [li.querySelector('.author').textContent,"
        " li.querySelector('.content').textContent]);"
    )
    return [(str(user), str(content)) for user, content in rows]


def _thread_summary(page: Page, message_id: str) -> str | None:
    """The "N replies" under a root in the channel's list (None: hidden or absent)."""
    value = page.driver.execute_script(
        "const s = document.querySelector("
        "`#messages li[data-message-id='${arguments[0]}'] .thread-summary`);"
        "return s && !s.hidden ? s.textContent : null;",
        message_id,
    )
    return None if value is None else str(value)


def test_threads_are_opened_answered_and_counted_live(server: ServerProcess) -> None:
    """Alice opens the thread of Carol's message by keyboard ("Reply in thread",
    Enter), replies in the labelled "Reply" box; Bob sees "1 reply" under the
    root, live, not the reply itself in the channel; a reply sent by a WebSocket
    client (``threadId``) reaches Alice's open thread and Bob's count; Bob, on a
    phone, opens the thread from its count and answers; both panels show the
    thread as the server stores it (history with ``threadId``); a deleted reply
    leaves both panels and the count; Escape closes the panel and gives the
    focus back to the button that opened it."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    with (
        chat_socket(server, "carol", [channel]) as carol,
        browsers(server.api) as open_window,
    ):
        root = carol.send(channel, "lunch at noon?")["messageId"]
        alice = open_window().open("alice", [channel])
        bob = open_window(PHONE).open("bob", [channel])  # the panel covers the channel
        alice.wait_contents(["lunch at noon?"])
        bob.wait_contents(["lunch at noon?"])
        assert _thread_summary(bob, root) is None

        reply = alice.driver.find_element(
            "css selector", f'#messages li[data-message-id="{root}"] .actions .reply-button'
        )
        assert reply.accessible_name == "Reply in thread"
        reply.send_keys(Keys.ENTER)
        alice.wait(lambda: alice.element("thread").is_displayed(), "the thread panel")
        box = alice.element("thread-composer")
        assert box.accessible_name == "Reply"
        assert alice.driver.switch_to.active_element == box
        alice.wait(lambda: _thread_contents(alice) == [("carol", "lunch at noon?")], "the root")
        box.send_keys("yes, at the usual place" + Keys.ENTER)
        alice.wait(
            lambda: (
                _thread_contents(alice)
                == [("carol", "lunch at noon?"), ("alice", "yes, at the usual place")]
            ),
            "alice's reply stored in the thread",
        )
        bob.wait(lambda: _thread_summary(bob, root) == "1 reply", "the reply count at bob")
        assert alice.contents() == ["lunch at noon?"] == bob.contents()  # not in the channel

        carol.send(channel, "great, see you", thread_id=root)
        alice.wait(
            lambda: _thread_contents(alice)[-1:] == [("carol", "great, see you")],
            "carol's reply in alice's open thread",
        )
        bob.wait(lambda: _thread_summary(bob, root) == "2 replies", "two replies at bob")

        bob.driver.find_element(
            "css selector", f'#messages li[data-message-id="{root}"] .thread-open'
        ).click()
        bob.wait(lambda: len(_thread_contents(bob)) == 3, "the thread at bob")
        bob.element("thread-composer").send_keys("count me in" + Keys.ENTER)
        expected = [
            ("carol", "lunch at noon?"),
            ("alice", "yes, at the usual place"),
            ("carol", "great, see you"),
            ("bob", "count me in"),
        ]
        for page in (alice, bob):
            page.wait(lambda p=page: _thread_contents(p) == expected, "the whole thread")
            page.wait(lambda p=page: _thread_summary(p, root) == "3 replies", "3 replies")
        status, body = http_get(f"{server.api}/v1/channels/{channel}/messages?threadId={root}")
        assert status == 200, body
        assert [(m["userId"], m["content"]) for m in body["messages"]] == expected
        assert all(m["threadId"] == root for m in body["messages"][1:])
        assert body["messages"][0]["replyCount"] == 3

        # Carol deletes her reply: gone from both threads, and counted out.
        carols = body["messages"][2]["messageId"]
        delete = {"type": "delete", "channelId": channel, "messageId": carols}
        carol.ws.send(orjson.dumps(delete).decode())
        for page in (alice, bob):
            page.wait(
                lambda p=page: _thread_contents(p) == [expected[0], expected[1], expected[3]],
                "the deleted reply to go",
            )
            page.wait(lambda p=page: _thread_summary(p, root) == "2 replies", "2 replies")
        assert [m.message_id for m in bob.messages()] == [root]  # replies stay in the thread

        alice.element("thread-composer").send_keys(Keys.ESCAPE)
        alice.wait(lambda: not alice.element("thread").is_displayed(), "the panel to close")
        active = alice.driver.switch_to.active_element
        assert active.get_attribute("aria-label") == "Reply in thread"
        assert alice.browser_errors() == [] and bob.browser_errors() == []


# --- attachments ---------------------------------------------------------------------------


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG of one colour (8-bit RGB, no filter), made here so no fixture file is needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def allow_downloads(page: Page, into: Path) -> None:
    """Let headless Chromium save downloads into ``into`` (it refuses them by default)."""
    into.mkdir(parents=True, exist_ok=True)
    page.driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(into)}
    )


def downloaded(path: Path) -> bytes | None:
    """The bytes of a finished download (Chromium writes ``.crdownload`` first), or None."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def upload_requests(page: Page) -> int:
    """How many uploads the page started (resource timing names each ``?filename=`` URL)."""
    count = page.driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter((e) => e.name.includes('/v1/attachments?filename=')).length"
    )
    return int(count)


def _click_link(page: Page, content: str, name: str, list_selector: str = "#messages") -> None:
    page.driver.find_element(
        "xpath",
        f"//*[@id='{list_selector.lstrip('#')}']/li[p[@class='content' and text()='{content}']]"
        f"//a[@class='attachment-link' and text()='{name}']",
    ).click()


def test_attachments_are_uploaded_sent_shown_and_downloaded(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Alice attaches a PNG and a text file with the labelled "Attach files" input
    (listed as uploading, then ready) and sends; Bob, on a phone, sees both under
    the message as download links with their sizes, the image also as a thumbnail
    that really decoded (from a blob: URL the CSP admits), and the text file's
    link saves its exact bytes; the href is the download route, which serves the
    same bytes; the server stored the message listing both. A file over
    ``attachments.max_bytes`` is refused by the page before any upload, an empty
    one by the server (400) in its words, and neither sends anything."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    picture = png(3, 2, (200, 30, 30))
    text = "notes for bob\nline two ✓\n".encode()
    (tmp_path / "red.png").write_bytes(picture)
    (tmp_path / "notes.txt").write_bytes(text)
    with browsers(server.api) as open_window:
        alice = open_window().open("alice", [channel])
        bob = open_window(PHONE).open("bob", [channel])
        alice.wait_connected()
        bob.wait_connected()

        box = alice.element("attach-input")
        assert box.accessible_name == "Attach files"
        alice.attach(tmp_path / "red.png", tmp_path / "notes.txt")
        alice.wait(
            lambda: alice.pending_files() == [("red.png", "ready"), ("notes.txt", "ready")],
            "both files uploaded and listed as ready",
        )
        alice.composer().send_keys("the report" + Keys.ENTER)
        alice.wait_contents(["the report"])
        assert alice.pending_files() == []  # they went with the message

        files = bob.wait(
            lambda: (
                (found := bob.attachments("the report"))
                and len(found) == 2
                and found[0]["image"]
                and found[0]["image"]["shown"]
                and found
            ),
            "bob to see both files, the thumbnail loaded",
        )
        image, notes = files
        assert (image["name"], image["size"]) == ("red.png", f"{len(picture)} B")
        assert image["image"]["src"].startswith("blob:") and image["image"]["alt"] == "red.png"
        assert (image["image"]["naturalWidth"], image["image"]["naturalHeight"]) == (3, 2)
        assert (notes["name"], notes["size"], notes["image"]) == (
            "notes.txt",
            f"{len(text)} B",
            None,
        )
        assert notes["href"] == f"{server.api}/v1/attachments/{notes['attachmentId']}"

        # Bob's link saves exactly the bytes alice attached.
        saved = tmp_path / "bob-downloads"
        allow_downloads(bob, saved)
        _click_link(bob, "the report", "notes.txt")
        bob.wait(lambda: downloaded(saved / "notes.txt") == text, "notes.txt saved by bob")
        reply = attachment_http.download(
            server.api_port, notes["attachmentId"], headers={"X-Chime-User": "bob"}
        )
        assert (reply.status, reply.body) == (200, text)
        (message,) = stored(server, channel)
        assert [(a["filename"], a["contentType"], a["size"]) for a in message["attachments"]] == [
            ("red.png", "image/png", len(picture)),
            ("notes.txt", "text/plain", len(text)),
        ]
        assert [a["attachmentId"] for a in message["attachments"]] == [
            image["attachmentId"],
            notes["attachmentId"],
        ]

        # Too large: refused by the page, with the limit, before any upload.
        (tmp_path / "big.bin").write_bytes(b"x" * (ATTACHMENT_MAX_BYTES + 1))
        uploads = upload_requests(alice)
        alice.attach(tmp_path / "big.bin")
        alice.wait(
            lambda: "big.bin is too large" in alice.element("chat-error").text,
            "the oversize file to be refused",
        )
        assert "64 KiB" in alice.element("chat-error").text
        assert alice.pending_files() == [] and upload_requests(alice) == uploads
        # Empty: the server refuses it (400), and the page says why in its words.
        (tmp_path / "empty.txt").write_bytes(b"")
        alice.attach(tmp_path / "empty.txt")
        alice.wait(
            lambda: (
                alice.element("chat-error").text == "Could not attach empty.txt: the file is empty"
            ),
            "the server's refusal of the empty file",
        )
        assert alice.pending_files() == []
        alice.composer().send_keys(Keys.ENTER)  # nothing to send: no text, no file
        assert [m["content"] for m in stored(server, channel)] == ["the report"]
        assert alice.contents() == ["the report"]
        assert bob.browser_errors() == []
        # Alice's only console errors are the refused upload's HTTP status.
        assert all("/v1/attachments" in e and "400" in e for e in alice.browser_errors())


def test_server_413_reaches_an_upload_as_a_clear_error(server: ServerProcess) -> None:
    """chime.js ``upload`` without the page's own size check: the server's 413
    problem comes back as a ``ChimeError`` with ``too_large`` and the server's
    ``detail``; with ``maxAttachmentBytes`` it is refused without a request."""
    with browsers(server.api) as open_window:
        page = open_window().open("alice", [fresh("web")])
        page.wait_connected()
        script = """
        const [size, limit, done] = arguments;
        import("/static/chime.js").then(async ({ ChimeClient }) => {
          const client = new ChimeClient({ url: "ws://unused/", userId: "alice",
                                           maxAttachmentBytes: limit });
          try {
            await client.upload(new Blob([new Uint8Array(size)]), { filename: "big.bin" });
            done({ ok: true });
          } catch (err) {
            done({ name: err.name, code: err.code, message: err.message });
          }
        });
        """
        over = ATTACHMENT_MAX_BYTES + 1
        refused = page.driver.execute_async_script(script, over, None)
        assert refused == {
            "name": "ChimeError",
            "code": "too_large",
            "message": (
                f"the file is larger than attachments.max_bytes ({ATTACHMENT_MAX_BYTES} bytes)"
            ),
        }
        uploads = upload_requests(page)
        early = page.driver.execute_async_script(script, over, ATTACHMENT_MAX_BYTES)
        assert early["code"] == "too_large" and upload_requests(page) == uploads


def test_a_thread_reply_carries_files_and_the_box_works_by_keyboard_on_a_phone(
    server: ServerProcess, tmp_path: Path
) -> None:
    """On a phone the composer's "Attach" label fits beside the message box and the
    input is the next Tab stop after it; in the thread panel a reply of files
    alone (no text) is sent with their names as its text and lists them."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    (tmp_path / "plan.txt").write_bytes(b"step one\n")
    with (
        chat_socket(server, "carol", [channel]) as carol,
        browsers(server.api) as open_window,
    ):
        root = carol.send(channel, "the plan?")["messageId"]
        page = open_window(PHONE).open("alice", [channel])
        page.wait_contents(["the plan?"])
        label = page.driver.find_element("css selector", "label[for=attach-input]")
        assert (
            label.is_displayed() and page.element("attach-input").accessible_name == "Attach files"
        )
        assert label.rect["x"] + label.rect["width"] <= PHONE[0]
        page.composer().send_keys(Keys.TAB)
        assert page.driver.switch_to.active_element == page.element("attach-input")

        page.driver.find_element(
            "css selector", f'#messages li[data-message-id="{root}"] .reply-button'
        ).click()
        page.wait(lambda: page.element("thread").is_displayed(), "the thread panel")
        page.attach(tmp_path / "plan.txt", input_id="thread-attach-input")
        page.wait(
            lambda: page.pending_files("thread-attach-list") == [("plan.txt", "ready")],
            "the reply's file uploaded",
        )
        page.element("thread-composer").send_keys(Keys.ENTER)
        files = page.wait(
            lambda: page.attachments("plan.txt", "#thread-messages"), "the reply with its file"
        )
        assert [f["name"] for f in files] == ["plan.txt"]
        reply = carol.received("plan.txt")
        assert reply["threadId"] == root
        assert [a["filename"] for a in reply["attachments"]] == ["plan.txt"]
        assert page.pending_files("thread-attach-list") == []
        assert page.browser_errors() == []


def test_jwt_mode_fetches_files_with_the_token(tmp_path: Path) -> None:
    """In jwt mode the download route needs the Bearer token, which neither a link
    nor an ``<img src>`` sends: the page uploads with it, and the other user's
    window shows the thumbnail and saves the file by fetching them with theirs."""
    from selenium.webdriver.common.keys import Keys

    channel = fresh("web")
    picture = png(4, 4, (20, 120, 220))
    (tmp_path / "blue.png").write_bytes(picture)
    overrides = {"auth.mode": "jwt", "auth.jwt.secret": JWT_SECRET}
    with (
        running_server(tmp_path / "jwt", overrides) as server,
        browsers(server.api) as open_window,
    ):
        alice = open_window().open(token=jwt_token("alice"), channels=[channel])
        bob = open_window().open(token=jwt_token("bob", channels=[channel]), channels=[channel])
        alice.wait_connected()
        bob.wait_connected()
        alice.attach(tmp_path / "blue.png")
        alice.wait(lambda: alice.pending_files() == [("blue.png", "ready")], "the upload")
        alice.composer().send_keys("a picture" + Keys.ENTER)
        (image,) = bob.wait(
            lambda: (
                (found := bob.attachments("a picture")) and found[0]["image"]["shown"] and found
            ),
            "the thumbnail at bob",
        )
        assert image["image"]["naturalWidth"] == 4
        # Without the token the route does not serve it.
        anonymous = attachment_http.download(server.api_port, image["attachmentId"])
        assert anonymous.status == 401
        saved = tmp_path / "downloads"
        allow_downloads(bob, saved)
        _click_link(bob, "a picture", "blue.png")
        bob.wait(lambda: downloaded(saved / "blue.png") == picture, "blue.png saved by bob")
        assert alice.browser_errors() == [] and bob.browser_errors() == []
