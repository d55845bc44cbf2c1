"""Where ``chime client`` reads lines and shows them: a terminal, or plain pipes.

:class:`PromptScreen` (a terminal) keeps the input line at the bottom with a
status bar under it, and prints every line above it: prompt_toolkit's
``print_formatted_text`` redraws the prompt after each one, and
``patch_stdout`` does the same for anything else printed. :class:`PlainScreen`
(stdin or stdout not a terminal) reads lines and prints plain text, for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from chime_actors.cli.chat_view import STYLE_RULES, Fragments, plain


class Screen(Protocol):
    """What the chat session needs from a screen."""

    def show(self, line: Fragments) -> None:
        """Print one line above the input line."""

    def refresh(self) -> None:
        """The prompt or the status bar changed: redraw them."""

    async def read_line(self) -> str | None:
        """The next line typed; None at end of input (Ctrl-D, Ctrl-C, EOF)."""

    def running(self) -> contextlib.AbstractContextManager[None]:
        """Held while the session runs (the terminal screen patches stdout)."""


class PromptScreen:
    """A terminal: input line and status bar stay put, messages print above."""

    def __init__(self, prompt: Callable[[], str], status: Callable[[], Fragments]) -> None:
        self._style = Style.from_dict(STYLE_RULES)
        self._session: PromptSession[str] = PromptSession(
            message=lambda: prompt(),
            bottom_toolbar=lambda: FormattedText(status()),
            style=self._style,
            # The typed line goes; it comes back as a message once stored (✓).
            erase_when_done=True,
        )

    def show(self, line: Fragments) -> None:
        print_formatted_text(FormattedText(line), style=self._style)

    def refresh(self) -> None:
        app = self._session.app
        if app.is_running:
            app.invalidate()

    async def read_line(self) -> str | None:
        try:
            return await self._session.prompt_async()
        except (EOFError, KeyboardInterrupt):
            return None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with patch_stdout(raw=True):
            yield


class PlainScreen:
    """Pipes: lines from stdin, plain text to stdout (no prompt, no colours)."""

    def __init__(self) -> None:
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader: threading.Thread | None = None

    def show(self, line: Fragments) -> None:
        print(plain(line), flush=True)

    def refresh(self) -> None:
        pass

    async def read_line(self) -> str | None:
        if self._reader is None:
            loop = asyncio.get_running_loop()
            # A daemon thread: a blocking readline must not keep the process alive
            # after /quit or a lost server (asyncio.run waits for executor threads).
            self._reader = threading.Thread(
                target=self._read_stdin, args=(loop,), name="chime stdin", daemon=True
            )
            self._reader.start()
        return await self._lines.get()

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(self._lines.put_nowait, line.rstrip("\n"))
            loop.call_soon_threadsafe(self._lines.put_nowait, None)
        except RuntimeError:
            return  # the loop is closed: the session ended before the input did

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        yield
