"""Take the README's screenshots of the web page: desktop (1280x800) and phone (390x844).

    .venv/bin/python -m tests.e2e.web_screenshots [docs/images]

Starts a real ``chime serve`` on free ports, has a few Python clients chat in it
(a thread, a file attached, and someone typing), opens the page in headless Chromium at both
sizes (the desktop one with the thread open) and saves ``web-desktop.png`` and
``web-phone.png``. Without an emoji font (Debian's ``fonts-noto-color-emoji``)
the 👍 buttons show as empty boxes.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import orjson
from websockets.sync.client import connect

from tests.e2e import attachment_http
from tests.e2e.browser import DESKTOP, PHONE, browsers
from tests.support.servers import ServerProcess, running_server

CONVERSATION = [
    ("bob", "general", "Morning! Is the release still on for today?"),
    ("carol", "general", "Yes, once the last browser test is green."),
    ("bob", "general", "Great. I'll keep the deploy window open after lunch."),
    ("carol", "general", "Reconnects work now too: I restarted a gateway and nothing was lost."),
    ("bob", "random", "Anyone up for coffee?"),
]
# A file under CONVERSATION[1], uploaded by its author.
ATTACHED = ("browser-tests.txt", b"16 passed in 212.4s\n" * 40)
THREAD = [
    ("bob", "Which gateway? I want to try that on staging."),
    ("carol", "Gateway 2, with kill -9. The page resent what was pending."),
]
LIVE = [
    ("carol", "general", "The phone layout works as well"),
    ("bob", "random", "Coffee at 3?"),
    ("bob", "random", "I'll bring biscuits."),
]


def post(
    server: ServerProcess,
    user: str,
    channel: str,
    content: str,
    thread_id: str | None = None,
    attachments: list[str] | None = None,
) -> str:
    """Send one message as ``user``; returns its messageId once acked."""
    with connect(server.url, open_timeout=10) as ws:
        ws.send(orjson.dumps({"type": "connect", "userId": user, "channels": [channel]}).decode())
        send = {"type": "send", "content": content, "clientMsgId": uuid.uuid4().hex}
        if attachments:
            send["attachments"] = attachments
        ws.send(orjson.dumps({**send, "threadId": thread_id}).decode())
        while (frame := orjson.loads(ws.recv(10))).get("type") != "ack":
            pass
        return str(frame["messageId"])


def upload(server: ServerProcess, user: str, filename: str, data: bytes) -> str:
    """Upload a file as ``user``; returns its attachmentId."""
    reply = attachment_http.upload(server.api_port, data, filename, headers={"X-Chime-User": user})
    assert reply.status == 201, reply
    return str(reply.json()["attachmentId"])


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as server:
        ids = []
        for n, (user, channel, content) in enumerate(CONVERSATION):
            files = [upload(server, user, *ATTACHED)] if n == 1 else None
            ids.append(post(server, user, channel, content, attachments=files))
        # A thread under carol's news about reconnects.
        for user, content in THREAD:
            post(server, user, "general", content, thread_id=ids[3])
        with browsers(server.api) as open_window:
            desktop = open_window(DESKTOP)
            phone = open_window(PHONE, scale=2)
            for page in (desktop, phone):
                page.open("alice", ["general", "random", "design"])
                page.wait_connected()
                page.wait(lambda p=page: len(p.messages()) == 4, "the conversation")
            desktop.send("Sounds good. I'll watch the dashboards.")
            for user, channel, content in LIVE:
                post(server, user, channel, content)
            for page in (desktop, phone):
                page.wait(lambda p=page: len(p.messages()) == 6, "the live messages")
                page.wait(
                    lambda p=page: p.driver.find_elements(
                        "css selector", "#channel-list li[data-channel=random] .unread"
                    ),
                    "the unread badge",
                )
            # The desktop picture shows the thread panel beside the conversation.
            root = f'#messages li[data-message-id="{ids[3]}"] .thread-open'
            desktop.driver.find_element("css selector", root).click()
            desktop.wait(
                lambda: (
                    len(desktop.driver.find_elements("css selector", "#thread-messages li"))
                    == 1 + len(THREAD)
                ),
                "the thread",
            )
            with connect(server.url, open_timeout=10) as ws:
                hello = {"type": "connect", "userId": "bob", "channels": ["general"]}
                ws.send(orjson.dumps(hello).decode())
                ws.recv(10)
                ws.send(orjson.dumps({"type": "typing", "channelId": "general"}).decode())
                for page in (desktop, phone):
                    page.wait(lambda p=page: p.element("typing").text, "bob's typing")
                    # The composer's focus ring would only be noise in a picture.
                    page.driver.execute_script("document.activeElement.blur()")
                desktop.driver.save_screenshot(str(out / "web-desktop.png"))
                phone.driver.save_screenshot(str(out / "web-phone.png"))
    print(f"saved {out / 'web-desktop.png'} and {out / 'web-phone.png'}")


if __name__ == "__main__":
    take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
