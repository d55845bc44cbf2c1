from __future__ import annotations

import time

import jwt
import pytest

from chime_actors.auth import Authenticator, Identity, bearer_token
from chime_actors.config import load_config
from chime_actors.errors import ProtocolError

SECRET = "s" * 32


def _authenticator(mode: str = "jwt", **jwt_keys: object) -> Authenticator:
    overrides: dict[str, object] = {"auth.mode": mode}
    if mode == "jwt":
        overrides["auth.jwt.secret"] = SECRET
    for key, value in jwt_keys.items():
        overrides[f"auth.jwt.{key}"] = value
    return Authenticator(load_config(env={}, overrides=overrides).auth)


def _token(secret: str = SECRET, **claims: object) -> str:
    body: dict[str, object] = {"sub": "alice", "exp": int(time.time()) + 60}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")


def _refused(auth: Authenticator, **kwargs: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        auth.identify(**kwargs)  # type: ignore[arg-type]
    assert caught.value.code == "unauthorized"
    assert caught.value.close_code == 4001
    return caught.value


def test_insecure_mode_trusts_the_frame_then_the_query_then_assigns_anon() -> None:
    auth = _authenticator("insecure")
    assert auth.identify(token=None, claimed_user="bob", query_user="q") == Identity("bob")
    assert auth.identify(token=None, claimed_user=None, query_user="q") == Identity("q")
    anon = auth.identify(token=None, claimed_user=None)
    assert anon.user_id.startswith("anon-") and anon.channels is None
    _refused(auth, token=None, claimed_user="no spaces allowed")


def test_jwt_mode_takes_the_user_from_sub_and_grants_from_channels() -> None:
    auth = _authenticator()
    identity = auth.identify(token=_token(channels=["general"]), claimed_user=None)
    assert identity == Identity("alice", frozenset({"general"}))
    assert identity.may_access("general") and not identity.may_access("secret")
    assert auth.identify(token=_token(), claimed_user="alice").channels is None


@pytest.mark.parametrize(
    ("token", "claimed"),
    [
        (None, None),
        ("not-a-jwt", None),
        (_token(secret="x" * 32), None),  # wrong signature
        (_token(exp=int(time.time()) - 10), None),  # expired
        (_token(exp=None), None),  # no expiry
        (_token(sub=None), None),  # no subject
        (_token(channels="general"), None),  # channels must be a list
        (_token(), "mallory"),  # userId differs from sub
    ],
)
def test_jwt_mode_refuses_bad_tokens(token: str | None, claimed: str | None) -> None:
    _refused(_authenticator(), token=token, claimed_user=claimed)


def test_audience_and_issuer_are_checked_when_configured() -> None:
    auth = _authenticator(audience="chime", issuer="https://id.example")
    good = _token(aud="chime", iss="https://id.example")
    assert auth.identify(token=good, claimed_user=None).user_id == "alice"
    _refused(auth, token=_token(aud="other", iss="https://id.example"), claimed_user=None)
    _refused(auth, token=_token(aud="chime"), claimed_user=None)


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "bearer  abc "}) == "abc"
    assert bearer_token({"authorization": "Basic abc"}) is None
    assert bearer_token({}) is None
