"""Structured logging: every process writes its own lines, one JSON object each.

Each process of a server (supervisor, gateways, persisters, ...) calls
``configure_logging`` once it runs (after the fork), then logs through the stdlib
``logging`` module. The records never travel through Thespian's logger process,
which costs about 4 ms a line (docs/architecture.md).

Use ``get_logger`` and pass the event's context as keyword arguments::

    log = get_logger(__name__)
    log.info("connection opened", connectionId=connection_id, userId=user_id)

    conn_log = log.bind(connectionId=connection_id)   # context on every line
    conn_log.warning("send queue full, closing", queued=1000)

which writes (``format: json``)::

    {"level":"info","time":"2026-11-27T10:00:00.123Z","process":"gateway 2",
     "pid":4242,"logger":"chime_actors.gateway.connection","module":"connection",
     "function":"open","message":"connection opened","connectionId":"c7",
     "userId":"alice"}

Fields: ``level``, ``time`` (UTC, ISO-8601 with milliseconds and ``Z``),
``process`` (the name given to ``configure_logging``), ``pid``, ``logger``,
``module``, ``function``, ``message``, then the context keys at the top level
(a context key that would overwrite one of those gets a ``ctx_`` prefix). With
an exception, ``exc`` holds ``{"type", "message"}`` and ``traceback`` the
formatted traceback. ``format: pretty`` writes the same as a one-line summary
for people. Plain stdlib loggers work too: ``extra={"ctx": {...}}`` supplies the
context.

Why this module and not structlog (measured 2026-12-01 with
``python -m chime_actors.bench.log_cost``, structlog 26.1.0, the 2-core box; the
best of 7 timeit runs of 20,000 lines, microseconds per INFO line with two
context keys written to ``/dev/null``, the same fields in each case):

====================================================  ========
case                                                  µs/line
====================================================  ========
Chime: ``log.info(...)`` through ``logging``          9.4-12.3
Chime's ``JsonFormatter.format`` alone                2.3-2.5
structlog's own pipeline (no stdlib), orjson          7.3-7.6
structlog's level + time + ``JSONRenderer`` alone     2.1-2.2
structlog through stdlib ``ProcessorFormatter``       19.4
a filtered-out ``debug`` call, Chime / structlog      0.4 / 0.3-0.5
====================================================  ========

The formatters cost the same; what a line costs is the stdlib record around it.
structlog's own pipeline saves ~3 µs a line, but only for our own calls: the
libraries (websockets, aiohttp, the Cassandra driver, Thespian) log through
``logging``, and their lines must come out in the same JSON. structlog's way to
do that, the ``ProcessorFormatter`` set-up, is twice as slow as this module
(19.4 against ~11 µs). Keeping two pipelines (native for us, stdlib for the
libraries) and their fields identical would buy ~3 µs on lines that are
events (start, drain, restart, a refused connect), never per chat message: a
few hundred lines a second cost well under 1 % of a core either way. Thespian's
root logger has to be replaced in each actor process (``_fresh_root``) with
structlog too. So Chime keeps this module, stdlib ``logging`` and orjson, and
no dependency.

What must never be logged, and nothing here enforces it: secrets (tokens,
passwords, the JWT secret) at any level, and message contents at info or above.
Log ids (``channelId``, ``messageId``, ``userId``, ``connectionId``) and sizes, not
what people wrote.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any, Final, TypeAlias

import orjson

from chime_actors.config import LogFormat, LoggingConfig, LogLevel

__all__ = [
    "ContextLogger",
    "JsonFormatter",
    "PrettyFormatter",
    "configure_logging",
    "get_logger",
]

_LEVELS: Final[Mapping[LogLevel, int]] = {
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
    LogLevel.CRITICAL: logging.CRITICAL,
}
_RESERVED: Final = frozenset(
    {
        "level",
        "time",
        "process",
        "pid",
        "logger",
        "module",
        "function",
        "message",
        "exc",
        "traceback",
        "stack",
    }
)

_ExcInfo: TypeAlias = (
    tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]
)


def configure_logging(
    config: LoggingConfig, *, process_name: str, stream: IO[str] | None = None
) -> None:
    """Send this process's logging to ``stream``, one line per record.

    Replaces every handler of the root logger, so calling it again (in a forked
    child, or in tests) never duplicates lines, and sets the root level.

    Args:
        config: level and format (``logging`` section of the configuration).
        process_name: how this process calls itself in each line, e.g.
            ``"gateway 2"`` (the same name as in ``ps``).
        stream: where lines go; None means ``sys.stderr`` as it is at call time.
    """
    formatter: logging.Formatter
    target = sys.stderr if stream is None else stream
    pretty = config.format is LogFormat.PRETTY or (
        config.format is LogFormat.AUTO and _is_terminal(target)
    )
    formatter = PrettyFormatter(process_name) if pretty else JsonFormatter(process_name)
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    root = _fresh_root()
    root.addHandler(handler)
    root.setLevel(_LEVELS[config.level])
    websockets_server = logging.getLogger("websockets.server")
    if not any(isinstance(f, _PerConnectionAtDebug) for f in websockets_server.filters):
        websockets_server.addFilter(_PerConnectionAtDebug())


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


class _PerConnectionAtDebug(logging.Filter):
    """websockets logs "connection open" / "connection closed" at INFO, two lines
    per client: at thousands of connects a second that is most of the log. They
    become DEBUG lines, kept only when the level is debug."""

    _LINES = frozenset({"connection open", "connection closed"})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.msg in self._LINES:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def _fresh_root() -> logging.Logger:
    """Install a new root logger and re-parent every existing logger onto it.

    Inside a Thespian actor process the root logger is Thespian's forwarder, which
    sends each record to Thespian's logger process (~4 ms a line) and refuses new
    handlers. Each Chime process writes its own JSON lines instead, so we replace
    the root outright. Loggers created earlier (at import, before the fork) still
    point at the old root, hence the re-parenting. The old handlers are dropped,
    not closed: they may share our stream.
    """
    old_root = logging.root
    root = logging.RootLogger(logging.WARNING)
    logging.root = root
    logging.Logger.root = root
    logging.Logger.manager.root = root
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and (
            logger.parent is old_root
            or (logger.parent is not None and logger.parent.name == "root")
        ):
            logger.parent = root
    return root


def get_logger(name: str, **context: Any) -> ContextLogger:
    """A logger that takes the event's context as keyword arguments.

    Args:
        name: the logger's name, normally ``__name__``.
        **context: fields added to every line of this logger.
    """
    return ContextLogger(logging.getLogger(name), context)


class ContextLogger:
    """Wraps a stdlib logger: ``log.info("msg", userId="alice")``.

    ``module`` and ``function`` in the output are those of the caller, not this
    class's. Keyword arguments named ``exc_info`` and ``stack_info`` keep their
    stdlib meaning; every other one is context.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._context: dict[str, Any] = dict(context or {})

    @property
    def logger(self) -> logging.Logger:
        """The wrapped stdlib logger."""
        return self._logger

    def bind(self, **context: Any) -> ContextLogger:
        """A logger like this one with more context on every line."""
        return ContextLogger(self._logger, {**self._context, **context})

    def is_enabled_for(self, level: int) -> bool:
        """Whether a record at ``level`` would be written (skip costly context if not)."""
        return self._logger.isEnabledFor(level)

    def debug(self, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at DEBUG."""
        self._log(logging.DEBUG, msg, exc_info, context)

    def info(self, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at INFO."""
        self._log(logging.INFO, msg, exc_info, context)

    def warning(self, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, msg, exc_info, context)

    def error(self, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at ERROR."""
        self._log(logging.ERROR, msg, exc_info, context)

    def exception(self, msg: str, **context: Any) -> None:
        """Log at ERROR with the exception being handled (call it in an ``except``)."""
        self._log(logging.ERROR, msg, True, context)

    def critical(self, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at CRITICAL."""
        self._log(logging.CRITICAL, msg, exc_info, context)

    def log(self, level: int, msg: str, *, exc_info: Any = None, **context: Any) -> None:
        """Log at any stdlib level."""
        self._log(level, msg, exc_info, context)

    def _log(self, level: int, msg: str, exc_info: Any, context: dict[str, Any]) -> None:
        if self._logger.manager is not logging.Logger.manager:
            # Thespian gives each actor process a new logging Manager; a logger
            # made at import time (before the fork) belongs to the old one and
            # would write through the parent's handlers. Re-fetch it by name.
            self._logger = logging.getLogger(self._logger.name)
        if not self._logger.isEnabledFor(level):
            return
        stack_info = bool(context.pop("stack_info", False))
        ctx = {**self._context, **context} if self._context else context
        # stacklevel 3: skip _log and the public method, so module/function name the caller.
        self._logger.log(
            level,
            msg,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=3,
            extra={"ctx": ctx},
        )


def _utc_time(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _context(record: logging.LogRecord) -> Mapping[str, Any]:
    ctx = getattr(record, "ctx", None)
    return ctx if isinstance(ctx, Mapping) else {}


def _exc_fields(exc_info: _ExcInfo) -> dict[str, Any]:
    kind, value, _ = exc_info
    if kind is None:
        return {}
    return {
        "exc": {"type": kind.__qualname__, "message": str(value)},
        "traceback": "".join(traceback.format_exception(*exc_info)).rstrip("\n"),
    }


def _fallback(value: Any) -> Any:
    """orjson's hook for types it does not know: their ``str``."""
    return str(value)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline; the handler adds it)."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        """The record's JSON line; never raises on odd context values."""
        line: dict[str, Any] = {
            "level": record.levelname.lower(),
            "time": _utc_time(record),
            "process": self._process_name,
            "pid": record.process,
            "logger": record.name,
            "module": record.module,
            "function": record.funcName,
            "message": record.getMessage(),
        }
        context = _context(record)
        for key, value in context.items():
            line[f"ctx_{key}" if key in _RESERVED else str(key)] = value
        if record.exc_info:
            line.update(_exc_fields(record.exc_info))
        if record.stack_info:
            line["stack"] = record.stack_info
        try:
            encoded = orjson.dumps(line, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # orjson.JSONEncodeError, e.g. an int beyond 64 bits in the context
            for key, value in context.items():
                line[f"ctx_{key}" if key in _RESERVED else str(key)] = repr(value)
            encoded = orjson.dumps(line, default=_fallback, option=orjson.OPT_NON_STR_KEYS)
        return encoded.decode("utf-8")


class PrettyFormatter(logging.Formatter):
    """Formats a record for people: ``time LEVEL process module.function: message k=v``."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line, followed by the traceback if there is one."""
        parts = [
            _utc_time(record),
            f"{record.levelname:<8}",
            f"[{self._process_name}]",
            f"{record.module}.{record.funcName}:",
            record.getMessage(),
        ]
        parts.extend(f"{key}={value!r}" for key, value in _context(record).items())
        text = " ".join(parts)
        if record.exc_info and record.exc_info[0] is not None:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.stack_info:
            text += "\n" + record.stack_info
        return text
