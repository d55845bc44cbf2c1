"""Cost of a log line, Chime's against structlog: ``python -m chime_actors.bench.log_cost``.

Each case writes the same line, an INFO event with two context keys, to
``/dev/null``, with the fields of ``chime_actors.logs`` (level, UTC time, process
name, pid, logger, module, function, message, context). The figure is the best
of ``--repeat`` timeit runs, in microseconds per line. structlog is not a
dependency of Chime: the structlog cases run only where it is installed
(``pip install structlog``), and are skipped otherwise.

Cases:

* ``chime``: ``get_logger(...).info("...", k=v)``, through stdlib ``logging``
  and ``JsonFormatter`` (what every Chime process does).
* ``chime formatter``: ``JsonFormatter.format`` alone, on a ready record.
* ``chime filtered``: a ``debug`` call while the level is INFO.
* ``structlog``: structlog's own pipeline (filtering bound logger, level,
  ISO time, call-site module and function, ``JSONRenderer`` on orjson, bytes
  straight to the file): the fastest structlog set-up with these fields.
* ``structlog render``: level, ISO time and ``JSONRenderer(orjson)`` on a ready
  event dict (call site known): what ``chime formatter`` does.
* ``structlog stdlib``: the stdlib ``ProcessorFormatter`` set-up structlog
  documents for programs whose libraries log through ``logging`` (websockets,
  aiohttp, the Cassandra driver), which Chime would need to keep their lines
  in the same format.
* ``structlog filtered``: a ``debug`` call on the filtering bound logger at INFO.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from chime_actors.config import LogFormat, LoggingConfig, LogLevel
from chime_actors.logs import JsonFormatter, configure_logging, get_logger

MESSAGE = "connection opened"
CONTEXT = {"connectionId": "2f8281ec54c44fd9", "userId": "alice"}


def _best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def _chime_cases(devnull: Any) -> dict[str, Callable[[], object]]:
    configure_logging(
        LoggingConfig(level=LogLevel.INFO, format=LogFormat.JSON),
        process_name="gateway 1",
        stream=devnull,
    )
    log = get_logger("chime_actors.gateway.connection_actor")
    formatter = JsonFormatter("gateway 1")
    record = logging.LogRecord(
        "chime_actors.gateway.connection_actor", logging.INFO, __file__, 1, MESSAGE, None, None
    )
    record.ctx = CONTEXT

    def chime() -> None:
        log.info(MESSAGE, **CONTEXT)

    def chime_filtered() -> None:
        log.debug(MESSAGE, **CONTEXT)

    return {
        "chime": chime,
        "chime formatter": lambda: formatter.format(record),
        "chime filtered": chime_filtered,
    }


def _structlog_cases(devnull: Any, devnull_bytes: Any) -> dict[str, Callable[[], object]]:
    try:
        structlog: Any = importlib.import_module("structlog")
    except ImportError:
        return {}
    callsite = structlog.processors.CallsiteParameterAdder(
        [
            structlog.processors.CallsiteParameter.MODULE,
            structlog.processors.CallsiteParameter.FUNC_NAME,
        ]
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="time")
    renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    structlog.configure(
        processors=[structlog.processors.add_log_level, timestamper, callsite, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.BytesLoggerFactory(devnull_bytes),
        cache_logger_on_first_use=True,
    )
    bound = {
        "process": "gateway 1",
        "pid": os.getpid(),
        "logger": "chime_actors.gateway.connection_actor",
    }
    native = structlog.get_logger().bind(**bound)

    # The stdlib set-up: structlog events and plain logging records share one formatter.
    stdlib_logger = logging.getLogger("structlog-bench")
    stdlib_logger.propagate = False
    stdlib_logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(devnull)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(
                    serializer=lambda obj, **kw: orjson.dumps(obj, **kw).decode()
                ),
            ],
            foreign_pre_chain=[structlog.stdlib.add_log_level, timestamper, callsite],
        )
    )
    stdlib_logger.addHandler(handler)
    via_stdlib = structlog.wrap_logger(
        stdlib_logger,
        processors=[
            structlog.stdlib.add_log_level,
            timestamper,
            callsite,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    ).bind(**bound)

    event = {
        "event": MESSAGE,
        **bound,
        "module": "connection_actor",
        "func_name": "open",
        **CONTEXT,
    }

    def native_info() -> None:
        native.info(MESSAGE, **CONTEXT)

    def native_filtered() -> None:
        native.debug(MESSAGE, **CONTEXT)

    def stdlib_info() -> None:
        via_stdlib.info(MESSAGE, **CONTEXT)

    add_level = structlog.processors.add_log_level

    def render() -> object:
        return renderer(
            None, "info", timestamper(None, "info", add_level(None, "info", dict(event)))
        )

    return {
        "structlog": native_info,
        "structlog render": render,
        "structlog stdlib": stdlib_info,
        "structlog filtered": native_filtered,
    }


def main(argv: list[str] | None = None) -> int:
    """Print microseconds per line for each case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=20_000, help="calls per timeit run")
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs (the best counts)")
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as devnull, open(os.devnull, "wb") as devnull_bytes:
        cases = {**_chime_cases(devnull), **_structlog_cases(devnull, devnull_bytes)}
        for name, call in cases.items():
            print(f"{name:<20} {_best_us(call, args.number, args.repeat):7.2f} µs per line")
        if not any(name.startswith("structlog") for name in cases):
            print("structlog is not installed: pip install structlog to compare")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
