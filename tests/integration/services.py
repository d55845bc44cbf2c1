"""Where the real Redis and Cassandra of ``bin/services up`` are.

``bin/test`` starts them and sets ``CHIME_SERVICES_JSON``; it also sets
``CHIME_REQUIRE_SERVICES=1`` so that in CI a missing service fails the run instead
of quietly skipping the integration tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ENV = "CHIME_SERVICES_JSON"


def load_services(*needed: str) -> dict[str, Any]:
    """The services file, checked to hold ``needed``; skip (or fail in CI) otherwise."""
    path = os.environ.get(ENV)
    why = None
    data: dict[str, Any] = {}
    if not path:
        why = f"{ENV} is not set (run bin/services up and point it at services.json)"
    else:
        data = json.loads(Path(path).read_text())
        missing = [name for name in needed if name not in data]
        if missing:
            why = f"{path} has no {', '.join(missing)}"
    if why is not None:
        if os.environ.get("CHIME_REQUIRE_SERVICES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return data
