"""Drive the web page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``).

``browsers()`` opens as many windows as a test wants and quits every one of them
(and so its chromedriver) however the test ends. ``Page`` reads and drives the
chat page the way a person does: through the labelled message box, Enter to send,
the buttons; what it reads comes from the DOM. Every wait is an explicit
``WebDriverWait`` for a condition, never a sleep.

Chromium missing: with ``CHIME_REQUIRE_SERVICES=1`` (CI) the tests fail, else they
are skipped, as the integration tests do for Redis and Cassandra.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest

from tests.e2e.load import server_pids
from tests.support.servers import ServerProcess

T = TypeVar("T")

WAIT_S = 20.0
CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
DESKTOP = (1280, 800)
PHONE = (390, 844)

# What the page shows of each message, oldest first (one DOM read per poll).
_READ_MESSAGES = """
return Array.from(document.querySelectorAll('#messages > li.message')).map((li) => ({
  messageId: li.dataset.messageId ?? null,
  clientMsgId: li.dataset.clientMsgId ?? null,
  status: li.dataset.status,
  user: li.querySelector('.author').textContent,
  content: li.querySelector('.content').textContent,
  time: li.querySelector('time').textContent,
  datetime: li.querySelector('time').getAttribute('datetime'),
}));
"""

# The files listed under a message (found by its content), or null if no message has it.
_READ_ATTACHMENTS = """
const li = Array.from(document.querySelectorAll(arguments[1] + ' > li.message'))
  .find((li) => li.querySelector('.content').textContent === arguments[0]);
if (!li) return null;
return Array.from(li.querySelectorAll('.attachment')).map((item) => {
  const link = item.querySelector('.attachment-link');
  const img = item.querySelector('img.thumbnail');
  return {
    attachmentId: item.dataset.attachmentId,
    name: link.textContent,
    href: link.href,
    size: item.querySelector('.attachment-size').textContent,
    image: img ? {src: img.src, alt: img.alt, shown: !img.hidden && img.complete,
                  naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight} : null,
  };
});
"""
_READ_PENDING_FILES = """
return Array.from(document.querySelectorAll('#' + arguments[0] + ' > li')).map((li) => ({
  name: li.querySelector('.file-name').textContent,
  state: li.dataset.state,
}));
"""


def _find(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        # An explicit path that is not there counts as missing, never as "look elsewhere".
        path = os.environ[env]
        return path if os.access(path, os.X_OK) else None
    for name in names:
        if found := shutil.which(name):
            return found
    return None


def require_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; fail in CI, skip elsewhere, when missing."""
    chromium = _find(CHROMIUM_NAMES, "CHIME_CHROMIUM")
    driver = _find(DRIVER_NAMES, "CHIME_CHROMEDRIVER")
    found = {"chromium": chromium, "chromedriver": driver}
    missing = [name for name, path in found.items() if not path]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the test extras)")
    if missing:
        why = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CHIME_REQUIRE_SERVICES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    assert chromium is not None and driver is not None
    return chromium, driver


@dataclass
class Message:
    """One message as the page shows it."""

    message_id: str | None
    client_msg_id: str | None
    status: str
    user: str
    content: str
    time: str
    datetime: str


class Page:
    """The chat page in one browser window."""

    def __init__(self, driver: Any, api: str) -> None:
        self.driver = driver
        self.api = api

    # --- navigation ---------------------------------------------------------------

    def open(
        self, user: str | None = None, channels: list[str] | None = None, **params: str
    ) -> Page:
        """Load the page (``/?user=...&channels=...`` when given) and wait for its script."""
        query = dict(params)
        if user is not None:
            query["user"] = user
        if channels is not None:
            query["channels"] = ",".join(channels)
        self.driver.get(f"{self.api}/{'?' + urlencode(query) if query else ''}")
        self.wait(lambda: self.connection_state() != "", "the page's script to run")
        return self

    def reload(self) -> None:
        self.driver.refresh()
        self.wait(lambda: self.connection_state() != "", "the page to load again")

    # --- reading ------------------------------------------------------------------

    def element(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def chat_error(self) -> str:
        """The error line the page shows under the messages (empty if none)."""
        value = self.driver.execute_script(
            "return document.getElementById('chat-error')?.textContent ?? ''"
        )
        return str(value)

    def connection_state(self) -> str:
        value = self.driver.execute_script(
            "return document.getElementById('connection').dataset.state ?? ''"
        )
        return str(value)

    def messages(self) -> list[Message]:
        rows = self.driver.execute_script(_READ_MESSAGES)
        return [
            Message(
                r["messageId"],
                r["clientMsgId"],
                r["status"],
                r["user"],
                r["content"],
                r["time"],
                r["datetime"],
            )
            for r in rows
        ]

    def contents(self) -> list[str]:
        return [m.content for m in self.messages()]

    def channel_names(self) -> list[str]:
        names = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#channel-list > li'))"
            ".map((li) => li.dataset.channel)"
        )
        return [str(n) for n in names]

    def attachments(self, content: str, list_selector: str = "#messages") -> list[Any] | None:
        """The files shown under the message reading ``content`` (None: no such message).

        Each is a dict: ``attachmentId``, ``name``, ``href``, ``size`` (as shown),
        and ``image`` (the thumbnail's ``src``, ``alt``, ``shown``,
        ``naturalWidth``, ``naturalHeight``) or None.
        """
        found = self.driver.execute_script(_READ_ATTACHMENTS, content, list_selector)
        return None if found is None else list(found)

    def pending_files(self, list_id: str = "attach-list") -> list[tuple[str, str]]:
        """(name, state) of each file waiting for the next message, in order."""
        rows = self.driver.execute_script(_READ_PENDING_FILES, list_id)
        return [(str(r["name"]), str(r["state"])) for r in rows]

    def browser_errors(self) -> list[str]:
        """Severe console entries (uncaught exceptions, failed loads, CSP refusals)."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE"
        ]

    # --- waiting ------------------------------------------------------------------

    def wait(self, condition: Callable[[], T], what: str, timeout: float = WAIT_S) -> T:
        """Poll ``condition`` (its truthy value is returned) with WebDriverWait."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            value: T = WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                lambda _: condition()
            )
        except TimeoutException:
            raise AssertionError(
                f"timed out waiting for {what}; the page shows "
                f"{[(m.content, m.status) for m in self.messages()]} "
                f"(connection: {self.connection_state()!r}, error: {self.chat_error()!r})"
            ) from None
        return value

    def wait_connected(self, timeout: float = WAIT_S) -> None:
        self.wait(lambda: self.connection_state() == "open", "the page to connect", timeout)

    def wait_contents(
        self, expected: list[str], what: str = "", timeout: float = WAIT_S
    ) -> list[Message]:
        """Wait until the page shows exactly ``expected`` (in order), all stored."""

        def shown() -> list[Message] | None:
            messages = self.messages()
            ok = [m.content for m in messages] == expected and all(
                m.status == "stored" for m in messages
            )
            return messages if ok else None

        return self.wait(shown, what or f"the page to show {expected}", timeout)

    # --- acting -------------------------------------------------------------------

    def composer(self) -> Any:
        """The message box, found by its accessible name as a person's tools would."""
        box = self.element("composer")
        assert box.accessible_name == "Message", box.accessible_name
        return box

    def type_and_enter(self, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.composer()
        box.send_keys(text)
        box.send_keys(Keys.ENTER)

    def attach(self, *paths: Path, input_id: str = "attach-input") -> None:
        """Choose ``paths`` in the labelled file input, as the file picker would."""
        box = self.element(input_id)
        # One send_keys with the paths on lines of their own is one choice of them all.
        box.send_keys("\n".join(str(path) for path in paths))

    def send(self, text: str) -> Message:
        """Send ``text`` from the message box; wait until the page shows it stored."""
        self.type_and_enter(text)
        return self.wait(
            lambda: next(
                (m for m in self.messages() if m.content == text and m.status == "stored"), None
            ),
            f"{text!r} to be stored",
        )


@contextlib.contextmanager
def browsers(api: str) -> Iterator[Callable[..., Page]]:
    """``with browsers(server.api) as open_window: page = open_window()`` (desktop size).

    ``api`` is the base URL the page is loaded from.

    Every window opened is quit on the way out, so no chromium or chromedriver
    process outlives the test.
    """
    chromium, driver_path = require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def open_window(size: tuple[int, int] = DESKTOP, scale: float = 1.0) -> Page:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in (
            "--headless=new",
            "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--lang=en-GB",
            f"--window-size={size[0]},{size[1]}",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # The driver is given, so selenium never tries to download one.
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        drivers.append(driver)
        # The viewport itself, whatever the window's own decorations take.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": size[0],
                "height": size[1],
                "deviceScaleFactor": scale,
                "mobile": size[0] < 600,
            },
        )
        # No sliding panels: a click Selenium aims at a button that is still
        # moving can land beside it (the phone's channel panel slides in for
        # 0.15 s), and the page honours this preference (style.css).
        driver.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]},
        )
        return Page(driver, api)

    try:
        yield open_window
    finally:
        for driver in drivers:
            with contextlib.suppress(Exception):
                driver.quit()


def gateways_serving(server: ServerProcess, workers: int = 2) -> set[str]:
    """Titles of the gateways holding an established chat connection of ``server``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == server.chat_port and fields[3] == "01":  # ESTABLISHED
                    inodes.add(f"socket:[{fields[9]}]")
    found = set()
    for index in range(1, workers + 1):
        title = f"chime: gateway {index}"
        for pid in server_pids(server, title):
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) in inodes:
                            found.add(title)
    return found
