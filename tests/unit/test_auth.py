from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from chime_actors.auth import Authenticator, Identity, bearer_token
from chime_actors.config import load_config
from chime_actors.errors import ConfigError, ProtocolError

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
    token = _token(channels=["general"])
    identity = auth.identify(token=token, claimed_user=None)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert identity == Identity("alice", frozenset({"general"}), float(exp))
    assert identity.may_access("general") and not identity.may_access("secret")
    assert auth.identify(token=_token(), claimed_user="alice").channels is None


@pytest.mark.parametrize(
    ("token", "claimed"),
    [
        (None, None),
        ("not-a-jwt", None),
        (_token(secret="x" * 32), None),  # wrong signature
        (_token(exp=int(time.time()) - 60), None),  # expired (past the 10 s leeway)
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


# --- lifetime, leeway, asymmetric keys ---------------------------------------------


def test_leeway_admits_a_token_just_past_its_exp() -> None:
    just_expired = _token(exp=int(time.time()) - 3)
    assert _authenticator(leeway_s=10).identify(token=just_expired, claimed_user=None)
    _refused(_authenticator(leeway_s=0), token=just_expired, claimed_user=None)


def test_a_token_not_yet_valid_is_refused() -> None:
    _refused(_authenticator(leeway_s=0), token=_token(nbf=int(time.time()) + 60), claimed_user=None)


def _rsa_pem(tmp_path: Path) -> tuple[Any, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem)
    return private, path


def _claims(**extra: object) -> dict[str, object]:
    return {"sub": "alice", "exp": int(time.time()) + 60, **extra}


def _asymmetric(algorithm: str, **keys: object) -> Authenticator:
    overrides: dict[str, object] = {"auth.mode": "jwt", "auth.jwt.algorithms": [algorithm]}
    overrides.update({f"auth.jwt.{k}": v for k, v in keys.items()})
    return Authenticator(load_config(env={}, overrides=overrides).auth)


def test_rs256_with_a_pem_public_key(tmp_path: Path) -> None:
    private, path = _rsa_pem(tmp_path)
    auth = _asymmetric("RS256", public_key_file=str(path))
    token = jwt.encode(_claims(), private, "RS256")
    assert auth.identify(token=token, claimed_user=None).user_id == "alice"
    other, _ = _rsa_pem(tmp_path / "..")
    _refused(auth, token=jwt.encode(_claims(), other, "RS256"), claimed_user=None)


def test_the_algorithm_comes_from_the_config_not_the_token(tmp_path: Path) -> None:
    """Algorithm confusion: an HS256 token "signed" with the public key is refused,
    and so is an unsigned one."""
    _, path = _rsa_pem(tmp_path)
    auth = _asymmetric("RS256", public_key_file=str(path))
    public_pem = path.read_bytes()
    # PyJWT refuses to sign this, so sign it by hand, as an attacker would.
    signing_input = b".".join(
        jwt.utils.base64url_encode(orjson.dumps(part))
        for part in ({"alg": "HS256", "typ": "JWT"}, _claims())
    )
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()
    _refused(auth, token=forged, claimed_user=None)
    unsigned = jwt.encode(_claims(), None, algorithm="none")
    _refused(auth, token=unsigned, claimed_user=None)
    _refused(_authenticator(), token=unsigned, claimed_user=None)


def test_es256_from_a_jwks_chosen_by_kid(tmp_path: Path) -> None:
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {
        "keys": [
            {**orjson.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "ES256"}
            for kid, key in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_bytes(orjson.dumps(jwks))
    auth = _asymmetric("ES256", jwks_file=str(path))
    for kid, key in keys.items():
        token = jwt.encode(_claims(), key, "ES256", headers={"kid": kid})
        assert auth.identify(token=token, claimed_user=None).user_id == "alice"
    wrong_kid = jwt.encode(_claims(), keys["k1"], "ES256", headers={"kid": "k2"})
    _refused(auth, token=wrong_kid, claimed_user=None)
    unknown_kid = jwt.encode(_claims(), keys["k1"], "ES256", headers={"kid": "nope"})
    _refused(auth, token=unknown_kid, claimed_user=None)


def test_asymmetric_config_needs_exactly_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides={"auth.mode": "jwt", "auth.jwt.algorithms": ["RS256"]})
    assert caught.value.key == "auth.jwt.public_key_file"
    with pytest.raises(ConfigError) as caught:
        load_config(
            env={},
            overrides={
                "auth.mode": "jwt",
                "auth.jwt.algorithms": ["RS256"],
                "auth.jwt.public_key_file": str(tmp_path / "missing.pem"),
            },
        )
    assert "no such file" in str(caught.value)


def test_hmac_and_public_key_algorithms_do_not_mix() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            env={},
            overrides={
                "auth.mode": "jwt",
                "auth.jwt.secret": SECRET,
                "auth.jwt.algorithms": ["HS256", "RS256"],
            },
        )
    assert caught.value.key == "auth.jwt.algorithms"
