"""chime_actors.logs: JSON and pretty lines, context, exceptions, re-configuration."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from chime_actors.config import LogFormat, LoggingConfig, LogLevel
from chime_actors.logs import configure_logging, get_logger

JSON = LoggingConfig(level=LogLevel.INFO, format=LogFormat.JSON)
PRETTY = LoggingConfig(level=LogLevel.INFO, format=LogFormat.PRETTY)


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """configure_logging rewires the root logger; put pytest's wiring back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def a_function_that_logs(log_name: str) -> None:
    get_logger(log_name).info("connection opened", connectionId="c1", userId="alice")


def test_json_line_has_every_field() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="gateway 2", stream=stream)
    before = datetime.now(UTC).replace(microsecond=0)
    a_function_that_logs("chime_actors.gateway.connection")
    (line,) = lines(stream)
    assert line["level"] == "info"
    assert line["process"] == "gateway 2"
    assert line["pid"] == os.getpid()
    assert line["logger"] == "chime_actors.gateway.connection"
    assert line["module"] == "test_logs"
    assert line["function"] == "a_function_that_logs"
    assert line["message"] == "connection opened"
    assert line["connectionId"] == "c1"
    assert line["userId"] == "alice"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    logged = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= logged <= datetime.now(UTC)


def test_every_level_method_names_its_caller() -> None:
    stream = io.StringIO()
    configure_logging(
        LoggingConfig(level=LogLevel.DEBUG, format=LogFormat.JSON),
        process_name="p",
        stream=stream,
    )
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    log.log(logging.INFO, "l")
    got = [(line["level"], line["message"], line["function"]) for line in lines(stream)]
    name = "test_every_level_method_names_its_caller"
    assert got == [
        ("debug", "d", name),
        ("info", "i", name),
        ("warning", "w", name),
        ("error", "e", name),
        ("critical", "c", name),
        ("info", "l", name),
    ]


def test_level_threshold_comes_from_the_config() -> None:
    stream = io.StringIO()
    configure_logging(
        LoggingConfig(level=LogLevel.WARNING, format=LogFormat.JSON),
        process_name="p",
        stream=stream,
    )
    log = get_logger("t")
    log.info("hidden")
    assert not log.is_enabled_for(logging.INFO)
    log.warning("shown")
    assert [line["message"] for line in lines(stream)] == ["shown"]
    assert logging.getLogger().level == logging.WARNING


def test_bound_context_is_on_every_line_and_call_context_wins() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="p", stream=stream)
    log = get_logger("t", component="gateway").bind(connectionId="c1", userId="anon")
    log.info("one")
    log.info("two", userId="alice")
    first, second = lines(stream)
    assert (first["component"], first["connectionId"], first["userId"]) == (
        "gateway",
        "c1",
        "anon",
    )
    assert second["userId"] == "alice"


def test_reserved_context_keys_do_not_overwrite_fields() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="gateway 1", stream=stream)
    get_logger("t").info("started", pid=1, process="other", message="m")
    (line,) = lines(stream)
    assert (line["pid"], line["process"], line["message"]) == (os.getpid(), "gateway 1", "started")
    assert (line["ctx_pid"], line["ctx_process"], line["ctx_message"]) == (1, "other", "m")


def test_odd_context_values_still_give_one_valid_line() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    stream = io.StringIO()
    configure_logging(JSON, process_name="p", stream=stream)
    log = get_logger("t")
    log.info("a", thing=Opaque(), ids=("a", "b"), nested={1: "x"})
    log.info("b", huge=2**70)
    first, second = lines(stream)
    assert first["thing"] == "opaque!"
    assert first["ids"] == ["a", "b"]
    assert first["nested"] == {"1": "x"}
    assert second["huge"] == str(2**70)


def test_plain_stdlib_loggers_use_extra_ctx() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="p", stream=stream)
    logging.getLogger("lib").warning("hello %s", "world", extra={"ctx": {"channelId": "g"}})
    logging.getLogger("lib").warning("no context")
    first, second = lines(stream)
    assert (first["message"], first["channelId"]) == ("hello world", "g")
    assert "channelId" not in second


def test_exception_carries_type_message_and_traceback() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="p", stream=stream)
    log = get_logger("t")
    try:
        raise ValueError("bad frame")
    except ValueError:
        log.exception("handler crashed", connectionId="c9")
    (line,) = lines(stream)
    assert line["level"] == "error"
    assert line["connectionId"] == "c9"
    assert line["exc"] == {"type": "ValueError", "message": "bad frame"}
    assert line["traceback"].startswith("Traceback (most recent call last):")
    assert line["traceback"].endswith("ValueError: bad frame")


def test_exc_info_on_other_levels_and_stack_info() -> None:
    stream = io.StringIO()
    configure_logging(JSON, process_name="p", stream=stream)
    log = get_logger("t")
    log.warning("retrying", exc_info=KeyError("k"))
    log.info("where am I", stack_info=True)
    log.info("outside an except", exc_info=True)
    first, second, third = lines(stream)
    assert first["exc"] == {"type": "KeyError", "message": "'k'"}
    assert "stack" in second and "stack_info" not in second
    assert "exc" not in third


def test_pretty_format_is_one_readable_line() -> None:
    stream = io.StringIO()
    configure_logging(PRETTY, process_name="persister 1", stream=stream)
    a_function_that_logs("t")
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO     \[persister 1\] "
        r"test_logs\.a_function_that_logs: connection opened connectionId='c1' userId='alice'\n",
        text,
    )


def test_pretty_format_appends_the_traceback() -> None:
    stream = io.StringIO()
    configure_logging(PRETTY, process_name="p", stream=stream)
    try:
        raise RuntimeError("store down")
    except RuntimeError:
        get_logger("t").exception("write failed")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("write failed")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: store down"


def test_reconfiguring_replaces_the_handler() -> None:
    old, new = io.StringIO(), io.StringIO()
    configure_logging(JSON, process_name="supervisor", stream=old)
    configure_logging(JSON, process_name="gateway 1", stream=new)
    get_logger("t").info("once")
    assert old.getvalue() == ""
    assert [line["process"] for line in lines(new)] == ["gateway 1"]
    assert len(logging.getLogger().handlers) == 1


def test_default_stream_is_stderr_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(JSON, process_name="p")
    get_logger("t").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert orjson.loads(captured.err.splitlines()[-1])["message"] == "to stderr"


def test_wrapped_logger_is_exposed() -> None:
    assert get_logger("chime_actors.x").logger is logging.getLogger("chime_actors.x")


@pytest.mark.parametrize(("level", "kept"), [(LogLevel.INFO, False), (LogLevel.DEBUG, True)])
def test_websockets_per_connection_lines_are_debug(level: LogLevel, kept: bool) -> None:
    stream = io.StringIO()
    configure_logging(
        LoggingConfig(level=level, format=LogFormat.JSON), process_name="p", stream=stream
    )
    server_log = logging.getLogger("websockets.server")
    server_log.info("connection open")
    server_log.info("connection closed")
    server_log.info("server listening on %s", "127.0.0.1:1")  # not per connection: stays
    got = [(line["level"], line["message"]) for line in lines(stream)]
    per_connection = [("debug", "connection open"), ("debug", "connection closed")]
    assert got == [*(per_connection if kept else []), ("info", "server listening on 127.0.0.1:1")]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("stream", "json_lines"), [(io.StringIO(), True), (_Terminal(), False)])
def test_auto_format_is_pretty_on_a_terminal_and_json_otherwise(
    stream: io.StringIO, json_lines: bool
) -> None:
    configure_logging(
        LoggingConfig(level=LogLevel.INFO, format=LogFormat.AUTO), process_name="p", stream=stream
    )
    get_logger("t").info("hello", userId="alice")
    line = stream.getvalue().strip()
    assert line.startswith("{") is json_lines
    assert "hello" in line and "alice" in line
