"""The protocol package stays pure: no I/O, event loop or backend library imports.

Checked two ways: dynamically (import it in a fresh interpreter and look at
``sys.modules``, which also catches imports made by our own dependencies) and
statically (no forbidden import statement in any module, even behind a branch
that the dynamic check would not execute).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import chime_actors.protocol

FORBIDDEN = ("asyncio", "socket", "websockets", "redis", "cassandra", "thespian", "sqlite3")
PACKAGE_DIR = Path(chime_actors.protocol.__file__).parent
MODULES = sorted(
    f"chime_actors.protocol.{path.stem}" if path.stem != "__init__" else "chime_actors.protocol"
    for path in PACKAGE_DIR.glob("*.py")
)
# The probe runs without coverage: under bin/test coverage starts in every Python
# process (coverage's .pth file) and loads sqlite3 and socket for its own data.
PROBE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}


def test_importing_the_protocol_loads_no_io_modules() -> None:
    script = (
        "import sys\n"
        + "".join(f"import {module}\n" for module in MODULES)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=PROBE_ENV,
    )
    assert result.stdout.strip() == ""


def test_the_check_would_notice_asyncio() -> None:
    # Guard against a vacuous test: the same probe does see asyncio when loaded.
    script = "import sys, asyncio\nprint('asyncio' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=PROBE_ENV,
    )
    assert result.stdout.strip() == "True"


def test_no_module_has_a_forbidden_import_statement() -> None:
    assert len(MODULES) >= 6
    for path in PACKAGE_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
