"""Sources from an acquisition plan: what `tidm agent run` collects when it is given the
equipment's AAS (Asset Interfaces Description) instead of hand-written source settings.

One OPC UA source per endpoint (Security None only where the AID says `nosec_sc` for every row of
that endpoint; otherwise SignAndEncrypt with the agent's certificate), one MQTT source per broker,
with one subscription per topic: JSON rows on a topic share a JSONPath decoder, Sparkplug rows map
metric names to signals, plain rows read the payload as the value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlparse

from tidm.edge_agent.config import OpcUaSourceSettings, PlanSourceSettings
from tidm.edge_agent.errors import SourceError
from tidm.edge_agent.metrics import NullSourceMetrics, SourceMetrics
from tidm.edge_agent.sources.base import Source
from tidm.edge_agent.sources.decoders import FieldPolicy
from tidm.edge_agent.sources.decoders.json_path import JsonDecoderSettings, JsonSignal
from tidm.edge_agent.sources.decoders.plain import PlainDecoderSettings
from tidm.edge_agent.sources.decoders.sparkplug import SparkplugDecoderSettings
from tidm.edge_agent.sources.mqtt import MqttSource, MqttSourceSettings, MqttSubscription
from tidm.edge_agent.sources.opcua import OpcUaSource, PlannedNode
from tidm.evidence.api import EvidenceLog
from tidm.semantics.plan import AcquisitionPlan, PlanProtocol

MetricsFor = Callable[[str], SourceMetrics]

__all__ = ["PlanSourceSettings", "sources_from_plan"]


def _opcua(plan: AcquisitionPlan, settings: PlanSourceSettings, metrics_for: MetricsFor) -> list[Source]:
    sources: list[Source] = []
    for endpoint in plan.endpoints(PlanProtocol.OPCUA):
        rows = plan.rows_for(PlanProtocol.OPCUA, endpoint)
        insecure = all(tuple(r.security) == ("nosec_sc",) for r in rows)
        source_settings = OpcUaSourceSettings(
            endpoint=endpoint,
            security="none" if insecure else "basic256sha256",
            certificate=None if insecure else settings.opcua_certificate,
            private_key=None if insecure else settings.opcua_private_key,
            trust_folder=None if insecure else settings.opcua_trust_folder,
            server_application_uri=settings.opcua_server_application_uris.get(endpoint),
        )
        nodes = [
            PlannedNode(
                n.asset_id,
                n.signal,
                n.node_id,
                n.sampling_interval_ms,
                n.deadband,
                n.deadband_type,  # type: ignore[arg-type]
                n.observable,
            )
            for n in plan.opcua_nodes(endpoint)
        ]
        sources.append(OpcUaSource(source_settings, nodes, metrics=metrics_for(endpoint)))
    return sources


def _mqtt(
    plan: AcquisitionPlan,
    settings: PlanSourceSettings,
    client_id: str,
    metrics_for: MetricsFor,
    evidence: EvidenceLog | None,
    actor: str | None,
    field_policy: FieldPolicy | None,
) -> list[Source]:
    sources: list[Source] = []
    for i, endpoint in enumerate(plan.endpoints(PlanProtocol.MQTT)):
        url = urlparse(endpoint)
        if not url.hostname:
            msg = f"plan endpoint {endpoint!r} has no host"
            raise SourceError(msg)
        signals = plan.mqtt_signals(endpoint)
        by_topic: dict[str, list[JsonSignal]] = defaultdict(list)
        sparkplug: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
        subscriptions: list[MqttSubscription] = []
        for s in signals:
            qos: Literal[0, 1] = 1 if (s.qos is None or s.qos >= 1) else 0
            if s.payload == "json":
                if s.json_path is None:
                    msg = f"{endpoint}: JSON signal {s.asset_id}/{s.signal} on {s.topic} has no JSONPath"
                    raise SourceError(msg)
                by_topic[s.topic].append(JsonSignal(signal=s.signal, path=s.json_path))
            elif s.payload == "sparkplug":
                sparkplug[(s.topic, s.asset_id)][s.metric or s.signal] = s.signal
            else:
                decoder = PlainDecoderSettings(asset_id=s.asset_id, signal=s.signal, text=s.payload == "text")
                subscriptions.append(MqttSubscription(topic=s.topic, qos=qos, decoder=decoder))
        for topic, json_signals in by_topic.items():
            first = next(s for s in signals if s.topic == topic)
            json_decoder = JsonDecoderSettings(
                asset_id=first.asset_id, signals=json_signals, timestamp_path=first.ts_path
            )
            subscriptions.append(MqttSubscription(topic=topic, qos=1, decoder=json_decoder))
        for (topic, asset), metrics in sparkplug.items():
            literal = asset.replace("{", "{{").replace("}", "}}")
            sp_decoder = SparkplugDecoderSettings(
                asset_template=literal, node_asset_template=literal, metrics=metrics
            )
            subscriptions.append(MqttSubscription(topic=topic, qos=0, decoder=sp_decoder))
        secure = url.scheme in ("mqtts", "ssl", "tls")
        rows = plan.rows_for(PlanProtocol.MQTT, endpoint)
        needs_login = any("basic_sc" in r.security for r in rows)
        if needs_login and (settings.mqtt_username is None or settings.mqtt_password is None):
            msg = (
                f"{endpoint}: the AAS asks for username/password (basic_sc); set mqtt_username and "
                f"mqtt_password in the agent's plan settings for {settings.aas}"
            )
            raise SourceError(msg)
        mqtt_settings = MqttSourceSettings(
            host=url.hostname,
            port=url.port or (8883 if secure else 1883),
            username=settings.mqtt_username if needs_login else None,
            password=settings.mqtt_password if needs_login else None,
            tls=settings.mqtt_tls if secure else None,
            client_id=f"{client_id}-{i}",
            quarantine_dir=settings.mqtt_quarantine_dir,
            quarantine_retention=settings.mqtt_quarantine_retention,
            subscriptions=subscriptions,
        )
        source = MqttSource(mqtt_settings, evidence=evidence, actor=actor, field_policy=field_policy)
        source.metrics = metrics_for(source.name)
        sources.append(source)
    return sources


def sources_from_plan(
    plan: AcquisitionPlan,
    settings: PlanSourceSettings,
    *,
    client_id: str,
    metrics_for: MetricsFor | None = None,
    evidence: EvidenceLog | None = None,
    actor: str | None = None,
    field_policy: FieldPolicy | None = None,
) -> list[Source]:
    """The sources that collect every row of `plan` (metrics and quarantine evidence wired in;
    `field_policy`, the agent's desensitizer, decides what the MQTT quarantine keeps)."""
    metrics = metrics_for or (lambda _name: NullSourceMetrics())
    mqtt = _mqtt(plan, settings, client_id, metrics, evidence, actor, field_policy)
    return [*_opcua(plan, settings, metrics), *mqtt]
