"""Long-running processes of the fleet: `tidm agent run`, `tidm job run`, wired from settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from tidm.cli.settings import AgentProcessSettings, JobProcessSettings
from tidm.cli.wiring import build_transport
from tidm.edge_agent import Agent, AgentStats
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.evidence import SqliteEvidenceLog
from tidm.ingest import AgentIdentity, FolderQuarantine, Quarantine, TopicQuarantine, TrustedAgents
from tidm.storage import Lake
from tidm.stream_processing import JobRunner, JobSettings, JobStats

__all__ = ["run_agent", "run_job"]

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
    transport = build_transport(settings.transport, client_id=settings.agent.agent_id)
    await transport.ensure_topics([settings.agent.topic], partitions=settings.transport.partitions)
    evidence = SqliteEvidenceLog(settings.evidence.path)
    producer = transport.producer()
    await producer.start()
    try:
        agent = Agent(
            settings.agent,
            identity=identity,
            producer=producer,
            evidence=evidence,
            sources=[OpcUaSource(s) for s in settings.agent.opcua],
        )
        return await agent.run(stop)
    finally:
        await producer.stop()
        evidence.close()


async def run_job(settings: JobProcessSettings, *, stop: asyncio.Event | None = None) -> JobStats:
    """Run a stream job until SIGINT/SIGTERM (or `stop`); offsets are committed after each landing."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    job = settings.job
    transport = build_transport(settings.transport, client_id=f"job-{job.name}")
    await transport.ensure_topics(job.topics, partitions=settings.transport.partitions)
    evidence = SqliteEvidenceLog(settings.evidence.path)
    trusted = TrustedAgents.from_file(settings.trusted_agents)
    producer = transport.producer()
    await producer.start()
    actor = f"job:{job.name}"
    quarantine: Quarantine
    if settings.quarantine == "topic":
        quarantine = TopicQuarantine(producer, evidence, actor=actor)
    else:
        quarantine = FolderQuarantine(settings.quarantine_path, evidence, actor=actor)
    try:
        runner = JobRunner(
            JobSettings(
                name=job.name,
                topics=tuple(job.topics),
                group_id=job.group_id,
                table=job.table,
                max_records=job.max_records,
            ),
            transport=transport,
            lake=Lake.from_settings(settings.lake),
            evidence=evidence,
            trusted=trusted,
            quarantine=quarantine,
        )
        return await runner.run(stop)
    finally:
        await producer.stop()
        evidence.close()


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
