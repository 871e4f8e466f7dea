"""What the OPC UA source collects: planned nodes and their NodeId/ExpandedNodeId parsing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tidm.edge_agent.errors import SourceError

__all__ = ["DeadbandType", "ParsedId", "PlannedNode", "parse_node_id"]

DeadbandType = Literal["absolute", "percent"]


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """One signal to collect: the agent-side row an acquisition plan converts into.

    `node_id` is an ExpandedNodeId "nsu=<uri>;s=<id>" (preferred: it survives namespace
    reordering) or a NodeId "ns=2;s=<id>". Unset optional fields take the source's defaults.
    """

    asset_id: str
    signal: str
    node_id: str
    sampling_interval_ms: float | None = None
    deadband: float | None = None
    deadband_type: DeadbandType | None = None
    # AID's `observable`: False means the node does not support subscriptions; it is polled.
    observable: bool | None = None

    @classmethod
    def from_row(cls, row: Any) -> PlannedNode:
        """From a plan row with the same field names (`semantics.plan.OpcUaNode`, a dict, ...)."""
        get = row.get if isinstance(row, dict) else lambda k, d=None: getattr(row, k, d)
        deadband_type = get("deadband_type")
        if deadband_type not in (None, "absolute", "percent"):
            msg = f"deadband_type of {get('asset_id')}/{get('signal')} must be absolute or percent"
            raise SourceError(msg)
        return cls(
            asset_id=str(get("asset_id")),
            signal=str(get("signal")),
            node_id=str(get("node_id")),
            sampling_interval_ms=get("sampling_interval_ms"),
            deadband=get("deadband"),
            deadband_type=deadband_type,
            observable=get("observable"),
        )

    def __post_init__(self) -> None:
        if self.deadband is not None and self.deadband < 0:
            msg = f"deadband of {self.asset_id}/{self.signal} must be >= 0, got {self.deadband}"
            raise ValueError(msg)
        if self.deadband_type == "percent" and self.deadband is not None and self.deadband > 100:
            msg = f"percent deadband of {self.asset_id}/{self.signal} must be <= 100, got {self.deadband}"
            raise ValueError(msg)
        if self.sampling_interval_ms is not None and self.sampling_interval_ms < 0:
            msg = f"sampling interval of {self.asset_id}/{self.signal} must be >= 0"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ParsedId:
    uri: str | None  # namespace URI of an ExpandedNodeId, else None
    rest: str  # "ns=2;s=x" when uri is None, else the identifier part "s=x"


def parse_node_id(node: PlannedNode) -> ParsedId:
    text = node.node_id.strip()
    parts = [p for p in text.split(";") if p]
    uri = None
    kept = []
    for part in parts:
        key = part.split("=", 1)[0]
        if key == "nsu":
            uri = part[4:]
        elif key == "svr":
            continue  # the local server is the only one we talk to
        else:
            kept.append(part)
    ident = [p for p in kept if p.split("=", 1)[0] in ("i", "s", "g", "b")]
    if len(ident) != 1 or (uri is not None and len(kept) != 1):
        msg = f"node id {node.node_id!r} of {node.asset_id}/{node.signal} is not a NodeId or ExpandedNodeId"
        raise SourceError(msg)
    return ParsedId(uri, ";".join(kept))
