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

from chime_actors.bench.target import services_layer

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


def backend_overrides(services: dict[str, Any], keyspace: str) -> dict[str, Any]:
    """``running_server`` overrides putting a server on the Redis and Cassandra of ``services``.

    The same settings as ``chime bench --services`` (``services_layer``: the
    Redis bus, Cassandra storage in ``keyspace``, consistency ONE), as dotted keys.
    """
    return _dotted(services_layer(services, keyspace))


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
