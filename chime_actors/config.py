"""Chime's configuration: one declarative schema, one validated, immutable ``Config``.

The schema is the classes below: frozen msgspec Structs whose fields carry the
types, the bounds (``msgspec.Meta``) and the defaults. Those field defaults are
the only copy of Chime's defaults: ``config/default.yaml`` spells the same tree
with comments for operators, and a unit test checks that it equals
``default_tree()`` key by key, so the file cannot drift from the code.

``load_config`` merges the layers into one plain tree, each overriding the
previous one key by key (a mapping merges into a mapping; anything else replaces
the value), and converts that tree with ``msgspec.convert``; a key no layer sets
takes its field's default:

1. the schema's defaults;
2. the YAML file given with ``--config``;
3. the seed's ``credentials.toml`` given with ``--credentials`` (mapping below);
4. environment variables ``CHIME_<SECTION>_<KEY>`` (below), so secrets need not
   sit in files;
5. ``overrides``: dotted keys from command-line flags (``{"chat.port": 0}``).

The result is checked once: an unknown key, a wrong type or a value out of range
raises ``ConfigError`` naming the dotted key (``chat.port``), and the CLI turns that
into one line and exit status 2. Nothing reads configuration from globals later:
the ``Config`` is passed down, and pickled as-is to the process actors (every
class here is a frozen, slotted Struct or an enum).

Why msgspec rather than pydantic-settings: what pydantic-settings adds over a
validator is its environment source, and that source cannot do what Chime's
variables promise. It splits names on a delimiter, so with ``_`` as delimiter
``CHIME_CHAT_MAX_FRAME_BYTES`` and ``CHIME_BUS_REDIS_TEST_PORT`` are ambiguous
(keys contain ``_``); it parses complex values as JSON, not YAML; and it cannot
ignore ``CHIME_HOME`` while refusing the typo ``CHIME_CHAT_PROT``. The layers
would stay ours either way, leaving validation, which msgspec does with
immutable, slotted, picklable Structs (what the process actors are sent), typed
so mypy checks every use, errors carrying the path of the bad key, and one small
dependency instead of pydantic's core.

Environment variables: the part after ``CHIME_`` is lower-cased and matched
against the schema's keys, longest first, so ``CHIME_BUS_REDIS_PASSWORD`` is
``bus.redis.password``, ``CHIME_BUS_REDIS_TEST_PORT`` is ``bus.redis_test.port``
and ``CHIME_CHAT_MAX_FRAME_BYTES`` is ``chat.max_frame_bytes``. String keys (hosts,
passwords, paths) take the text verbatim, an empty variable meaning null where null
is allowed; other keys parse it as a YAML scalar (``3143`` is an int, ``auto`` a
string); a list takes YAML (``[a, b]``) or comma-separated text (``HS256,HS384``).
A variable whose first word is no section or top-level key (``CHIME_HOME``) is not
configuration and is ignored; one that starts with a section but names no key in
it (``CHIME_CHAT_PROT``) is a ``ConfigError``.

Beyond the types, a few spellings are accepted: enum values in any case
(``DEBUG``, ``local_quorum``), an empty string for null where null is allowed
(TOML has no null), and ``workers: auto`` for the number of cores. The rules that
tie keys together, or that a type cannot say, are checked after conversion:

- ``auth.mode: insecure`` trusts whatever ``userId`` a client claims, so it only
  serves loopback: ``chat.host`` and ``api.host`` must then be ``127.0.0.1``,
  ``::1``, ``localhost`` or another loopback address (docs/protocol.md, "Handshake":
  insecure mode is bound to loopback). Binding ``0.0.0.0`` needs ``auth.mode: jwt``.
- ``auth.mode: jwt`` needs ``auth.jwt.secret``, at least as many bytes as the
  digest of the strongest algorithm listed (32 for HS256, 48 for HS384, 64 for
  HS512: RFC 7518 section 3.2, and what PyJWT warns about below that); RS256 and
  ES256 need exactly one of ``public_key_file`` or ``jwks_file``, an existing file;
  HS* and RS256/ES256 never share one list.
- ``testing.fault_injection`` lets any client crash actors on purpose, so it
  needs ``auth.mode: insecure`` (which itself means loopback only).
- ``storage.cassandra.consistency: ANY`` is refused; ``chat.allowed_origins`` are
  browser origins (``https://host[:port]``) or ``*``.
- ``handlers``: names are unique. What ``use`` names and its ``options`` are
  checked at start by ``handlers.registry``.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import msgspec
import yaml
from msgspec import Meta
from msgspec.structs import replace

from chime_actors.errors import ConfigError

__all__ = [
    "ApiConfig",
    "AttachmentsConfig",
    "AuthConfig",
    "AuthMode",
    "BusBackend",
    "BusConfig",
    "CassandraConfig",
    "ChatConfig",
    "Config",
    "Consistency",
    "HandlerConfig",
    "HandlerFailure",
    "HandlerStage",
    "JwtConfig",
    "LimitsConfig",
    "LogFormat",
    "LogLevel",
    "LoggingConfig",
    "PresenceConfig",
    "RedisConfig",
    "SqliteConfig",
    "SqliteSynchronous",
    "StorageBackend",
    "StorageConfig",
    "TestingConfig",
    "default_tree",
    "durability_warnings",
    "load_config",
]

# Keys whose values never leave the process unmasked (to_display_dict, logs).
_SECRET_KEYS: Final = frozenset({"secret", "password"})
_MASK: Final = "***"
_HMAC_MIN_SECRET_BYTES: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}
_ENV_PREFIX: Final = "CHIME_"
_AUTO: Final = "auto"


# --- the schema: types, bounds and the defaults -------------------------------------


class _Choice(enum.StrEnum):
    """An enum whose values are accepted in any case (``DEBUG`` is ``debug``)."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            for member in cls:
                if member.value.casefold() == value.casefold():
                    return member
        return None


class AuthMode(_Choice):
    """How a connection proves who it is (docs/protocol.md, Handshake)."""

    INSECURE = "insecure"
    JWT = "jwt"


class SqliteSynchronous(_Choice):
    """``storage.sqlite.synchronous``."""

    FULL = "full"
    NORMAL = "normal"


class StorageBackend(_Choice):
    """Where messages are stored."""

    SQLITE = "sqlite"
    CASSANDRA = "cassandra"


class Consistency(_Choice):
    """A Cassandra consistency level, by the driver's name (``ANY`` is refused)."""

    ANY = "ANY"
    ONE = "ONE"
    TWO = "TWO"
    THREE = "THREE"
    QUORUM = "QUORUM"
    ALL = "ALL"
    LOCAL_QUORUM = "LOCAL_QUORUM"
    EACH_QUORUM = "EACH_QUORUM"
    LOCAL_ONE = "LOCAL_ONE"


class BusBackend(_Choice):
    """How messages reach the gateways: within this server, or across servers via Redis."""

    LOCAL = "local"
    REDIS = "redis"


class LogLevel(_Choice):
    """The root logger's threshold."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class LogFormat(_Choice):
    """``json``: one object per line, for machines; ``pretty``: one-liners for people;
    ``auto``: pretty when the log goes to a terminal, json otherwise."""

    JSON = "json"
    PRETTY = "pretty"
    AUTO = "auto"


_Text = Annotated[str, Meta(min_length=1)]
_OptionalText = _Text | None
_Texts = Annotated[tuple[_Text, ...], Meta(min_length=1)]
_Port = Annotated[int, Meta(ge=0, le=65535)]  # 0 picks a free port
_ServicePort = Annotated[int, Meta(ge=1, le=65535)]
_Positive = Annotated[int, Meta(ge=1)]
_Count = Annotated[int, Meta(ge=0)]
_Bytes = Annotated[int, Meta(ge=1024)]
_JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "ES256"]
_Keyspace = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,47}$")]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Base of every section: immutable, and an unknown key is an error."""


class ChatConfig(_Section, frozen=True):
    """The chat WebSocket endpoint and its per-connection limits (docs/protocol.md).

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

    host: _Text = "127.0.0.1"
    port: _Port = 3143
    handshake_timeout_ms: _Positive = 10000
    heartbeat_ms: _Positive = 25000
    max_channels_per_connection: _Positive = 128
    max_content_chars: _Positive = 4000
    max_frame_bytes: _Bytes = 65536
    max_resume_messages: _Count = 1000
    send_queue_frames: _Positive = 10000
    send_queue_bytes: _Bytes = 4 * 1024 * 1024
    send_stall_ms: _Positive = 10000
    ack_timeout_ms: _Positive = 5000
    max_connections: _Positive = 50000
    allowed_origins: tuple[_Text, ...] = ()


class ApiConfig(_Section, frozen=True):
    """The HTTP API endpoint (health, metrics, REST history); port 0 picks a free one."""

    host: _Text = "127.0.0.1"
    port: _Port = 3142


class JwtConfig(_Section, frozen=True):
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

    secret: _OptionalText = None
    algorithms: Annotated[tuple[_JwtAlgorithm, ...], Meta(min_length=1)] = ("HS256",)
    audience: _OptionalText = None
    issuer: _OptionalText = None
    leeway_s: Annotated[int, Meta(ge=0, le=3600)] = 10
    public_key_file: _OptionalText = None
    jwks_file: _OptionalText = None

    @property
    def asymmetric(self) -> bool:
        """True for RS256/ES256 (public keys), False for HS* (the shared secret)."""
        return self.algorithms[0] not in _HMAC_MIN_SECRET_BYTES


class AuthConfig(_Section, frozen=True):
    """How clients are identified."""

    mode: AuthMode = AuthMode.INSECURE
    jwt: JwtConfig = JwtConfig()


class SqliteConfig(_Section, frozen=True):
    """The embedded store: one SQLite file (in WAL mode).

    Attributes:
        path: the database file.
        synchronous: SQLite's ``PRAGMA synchronous``. ``full`` (default) fsyncs
            the WAL at every commit, so an ack survives power loss; ``normal``
            survives a crash of the process but may lose the last commits on
            power loss or an OS crash (docs/operations.md has what it saves).
    """

    path: _Text = "./data/chime.db"
    synchronous: SqliteSynchronous = SqliteSynchronous.FULL


class CassandraConfig(_Section, frozen=True):
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
        consistency: the consistency level of reads and writes.
        protocol_version: pin the native protocol version; None negotiates.
    """

    hosts: _Texts = ("127.0.0.1",)
    port: _ServicePort = 9042
    keyspace: _Keyspace = "chime"
    local_dc: _OptionalText = None
    username: _OptionalText = None
    password: _OptionalText = None
    replication_factor: _Positive = 1
    consistency: Consistency = Consistency.LOCAL_QUORUM
    protocol_version: _Positive | None = None


class StorageConfig(_Section, frozen=True):
    """Which store is used, and the settings of each.

    Attributes:
        create_schema_on_start: ``chime serve`` creates missing tables (once, in
            the main process, before any actor starts); turn it off where the
            schema is managed with ``chime db init``.
        writes_in_flight: group commits a persister writes at once: the next is
            numbered and sent while earlier ones are still being stored, and
            acks and deliveries are released in order (1: one at a time).
    """

    backend: StorageBackend = StorageBackend.SQLITE
    create_schema_on_start: bool = True
    writes_in_flight: _Positive = 4
    sqlite: SqliteConfig = SqliteConfig()
    cassandra: CassandraConfig = CassandraConfig()


class RedisConfig(_Section, frozen=True):
    """A Redis server: address, optional ACL user and password, database number."""

    host: _Text = "127.0.0.1"
    port: _ServicePort = 6379
    username: _OptionalText = None
    password: _OptionalText = None
    db: _Count = 0


class BusConfig(_Section, frozen=True):
    """Which bus is used.

    Attributes:
        backend: ``local`` (one server) or ``redis`` (several servers).
        redis: the Redis used when ``backend`` is ``redis``.
        redis_test: a separate Redis for integration tests (the seed's
            ``[redis.test]``; keys it leaves out take ``RedisConfig``'s defaults);
            None when not configured. The server never uses it.
    """

    backend: BusBackend = BusBackend.LOCAL
    redis: RedisConfig = RedisConfig()
    redis_test: RedisConfig | None = None


class LimitsConfig(_Section, frozen=True):
    """Rate limits; 0 means no limit."""

    messages_per_10s: _Count = 50
    connects_per_ip_per_10s: _Count = 200
    # Bytes one user may upload per hour on one host (api/upload_budget.py).
    upload_bytes_per_hour: _Count = 100 * 1024 * 1024


class AttachmentsConfig(_Section, frozen=True):
    """Files uploaded to ``/v1/attachments`` (docs/protocol.md "Attachments").

    Attributes:
        max_bytes: the largest file; a larger upload is refused with 413, as soon
            as its ``Content-Length`` says so or its chunked body grows past it.
        unsent_ttl_s: a file no live message lists (never sent, or its messages
            all deleted) may no longer be sent once it is this old, and is deleted
            (api/attachment_sweeper.py) up to 10 minutes and an hour of sweeps
            later; 0 keeps every file for ever.
    """

    max_bytes: _Positive = 10 * 1024 * 1024
    unsent_ttl_s: _Count = 24 * 3600


class PresenceConfig(_Section, frozen=True):
    """Presence across hosts (docs/protocol.md, "Presence, typing, read markers").

    Attributes:
        ttl_s: with ``bus.backend: redis``, the users of a host that died (its
            Redis bridge stopped refreshing its liveness key) are offline on the
            other hosts within this many seconds. Each bridge refreshes its key
            every ``ttl_s / 4`` with a lifetime of ``ttl_s / 2``, and checks the
            other hosts' keys as often, so a host is declared dead 0.5-0.75 of
            ``ttl_s`` after its last refresh, and survives one missed refresh.
    """

    ttl_s: Annotated[int, Meta(ge=1, le=3600)] = 30


class LoggingConfig(_Section, frozen=True):
    """What each process logs, and how (see chime_actors.logs)."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.AUTO


class TestingConfig(_Section, frozen=True):
    """Switches for the test suite; never turn them on in production.

    Attributes:
        fault_injection: accept ``{"type": "debug_crash", ...}`` frames that make a
            ConnectionActor's or ChannelActor's handler raise (fault tests).
    """

    fault_injection: bool = False


class HandlerStage(_Choice):
    """Where a channel handler runs (docs/handlers.md)."""

    BEFORE_STORE = "before_store"
    AFTER_STORE = "after_store"


class HandlerFailure(_Choice):
    """What a handler's timeout or crash means (``on_failure``, docs/handlers.md)."""

    REJECT = "reject"
    ACCEPT = "accept"


_HandlerName = Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")]
_ChannelGlob = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:*?\[\]!-]{1,64}$")]


class HandlerConfig(_Section, frozen=True):
    """One channel handler (docs/handlers.md); ``handlers`` is a list of these.

    Attributes:
        name: unique among the handlers; names its metrics, its log lines and,
            for ``after_store``, its durable cursor (renaming a handler starts a
            new cursor).
        use: a built-in (``word_filter``, ``echo_bot``, ``webhook``), a
            ``package.module:factory`` path, or the name of an entry point in the
            ``chime.handlers`` group. Resolved, and its options checked, at start.
        stage: ``before_store`` (in the send path, before sequencing: accept,
            rewrite or reject) or ``after_store`` (every stored message, at least
            once, in a supervised HandlerActor process).
        channels: glob patterns (``fnmatch``: ``*``, ``?``, ``[...]``) of the
            channels the handler sees.
        options: given to the factory as they are; each handler checks its own.
        timeout_ms: budget of one call; past it the call counts as failed.
        on_failure: after a timeout or a raise. ``before_store``: ``reject``
            answers the sender ``unavailable`` (not stored), ``accept`` stores the
            message unchanged. ``after_store``: ``reject`` retries the message
            with backoff until it succeeds (never skipped), ``accept`` skips it.
        backlog: ``after_store`` only: stored messages held in memory for the
            handler; past it the handler is paused and later reads what it missed
            from storage (nothing is dropped).
        lease_ttl_ms: ``after_store`` with ``bus.backend: redis`` only: how long
            a host's lease on the handler lasts unrenewed (renewed every third
            of it). One host runs the handler at a time; when it dies another
            takes over within this time.
    """

    name: _HandlerName
    use: _Text
    stage: HandlerStage
    channels: Annotated[tuple[_ChannelGlob, ...], Meta(min_length=1)] = ("*",)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 1000
    on_failure: HandlerFailure = HandlerFailure.REJECT
    backlog: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000
    lease_ttl_ms: Annotated[int, Meta(ge=500, le=600_000)] = 5000


def _cores() -> int:
    """``workers: auto``: one gateway per core of the machine the server runs on."""
    return os.cpu_count() or 1


class Config(_Section, frozen=True):
    """The whole validated configuration of one server.

    Attributes:
        chat: the chat WebSocket endpoint and its limits.
        api: the HTTP API endpoint.
        workers: number of gateway processes (``auto``, the default, is resolved
            to the number of cores).
        persisters: size of the persister pool. One by default: SQLite takes
            one writer at a time, so a second persister only waits for its lock
            (docs/performance.md); raise it for Cassandra.
        auth: client identification.
        storage: the message store.
        bus: the message bus.
        limits: rate limits.
        attachments: uploaded files.
        presence: presence across hosts.
        logging: log level and format.
        data_dir: directory for runtime files: Thespian's log (``thespian.log``)
            and, by default, the SQLite file.
        admin_port: Thespian's admin TCP port; 0 picks a free one at start, so
            two servers never share an admin.
        testing: switches for the test suite.
        handlers: channel handlers, in the order they run (docs/handlers.md).
    """

    chat: ChatConfig = ChatConfig()
    api: ApiConfig = ApiConfig()
    workers: _Positive = msgspec.field(default_factory=_cores)
    persisters: _Positive = 1
    auth: AuthConfig = AuthConfig()
    storage: StorageConfig = StorageConfig()
    bus: BusConfig = BusConfig()
    limits: LimitsConfig = LimitsConfig()
    attachments: AttachmentsConfig = AttachmentsConfig()
    presence: PresenceConfig = PresenceConfig()
    logging: LoggingConfig = LoggingConfig()
    data_dir: _Text = "./data"
    admin_port: _Port = 0
    testing: TestingConfig = TestingConfig()
    handlers: tuple[HandlerConfig, ...] = ()

    @property
    def thespian_log_path(self) -> Path:
        """Where Thespian's own log goes (``THESPLOG_FILE``): ``<data_dir>/thespian.log``."""
        return Path(self.data_dir) / "thespian.log"

    def to_display_dict(self) -> dict[str, Any]:
        """The effective configuration as plain YAML-able data, secrets masked.

        Passwords and the JWT secret show as ``***`` when set and ``None`` when not,
        so ``chime check-config`` tells whether a secret is set without showing it.
        """
        display: dict[str, Any] = _plain(msgspec.to_builtins(self), mask=True)
        return display


def default_tree() -> dict[str, Any]:
    """The schema's defaults as the plain tree ``config/default.yaml`` spells out."""
    tree: dict[str, Any] = _plain(msgspec.to_builtins(Config()), mask=False)
    tree["workers"] = _AUTO  # the field's default, resolved where the server runs
    return tree


# --- loading ---------------------------------------------------------------------


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
    tree: dict[str, Any] = {}  # what the layers set; the schema supplies the rest
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
    _respell(tree, _KEYS)
    try:
        config = msgspec.convert(tree, Config)
    except msgspec.ValidationError as exc:
        raise _config_error(str(exc), tree) from None
    return _checked(config)


# --- the known keys, from the schema ----------------------------------------------

_Type = msgspec.inspect.Type


def _struct_of(kind: _Type) -> msgspec.inspect.StructType | None:
    """The section a field holds (``RedisConfig | None`` holds one too), or None."""
    if isinstance(kind, msgspec.inspect.StructType):
        return kind
    if isinstance(kind, msgspec.inspect.UnionType):
        return next((t for t in kind.types if isinstance(t, msgspec.inspect.StructType)), None)
    return None


def _key_tree(struct: msgspec.inspect.StructType) -> dict[str, Any]:
    """Every key of the schema: a dict per section, the field's type per leaf."""
    tree: dict[str, Any] = {}
    for field in struct.fields:
        section = _struct_of(field.type)
        tree[field.name] = field.type if section is None else _key_tree(section)
    return tree


_CONFIG_TYPE = msgspec.inspect.type_info(Config)
assert isinstance(_CONFIG_TYPE, msgspec.inspect.StructType)
_KEYS: Final = _key_tree(_CONFIG_TYPE)


def _leaf(dotted: str) -> _Type | None:
    """The type of a key; ``handlers[0].stage`` looks inside the list's sections."""
    node: Any = _KEYS
    for part in dotted.split("."):
        if isinstance(node, msgspec.inspect.VarTupleType) and isinstance(
            node.item_type, msgspec.inspect.StructType
        ):
            node = _key_tree(node.item_type)
        name = part.split("[", 1)[0]
        if not isinstance(node, Mapping) or name not in node:
            return None
        node = node[name]
    return None if isinstance(node, Mapping) else node


def _members(kind: _Type) -> tuple[_Type, ...]:
    return kind.types if isinstance(kind, msgspec.inspect.UnionType) else (kind,)


def _is_text(kind: _Type) -> bool:
    """A string key (``str`` or ``str | None``): environment text is taken verbatim."""
    kinds = [t for t in _members(kind) if not isinstance(t, msgspec.inspect.NoneType)]
    return all(isinstance(t, msgspec.inspect.StrType) for t in kinds)


def _allows_null(kind: _Type) -> bool:
    return any(isinstance(t, msgspec.inspect.NoneType) for t in _members(kind))


def _respell(tree: dict[str, Any], keys: Mapping[str, Any]) -> None:
    """Turn the spellings the types do not take into ones they do (module docstring)."""
    for name, value in tree.items():
        kind = keys.get(name)
        if isinstance(kind, Mapping):
            if isinstance(value, dict):
                _respell(value, kind)
        elif kind is not None and value == "" and _allows_null(kind):
            tree[name] = None
    if keys is _KEYS and isinstance(tree.get("workers"), str):
        if tree["workers"].casefold() != _AUTO:
            raise ConfigError(
                "workers", f'expected "auto" or an integer >= 1, got {tree["workers"]!r}'
            )
        del tree["workers"]  # the field's default: the number of cores


# --- errors -----------------------------------------------------------------------

_AT: Final = re.compile(r"(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_STEP: Final = re.compile(r"\.(\w+)|\[(\d+)\]")
_UNKNOWN: Final = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`")


def _config_error(message: str, tree: Mapping[str, Any]) -> ConfigError:
    """msgspec's ``Expected `int` >= 1 - at `$.chat.port``` as a ``ConfigError``."""
    match = _AT.fullmatch(message)
    assert match is not None  # the pattern matches any text
    problem = match["problem"]
    names: list[str] = []
    parts: list[str] = []  # names, with ``[i]`` where a list holds sections (handlers[0].use)
    value: Any = tree
    pending_index = ""
    for name, index in _STEP.findall(match["path"] or ""):
        if name:
            if pending_index and parts:
                parts[-1] += pending_index
            pending_index = ""
            names.append(name)
            parts.append(name)
            value = value.get(name) if isinstance(value, Mapping) else None
        else:
            pending_index = f"[{index}]"
            value = value[int(index)] if isinstance(value, list | tuple) else None
    unknown = _UNKNOWN.fullmatch(problem)
    if pending_index and parts and (unknown is not None or isinstance(value, Mapping)):
        parts[-1] += pending_index  # the problem is a section in a list: name which one
    if unknown is not None:
        names.append(unknown["name"])
        parts.append(unknown["name"])
        problem = "unknown key"
    key = ".".join(parts) or "<top level>"
    kind = _leaf(key)
    if isinstance(kind, msgspec.inspect.VarTupleType):
        kind = kind.item_type
    if problem.startswith("Invalid enum value") and isinstance(
        kind, msgspec.inspect.EnumType | msgspec.inspect.LiteralType
    ):
        values = (
            [m.value for m in kind.cls]
            if isinstance(kind, msgspec.inspect.EnumType)
            else kind.values
        )
        problem = f"{problem}; expected one of {', '.join(map(str, values))}"
    elif (
        unknown is None
        and "got" not in problem
        and not isinstance(value, Mapping)
        and not _SECRET_KEYS.intersection(names[-1:])  # never echo a secret
    ):
        problem = f"{problem}, got {value!r}"
    return ConfigError(key, problem[:1].lower() + problem[1:])


# --- rules a type cannot say -------------------------------------------------------


def _checked(config: Config) -> Config:
    """The rules between keys (module docstring); origins come back canonical."""
    algorithms = config.auth.jwt.algorithms
    if len({a in _HMAC_MIN_SECRET_BYTES for a in algorithms}) > 1:
        # One key kind per server: an HMAC secret next to public keys invites
        # algorithm confusion (a token "signed" with the public key as secret).
        raise ConfigError("auth.jwt.algorithms", "mix HS* with RS256/ES256 in one list: choose one")
    if config.storage.cassandra.consistency is Consistency.ANY:
        # ANY is acknowledged once a hint is stored on any node, even one that
        # holds no replica: an ack would not mean "stored".
        raise ConfigError(
            "storage.cassandra.consistency", "ANY cannot back an ack; use LOCAL_QUORUM"
        )
    _check_auth(config)
    seen: set[str] = set()
    for index, handler in enumerate(config.handlers):
        if handler.name in seen:
            raise ConfigError(f"handlers[{index}].name", f"{handler.name!r} is used twice")
        seen.add(handler.name)
    origins = tuple(_origin(origin) for origin in config.chat.allowed_origins)
    if origins != config.chat.allowed_origins:
        config = replace(config, chat=replace(config.chat, allowed_origins=origins))
    return config


def _origin(origin: str) -> str:
    """``*`` or a browser origin, ``scheme://host[:port]`` (lower-cased, no path)."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(
            "chat.allowed_origins", f"{origin!r} is not an origin like https://chat.example.com"
        )
    return origin.rstrip("/").lower()


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: we cannot know where it resolves, so refuse it


def _check_auth(config: Config) -> None:
    """The rules between the auth keys, the hosts and fault injection."""
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
        Consistency.ONE,
        Consistency.LOCAL_ONE,
    ):
        warnings.append(
            f"storage.cassandra.consistency is {cassandra.consistency}: an ack is durable on "
            "one replica only and a read may miss an acked message; LOCAL_QUORUM is safe"
        )
    return warnings


def _plain(value: Any, *, mask: bool) -> Any:
    """``to_builtins`` output as YAML's data: lists for tuples, secrets masked if asked."""
    if isinstance(value, tuple | list):
        return [_plain(item, mask=mask) for item in value]
    if not isinstance(value, dict):
        return value
    return {
        name: _MASK
        if mask and name in _SECRET_KEYS and item is not None
        else _plain(item, mask=mask)
        for name, item in value.items()
    }


# --- layers ----------------------------------------------------------------------


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """Dotted keys set by ``CHIME_*`` variables, typed as the module docstring says."""
    found: dict[str, Any] = {}
    for var, text in sorted(env.items()):
        if not var.startswith(_ENV_PREFIX):
            continue
        name = var[len(_ENV_PREFIX) :].lower()
        key = _match_env_name(_KEYS, name, "")
        if key is None:
            if any(name == k or name.startswith(k + "_") for k in _KEYS):
                raise ConfigError(_guess_env_key(name), f"{var} names no configuration key")
            continue
        kind = _leaf(key)
        assert kind is not None  # _match_env_name found a leaf
        found[key] = _env_value(key, var, text, kind)
    return found


def _env_value(key: str, var: str, text: str, kind: _Type) -> Any:
    if _is_text(kind):
        return text  # "" is null where null is allowed (_respell)
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"{var}: not a YAML value") from exc
    if isinstance(kind, msgspec.inspect.VarTupleType):
        if value is None:
            return []
        if isinstance(value, str):  # "a, b"
            return [part.strip() for part in value.split(",")]
    return value


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
    node: Mapping[str, Any] = _KEYS
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
    node: Any = _KEYS
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
