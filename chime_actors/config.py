"""Chime's configuration: one validated, immutable ``Config`` built once at start-up.

``load_config`` builds it from layers, each overriding the previous one key by key
(a mapping merges into a mapping; anything else replaces the value):

1. the embedded defaults, ``DEFAULTS`` (``config/default.yaml`` is the same tree
   with comments, and a unit test keeps the two identical);
2. the YAML file given with ``--config``;
3. the seed's ``credentials.toml`` given with ``--credentials`` (mapping below);
4. environment variables ``CHIME_<SECTION>_<KEY>`` (below), so secrets need not
   sit in files;
5. ``overrides``: dotted keys from command-line flags (``{"chat.port": 0}``).

The result is checked once: an unknown key, a wrong type or a value out of range
raises ``ConfigError`` naming the dotted key (``chat.port``), and the CLI turns that
into one line and exit status 2. Nothing reads configuration from globals later:
the ``Config`` is passed down, and pickled as-is to the process actors (every
class here is a frozen, slotted dataclass or an enum).

Environment variables: the part after ``CHIME_`` is lower-cased and matched
against the known keys, longest first, so ``CHIME_BUS_REDIS_PASSWORD`` is
``bus.redis.password``, ``CHIME_BUS_REDIS_TEST_PORT`` is ``bus.redis_test.port``
and ``CHIME_CHAT_MAX_FRAME_BYTES`` is ``chat.max_frame_bytes``. String keys (hosts,
passwords, paths) take the text verbatim, an empty variable meaning null where null
is allowed; other keys parse it as a YAML scalar (``3143`` is an int, ``auto`` a
string); a list takes YAML (``[a, b]``) or comma-separated text (``HS256,HS384``).
A variable whose first word is no section or top-level key (``CHIME_HOME``) is not
configuration and is ignored; one that starts with a section but names no key in
it (``CHIME_CHAT_PROT``) is a ``ConfigError``.

Two rules tie keys together:

- ``auth.mode: insecure`` trusts whatever ``userId`` a client claims, so it only
  serves loopback: ``chat.host`` and ``api.host`` must then be ``127.0.0.1``,
  ``::1``, ``localhost`` or another loopback address (PROTOCOL.md: "insecure ...
  bound to 127.0.0.1"). Binding ``0.0.0.0`` needs ``auth.mode: jwt``.
- ``auth.mode: jwt`` needs ``auth.jwt.secret``, at least as many bytes as the
  digest of the strongest algorithm listed (32 for HS256, 48 for HS384, 64 for
  HS512: RFC 7518 section 3.2, and what PyJWT warns about below that).
- ``testing.fault_injection`` lets any client crash actors on purpose, so it
  needs ``auth.mode: insecure`` (which itself means loopback only).
"""

from __future__ import annotations

import copy
import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import yaml

from chime_actors.errors import ConfigError

__all__ = [
    "DEFAULTS",
    "ApiConfig",
    "AuthConfig",
    "AuthMode",
    "BusBackend",
    "BusConfig",
    "CassandraConfig",
    "ChatConfig",
    "Config",
    "JwtConfig",
    "LimitsConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "RedisConfig",
    "SqliteConfig",
    "SqliteSynchronous",
    "StorageBackend",
    "StorageConfig",
    "durability_warnings",
    "load_config",
]

# The embedded defaults. config/default.yaml must stay identical (tests/unit/test_config.py).
DEFAULTS: Final[Mapping[str, Any]] = {
    "chat": {
        "host": "127.0.0.1",
        "port": 3143,
        "handshake_timeout_ms": 10000,
        "heartbeat_ms": 25000,
        "max_channels_per_connection": 128,
        "max_content_chars": 4000,
        "max_frame_bytes": 65536,
        "max_resume_messages": 1000,
        "send_queue_frames": 10000,
        "send_queue_bytes": 4194304,
        "send_stall_ms": 10000,
        "ack_timeout_ms": 5000,
        "max_connections": 50000,
        "allowed_origins": [],
    },
    "api": {"host": "127.0.0.1", "port": 3142},
    "workers": "auto",
    "persisters": 2,
    "auth": {
        "mode": "insecure",
        "jwt": {
            "secret": None,
            "algorithms": ["HS256"],
            "audience": None,
            "issuer": None,
            "leeway_s": 10,
            "public_key_file": None,
            "jwks_file": None,
        },
    },
    "storage": {
        "backend": "sqlite",
        "create_schema_on_start": True,
        "sqlite": {"path": "./data/chime.db", "synchronous": "full"},
        "cassandra": {
            "hosts": ["127.0.0.1"],
            "port": 9042,
            "keyspace": "chime",
            "local_dc": None,
            "username": None,
            "password": None,
            "replication_factor": 1,
            "consistency": "LOCAL_QUORUM",
            "protocol_version": None,
        },
    },
    "bus": {
        "backend": "local",
        "redis": {"host": "127.0.0.1", "port": 6379, "username": None, "password": None, "db": 0},
        "redis_test": None,
    },
    "limits": {"messages_per_10s": 50, "connects_per_ip_per_10s": 200},
    "logging": {"level": "info", "format": "json"},
    "data_dir": "./data",
    "admin_port": 0,
    "testing": {"fault_injection": False},
}

# Keys whose values never leave the process unmasked (to_display_dict, logs).
_SECRET_KEYS: Final = frozenset({"secret", "password"})
_MASK: Final = "***"

# Sections whose default is null but whose keys are known (for env vars and overrides).
_OPTIONAL_SECTIONS: Final[Mapping[str, Mapping[str, Any]]] = {
    "bus.redis_test": DEFAULTS["bus"]["redis"],
}

_HMAC_MIN_SECRET_BYTES: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}
# Verified with auth.jwt.public_key_file or auth.jwt.jwks_file (PEM or JWK public keys).
_ASYMMETRIC_ALGORITHMS: Final = ("RS256", "ES256")
_CONSISTENCY_LEVELS: Final = frozenset(
    {
        "ANY",
        "ONE",
        "TWO",
        "THREE",
        "QUORUM",
        "ALL",
        "LOCAL_QUORUM",
        "EACH_QUORUM",
        "LOCAL_ONE",
    }
)
_KEYSPACE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_ENV_PREFIX: Final = "CHIME_"
_MAX_PORT: Final = 65535


class AuthMode(enum.StrEnum):
    """How a connection proves who it is (PROTOCOL.md, Handshake)."""

    INSECURE = "insecure"
    JWT = "jwt"


class SqliteSynchronous(enum.Enum):
    """``storage.sqlite.synchronous``."""

    FULL = "full"
    NORMAL = "normal"

    def __str__(self) -> str:
        return self.value


class StorageBackend(enum.StrEnum):
    """Where messages are stored."""

    SQLITE = "sqlite"
    CASSANDRA = "cassandra"


class BusBackend(enum.StrEnum):
    """How messages reach the gateways: within this server, or across servers via Redis."""

    LOCAL = "local"
    REDIS = "redis"


class LogLevel(enum.StrEnum):
    """The root logger's threshold."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(enum.StrEnum):
    """``json``: one object per line, for machines; ``pretty``: one-liners for people."""

    JSON = "json"
    PRETTY = "pretty"


@dataclass(frozen=True, slots=True)
class ChatConfig:
    """The chat WebSocket endpoint and its per-connection limits (PROTOCOL.md).

    Attributes:
        host: address to bind; must be loopback in ``auth.mode: insecure``.
        port: port to bind, 0 picks a free one (the real one is logged and written
            to ``--ports-file``).
        handshake_timeout_ms: no connect frame within this closes with 4008.
        heartbeat_ms: WebSocket ping interval, sent to clients as ``heartbeatMs``.
        max_channels_per_connection: subscriptions one connection may hold.
        max_content_chars: longer content is refused with ``too_large``.
        max_frame_bytes: a larger frame closes the connection with 1009.
        max_resume_messages: past this many missed messages a resume answers
            ``resume_failed`` and the client pages history.
        send_queue_bytes: bound of what waits in the server for one client:
            frames queued plus bytes written but not yet taken by its TCP
            connection. Past it the server holds back (flow control): live
            channel messages stop going to that client and it is caught up from
            storage once it has taken most of what waits, and its requests are
            not read meanwhile. A client that reads is never closed for a burst.
        send_queue_frames: the same bound in channel message frames queued
            within one event-loop turn (a burst); past it they are held back too.
        send_stall_ms: a client held back that takes nothing at all for this
            long does not read: it is closed with 1008 (slow consumer).
        ack_timeout_ms: how long a gateway waits for the persister's confirmation
            before answering ``unavailable`` to the sender.
        max_connections: open WebSocket connections per server; past it an
            upgrade gets HTTP 503.
        allowed_origins: browser origins (``https://chat.example.com``, or ``*``)
            accepted besides the chat and API hosts' own; any other ``Origin``
            header gets HTTP 403.
    """

    host: str
    port: int
    handshake_timeout_ms: int = 10000
    heartbeat_ms: int = 25000
    max_channels_per_connection: int = 128
    max_content_chars: int = 4000
    max_frame_bytes: int = 65536
    max_resume_messages: int = 1000
    send_queue_frames: int = 10000
    send_queue_bytes: int = 4 * 1024 * 1024
    send_stall_ms: int = 10000
    ack_timeout_ms: int = 5000
    max_connections: int = 50000
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The HTTP API endpoint (health, metrics, REST history); port 0 picks a free one."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class JwtConfig:
    """Token verification for ``auth.mode: jwt`` (and minting, for ``chime token``).

    Attributes:
        secret: the shared HMAC secret; required with HS*, never displayed.
        algorithms: accepted ``alg`` values: HS256, HS384, HS512 (with ``secret``)
            or RS256, ES256 (with ``public_key_file`` or ``jwks_file``), never
            both kinds. The token's own header never widens this list.
        audience: when set, the token's ``aud`` must match.
        issuer: when set, the token's ``iss`` must match.
        leeway_s: clock skew allowed when checking ``exp`` and ``nbf``.
        public_key_file: a PEM public key (RS256/ES256).
        jwks_file: a JSON Web Key Set of public keys, chosen by the token's ``kid``.
    """

    secret: str | None
    algorithms: tuple[str, ...]
    audience: str | None
    issuer: str | None
    leeway_s: int = 10
    public_key_file: str | None = None
    jwks_file: str | None = None

    @property
    def asymmetric(self) -> bool:
        """True for RS256/ES256 (public keys), False for HS* (the shared secret)."""
        return self.algorithms[0] not in _HMAC_MIN_SECRET_BYTES


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """How clients are identified."""

    mode: AuthMode
    jwt: JwtConfig


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """The embedded store: one SQLite file (in WAL mode).

    Attributes:
        path: the database file.
        synchronous: SQLite's ``PRAGMA synchronous``. ``full`` (default) fsyncs
            the WAL at every commit, so an ack survives power loss; ``normal``
            survives a crash of the process but may lose the last commits on
            power loss or an OS crash (docs/operations.md has what it saves).
    """

    path: str
    synchronous: SqliteSynchronous = SqliteSynchronous.FULL


@dataclass(frozen=True, slots=True)
class CassandraConfig:
    """The production store.

    Attributes:
        hosts: contact points.
        port: CQL native port.
        keyspace: created if missing, with ``replication_factor``.
        local_dc: data centre for the DC-aware load-balancing policy; None lets
            the driver pick the first one it sees.
        username: with ``password``, for PlainTextAuthProvider; None: no auth.
        password: never displayed.
        replication_factor: used only when the keyspace is created.
        consistency: a Cassandra consistency level name for reads and writes.
        protocol_version: pin the native protocol version; None negotiates.
    """

    hosts: tuple[str, ...]
    port: int
    keyspace: str
    local_dc: str | None
    username: str | None
    password: str | None
    replication_factor: int
    consistency: str = "LOCAL_QUORUM"
    protocol_version: int | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Which store is used, and the settings of each.

    Attributes:
        create_schema_on_start: ``chime serve`` creates missing tables (once, in
            the main process, before any actor starts); turn it off where the
            schema is managed with ``chime db init``.
    """

    backend: StorageBackend
    sqlite: SqliteConfig
    cassandra: CassandraConfig
    create_schema_on_start: bool = True


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """A Redis server: address, optional ACL user and password, database number."""

    host: str
    port: int
    username: str | None
    password: str | None
    db: int


@dataclass(frozen=True, slots=True)
class BusConfig:
    """Which bus is used.

    Attributes:
        backend: ``local`` (one server) or ``redis`` (several servers).
        redis: the Redis used when ``backend`` is ``redis``.
        redis_test: a separate Redis for integration tests (the seed's
            ``[redis.test]``); None when not configured. The server never uses it.
    """

    backend: BusBackend
    redis: RedisConfig
    redis_test: RedisConfig | None = None


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Rate limits; 0 means no limit."""

    messages_per_10s: int = 50
    connects_per_ip_per_10s: int = 200


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """What each process logs, and how (see chime_actors.logs)."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.JSON


@dataclass(frozen=True, slots=True)
class TestingConfig:
    """Switches for the test suite; never turn them on in production.

    Attributes:
        fault_injection: accept ``{"type": "debug_crash", ...}`` frames that make a
            ConnectionActor's or ChannelActor's handler raise (fault tests).
    """

    fault_injection: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration of one server.

    Attributes:
        chat: the chat WebSocket endpoint and its limits.
        api: the HTTP API endpoint.
        workers: number of gateway processes (``auto`` in the file is resolved to
            the number of cores here).
        persisters: size of the persister pool.
        auth: client identification.
        storage: the message store.
        bus: the message bus.
        limits: rate limits.
        logging: log level and format.
        data_dir: directory for runtime files: Thespian's log (``thespian.log``)
            and, by default, the SQLite file.
        admin_port: Thespian's admin TCP port; 0 picks a free one at start, so
            two servers never share an admin.
    """

    chat: ChatConfig
    api: ApiConfig
    workers: int
    auth: AuthConfig
    storage: StorageConfig
    bus: BusConfig
    limits: LimitsConfig
    logging: LoggingConfig
    persisters: int = 2
    data_dir: str = "./data"
    admin_port: int = 0
    testing: TestingConfig = TestingConfig()

    @property
    def thespian_log_path(self) -> Path:
        """Where Thespian's own log goes (``THESPLOG_FILE``): ``<data_dir>/thespian.log``."""
        return Path(self.data_dir) / "thespian.log"

    def to_display_dict(self) -> dict[str, Any]:
        """The effective configuration as plain YAML-able data, secrets masked.

        Passwords and the JWT secret show as ``***`` when set and ``None`` when not,
        so ``chime check-config`` tells whether a secret is set without showing it.
        """
        display: dict[str, Any] = _display(self)
        return display


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    credentials: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the validated configuration from its layers (see the module docstring).

    Args:
        path: the ``--config`` YAML file; None uses the defaults alone.
        env: the environment to read ``CHIME_*`` variables from (rules in the
            module docstring); None reads ``os.environ``.
        credentials: the seed's ``credentials.toml``. Its sections map onto keys:

            =================  ==================================================
            ``[api]``          ``host``, ``port`` -> ``api.*``
            ``[chat]``         ``host``, ``port`` -> ``chat.*``
            ``[redis]``        ``host``, ``port``, ``username``, ``password``,
                               ``db`` -> ``bus.redis.*``
            ``[redis.test]``   the same keys -> ``bus.redis_test.*``
            ``[cassandra]``    ``host`` (one) or ``hosts`` (a list or a
                               comma-separated string) -> ``storage.cassandra.hosts``;
                               ``port``, ``keyspace``, ``username``,
                               ``password``, ``local_dc`` (or ``datacenter``),
                               ``replication_factor`` -> ``storage.cassandra.*``
            =================  ==================================================

            The file only supplies settings: it does not switch ``bus.backend`` or
            ``storage.backend``. Any other section or key is a ``ConfigError``.
        overrides: dotted keys to values, applied last (command-line flags);
            entries whose value is None are skipped, so unset flags can be passed
            straight through.

    Returns:
        The immutable, validated ``Config``.

    Raises:
        ConfigError: a file cannot be read or parsed, a key is unknown, or a value
            has the wrong type or is out of range; ``key`` names the dotted key
            (or the file, when the file itself is the problem).
    """
    tree: dict[str, Any] = copy.deepcopy(dict(DEFAULTS))
    if path is not None:
        _merge(tree, _read_yaml(Path(path)), "")
    if credentials is not None:
        for key, value in _read_credentials(Path(credentials)):
            _set_dotted(tree, key, value)
    for key, value in _env_overrides(os.environ if env is None else env).items():
        _set_dotted(tree, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _check_known(key)
            _set_dotted(tree, key, value)
    return _build_config(_Section(tree, ""))


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Dotted keys set by ``CHIME_*`` variables (rules in the module docstring).

    Values stay text (``_EnvText``) until the tree is read, where the key's type
    decides whether to parse them.
    """
    found: dict[str, Any] = {}
    for var, text in sorted(env.items()):
        if not var.startswith(_ENV_PREFIX):
            continue
        name = var[len(_ENV_PREFIX) :].lower()
        key = _match_env_name(_KEY_TREE, name, "")
        if key is None:
            if any(name == k or name.startswith(k + "_") for k in _KEY_TREE):
                raise ConfigError(_guess_env_key(name), f"{var} names no configuration key")
            continue
        found[key] = _EnvText(text, var)
    return found


# --- layers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _EnvText:
    """A value read from an environment variable, still text (typed when read)."""

    text: str
    var: str


def _key_tree() -> dict[str, Any]:
    """DEFAULTS with the known keys of optional (null-by-default) sections filled in."""
    tree: dict[str, Any] = copy.deepcopy(dict(DEFAULTS))
    for dotted, shape in _OPTIONAL_SECTIONS.items():
        *parents, last = dotted.split(".")
        node = tree
        for part in parents:
            node = node[part]
        node[last] = copy.deepcopy(dict(shape))
    return tree


_KEY_TREE: Final = _key_tree()


def _match_env_name(tree: Mapping[str, Any], name: str, prefix: str) -> str | None:
    for key in sorted(tree, key=len, reverse=True):
        dotted = f"{prefix}{key}"
        if name == key and not isinstance(tree[key], Mapping):
            return dotted
        if name.startswith(key + "_") and isinstance(tree[key], Mapping):
            found = _match_env_name(tree[key], name[len(key) + 1 :], dotted + ".")
            if found is not None:
                return found
    return None


def _guess_env_key(name: str) -> str:
    """Best dotted spelling of an unknown variable: known sections, then the rest."""
    node: Mapping[str, Any] = _KEY_TREE
    parts: list[str] = []
    while True:
        for key in sorted(node, key=len, reverse=True):
            if name.startswith(key + "_") and isinstance(node[key], Mapping):
                parts.append(key)
                node = node[key]
                name = name[len(key) + 1 :]
                break
        else:
            return ".".join([*parts, name])


def _check_known(dotted: str) -> None:
    node: Any = _KEY_TREE
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(dotted, "unknown key")
        node = node[part]
    if isinstance(node, Mapping):
        raise ConfigError(dotted, "is a section; set its keys one by one")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for index, part in enumerate(parents):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parents[: index + 1]), "expected a mapping")
        node = child
    node[last] = value


def _merge(base: dict[str, Any], layer: Mapping[str, Any], prefix: str) -> None:
    """Merge ``layer`` into ``base`` key by key (mappings recurse, the rest replaces)."""
    for key, value in layer.items():
        if not isinstance(key, str):
            raise ConfigError(f"{prefix}{key}", "keys must be strings")
        current = base.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge(current, value, f"{prefix}{key}.")
        elif isinstance(value, Mapping):
            base[key] = {}
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def _read_yaml(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), "the top level must be a mapping")
    return data


_CREDENTIAL_KEYS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "api": ("api", frozenset({"host", "port"})),
    "chat": ("chat", frozenset({"host", "port"})),
    "redis": ("bus.redis", frozenset({"host", "port", "username", "password", "db"})),
    "redis.test": ("bus.redis_test", frozenset({"host", "port", "username", "password", "db"})),
    "cassandra": (
        "storage.cassandra",
        frozenset(
            {
                "host",
                "hosts",
                "port",
                "keyspace",
                "username",
                "password",
                "local_dc",
                "datacenter",
                "replication_factor",
            }
        ),
    ),
}


def _read_credentials(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted key, value)`` for every setting of the seed's credentials TOML."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc
    for section, values in _flatten_credentials(data, ""):
        if section not in _CREDENTIAL_KEYS:
            raise ConfigError(section, f"unknown section in credentials file {path}")
        target, allowed = _CREDENTIAL_KEYS[section]
        for name, value in values.items():
            if name not in allowed:
                raise ConfigError(f"{section}.{name}", f"unknown key in credentials file {path}")
            if section == "cassandra" and name in ("host", "hosts"):
                if isinstance(value, str):
                    value = [host.strip() for host in value.split(",")]
                yield f"{target}.hosts", value  # a wrong type is reported as that key
            elif section == "cassandra" and name == "datacenter":
                yield f"{target}.local_dc", value
            else:
                yield f"{target}.{name}", value


def _flatten_credentials(
    data: Mapping[str, Any], prefix: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Split TOML tables into ``("redis", {scalars})``, ``("redis.test", {...})``."""
    for name, value in data.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"{prefix}{name}", "credentials keys must sit in a [section]")
        scalars = {k: v for k, v in value.items() if not isinstance(v, Mapping)}
        yield f"{prefix}{name}", scalars
        tables = {k: v for k, v in value.items() if isinstance(v, Mapping)}
        yield from _flatten_credentials(tables, f"{prefix}{name}.")


# --- typed reading and validation ---------------------------------------------------

_E = TypeVar("_E", bound=enum.Enum)
_T = TypeVar("_T")
_MISSING: Final = object()


class _Section:
    """One mapping of the merged tree, read key by key with types checked.

    Every read records the key; ``finish`` then reports any key nobody read, which
    is how unknown keys are found wherever they sit.
    """

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "<top level>", "expected a mapping")
        self._raw: Mapping[str, Any] = raw
        self._path = path
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _get(self, name: str) -> Any:
        self._read.add(name)
        value = self._raw.get(name, _MISSING)
        if value is _MISSING:
            raise ConfigError(self.key(name), "missing")
        return value

    def scalar(self, name: str) -> Any:
        """The value, with environment text parsed as a YAML scalar."""
        value = self._get(name)
        if isinstance(value, _EnvText):
            try:
                return yaml.safe_load(value.text) if value.text else None
            except yaml.YAMLError as exc:
                raise ConfigError(self.key(name), f"{value.var}: not a YAML value") from exc
        return value

    def section(self, name: str) -> _Section:
        return _Section(self._get(name), self.key(name))

    def optional_section(self, name: str, defaults: Mapping[str, Any]) -> _Section | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(self.key(name), "expected a mapping or null")
        merged = copy.deepcopy(dict(defaults))
        _merge(merged, value, self.key(name) + ".")
        return _Section(merged, self.key(name))

    def integer(self, name: str, *, low: int = 0, high: int | None = None) -> int:
        value = self.scalar(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(self.key(name), f"must be {bounds}, got {value}")
        return value

    def optional_integer(self, name: str, *, low: int = 0) -> int | None:
        if self.scalar(name) is None:
            return None
        return self.integer(name, low=low)

    def port(self, name: str, *, low: int = 0) -> int:
        return self.integer(name, low=low, high=_MAX_PORT)

    def text(self, name: str) -> str:
        value = self._get(name)
        if isinstance(value, _EnvText):
            value = value.text
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(name), f"expected a non-empty string, got {value!r}")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._get(name)
        if value is None or value == "" or (isinstance(value, _EnvText) and not value.text):
            return None
        return self.text(name)

    def text_tuple(self, name: str) -> tuple[str, ...]:
        value = self.scalar(name)
        if isinstance(value, str):  # "a,b" from an environment variable
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(self.key(name), f"expected a non-empty list, got {value!r}")
        if not all(isinstance(item, str) and item for item in value):
            raise ConfigError(self.key(name), "every item must be a non-empty string")
        return tuple(value)

    def text_list(self, name: str) -> tuple[str, ...]:
        """Like ``text_tuple``, but an empty list (or empty env text) is allowed."""
        value = self.scalar(name)
        if value is None or value == "" or value == []:
            return ()
        return self.text_tuple(name)

    def choice(self, name: str, kind: type[_E]) -> _E:
        value = self.scalar(name)
        for member in kind:
            if isinstance(value, str) and member.value == value.lower():
                return member
        allowed = ", ".join(str(member.value) for member in kind)
        raise ConfigError(self.key(name), f"expected one of {allowed}, got {value!r}")

    def finish(self) -> None:
        for name in self._raw:
            if name not in self._read:
                raise ConfigError(self.key(str(name)), "unknown key")


def _read(section: _Section, build: Callable[[_Section], _T]) -> _T:
    value = build(section)
    section.finish()
    return value


def _build_chat(s: _Section) -> ChatConfig:
    return ChatConfig(
        host=s.text("host"),
        port=s.port("port"),
        handshake_timeout_ms=s.integer("handshake_timeout_ms", low=1),
        heartbeat_ms=s.integer("heartbeat_ms", low=1),
        max_channels_per_connection=s.integer("max_channels_per_connection", low=1),
        max_content_chars=s.integer("max_content_chars", low=1),
        max_frame_bytes=s.integer("max_frame_bytes", low=1024),
        max_resume_messages=s.integer("max_resume_messages", low=0),
        send_queue_frames=s.integer("send_queue_frames", low=1),
        send_queue_bytes=s.integer("send_queue_bytes", low=1024),
        send_stall_ms=s.integer("send_stall_ms", low=1),
        ack_timeout_ms=s.integer("ack_timeout_ms", low=1),
        max_connections=s.integer("max_connections", low=1),
        allowed_origins=tuple(_origin(s, o) for o in s.text_list("allowed_origins")),
    )


def _origin(s: _Section, origin: str) -> str:
    """``*`` or a browser origin, ``scheme://host[:port]`` (lower-cased, no path)."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            s.key("allowed_origins"), f"{origin!r} is not an origin like https://chat.example.com"
        )
    return origin.rstrip("/").lower()


def _build_api(s: _Section) -> ApiConfig:
    return ApiConfig(host=s.text("host"), port=s.port("port"))


def _build_jwt(s: _Section) -> JwtConfig:
    algorithms = s.text_tuple("algorithms")
    for algorithm in algorithms:
        if algorithm not in _HMAC_MIN_SECRET_BYTES and algorithm not in _ASYMMETRIC_ALGORITHMS:
            allowed = ", ".join([*_HMAC_MIN_SECRET_BYTES, *_ASYMMETRIC_ALGORITHMS])
            raise ConfigError(s.key("algorithms"), f"{algorithm!r} is not one of {allowed}")
    hmac_family = {a in _HMAC_MIN_SECRET_BYTES for a in algorithms}
    if len(hmac_family) > 1:
        # One key kind per server: an HMAC secret next to public keys invites
        # algorithm confusion (a token "signed" with the public key as secret).
        raise ConfigError(s.key("algorithms"), "mix HS* with RS256/ES256 in one list: choose one")
    return JwtConfig(
        secret=s.optional_text("secret"),
        public_key_file=s.optional_text("public_key_file"),
        jwks_file=s.optional_text("jwks_file"),
        algorithms=algorithms,
        audience=s.optional_text("audience"),
        issuer=s.optional_text("issuer"),
        leeway_s=s.integer("leeway_s", high=3600),
    )


def _build_auth(s: _Section) -> AuthConfig:
    return AuthConfig(mode=s.choice("mode", AuthMode), jwt=_read(s.section("jwt"), _build_jwt))


def _build_cassandra(s: _Section) -> CassandraConfig:
    keyspace = s.text("keyspace")
    if not _KEYSPACE_RE.fullmatch(keyspace):
        raise ConfigError(s.key("keyspace"), "must be a letter then letters, digits or _ (<= 48)")
    consistency = s.text("consistency").upper()
    if consistency not in _CONSISTENCY_LEVELS:
        allowed = ", ".join(sorted(_CONSISTENCY_LEVELS))
        raise ConfigError(s.key("consistency"), f"expected one of {allowed}")
    if consistency == "ANY":
        # ANY is acknowledged once a hint is stored on any node, even one that
        # holds no replica: an ack would not mean "stored".
        raise ConfigError(s.key("consistency"), "ANY cannot back an ack; use LOCAL_QUORUM")
    return CassandraConfig(
        hosts=s.text_tuple("hosts"),
        port=s.port("port", low=1),
        keyspace=keyspace,
        local_dc=s.optional_text("local_dc"),
        username=s.optional_text("username"),
        password=s.optional_text("password"),
        replication_factor=s.integer("replication_factor", low=1),
        consistency=consistency,
        protocol_version=s.optional_integer("protocol_version", low=1),
    )


def _build_storage(s: _Section) -> StorageConfig:
    return StorageConfig(
        backend=s.choice("backend", StorageBackend),
        create_schema_on_start=_boolean(s, "create_schema_on_start"),
        sqlite=_read(
            s.section("sqlite"),
            lambda q: SqliteConfig(
                path=q.text("path"), synchronous=q.choice("synchronous", SqliteSynchronous)
            ),
        ),
        cassandra=_read(s.section("cassandra"), _build_cassandra),
    )


def _build_redis(s: _Section) -> RedisConfig:
    return RedisConfig(
        host=s.text("host"),
        port=s.port("port", low=1),
        username=s.optional_text("username"),
        password=s.optional_text("password"),
        db=s.integer("db"),
    )


def _build_bus(s: _Section) -> BusConfig:
    backend = s.choice("backend", BusBackend)
    redis = _read(s.section("redis"), _build_redis)
    test_section = s.optional_section("redis_test", DEFAULTS["bus"]["redis"])
    redis_test = None if test_section is None else _read(test_section, _build_redis)
    return BusConfig(backend=backend, redis=redis, redis_test=redis_test)


def _build_limits(s: _Section) -> LimitsConfig:
    return LimitsConfig(
        messages_per_10s=s.integer("messages_per_10s"),
        connects_per_ip_per_10s=s.integer("connects_per_ip_per_10s"),
    )


def _build_logging(s: _Section) -> LoggingConfig:
    return LoggingConfig(level=s.choice("level", LogLevel), format=s.choice("format", LogFormat))


def _boolean(s: _Section, name: str) -> bool:
    value = s.scalar(name)
    if not isinstance(value, bool):
        raise ConfigError(s.key(name), "must be true or false")
    return value


def _build_testing(s: _Section) -> TestingConfig:
    return TestingConfig(fault_injection=_boolean(s, "fault_injection"))


def _workers(s: _Section) -> int:
    value = s.scalar("workers")
    if isinstance(value, str) and value.lower() == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("workers", f'expected "auto" or an integer >= 1, got {value!r}')
    return value


def _build_config(s: _Section) -> Config:
    config = Config(
        chat=_read(s.section("chat"), _build_chat),
        api=_read(s.section("api"), _build_api),
        workers=_workers(s),
        persisters=s.integer("persisters", low=1),
        auth=_read(s.section("auth"), _build_auth),
        storage=_read(s.section("storage"), _build_storage),
        bus=_read(s.section("bus"), _build_bus),
        limits=_read(s.section("limits"), _build_limits),
        logging=_read(s.section("logging"), _build_logging),
        data_dir=s.text("data_dir"),
        admin_port=s.port("admin_port"),
        testing=_read(s.section("testing"), _build_testing),
    )
    s.finish()
    _check_auth(config)
    return config


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: we cannot know where it resolves, so refuse it


def _check_auth(config: Config) -> None:
    """The rules between keys (module docstring)."""
    if config.testing.fault_injection and config.auth.mode is not AuthMode.INSECURE:
        # Fault injection lets any client crash actors: tests on loopback only.
        raise ConfigError(
            "testing.fault_injection", "only allowed with auth.mode insecure (loopback)"
        )
    if config.auth.mode is AuthMode.INSECURE:
        for key, host in (("chat.host", config.chat.host), ("api.host", config.api.host)):
            if not _is_loopback(host):
                raise ConfigError(
                    key, f"{host!r} is not loopback; auth.mode insecure serves 127.0.0.1 only"
                )
        return
    jwt = config.auth.jwt
    if jwt.asymmetric:
        if (jwt.public_key_file is None) == (jwt.jwks_file is None):
            raise ConfigError(
                "auth.jwt.public_key_file",
                f"{', '.join(jwt.algorithms)} needs exactly one of public_key_file or jwks_file",
            )
        for key, path in (
            ("auth.jwt.public_key_file", jwt.public_key_file),
            ("auth.jwt.jwks_file", jwt.jwks_file),
        ):
            if path is not None and not Path(path).is_file():
                raise ConfigError(key, f"{path}: no such file")
        return
    if jwt.secret is None:
        raise ConfigError(
            "auth.jwt.secret", "required when auth.mode is jwt (set CHIME_AUTH_JWT_SECRET)"
        )
    needed = max(_HMAC_MIN_SECRET_BYTES[algorithm] for algorithm in jwt.algorithms)
    if len(jwt.secret.encode("utf-8")) < needed:
        raise ConfigError(
            "auth.jwt.secret",
            f"must be at least {needed} bytes for {', '.join(jwt.algorithms)}",
        )


def durability_warnings(config: Config) -> list[str]:
    """Settings that are valid but weaken what an ack promises (logged at start)."""
    warnings = []
    cassandra = config.storage.cassandra
    if config.storage.backend is StorageBackend.CASSANDRA and cassandra.consistency in (
        "ONE",
        "LOCAL_ONE",
    ):
        warnings.append(
            f"storage.cassandra.consistency is {cassandra.consistency}: an ack is durable on "
            "one replica only and a read may miss an acked message; LOCAL_QUORUM is safe"
        )
    return warnings


def _display(value: Any, name: str = "") -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _display(getattr(value, f.name), f.name) for f in fields(value)}
    if name in _SECRET_KEYS and value is not None:
        return _MASK
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_display(item) for item in value]
    return value
