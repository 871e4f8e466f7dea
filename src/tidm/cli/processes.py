"""Long-running processes of the fleet: `tidm agent run`, `tidm job run`, wired from settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from tidm.cli.settings import AgentProcessSettings, ConfigError, JobProcessSettings, load_settings
from tidm.cli.wiring import build_transport, open_evidence
from tidm.edge_agent import Agent, AgentStats
from tidm.edge_agent.config import HealthSettings
from tidm.edge_agent.desensitize import Desensitizer
from tidm.edge_agent.health import HealthServer
from tidm.edge_agent.metrics import AgentMetrics
from tidm.edge_agent.plan_sources import sources_from_plan
from tidm.edge_agent.sources.base import Source
from tidm.edge_agent.sources.mqtt import MqttSource
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.edge_agent.spool import DiskSpool
from tidm.evidence.api import EvidenceLog
from tidm.ingest import AgentIdentity, FolderQuarantine, Quarantine, TopicQuarantine, TrustedAgents
from tidm.ingest.transports import Transport
from tidm.semantics.plan import load_plan
from tidm.storage import Lake
from tidm.stream_processing import JobRunner, JobStats
from tidm.stream_processing.spec import JobSpec, load_spec

__all__ = ["load_job", "run_agent", "run_job"]

log = logging.getLogger(__name__)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def run_agent(settings: AgentProcessSettings, *, stop: asyncio.Event | None = None) -> AgentStats:
    """Run an agent until SIGINT/SIGTERM (or `stop`), then flush and publish what it holds."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    identity = AgentIdentity.load(settings.agent.agent_id, settings.agent.key_file)
    # Load the policy, classification and keys before connecting: a bad file fails fast, naming itself.
    desensitizer = Desensitizer.from_settings(settings.agent)
    transport = build_transport(settings.transport, client_id=settings.agent.agent_id)
    await transport.ensure_topics([settings.agent.topic], partitions=settings.transport.partitions)
    # Group commit: the agent syncs the log before its spool deletes sent batches and when it stops
    # (a crash of the process loses nothing; a power cut loses no entry whose batch file is gone).
    # With `evidence.kind: kafka` the same local log is forwarded to the evidence topic in the
    # background: an agent keeps collecting (and logging) while the uplink is down.
    evidence = open_evidence(
        settings.evidence,
        settings.transport,
        client_id=settings.agent.agent_id,
        durability="process",
        store_and_forward=True,
    )
    try:
        return await _run_agent(settings, stop, identity, desensitizer, transport, evidence)
    finally:
        evidence.close()


async def _run_agent(
    settings: AgentProcessSettings,
    stop: asyncio.Event,
    identity: AgentIdentity,
    desensitizer: Desensitizer | None,
    transport: Transport,
    evidence: EvidenceLog,
) -> AgentStats:
    # Sources report through `metrics.source(name)`: samples, connection state, reconnects, quarantine.
    metrics = AgentMetrics()
    sources: list[Source] = [OpcUaSource(s, metrics=metrics.source(s.endpoint)) for s in settings.agent.opcua]
    for mqtt_settings in settings.agent.mqtt:
        mqtt_source = MqttSource(
            mqtt_settings,
            evidence=evidence,
            actor=f"agent:{settings.agent.agent_id}",
            field_policy=desensitizer,
        )
        mqtt_source.metrics = metrics.source(mqtt_source.name)
        sources.append(mqtt_source)
    for plan_settings in settings.agent.plans:
        sources += sources_from_plan(
            load_plan(plan_settings.aas, plan_settings.mapping),
            plan_settings,
            client_id=settings.agent.agent_id,
            metrics_for=metrics.source,
            evidence=evidence,
            actor=f"agent:{settings.agent.agent_id}",
            field_policy=desensitizer,
        )
    spool = _open_spool(settings, evidence)
    producer = transport.producer()
    health: HealthServer | None = None
    try:
        await producer.start()
        agent = Agent(
            settings.agent,
            identity=identity,
            producer=producer,
            evidence=evidence,
            sources=sources,
            desensitizer=desensitizer,
            spool=spool,
        )
        health = await _start_health(settings, agent, metrics, [s.name for s in sources])
        return await agent.run(stop)
    finally:
        if health is not None:
            await health.close()
        await producer.stop()
        if spool is not None:
            spool.close()


def _open_spool(settings: AgentProcessSettings, evidence: EvidenceLog) -> DiskSpool | None:
    """The agent's durable spool; without one, sealed batches live in memory and die with the process."""
    if settings.agent.spool is None:
        log.warning("no agent.spool configured: unsent batches are kept in memory and lost on a crash")
        return None
    actor = f"agent:{settings.agent.agent_id}"
    return DiskSpool.from_settings(settings.agent.spool, evidence=evidence, actor=actor)


async def _start_health(
    settings: AgentProcessSettings, agent: Agent, metrics: AgentMetrics, source_names: list[str]
) -> HealthServer | None:
    """Metrics read from the agent at scrape time, and the HTTP endpoint (unless `health.port` is null)."""
    metrics.gauge(
        "tidm_agent_queue_depth", "Sealed batches waiting for the publisher", lambda: agent.queue_depth
    )
    metrics.counter(
        "tidm_agent_batches_published",
        "Batches acknowledged by the transport",
        lambda: agent.stats.batches_published,
    )
    metrics.counter(
        "tidm_agent_samples_in", "Samples received from all sources", lambda: agent.stats.samples_in
    )
    for name in source_names:
        metrics.source(name)  # registered up front: a source that never connected is "not ready"
    if settings.health.port is None:
        return None

    def readiness() -> dict[str, bool]:
        checks = {f"source:{name}": up for name, up in metrics.sources_connected().items()}
        checks["publisher"] = agent.publisher_alive
        return checks

    health = HealthServer(
        host=settings.health.host, port=settings.health.port, readiness=readiness, metrics=metrics.exposition
    )
    await health.start()
    log.info("agent health endpoint on http://%s:%d", settings.health.host, health.port)
    return health


def load_job(spec_path: Path, config_path: Path | None = None) -> tuple[JobProcessSettings, JobSpec]:
    """The job spec (what) and the process settings (where) of `tidm job run`.

    `spec_path` is a job spec, or a settings file holding the spec under `job:` next to the process
    sections; `config_path` (optional) holds the process settings. `TIDM_*` variables override both.
    """
    try:
        doc = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        doc = None  # load_spec reports it, naming the file
    combined = isinstance(doc, dict) and isinstance(doc.get("job"), dict) and "steps" not in doc
    if config_path is not None:
        settings = load_settings(JobProcessSettings, config_path)
    else:
        settings = load_settings(JobProcessSettings, spec_path if combined else None)
    spec = load_spec(spec_path, section="job" if combined else None)
    return settings, spec


async def run_job(
    settings: JobProcessSettings, spec: JobSpec | None = None, *, stop: asyncio.Event | None = None
) -> JobStats:
    """Run a stream job until SIGINT/SIGTERM (or `stop`); offsets are committed after each landing."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    if spec is None:
        if settings.job is None:
            msg = "no job spec: pass `--spec JOB.yaml` (or a `job:` section in the settings)"
            raise ConfigError(msg)
        spec = JobSpec.model_validate({**settings.job, "source": "<settings job:>"})
        spec.bind()
    transport = build_transport(settings.transport, client_id=f"job-{spec.name}")
    topics = list(spec.topics) + ([spec.output_topic] if spec.output_topic else [])
    await transport.ensure_topics(topics, partitions=settings.transport.partitions)
    trusted = TrustedAgents.from_file(settings.trusted_agents)
    # Group commit: the runner syncs the log before each offset commit (a sink: acked per append).
    evidence = open_evidence(
        settings.evidence, settings.transport, client_id=f"job-{spec.name}", durability="process"
    )
    producer = transport.producer()
    try:
        await producer.start()
    except BaseException:
        evidence.close()
        raise
    actor = f"job:{spec.name}"
    quarantine: Quarantine
    if settings.quarantine == "topic":
        quarantine = TopicQuarantine(producer, evidence, actor=actor)
    else:
        quarantine = FolderQuarantine(settings.quarantine_path, evidence, actor=actor)
    health: HealthServer | None = None
    try:
        runner = JobRunner(
            spec,
            transport=transport,
            lake=Lake.from_settings(settings.lake),
            evidence=evidence,
            trusted=trusted,
            quarantine=quarantine,
            producer=producer,
        )
        health = await serve_health(
            settings.health,
            prefix="tidm_job",
            readiness=lambda: {"running": not stop.is_set()},
            stats=lambda: _numbers(runner.stats),
        )
        return await runner.run(stop)
    finally:
        if health is not None:
            await health.close()
        await producer.stop()
        evidence.close()


async def serve_health(
    health: HealthSettings,
    *,
    prefix: str,
    readiness: Callable[[], Mapping[str, bool]],
    stats: Callable[[], Mapping[str, float]],
) -> HealthServer | None:
    """/healthz, /readyz and /metrics for a process whose counters are the fields of a stats object."""
    if health.port is None:
        return None
    registry = CollectorRegistry()

    class _Stats:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            for name, value in stats().items():
                yield GaugeMetricFamily(f"{prefix}_{name}", f"{prefix} {name.replace('_', ' ')}", value=value)

    registry.register(_Stats())
    server = HealthServer(
        host=health.host, port=health.port, readiness=readiness, metrics=lambda: generate_latest(registry)
    )
    await server.start()
    return server


def _numbers(stats: object) -> dict[str, float]:
    return {
        k: float(v) for k, v in vars(stats).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


def keygen(agent_id: str, out: Path, trust_file: Path | None) -> str:
    """Create an agent key (mode 0600); optionally add its public key to a trusted-agents file."""
    identity = AgentIdentity.generate(agent_id)
    identity.save(out)
    if trust_file is not None:
        registry = (
            TrustedAgents.from_file(trust_file) if trust_file.exists() else TrustedAgents(path=trust_file)
        )
        registry.add(agent_id, identity.public_key)
        registry.save(trust_file)
    from tidm.ingest.identity import public_key_b64

    return public_key_b64(identity.public_key)
