"""Who a client is: ``auth.mode: insecure`` (trust the frame) or ``jwt`` (verify a token).

Pure apart from PyJWT and reading the configured key files once, at
construction. In jwt mode the token's ``sub`` is the user id, a ``channels``
claim (a list of ids or glob patterns), when present, limits which channels the
user may join or read, and ``exp`` is required and kept in the ``Identity``, so
the connection can end when it passes. The accepted algorithms are the
config's, never the token header's; the key is the HMAC secret (HS*) or the
public key (RS256/ES256, from a PEM file or a JWKS chosen by ``kid``). Library
errors are translated here into ``ProtocolError`` with the wire code
(``unauthorized``, close 4001 at connect).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import jwt

from chime_actors.config import AuthConfig, AuthMode
from chime_actors.errors import ConfigError, ProtocolError
from chime_actors.protocol.codes import CloseCode, ErrorCode

_USER_ID = re.compile(r"[A-Za-z0-9_.@:-]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user.

    Attributes:
        user_id: the token's ``sub`` (or the insecure-mode user id).
        channels: the token's grants, channel ids or glob patterns (``team-*``);
            None when every channel is allowed.
        expires_at: the token's ``exp`` (Unix seconds); None in insecure mode.
    """

    user_id: str
    channels: frozenset[str] | None = None
    expires_at: float | None = None

    def may_access(self, channel_id: str) -> bool:
        """True when the user may join or read ``channel_id``."""
        if self.channels is None or channel_id in self.channels:
            return True
        # Case-sensitive, like channel ids: "Team-*" does not grant "team-a".
        return any(fnmatchcase(channel_id, pattern) for pattern in self.channels)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (names lower-cased)."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Turns what a client presented into an ``Identity``.

    Raises:
        ConfigError: (at construction) a configured key file cannot be read.
    """

    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._public_key: str | None = None
        self._jwks: jwt.PyJWKSet | None = None
        jwt_config = config.jwt
        if config.mode is AuthMode.JWT and jwt_config.asymmetric:
            try:
                if jwt_config.public_key_file is not None:
                    self._public_key = Path(jwt_config.public_key_file).read_text()
                elif jwt_config.jwks_file is not None:
                    self._jwks = jwt.PyJWKSet.from_json(Path(jwt_config.jwks_file).read_text())
            except (OSError, jwt.PyJWTError) as exc:
                key = "public_key_file" if jwt_config.public_key_file else "jwks_file"
                raise ConfigError(f"auth.jwt.{key}", f"cannot be used: {exc}") from exc

    @property
    def leeway_s(self) -> int:
        """Seconds of clock skew allowed on ``exp`` (the connection's deadline too)."""
        return self._config.jwt.leeway_s

    def _key(self, token: str) -> Any:
        """The key that must have signed ``token``: by config, not by its header."""
        jwt_config = self._config.jwt
        if not jwt_config.asymmetric:
            assert jwt_config.secret is not None  # config validation requires it
            return jwt_config.secret
        if self._public_key is not None:
            return self._public_key
        assert self._jwks is not None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        keys = self._jwks.keys
        if kid is None and len(keys) == 1:
            return keys[0].key
        for candidate in keys:
            if candidate.key_id == kid:
                return candidate.key
        raise _unauthorized("the token's kid names no key of the configured JWKS")

    @property
    def mode(self) -> AuthMode:
        """The configured mode."""
        return self._config.mode

    def identify(
        self,
        *,
        token: str | None,
        claimed_user: str | None,
        query_user: str | None = None,
    ) -> Identity:
        """The client's identity, or ``ProtocolError(unauthorized, close 4001)``.

        Args:
            token: from the connect frame, ``?token=`` or the Authorization header.
            claimed_user: the connect frame's ``userId``.
            query_user: ``?userId=`` of the WebSocket URL (insecure mode only).
        """
        if self._config.mode is AuthMode.INSECURE:
            user = claimed_user or query_user
            if user is None:
                return Identity(f"anon-{secrets.token_hex(6)}")
            if not _USER_ID.match(user):
                raise _unauthorized("userId must be 1-64 of A-Z a-z 0-9 _ . @ : -")
            return Identity(user)
        if not token:
            raise _unauthorized("a token is required (frame field, ?token= or Bearer header)")
        identity = self.verify(token)
        if claimed_user is not None and claimed_user != identity.user_id:
            raise _unauthorized("userId does not match the token's subject")
        return identity

    def verify(self, token: str) -> Identity:
        """Check a JWT's signature, expiry, audience and issuer; return its identity."""
        jwt_config = self._config.jwt
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(jwt_config.algorithms),
                audience=jwt_config.audience,
                issuer=jwt_config.issuer,
                leeway=jwt_config.leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise _unauthorized(f"invalid token: {exc}") from exc
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _USER_ID.match(subject):
            raise _unauthorized("the token's sub is not a valid user id")
        expires_at = float(claims["exp"])  # "require" made sure it is there and numeric
        granted = claims.get("channels")
        if granted is None:
            return Identity(subject, expires_at=expires_at)
        if not isinstance(granted, list) or not all(isinstance(c, str) for c in granted):
            raise _unauthorized("the token's channels claim must be a list of channel ids")
        return Identity(subject, frozenset(granted), expires_at)


def _unauthorized(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAUTHORIZED, message, close_code=CloseCode.UNAUTHORIZED)
