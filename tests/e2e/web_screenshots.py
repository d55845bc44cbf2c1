"""Take the README's screenshots of the web page: desktop (1280x800) and phone (390x844).

    .venv/bin/python -m tests.e2e.web_screenshots [docs/images]

Starts a real ``chime serve`` on free ports, has a few Python clients chat in it,
opens the page in headless Chromium at both sizes and saves
``web-desktop.png`` and ``web-phone.png``.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from pathlib import Path

import orjson
from websockets.sync.client import connect

from tests.e2e.browser import DESKTOP, PHONE, browsers
from tests.e2e.server_process import ServerProcess, running_server

CONVERSATION = [
    ("bob", "general", "Morning! Is the release still on for today?"),
    ("carol", "general", "Yes, once the last browser test is green."),
    ("bob", "general", "Great. I'll keep the deploy window open after lunch."),
    ("carol", "general", "Reconnects work now too: I restarted a gateway and nothing was lost."),
    ("bob", "random", "Anyone up for coffee?"),
]
LIVE = [
    ("carol", "general", "The phone layout works as well"),
    ("bob", "random", "Coffee at 3?"),
    ("bob", "random", "I'll bring biscuits."),
]


def post(server: ServerProcess, user: str, channel: str, content: str) -> None:
    with connect(server.url, open_timeout=10) as ws:
        ws.send(orjson.dumps({"type": "connect", "userId": user, "channels": [channel]}).decode())
        send = {"type": "send", "content": content, "clientMsgId": uuid.uuid4().hex}
        ws.send(orjson.dumps(send).decode())
        while orjson.loads(ws.recv(10)).get("type") != "ack":
            pass


def take(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp)) as server:
        for user, channel, content in CONVERSATION:
            post(server, user, channel, content)
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
                # The composer's focus ring would only be noise in a picture.
                page.driver.execute_script("document.activeElement.blur()")
            desktop.driver.save_screenshot(str(out / "web-desktop.png"))
            phone.driver.save_screenshot(str(out / "web-phone.png"))
    print(f"saved {out / 'web-desktop.png'} and {out / 'web-phone.png'}")


if __name__ == "__main__":
    take(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
