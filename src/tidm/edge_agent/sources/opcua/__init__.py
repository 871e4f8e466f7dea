"""OPC UA source (asyncua client) that keeps collecting through what real plants do to it.

The package entrance; the parts: `session` (reconnect loop, connection), `subscribe`, `backfill`,
`poll`, `trust` (server certificate checks), `nodes` (the planned nodes), `_base` (shared state).

- Subscriptions with per-node sampling interval and data-change deadband; the trigger is
  StatusValueTimestamp (without a deadband) so a stuck sensor repeating its value is still seen.
- Polling for servers (`mode: poll`) or single nodes that refuse a monitored item
  (BadMonitoredItem...-class status): those are read on an interval and emitted when they change.
- Every Read and CreateMonitoredItems call is chunked to the smaller of the configured cap and the
  server's advertised OperationLimits (many servers advertise limits and do not enforce them, or
  enforce them by failing the whole call; we honour them ourselves).
- Reconnect with capped exponential backoff and jitter. Each connection uses a fresh client; nodes
  are resolved from their ExpandedNodeId (`nsu=<uri>;...`) against the namespace array read on that
  connection, because a restarted server may order its namespaces differently. asyncua's own
  auto-reconnect is not used: it restores monitored items by their old numeric NodeIds.
- Security None only when configured explicitly; otherwise Basic256Sha256 SignAndEncrypt with the
  agent's certificate, and the server certificate must be in the trust folder or chain to it through
  CAs (CA:TRUE, keyCertSign), valid along the chain, and name the endpoint's host and the expected
  ApplicationUri in its subjectAltName (`_check_trusted`). An untrusted server is refused with
  `UntrustedServerError`, never downgraded.

Backfill (`backfill: true`, the default): on every (re)connect, the source asks the agent for the last
source timestamp it took per signal (`resume_from`) and reads the server's history from just after
it (HistoryRead, ReadRawModifiedDetails, at most `backfill_max_s` back, chunked to
MaxNodesPerHistoryReadData) while the new subscription's notifications are held back; it emits the
history first, then the held notifications newer than what the history gave, then goes live. So a
restarted agent gets what the server produced while it was down, each sample once. A server or node
without history answers with a Bad status: logged once per source, collection goes on live.

Notifications are taken straight from the session's publish callback, one list of samples per
PublishResponse: asyncua's handler mode creates an asyncio task per notification and its iterator
mode drops events when its queue is full.
"""

from __future__ import annotations

from tidm.edge_agent.sources.opcua._base import OpcUaSourceStats
from tidm.edge_agent.sources.opcua.nodes import PlannedNode
from tidm.edge_agent.sources.opcua.session import OpcUaSource
from tidm.edge_agent.sources.opcua.trust import UntrustedServerError

__all__ = ["OpcUaSource", "OpcUaSourceStats", "PlannedNode", "UntrustedServerError"]
