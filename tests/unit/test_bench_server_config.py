"""The config of a ``chime bench --start`` server: ``--services`` and ``--server-config``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from chime_actors.bench.options import (
    BenchOptions,
    BenchUsageError,
    add_bench_arguments,
    options_from_args,
)
from chime_actors.bench.runner import server_layers
from chime_actors.bench.target import (
    BenchTargetError,
    bench_server_config,
    describe_backends,
    merge_config,
    services_layer,
)
from chime_actors.config import load_config

SERVICES = {
    "redis": {"host": "127.0.0.1", "port": 6400, "password": None},
    "cassandra": {"host": "127.0.0.2", "port": 9050, "protocol_version": None},
}


def parse(*argv: str) -> BenchOptions:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return options_from_args(parser.parse_args(list(argv)), "bench-0a1b2c3d")


def test_merge_recurses_into_mappings_and_replaces_the_rest() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    merged = merge_config(base, {"a": {"c": [3], "e": {"f": 1}}, "d": {"g": 2}})
    assert merged == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": {"g": 2}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}, "the base is left alone"


def test_services_put_the_server_on_redis_and_a_fresh_cassandra_keyspace(tmp_path: Path) -> None:
    opts = parse("--start", "--services", "x.json")
    assert opts.keyspace == "bench_0a1b2c3d"
    config = bench_server_config(tmp_path, None, [services_layer(SERVICES, opts.keyspace)])
    assert config["bus"] == {"backend": "redis", "redis": {"host": "127.0.0.1", "port": 6400}}
    assert config["storage"]["backend"] == "cassandra"
    assert config["storage"]["cassandra"] == {
        "hosts": ["127.0.0.2"],
        "port": 9050,
        "keyspace": "bench_0a1b2c3d",
        "consistency": "ONE",
    }
    assert config["limits"] == {"messages_per_10s": 0, "connects_per_ip_per_10s": 0}
    assert describe_backends(config) == "redis+cassandra/bench_0a1b2c3d"
    # What the server will read: the config validates as a whole.
    path = tmp_path / "chime.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path, env={})
    assert (loaded.bus.backend, loaded.storage.backend) == ("redis", "cassandra")
    assert loaded.storage.cassandra.consistency == "ONE"


def test_protocol_version_and_password_of_the_services_are_passed_on() -> None:
    services = {
        "redis": {**SERVICES["redis"], "password": "pw"},
        "cassandra": {**SERVICES["cassandra"], "protocol_version": "4"},
    }
    layer = services_layer(services, "ks")
    assert layer["bus"]["redis"]["password"] == "pw"
    assert layer["storage"]["cassandra"]["protocol_version"] == 4


def test_server_config_goes_over_services_but_the_bench_keeps_ports_and_data(
    tmp_path: Path,
) -> None:
    user = {
        "chat": {"port": 3143, "host": "0.0.0.0", "send_queue_frames": 50},
        "api": {"port": 3142},
        "data_dir": "/elsewhere",
        "storage": {"cassandra": {"consistency": "QUORUM"}, "sqlite": {"path": "/x.db"}},
        "persisters": 4,
        "limits": {"messages_per_10s": 50},
    }
    config = bench_server_config(tmp_path, 1, [services_layer(SERVICES, "ks"), user])
    assert config["chat"] == {"host": "127.0.0.1", "port": 0, "send_queue_frames": 50}
    assert config["api"] == {"host": "127.0.0.1", "port": 0}
    assert config["data_dir"] == str(tmp_path / "data")
    assert config["storage"]["sqlite"]["path"] == str(tmp_path / "data" / "chime.db")
    assert config["storage"]["cassandra"]["consistency"] == "QUORUM"
    assert config["storage"]["cassandra"]["keyspace"] == "ks"
    assert config["persisters"] == 4
    assert config["workers"] == 1
    assert config["limits"] == {"messages_per_10s": 50, "connects_per_ip_per_10s": 0}


def test_without_layers_the_embedded_default_is_unchanged(tmp_path: Path) -> None:
    config = bench_server_config(tmp_path, None)
    assert describe_backends(config) == "local+sqlite"
    assert "workers" not in config


def test_layers_are_read_from_the_files(tmp_path: Path) -> None:
    services = tmp_path / "services.json"
    services.write_text(json.dumps(SERVICES))
    extra = tmp_path / "extra.yaml"
    extra.write_text("persisters: 3\nbus: {redis: {db: 2}}\n")
    opts = parse("--start", "--services", str(services), "--server-config", str(extra))
    config = bench_server_config(tmp_path, None, server_layers(opts))
    assert config["persisters"] == 3
    assert config["bus"]["redis"] == {"host": "127.0.0.1", "port": 6400, "db": 2}
    assert config["storage"]["cassandra"]["keyspace"] == opts.keyspace


@pytest.mark.parametrize(
    ("name", "text", "flag"),
    [
        ("services.json", '{"redis": {"host": "h", "port": 1}}', "--services"),
        ("services.json", "not json", "--services"),
        ("extra.yaml", "- a list\n", "--server-config"),
        ("extra.yaml", "a: [unclosed\n", "--server-config"),
    ],
)
def test_bad_files_are_refused_naming_the_flag(
    tmp_path: Path, name: str, text: str, flag: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    opts = parse("--start", flag, str(path))
    with pytest.raises(BenchTargetError, match=flag):
        server_layers(opts)
    with pytest.raises(BenchTargetError, match=flag):
        server_layers(parse("--start", flag, str(tmp_path / "missing")))


def test_backend_flags_need_start() -> None:
    with pytest.raises(BenchUsageError, match="--start"):
        parse("--url", "ws://127.0.0.1:1/", "--services", "s.json")
    with pytest.raises(BenchUsageError, match="--start"):
        parse("--url", "ws://127.0.0.1:1/", "--server-config", "c.yaml")
