"""Who a client is: ``auth.mode: insecure`` (trust the frame) or ``jwt`` (verify a token).

Pure apart from PyJWT: no I/O. In jwt mode the token's ``sub`` is the user id, a
``channels`` claim (a list), when present, limits which channels the user may
join or read, and ``exp`` is required. Library errors are translated here into
``ProtocolError`` with the wire code (``unauthorized``, close 4001 at connect).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

import jwt

from chime_actors.config import AuthConfig, AuthMode
from chime_actors.errors import ProtocolError
from chime_actors.protocol.codes import CloseCode, ErrorCode

_USER_ID = re.compile(r"[A-Za-z0-9_.@:-]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user.

    Attributes:
        user_id: the token's ``sub`` (or the insecure-mode user id).
        channels: the token's grants, channel ids or glob patterns (``team-*``);
            None when every channel is allowed.
    """

    user_id: str
    channels: frozenset[str] | None = None

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
    """Turns what a client presented into an ``Identity``."""

    def __init__(self, config: AuthConfig) -> None:
        self._config = config

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
        assert jwt_config.secret is not None  # config validation requires it in jwt mode
        try:
            claims = jwt.decode(
                token,
                jwt_config.secret,
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
        granted = claims.get("channels")
        if granted is None:
            return Identity(subject)
        if not isinstance(granted, list) or not all(isinstance(c, str) for c in granted):
            raise _unauthorized("the token's channels claim must be a list of channel ids")
        return Identity(subject, frozenset(granted))


def _unauthorized(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAUTHORIZED, message, close_code=CloseCode.UNAUTHORIZED)
