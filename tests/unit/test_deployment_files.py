"""The deployment files of config/deploy/ are valid and agree with the server.

None of them can run against a real cluster here, so this checks what can be
checked: the configs they carry load as Chime configs, the probes, ports and
mounts point where the server really listens, the systemd unit passes
``systemd-analyze verify``, and every metric the dashboard queries is one the
server exports.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector

from chime_actors import metrics as metrics_module
from chime_actors.config import AuthMode, BusBackend, StorageBackend, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "config" / "deploy"
SECRETS = {"CHIME_AUTH_JWT_SECRET": "s" * 40}


def k8s_documents() -> dict[str, dict[str, Any]]:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "chime.yaml").read_text()))
    return {doc["kind"]: doc for doc in docs if doc}


def test_k8s_configmap_is_a_valid_production_config(tmp_path: Path) -> None:
    configmap = k8s_documents()["ConfigMap"]
    path = tmp_path / "chime.yaml"
    path.write_text(configmap["data"]["chime.yaml"])
    config = load_config(path, env=SECRETS)
    assert config.auth.mode is AuthMode.JWT
    assert config.storage.backend is StorageBackend.CASSANDRA
    assert config.bus.backend is BusBackend.REDIS
    assert config.data_dir == "/var/lib/chime"


def test_k8s_deployment_probes_ports_resources_and_drain(tmp_path: Path) -> None:
    docs = k8s_documents()
    path = tmp_path / "chime.yaml"
    path.write_text(docs["ConfigMap"]["data"]["chime.yaml"])
    config = load_config(path, env=SECRETS)
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"chat": config.chat.port, "api": config.api.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "api"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "api"}
    assert "preStop" in container["lifecycle"]
    # The drain (settle acks, close clients 1001) needs time before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/chime/chime.yaml"] == "config"
    assert config.data_dir in mounts  # writable data dir on a read-only root
    assert "/tmp" in mounts  # the lane sockets' run directory
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert secrets["CHIME_AUTH_JWT_SECRET"] == "chime-secrets"
    service = docs["Service"]["spec"]
    assert {p["targetPort"] for p in service["ports"]} <= set(ports)
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["selector"].items() <= labels.items()


def test_compose_runs_two_servers_on_one_redis_and_one_cassandra(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    chimes = [name for name, s in services.items() if s.get("image") == "chime:latest"]
    assert len(chimes) == 2 and {"redis", "cassandra"} <= set(services)
    host_ports = [p.split(":")[0] for name in chimes for p in services[name]["ports"]]
    assert len(host_ports) == len(set(host_ports))
    for name in chimes:
        service = services[name]
        (mount,) = service["volumes"]
        source, target, _ = mount.split(":")
        assert target == "/etc/chime/chime.yaml"
        config = load_config(DEPLOY / source, env=SECRETS)
        assert config.bus.redis.host == "redis"
        assert config.storage.cassandra.hosts == ("cassandra",)
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert set(service["depends_on"]) == {"redis", "cassandra"}


def test_dockerfile_runs_chime_serve_as_pid_1_as_a_user() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT ")]
    # Exec form: chime itself is PID 1 and gets the stop signal.
    assert orjson.loads(entrypoint.removeprefix("ENTRYPOINT "))[:2] == ["chime", "serve"]
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    exposed = {p for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert exposed == {"3143", "3142"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (DEPLOY / "chime.service").read_text()
    assert "KillMode=mixed" in unit and "LimitNOFILE=" in unit
    # verify checks that ExecStart exists and User resolves: point them at this box.
    chime = shutil.which("chime") or str(Path(__file__).resolve().parents[2] / ".venv/bin/chime")
    local = re.sub(r"^ExecStart=\S+", f"ExecStart={chime}", unit, flags=re.MULTILINE)
    local = re.sub(r"^(User|Group)=chime$", r"\1=root", local, flags=re.MULTILINE)
    path = tmp_path / "chime.service"
    path.write_text(local)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_every_dashboard_query_names_a_metric_the_server_exports() -> None:
    dashboard = orjson.loads((DEPLOY / "grafana-dashboard.json").read_bytes())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    specs = [
        spec
        for spec in vars(metrics_module).values()
        if isinstance(
            spec,
            metrics_module.CounterSpec | metrics_module.GaugeSpec | metrics_module.HistogramSpec,
        )
    ]
    exported = {spec.name for spec in specs}
    exported |= {f"{s.name}_bucket" for s in specs if isinstance(s, metrics_module.HistogramSpec)}
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    exported |= {sample.name for family in registry.collect() for sample in family.samples}
    for expr in exprs:
        for name in re.findall(r"\b((?:chime|process)_[a-z_]+)\b", expr):
            assert name in exported, f"the dashboard queries {name}, which nothing exports"
