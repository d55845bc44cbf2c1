"""chime_actors.config: layers, validation, masking, pickling, default.yaml."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml

from chime_actors.config import (
    AuthMode,
    BusBackend,
    Consistency,
    HandlerFailure,
    HandlerStage,
    LimitsConfig,
    LogFormat,
    LoggingConfig,
    LogLevel,
    RedisConfig,
    SqliteSynchronous,
    StorageBackend,
    default_tree,
    durability_warnings,
    load_config,
)
from chime_actors.errors import ConfigError
from chime_actors.protocol.connection import DEFAULT_HEARTBEAT_MS
from chime_actors.protocol.frames import DEFAULT_LIMITS

REPO = Path(__file__).resolve().parents[2]
SECRET = "s" * 32


def write(tmp_path: Path, text: str, name: str = "chime.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs: Any) -> ConfigError:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as caught:
        load_config(**kwargs)
    return caught.value


# --- defaults --------------------------------------------------------------------


def test_defaults_are_the_embedded_default_of_operations_md() -> None:
    config = load_config(env={})
    assert (config.chat.host, config.chat.port) == ("127.0.0.1", 3143)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 3142)
    assert config.workers == (os.cpu_count() or 1)
    assert config.persisters == 1
    assert config.auth.mode is AuthMode.INSECURE
    assert config.auth.jwt.algorithms == ("HS256",)
    assert config.storage.backend is StorageBackend.SQLITE
    assert config.storage.sqlite.path == "./data/chime.db"
    assert config.storage.cassandra.hosts == ("127.0.0.1",)
    assert config.storage.cassandra.consistency == "LOCAL_QUORUM"
    assert config.bus.backend is BusBackend.LOCAL
    assert config.bus.redis_test is None
    assert config.limits == LimitsConfig(messages_per_10s=50, connects_per_ip_per_10s=200)
    assert config.logging == LoggingConfig(level=LogLevel.INFO, format=LogFormat.AUTO)
    assert config.presence.ttl_s == 30
    assert config.data_dir == "./data"
    assert config.admin_port == 0
    assert config.thespian_log_path == Path("data/thespian.log")


def test_protocol_limits_have_their_documented_defaults() -> None:
    chat = load_config(env={}).chat
    assert chat.handshake_timeout_ms == 10000
    assert chat.heartbeat_ms == 25000
    assert chat.max_channels_per_connection == 128
    assert chat.max_content_chars == 4000
    assert chat.max_frame_bytes == 65536
    assert chat.max_resume_messages == 1000
    assert chat.send_queue_frames == 10000
    assert chat.send_queue_bytes == 4 * 1024 * 1024
    assert chat.ack_timeout_ms == 5000


def test_default_yaml_spells_every_key_and_default_of_the_schema() -> None:
    shipped = yaml.safe_load((REPO / "config" / "default.yaml").read_text(encoding="utf-8"))
    assert shipped == default_tree()


def test_default_tree_is_what_a_config_without_layers_holds() -> None:
    # default_tree() is read off the schema; loading it back changes nothing, so
    # the schema's field defaults are the only copy of the numbers.
    config = load_config(env={})
    tree = default_tree()
    assert tree.pop("workers") == "auto"
    shown = config.to_display_dict()
    assert shown.pop("workers") == (os.cpu_count() or 1)
    assert shown == tree


def test_default_yaml_loaded_as_a_config_file_changes_nothing() -> None:
    assert load_config(REPO / "config" / "default.yaml", env={}) == load_config(env={})


def test_protocol_limits_take_their_defaults_from_the_schema() -> None:
    chat = load_config(env={}).chat
    assert DEFAULT_LIMITS.max_content_chars == chat.max_content_chars
    assert DEFAULT_LIMITS.max_channels_per_connection == chat.max_channels_per_connection
    assert DEFAULT_LIMITS.max_frame_bytes == chat.max_frame_bytes
    assert chat.heartbeat_ms == DEFAULT_HEARTBEAT_MS


def test_production_example_is_valid_with_its_secret_from_the_environment() -> None:
    config = load_config(
        REPO / "config" / "production.example.yaml", env={"CHIME_AUTH_JWT_SECRET": SECRET}
    )
    assert config.auth.mode is AuthMode.JWT
    assert config.storage.backend is StorageBackend.CASSANDRA
    assert config.bus.backend is BusBackend.REDIS
    assert config.chat.host == "0.0.0.0"


def test_production_example_without_a_secret_names_the_key() -> None:
    error = config_error(path=REPO / "config" / "production.example.yaml")
    assert error.key == "auth.jwt.secret"


# --- layers ----------------------------------------------------------------------


def test_config_file_merges_key_by_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
chat: {port: 4000}
bus:
  redis: {password: hunter2}
workers: 3
""",
    )
    config = load_config(path, env={})
    assert config.chat.port == 4000
    assert config.chat.host == "127.0.0.1"  # the rest of the section keeps its default
    assert config.chat.max_content_chars == 4000
    assert config.bus.redis.password == "hunter2"
    assert config.bus.redis.host == "127.0.0.1"
    assert config.workers == 3


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n"), env={}) == load_config(env={})


def test_environment_overrides_the_file_with_yaml_typing(tmp_path: Path) -> None:
    path = write(tmp_path, "chat: {port: 4000}\nbus: {redis: {password: from-file}}\n")
    env = {
        "CHIME_CHAT_PORT": "5000",
        "CHIME_BUS_REDIS_PASSWORD": "0123",  # a string key keeps its text verbatim
        "CHIME_BUS_BACKEND": "redis",
        "CHIME_CHAT_MAX_FRAME_BYTES": "2048",
        "CHIME_WORKERS": "4",
        "CHIME_DATA_DIR": "/tmp/chime-data",
        "CHIME_LOGGING_LEVEL": "DEBUG",
        "CHIME_PRESENCE_TTL_S": "5",
        "PATH": "/usr/bin",
    }
    config = load_config(path, env=env)
    assert config.chat.port == 5000
    assert config.bus.redis.password == "0123"
    assert config.bus.backend is BusBackend.REDIS
    assert config.chat.max_frame_bytes == 2048
    assert config.workers == 4
    assert config.data_dir == "/tmp/chime-data"
    assert config.logging.level is LogLevel.DEBUG
    assert config.presence.ttl_s == 5


def test_environment_reaches_optional_sections_and_lists() -> None:
    env = {
        "CHIME_BUS_REDIS_TEST_PORT": "6380",
        "CHIME_STORAGE_CASSANDRA_HOSTS": "10.0.0.1, 10.0.0.2",
        "CHIME_AUTH_JWT_ALGORITHMS": "[HS256, HS384]",
        "CHIME_STORAGE_CASSANDRA_PROTOCOL_VERSION": "5",
    }
    config = load_config(env=env)
    assert config.bus.redis_test == RedisConfig(
        host="127.0.0.1", port=6380, username=None, password=None, db=0
    )
    assert config.storage.cassandra.hosts == ("10.0.0.1", "10.0.0.2")
    assert config.auth.jwt.algorithms == ("HS256", "HS384")
    assert config.storage.cassandra.protocol_version == 5


def test_attachments_max_bytes_defaults_to_10_mib_and_is_set_like_any_key() -> None:
    assert load_config(env={}).attachments.max_bytes == 10 * 1024 * 1024
    assert load_config(env={"CHIME_ATTACHMENTS_MAX_BYTES": "2048"}).attachments.max_bytes == 2048
    with pytest.raises(ConfigError) as info:
        load_config(env={"CHIME_ATTACHMENTS_MAX_BYTES": "0"})
    assert info.value.key == "attachments.max_bytes"


def test_empty_environment_variable_means_null(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {redis: {username: admin}}\n")
    assert load_config(path, env={"CHIME_BUS_REDIS_USERNAME": ""}).bus.redis.username is None


def test_unrelated_chime_variables_are_ignored() -> None:
    assert load_config(env={"CHIME_HOME": "/x", "CHIME_SERVICES_DIR": "/y"}) == load_config(env={})


def test_os_environ_is_read_when_env_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHIME_API_PORT", "4142")
    assert load_config().api.port == 4142


def test_overrides_win_over_everything_and_none_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "chat: {port: 4000}\n")
    config = load_config(
        path,
        env={"CHIME_CHAT_PORT": "5000"},
        overrides={"chat.port": 0, "api.port": None, "workers": 2, "bus.redis_test.db": 3},
    )
    assert config.chat.port == 0
    assert config.api.port == 3142
    assert config.workers == 2
    assert config.bus.redis_test is not None
    assert config.bus.redis_test.db == 3


def test_workers_auto_in_any_case_resolves_to_the_core_count() -> None:
    assert load_config(env={"CHIME_WORKERS": "AUTO"}).workers == (os.cpu_count() or 1)


def test_choices_take_any_case(tmp_path: Path) -> None:
    path = write(
        tmp_path, "storage: {sqlite: {synchronous: NORMAL}, cassandra: {consistency: local_one}}"
    )
    config = load_config(path, env={"CHIME_BUS_BACKEND": "Redis"})
    assert config.storage.sqlite.synchronous is SqliteSynchronous.NORMAL
    assert config.storage.cassandra.consistency is Consistency.LOCAL_ONE
    assert config.bus.backend is BusBackend.REDIS


def test_an_empty_string_is_null_where_null_is_allowed(tmp_path: Path) -> None:
    # TOML has no null: a seed writes password = "" for "no password".
    credentials = write(tmp_path, '[redis]\npassword = ""\nusername = ""\n', "c.toml")
    redis = load_config(env={}, credentials=credentials).bus.redis
    assert (redis.username, redis.password) == (None, None)
    assert config_error(path=write(tmp_path, "api: {host: ''}")).key == "api.host"


def test_a_bad_choice_lists_the_allowed_values(tmp_path: Path) -> None:
    error = config_error(path=write(tmp_path, "logging: {level: loud}"))
    assert error.problem.endswith("expected one of debug, info, warning, error, critical")


def test_a_bad_value_is_quoted_but_a_secret_never_is(tmp_path: Path) -> None:
    assert "70000" in config_error(path=write(tmp_path, "chat: {port: 70000}")).problem
    error = config_error(path=write(tmp_path, "auth: {jwt: {secret: [hunter2]}}"))
    assert error.key == "auth.jwt.secret"
    assert "hunter2" not in str(error)


# --- credentials.toml --------------------------------------------------------------

SEED_CREDENTIALS = """
[api]
host = "localhost"
port = 4142

[chat]
port = 4143

[redis]
host = "redis.internal"
port = 6390
username = "default"
password = "redis-secret"

[redis.test]
host = "localhost"
port = 6380
password = "test-secret"

[cassandra]
host = "cassandra.internal"
port = 9043
"""


def test_seed_credentials_map_onto_the_config(tmp_path: Path) -> None:
    credentials = write(tmp_path, SEED_CREDENTIALS, "credentials.toml")
    config = load_config(env={}, credentials=credentials)
    assert (config.api.host, config.api.port) == ("localhost", 4142)
    assert (config.chat.host, config.chat.port) == ("127.0.0.1", 4143)
    assert config.bus.redis == RedisConfig(
        host="redis.internal", port=6390, username="default", password="redis-secret", db=0
    )
    assert config.bus.redis_test == RedisConfig(
        host="localhost", port=6380, username=None, password="test-secret", db=0
    )
    assert config.storage.cassandra.hosts == ("cassandra.internal",)
    assert config.storage.cassandra.port == 9043
    # Credentials supply settings; they do not switch backends.
    assert config.bus.backend is BusBackend.LOCAL
    assert config.storage.backend is StorageBackend.SQLITE


def test_credentials_cassandra_extras(tmp_path: Path) -> None:
    credentials = write(
        tmp_path,
        '[cassandra]\nhosts = ["a", "b"]\nusername = "u"\npassword = "p"\n'
        'keyspace = "chat_test"\ndatacenter = "dc2"\nreplication_factor = 3\n',
        "credentials.toml",
    )
    cassandra = load_config(env={}, credentials=credentials).storage.cassandra
    assert cassandra.hosts == ("a", "b")
    assert (cassandra.username, cassandra.password) == ("u", "p")
    assert (cassandra.keyspace, cassandra.local_dc, cassandra.replication_factor) == (
        "chat_test",
        "dc2",
        3,
    )


def test_credentials_sit_between_the_file_and_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "bus: {redis: {host: from-file, port: 1111}}\n")
    credentials = write(tmp_path, '[redis]\nhost = "from-credentials"\n', "c.toml")
    config = load_config(path, env={"CHIME_BUS_REDIS_HOST": "from-env"}, credentials=credentials)
    assert config.bus.redis.host == "from-env"
    assert config.bus.redis.port == 1111


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mysql]\nhost = "x"\n', "mysql"),
        ('[redis]\nurl = "redis://x"\n', "redis.url"),
        ('[redis.prod]\nhost = "x"\n', "redis.prod"),
        ('host = "x"\n', "host"),
        ('[redis]\nport = "six"\n', "bus.redis.port"),
    ],
)
def test_bad_credentials_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    credentials = write(tmp_path, text, "credentials.toml")
    assert config_error(credentials=credentials).key == key


def test_unparsable_credentials_name_the_file(tmp_path: Path) -> None:
    credentials = write(tmp_path, "[redis\n", "credentials.toml")
    error = config_error(credentials=credentials)
    assert error.key == str(credentials)
    assert "TOML" in error.problem


# --- invalid configurations ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("chat: {prot: 1}", "chat.prot"),
        ("nonsense: 1", "nonsense"),
        ("bus: {redis: {pasword: x}}", "bus.redis.pasword"),
        ("bus: {redis_test: {hots: x}}", "bus.redis_test.hots"),
        ("chat: {port: 70000}", "chat.port"),
        ("chat: {port: -1}", "chat.port"),
        ("chat: {port: '3143'}", "chat.port"),
        ("chat: {port: true}", "chat.port"),
        ("chat: {port: {a: 1}}", "chat.port"),
        ("chat: {host: ''}", "chat.host"),
        ("chat: {max_frame_bytes: 10}", "chat.max_frame_bytes"),
        ("chat: {handshake_timeout_ms: 0}", "chat.handshake_timeout_ms"),
        ("chat: 5", "chat"),
        ("api: {port: 1.5}", "api.port"),
        ("workers: 0", "workers"),
        ("workers: many", "workers"),
        ("persisters: 0", "persisters"),
        ("auth: {mode: open}", "auth.mode"),
        ("auth: {jwt: {algorithms: [none]}}", "auth.jwt.algorithms"),
        ("auth: {jwt: {algorithms: []}}", "auth.jwt.algorithms"),
        ("auth: {jwt: {algorithms: [1]}}", "auth.jwt.algorithms"),
        ("storage: {backend: postgres}", "storage.backend"),
        ("storage: {cassandra: {keyspace: 'bad-name'}}", "storage.cassandra.keyspace"),
        ("storage: {cassandra: {consistency: SOME}}", "storage.cassandra.consistency"),
        ("storage: {cassandra: {consistency: any}}", "storage.cassandra.consistency"),
        ("storage: {sqlite: {synchronous: off}}", "storage.sqlite.synchronous"),
        ("chat: {allowed_origins: [evil]}", "chat.allowed_origins"),
        ("chat: {allowed_origins: ['https://a.example/path']}", "chat.allowed_origins"),
        ("chat: {max_connections: 0}", "chat.max_connections"),
        ("auth: {jwt: {leeway_s: -1}}", "auth.jwt.leeway_s"),
        ("storage: {cassandra: {port: 0}}", "storage.cassandra.port"),
        ("storage: {cassandra: {hosts: []}}", "storage.cassandra.hosts"),
        ("storage: {cassandra: {replication_factor: 0}}", "storage.cassandra.replication_factor"),
        ("storage: {cassandra: {protocol_version: 0}}", "storage.cassandra.protocol_version"),
        ("bus: {backend: kafka}", "bus.backend"),
        ("bus: {redis: {db: -1}}", "bus.redis.db"),
        ("bus: {redis_test: 5}", "bus.redis_test"),
        ("limits: {messages_per_10s: -5}", "limits.messages_per_10s"),
        ("presence: {ttl_s: 0}", "presence.ttl_s"),
        ("logging: {level: loud}", "logging.level"),
        ("logging: {format: xml}", "logging.format"),
        ("data_dir: null", "data_dir"),
        ("admin_port: 65536", "admin_port"),
    ],
)
def test_invalid_values_name_the_dotted_key(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(path=write(tmp_path, text))
    assert error.key == key
    assert str(error).startswith(f"config error: {key}: ")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"CHIME_CHAT_PROT": "1"}, "chat.prot"),
        ({"CHIME_BUS_REDIS_PASWORD": "x"}, "bus.redis.pasword"),
        ({"CHIME_CHAT_PORT": "many"}, "chat.port"),
        ({"CHIME_CHAT_PORT": "[1"}, "chat.port"),
        ({"CHIME_BUS_REDIS": "x"}, "bus.redis"),
        ({"CHIME_WORKERS": "0"}, "workers"),
    ],
)
def test_invalid_environment_names_the_dotted_key(env: dict[str, str], key: str) -> None:
    assert config_error(env=env).key == key


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"chat.prot": 1}, "chat.prot"),
        ({"chat.port.x": 1}, "chat.port.x"),
        ({"chat": {"port": 1}}, "chat"),
        ({"chat.port": "x"}, "chat.port"),
    ],
)
def test_invalid_overrides_name_the_dotted_key(overrides: dict[str, Any], key: str) -> None:
    assert config_error(overrides=overrides).key == key


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    error = config_error(path=missing)
    assert error.key == str(missing)
    assert "cannot read" in error.problem


@pytest.mark.parametrize("text", ["chat: [unclosed", "- a list\n- at the top\n", "1: x"])
def test_malformed_config_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    error = config_error(path=path)
    assert error.key in (str(path), "1")


def test_jwt_mode_requires_a_secret() -> None:
    error = config_error(overrides={"auth.mode": "jwt"})
    assert error.key == "auth.jwt.secret"
    assert "CHIME_AUTH_JWT_SECRET" in error.problem


def test_jwt_secret_must_fit_the_strongest_algorithm() -> None:
    assert config_error(env={"CHIME_AUTH_MODE": "jwt", "CHIME_AUTH_JWT_SECRET": "short"}).key == (
        "auth.jwt.secret"
    )
    env = {
        "CHIME_AUTH_MODE": "jwt",
        "CHIME_AUTH_JWT_SECRET": SECRET,
        "CHIME_AUTH_JWT_ALGORITHMS": "HS256,HS512",
    }
    error = config_error(env=env)
    assert error.key == "auth.jwt.secret"
    assert "64 bytes" in error.problem
    env["CHIME_AUTH_JWT_SECRET"] = "k" * 64
    assert load_config(env=env).auth.jwt.secret == "k" * 64


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"chat.host": "0.0.0.0"}, "chat.host"),
        ({"chat.host": "chat.example.com"}, "chat.host"),
        ({"api.host": "192.168.1.5"}, "api.host"),
    ],
)
def test_insecure_mode_only_binds_loopback(overrides: dict[str, Any], key: str) -> None:
    assert config_error(overrides=overrides).key == key


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_insecure_mode_accepts_loopback_hosts(host: str) -> None:
    assert load_config(env={}, overrides={"chat.host": host, "api.host": host}).chat.host == host


def test_jwt_mode_may_bind_every_interface() -> None:
    config = load_config(
        env={"CHIME_AUTH_JWT_SECRET": SECRET},
        overrides={"auth.mode": "jwt", "chat.host": "0.0.0.0", "api.host": "::"},
    )
    assert config.auth.mode is AuthMode.JWT
    assert config.auth.jwt.secret == SECRET


# --- display and pickling ----------------------------------------------------------


def test_display_masks_secrets_and_is_plain_data(tmp_path: Path) -> None:
    credentials = write(tmp_path, SEED_CREDENTIALS, "credentials.toml")
    config = load_config(
        env={"CHIME_AUTH_JWT_SECRET": SECRET, "CHIME_STORAGE_CASSANDRA_PASSWORD": "c-pw-9"},
        credentials=credentials,
    )
    shown = config.to_display_dict()
    assert shown["auth"]["jwt"]["secret"] == "***"
    assert shown["bus"]["redis"]["password"] == "***"
    assert shown["bus"]["redis_test"]["password"] == "***"
    assert shown["storage"]["cassandra"]["password"] == "***"
    assert shown["bus"]["redis"]["username"] == "default"  # not a secret
    assert shown["auth"]["mode"] == "insecure"
    assert shown["storage"]["cassandra"]["hosts"] == ["cassandra.internal"]
    dumped = yaml.safe_dump(shown)  # plain data: no enums, tuples or dataclasses
    for secret in (SECRET, "c-pw-9", "redis-secret", "test-secret"):
        assert secret not in dumped


def test_display_shows_unset_secrets_as_null() -> None:
    shown = load_config(env={}).to_display_dict()
    assert shown["auth"]["jwt"]["secret"] is None
    assert shown["bus"]["redis"]["password"] is None
    assert shown["bus"]["redis_test"] is None


def test_config_pickles_and_is_frozen(tmp_path: Path) -> None:
    credentials = write(tmp_path, SEED_CREDENTIALS, "credentials.toml")
    config = load_config(env={"CHIME_AUTH_JWT_SECRET": SECRET}, credentials=credentials)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.auth.mode is AuthMode.INSECURE
    with pytest.raises(AttributeError):
        config.chat.port = 1  # type: ignore[misc]
    assert not hasattr(config.chat, "__dict__")  # slotted


@pytest.mark.parametrize(
    ("level", "warned"), [("ONE", True), ("LOCAL_ONE", True), ("QUORUM", False)]
)
def test_cassandra_consistency_one_is_warned_about(
    tmp_path: Path, level: str, warned: bool
) -> None:
    text = f"storage: {{backend: cassandra, cassandra: {{consistency: {level}}}}}"
    warnings = durability_warnings(load_config(write(tmp_path, text), env={}))
    assert bool(warnings) is warned
    assert all("consistency" in w for w in warnings)


def test_the_default_config_has_no_durability_warning() -> None:
    assert durability_warnings(load_config(None, env={})) == []


def test_fault_injection_is_refused_outside_insecure_loopback(tmp_path: Path) -> None:
    text = "auth: {mode: jwt, jwt: {secret: '" + "s" * 40 + "'}}\ntesting: {fault_injection: true}"
    error = config_error(path=write(tmp_path, text))
    assert error.key == "testing.fault_injection"


# --- handlers --------------------------------------------------------------------

HANDLER = "{name: clean, use: word_filter, stage: before_store, options: {words: [darn]}}"


def test_a_handler_takes_its_defaults_and_keeps_its_options(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"handlers: [{HANDLER}]"), env={})
    (handler,) = config.handlers
    assert handler.name == "clean"
    assert handler.stage is HandlerStage.BEFORE_STORE
    assert handler.channels == ("*",)
    assert handler.options == {"words": ["darn"]}
    assert handler.timeout_ms == 1000
    assert handler.on_failure is HandlerFailure.REJECT
    assert pickle.loads(pickle.dumps(config)) == config


def test_a_handler_secret_option_is_masked_on_display(tmp_path: Path) -> None:
    text = (
        "handlers: [{name: hook, use: webhook, stage: after_store,"
        " options: {url: 'http://127.0.0.1:9/', secret: hunter2}}]"
    )
    shown = load_config(write(tmp_path, text), env={}).to_display_dict()
    assert shown["handlers"][0]["options"] == {"url": "http://127.0.0.1:9/", "secret": "***"}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("handlers: [{name: a, use: word_filter}]", "handlers[0]"),
        (f"handlers: [{HANDLER}, {{name: b, use: x, stage: later}}]", "handlers[1].stage"),
        ("handlers: [{name: a, use: x, stage: before_store, colour: red}]", "handlers[0].colour"),
        ("handlers: [{name: 9a, use: x, stage: before_store}]", "handlers[0].name"),
        ("handlers: [{name: a, use: '', stage: before_store}]", "handlers[0].use"),
        (
            "handlers: [{name: a, use: x, stage: before_store, channels: []}]",
            "handlers[0].channels",
        ),
        (
            "handlers: [{name: a, use: x, stage: before_store, timeout_ms: 0}]",
            "handlers[0].timeout_ms",
        ),
        (
            "handlers: [{name: a, use: x, stage: after_store, on_failure: maybe}]",
            "handlers[0].on_failure",
        ),
        (f"handlers: [{HANDLER}, {HANDLER}]", "handlers[1].name"),
    ],
)
def test_invalid_handlers_name_the_entry_and_key(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(path=write(tmp_path, text))
    assert error.key == key
    assert str(error).startswith(f"config error: {key}: ")


def test_after_store_handlers_run_on_the_redis_bus_under_a_lease(tmp_path: Path) -> None:
    text = (
        "bus: {backend: redis}\n"
        f"handlers: [{HANDLER}, {{name: bot, use: echo_bot, stage: after_store,"
        " lease_ttl_ms: 2000}]"
    )
    handlers = load_config(write(tmp_path, text), env={}).handlers
    assert [h.lease_ttl_ms for h in handlers] == [5000, 2000]
    too_short = "handlers: [{name: bot, use: echo_bot, stage: after_store, lease_ttl_ms: 100}]"
    assert config_error(path=write(tmp_path, too_short)).key == "handlers[0].lease_ttl_ms"
