"""One process running the whole flow: simulator -> agent -> transport -> clean job -> lake.

Used by `tidm demo` (embedded transport, local folder) and by the end-to-end tests (the same code
on real Kafka and S3). Collection runs for a fixed number of simulator ticks, so the set of samples
that exist is known exactly; then the agent flushes and the job drains before both stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from tidm.edge_agent import Agent, AgentSettings, AgentStats
from tidm.edge_agent.sources.opcua import OpcUaSource
from tidm.evidence.api import EvidenceLog
from tidm.ingest import AgentIdentity, Quarantine, TrustedAgents
from tidm.ingest.transports import Producer, Transport
from tidm.simulator import ProducedSample, Simulator, SimulatorConfig
from tidm.storage import Lake
from tidm.stream_processing import JobRunner, JobSettings, JobStats

__all__ = ["PipelineResult", "run_pipeline"]


@dataclass(frozen=True)
class PipelineResult:
    produced: list[ProducedSample]
    agent: AgentStats
    job: JobStats
    seconds: float


async def _wait_for(predicate: Callable[[], bool], *, timeout_s: float, poll_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def run_pipeline(
    *,
    sim_config: SimulatorConfig,
    agent_settings: AgentSettings,
    identity: AgentIdentity,
    transport: Transport,
    lake: Lake,
    evidence: EvidenceLog,
    quarantine: Callable[[Producer], Quarantine],
    job_settings: JobSettings,
    partitions: int = 2,
    drain_timeout_s: float = 60.0,
) -> PipelineResult:
    """Run until the simulator's `max_ticks` are collected, published and landed (bounded waits)."""
    if sim_config.max_ticks is None:
        msg = "run_pipeline needs a simulator config with max_ticks, so the produced set is finite"
        raise ValueError(msg)
    started = time.monotonic()
    await transport.ensure_topics([agent_settings.topic], partitions=partitions)
    trusted = TrustedAgents({identity.agent_id: identity.public_key})
    producer = transport.producer()
    await producer.start()
    q_producer = transport.producer()
    await q_producer.start()
    try:
        async with Simulator(sim_config.model_copy(update={"start_paused": True})) as sim:
            sources = [
                OpcUaSource(s.model_copy(update={"endpoint": sim.endpoint})) for s in agent_settings.opcua
            ]
            agent = Agent(
                agent_settings, identity=identity, producer=producer, evidence=evidence, sources=sources
            )
            job = JobRunner(
                job_settings,
                transport=transport,
                lake=lake,
                evidence=evidence,
                trusted=trusted,
                quarantine=quarantine(q_producer),
            )
            agent_stop, job_stop = asyncio.Event(), asyncio.Event()
            job_task = asyncio.create_task(job.run(job_stop), name="job")
            agent_task = asyncio.create_task(agent.run(agent_stop), name="agent")
            expected = sim_config.signal_count
            # Start producing only once every variable is monitored, so nothing is produced unseen.
            await _wait_for(
                lambda: sum(s.subscribed for s in sources) >= expected or agent_task.done(), timeout_s=30
            )
            sim.resume()
            finished = await _wait_for(
                lambda: sim.finished or agent_task.done(), timeout_s=drain_timeout_s + 600
            )
            produced = list(sim.produced)
            await _wait_for(
                lambda: agent.stats.samples_in >= len(produced) or agent_task.done(), timeout_s=10
            )
            agent_stop.set()
            agent_stats = await agent_task
            if not finished:
                msg = "the simulator did not finish its ticks in time"
                raise TimeoutError(msg)
            await _wait_for(
                lambda: (
                    (
                        job.stats.batches + job.stats.quarantined >= agent_stats.batches_published
                        and job.open_messages == 0  # landing units close when their partition idles
                    )
                    or job_task.done()
                ),
                timeout_s=drain_timeout_s,
            )
            job_stop.set()
            job_stats = await job_task
    finally:
        await producer.stop()
        await q_producer.stop()
    return PipelineResult(produced, agent_stats, job_stats, time.monotonic() - started)
