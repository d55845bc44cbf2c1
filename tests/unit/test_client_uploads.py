"""Tests for how chime_actors.client.uploads reads the server's answer to an upload."""

from __future__ import annotations

import orjson
import pytest

from chime_actors.client.uploads import _answer
from chime_actors.errors import RequestFailed


def test_a_rate_limited_upload_says_when_to_try_again() -> None:
    problem = {
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "over limits.upload_bytes_per_hour; try again later",
        "code": "rate_limited",
        "retryAfterMs": 1_200_000,
    }
    with pytest.raises(RequestFailed) as refused:
        _answer(429, orjson.dumps(problem))
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after_ms == 1_200_000
    assert refused.value.message == problem["detail"]


def test_a_refusal_without_a_problem_body_is_unavailable_with_the_status() -> None:
    with pytest.raises(RequestFailed) as refused:
        _answer(502, b"<html>bad gateway</html>")
    assert (refused.value.code, refused.value.retry_after_ms) == ("unavailable", None)
    assert refused.value.message == "the upload was answered with HTTP 502"
