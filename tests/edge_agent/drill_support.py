"""Helpers of the spool drills: a private Kafka broker that a test may stop, agent processes, and the
checks that read a topic back and compare it with what the simulator produced.

The private broker reuses deploy/dev/services.py's jars, properties and readiness probe with its own
folder and ports, so stopping it never disturbs the shared broker other tests use.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tests.conftest import load_services_module

from tidm.ingest import AgentIdentity, TrustedAgents, open_envelope
from tidm.ingest.envelope import VerifiedBatch
from tidm.ingest.transports import KafkaTransport, Message
from tidm.simulator import ProducedSample

TIDM = [sys.executable, "-m", "tidm.cli.main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateKafka:
    """A one-node KRaft broker of our own in `workdir`, stoppable and restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self._services = load_services_module()
        self.workdir = workdir
        self.port, self._controller = _free_port(), _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []

    def start(self, timeout_s: float = 120.0) -> None:
        """Format (first time only) and start the broker; return once it serves metadata."""
        svc = self._services
        if not self._argv:
            lib = svc._kafka_jars()
            java = shutil.which("java") or str(Path(os.environ.get("JAVA_HOME", "/usr")) / "bin" / "java")
            self.workdir.mkdir(parents=True, exist_ok=True)
            props = self.workdir / "server.properties"
            props.write_text(svc._kafka_server_properties(self.workdir, self.port, self._controller))
            log4j = self.workdir / "log4j2.properties"
            log4j.write_text(svc._kafka_log4j2(self.workdir / "server.log"))
            jvm = [java, "-Xms128m", "-Xmx384m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"]
            jvm += [
                f"-Dlog4j2.configurationFile={log4j}",
                f"-Dkafka.logs.dir={self.workdir}",
                "-cp",
                f"{lib}/*",
            ]
            cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            fmt = [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster}", "-c", str(props)]
            subprocess.run([*fmt, "--standalone"], capture_output=True, timeout=120, check=True)
            self._argv = [*jvm, "kafka.Kafka", str(props)]
        with (self.workdir / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                self._argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                svc._probe_kafka({"bootstrap": self.bootstrap}, 2.0)
                return
            except Exception:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM (a clean broker shutdown), SIGKILL after 30 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def agent_config(
    path: Path,
    *,
    key: Path,
    endpoint: str,
    bootstrap: str,
    topic: str,
    spool: dict[str, Any],
    evidence: Path,
    batch: dict[str, Any] | None = None,
) -> Path:
    """An `agent run` settings file for one OPC UA endpoint, Kafka, a spool folder and SQLite evidence."""
    doc = {
        "agent": {
            "agent_id": "gw-drill",
            "site": "drill",
            "key_file": str(key),
            "topic": topic,
            "batch": batch or {"max_rows": 500, "max_age_ms": 300},
            "opcua": [{"endpoint": endpoint, "security": "none", "publishing_interval_ms": 100}],
            "spool": spool,
        },
        "transport": {"kind": "kafka", "bootstrap": bootstrap, "partitions": 2},
        "evidence": {"path": str(evidence)},
        "health": {"port": None},
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


class AgentProcess:
    """`tidm -v agent run --config ...` as a child process, its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*TIDM, "-v", "agent", "run", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )

    async def wait_collecting(self, timeout_s: float = 90.0) -> None:
        """Until the OPC UA source reports its subscription (every variable monitored)."""
        deadline = time.monotonic() + timeout_s
        while "collecting " not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"agent not collecting after {timeout_s} s:\n{self.log.read_text()[-3000:]}"
                )
            await asyncio.sleep(0.1)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    async def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM: the agent seals what it holds and sends within its drain timeout."""
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait(timeout=10)
                break
            await asyncio.sleep(0.1)
        return int(self.proc.returncode)


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 90.0) -> list[Message]:
    """Every message of `topic` (all partitions), reading until `expect` are in and 2 s pass quietly."""
    transport = KafkaTransport(bootstrap, client_id="drill-reader")
    consumer = transport.consumer([topic], group_id=f"drill-{uuid.uuid4().hex[:12]}")
    await consumer.start()
    out: list[Message] = []
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            got = await consumer.getmany(timeout_ms=500)
            if got:
                quiet_since = time.monotonic()
                for records in got.values():
                    out.extend(records)
            elif len(out) >= expect and time.monotonic() - quiet_since > 2.0:
                break
    finally:
        await consumer.stop()
    return out


@dataclass
class TopicReport:
    """What a topic holds, batch by batch and sample by sample."""

    batches: list[VerifiedBatch]  # distinct batches (by SHA-256), in (partition, offset) order
    resends: int  # byte-identical copies beyond the first (a resend after a crash): the job drops them
    samples: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    values: dict[tuple[str, str, int], tuple[Any, Any, int]] = field(default_factory=dict)
    seqs: dict[str, list[int]] = field(default_factory=dict)  # per source, sorted

    def chain_problems(self) -> list[str]:
        """Empty when the distinct batches form one unbroken chain from an empty previous hash."""
        by_prev: dict[str, list[VerifiedBatch]] = defaultdict(list)
        for b in self.batches:
            by_prev[b.provenance.prev_batch_hash].append(b)
        problems = [f"fork after {p[:12]}: {len(c)} children" for p, c in by_prev.items() if len(c) > 1]
        walked, prev = 0, ""
        while by_prev.get(prev):
            prev = by_prev[prev][0].sha256
            walked += 1
        if walked != len(self.batches):
            problems.append(f"the chain from the first batch covers {walked} of {len(self.batches)} batches")
        return problems


def inspect_topic(messages: Iterable[Message], identity: AgentIdentity) -> TopicReport:
    trusted = TrustedAgents({identity.agent_id: identity.public_key})
    seen: dict[str, VerifiedBatch] = {}
    copies = 0
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        batch = open_envelope(m, trusted)  # raises if any byte or signature were wrong
        if batch.sha256 in seen:
            copies += 1
            continue
        seen[batch.sha256] = batch
    report = TopicReport(list(seen.values()), copies)
    seqs: dict[str, list[int]] = defaultdict(list)
    for b in report.batches:
        t = b.table
        (source,) = b.provenance.sources
        seqs[source].extend(t.column("seq").to_pylist())
        for asset, name, ts, value, text, status in zip(
            t.column("asset_id").to_pylist(),
            t.column("signal").to_pylist(),
            t.column("ts").cast("int64").to_pylist(),
            t.column("value").to_pylist(),
            t.column("value_text").to_pylist(),
            t.column("status_code").to_pylist(),
            strict=True,
        ):
            report.samples[(asset, name, ts)] += 1
            report.values[(asset, name, ts)] = (value, text, status)
    report.seqs = {s: sorted(v) for s, v in seqs.items()}
    return report


def produced_key(p: ProducedSample) -> tuple[str, str, int]:
    return (p.asset_id, p.signal, p.ts_us)


def assert_exactly_once_and_true(report: TopicReport, produced: list[ProducedSample]) -> None:
    """No sample twice, seqs contiguous per source, one chain, every sample as the simulator wrote it."""
    twice = [k for k, n in report.samples.items() if n > 1]
    assert not twice, f"{len(twice)} samples in two distinct batches, e.g. {twice[:3]}"
    for source, seqs in report.seqs.items():
        assert seqs == list(range(len(seqs))), f"{source}: seqs are not 0..{len(seqs) - 1} exactly once"
    assert not report.chain_problems(), report.chain_problems()
    truth = {produced_key(p): p for p in produced}
    for key, (value, text, status) in report.values.items():
        p = truth.get(key)
        assert p is not None, f"{key} is in Kafka but the simulator never produced it"
        assert (value, text, status) == (p.value, p.value_text, p.status_code), (key, value, text, status, p)
