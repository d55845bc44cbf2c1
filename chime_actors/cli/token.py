"""``chime token``: mint a JWT with the configured secret (for testing jwt mode)."""

from __future__ import annotations

import re
import time

import jwt

from chime_actors.config import Config
from chime_actors.errors import ConfigError

_TTL = re.compile(r"(\d+)([smhd])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """Seconds in a lifetime like ``30s``, ``15m``, ``1h`` or ``7d``."""
    match = _TTL.match(text.strip())
    if match is None:
        raise ConfigError("--ttl", f"not a lifetime like 30s, 15m, 1h or 7d: {text!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def mint_token(config: Config, user: str, channels: str | None, ttl: str) -> str:
    """A signed token: ``sub`` = user, ``channels`` granted (all when omitted)."""
    secret = config.auth.jwt.secret
    if not secret:
        raise ConfigError("auth.jwt.secret", "is required to mint tokens")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + parse_ttl(ttl)}
    if channels:
        claims["channels"] = [c.strip() for c in channels.split(",") if c.strip()]
    if config.auth.jwt.audience:
        claims["aud"] = config.auth.jwt.audience
    if config.auth.jwt.issuer:
        claims["iss"] = config.auth.jwt.issuer
    return jwt.encode(claims, secret, algorithm=config.auth.jwt.algorithms[0])
