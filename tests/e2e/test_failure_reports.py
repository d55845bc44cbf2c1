"""A failed test's report shows the log of the servers it ran (tests/conftest.py)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.e2e

_INNER = """
from pathlib import Path

from tests.support.servers import running_server


def test_fails_inside_its_server(tmp_path: Path) -> None:
    with running_server(tmp_path / "s", workers=1):
        raise AssertionError("the inner test fails")


def test_passes_with_its_server(tmp_path: Path) -> None:
    with running_server(tmp_path / "s", workers=1):
        pass
"""


def test_a_failed_test_reports_the_log_tail_of_the_server_it_stopped(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile(test_inner=_INNER)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rN")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    # Only the failure gets a section, with the server's own lines in it.
    assert out.count("server log (last lines):") == 1, out
    assert '"message":"actor started"' in out, out
