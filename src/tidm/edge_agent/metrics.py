"""Prometheus metrics of the agent, and the small interface sources feed them through.

Sources get a `SourceMetrics` handle (one per source name) and call it on their own events:
samples received, (re)connects, quarantined payloads, nodes per collection mode. Counters that the
agent already keeps (batches published, queue depth) are read at scrape time, so the hot path pays
for nothing it does not need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["AgentMetrics", "NullSourceMetrics", "SourceMetrics"]


class SourceMetrics(Protocol):
    """What a source reports; OPC UA and MQTT sources both feed this."""

    def samples(self, n: int) -> None:
        """`n` samples were received and handed to the agent."""

    def connected(self, up: bool) -> None:
        """The source is (or is no longer) connected to its equipment or broker."""

    def reconnected(self) -> None:
        """A connection was lost and a new attempt starts."""

    def quarantined(self, reason: str, n: int = 1) -> None:
        """`n` payloads were kept in quarantine instead of becoming samples."""

    def nodes(self, mode: str, n: int) -> None:
        """`n` signals are collected in `mode` (subscribe, poll, failed)."""


class NullSourceMetrics:
    """Metrics that go nowhere (unit tests, benchmarks); still remembers connection state."""

    def __init__(self) -> None:
        self.is_connected = False

    def samples(self, n: int) -> None:
        """Ignore."""

    def connected(self, up: bool) -> None:
        """Remember the state (readiness still works without Prometheus)."""
        self.is_connected = up

    def reconnected(self) -> None:
        """Ignore."""

    def quarantined(self, reason: str, n: int = 1) -> None:
        """Ignore."""

    def nodes(self, mode: str, n: int) -> None:
        """Ignore."""


class _SourceHandle:
    def __init__(self, metrics: AgentMetrics, name: str) -> None:
        self._samples = metrics.samples_total.labels(source=name)
        self._connected = metrics.source_connected.labels(source=name)
        self._reconnects = metrics.reconnects_total.labels(source=name)
        self._metrics = metrics
        self._name = name
        self.is_connected = False

    def samples(self, n: int) -> None:
        self._samples.inc(n)

    def connected(self, up: bool) -> None:
        self.is_connected = up
        self._connected.set(1 if up else 0)

    def reconnected(self) -> None:
        self._reconnects.inc()

    def quarantined(self, reason: str, n: int = 1) -> None:
        self._metrics.quarantined_total.labels(source=self._name, reason=reason).inc(n)

    def nodes(self, mode: str, n: int) -> None:
        self._metrics.source_nodes.labels(source=self._name, mode=mode).set(n)


class _ScrapeTime(Collector):
    """Gauges and counters whose values are read from callables when Prometheus scrapes."""

    def __init__(self) -> None:
        self.readers: dict[str, tuple[str, bool, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, counter, read) in sorted(self.readers.items()):
            if counter:
                yield CounterMetricFamily(name, doc, value=read())
            else:
                yield GaugeMetricFamily(name, doc, value=read())

    def describe(self) -> Iterable[Metric]:
        return []


class AgentMetrics:
    """The agent's metrics in their own registry (so tests and several agents never collide)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.samples_total = Counter(
            "tidm_agent_samples", "Samples received, per source", ["source"], registry=r
        )
        self.reconnects_total = Counter(
            "tidm_agent_source_reconnects",
            "Connection losses followed by a new attempt",
            ["source"],
            registry=r,
        )
        self.source_connected = Gauge(
            "tidm_agent_source_connected", "1 while connected", ["source"], registry=r
        )
        self.source_nodes = Gauge(
            "tidm_agent_source_nodes", "Signals per collection mode", ["source", "mode"], registry=r
        )
        self.quarantined_total = Counter(
            "tidm_agent_quarantined_payloads", "Payloads kept in quarantine", ["source", "reason"], registry=r
        )
        self._scrape = _ScrapeTime()
        r.register(self._scrape)
        self._sources: dict[str, _SourceHandle] = {}

    def source(self, name: str) -> _SourceHandle:
        """The handle a source named `name` reports through (one per name)."""
        handle = self._sources.get(name)
        if handle is None:
            handle = self._sources[name] = _SourceHandle(self, name)
        return handle

    def gauge(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose `read()` as gauge `name`, evaluated at scrape time (queue depth)."""
        self._scrape.readers[name] = (doc, False, read)

    def counter(self, name: str, doc: str, read: Callable[[], float]) -> None:
        """Expose `read()` (monotonic) as counter `name`, evaluated at scrape time (batches published)."""
        self._scrape.readers[name] = (doc, True, read)

    def sources_connected(self) -> dict[str, bool]:
        """Connection state per source that has reported."""
        return {name: h.is_connected for name, h in self._sources.items()}

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
