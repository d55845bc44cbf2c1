"""Hooks for the whole suite."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support.servers import server_logs_to_report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the log tail of each server it ran."""
    report = yield
    tails = server_logs_to_report()  # read at every phase: none is left for the next test
    if report.failed:
        for path, tail in tails:
            report.sections.append((f"server log (last lines): {path}", tail))
    return report
