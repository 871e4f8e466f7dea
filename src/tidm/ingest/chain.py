"""Provenance chain checks at ingest: every batch names the hash of its agent's previous batch.

An agent publishes its batches in chain order, but they are keyed by asset, so one agent's chain is
spread over partitions and a consumer sees it interleaved in any order across partitions; within a
partition the order is the publish order. The checker therefore works per agent, across partitions,
on batches that already passed `open_envelope` (hash, signature, trusted agent):

* **duplicate** - a batch hash already received at another (topic, partition, offset): *quarantined*
  (`EnvelopeError` reason `duplicate`), so it is never landed twice. The same hash at the same
  location is a replay (restart, rebalance) and passes. Besides the in-memory window, the evidence
  log's RECEIVE entries of this job are consulted, so a duplicate is caught after a restart too.
* **gap** - a batch names a previous hash that is not received within `gap_after_s` seconds or
  `gap_after_batches` later batches of that agent (and is not in the evidence log either): *flagged*
  (ADDINFO `chain-gap` entry on the batch that names the missing one). The batch itself is authentic
  and is landed: quarantining it would lose good data and not bring the missing one back.
* **reorder** - a batch arrives after its chain successor *in the same partition* (higher offset):
  a partition keeps publish order, so this means the log was rewritten: *flagged* (`chain-reorder`).
  Across partitions a successor arriving first is normal and only waits in the pending set.
* **fork** - two different batches name the same previous hash (two processes sharing one agent
  key, or a replayed spool): *flagged* (`chain-fork`), both landed.
* **late** - a batch arrives whose absence was already reported as a gap: *flagged* (`chain-late`).

An empty previous hash starts a chain (an agent's first batch after a start); it is not a gap.
Memory is bounded per agent by `window` hashes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.ingest.envelope import VerifiedBatch
from tidm.ingest.errors import EnvelopeError

__all__ = ["ChainChecker", "ChainFlag", "FlagKind", "Location"]

FlagKind = Literal["gap", "reorder", "fork", "late"]
Location = tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True)
class ChainFlag:
    """A chain anomaly about one batch (`subject`); `other` is the related hash."""

    kind: FlagKind
    agent_id: str
    subject: str
    other: str
    location: Location
    detail: str

    def entry(self, actor: str, time_us: int) -> EvidenceEntry:
        """The ADDINFO evidence entry recording this flag."""
        topic, partition, offset = self.location
        return EvidenceEntry(
            event=EventType.ADDINFO,
            subject=self.subject,
            actor=actor,
            time_us=time_us,
            attributes={
                "info": f"chain-{self.kind}",
                "agent": self.agent_id,
                "related": self.other,
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "detail": self.detail,
            },
        )


@dataclass
class _Pending:
    child: str
    location: Location
    since_s: float
    since_count: int


@dataclass
class _AgentChain:
    seen: OrderedDict[str, Location] = field(default_factory=OrderedDict)
    children: OrderedDict[str, str] = field(default_factory=OrderedDict)
    pending: OrderedDict[str, _Pending] = field(default_factory=OrderedDict)
    gapped: OrderedDict[str, None] = field(default_factory=OrderedDict)
    count: int = 0


V = TypeVar("V")


def _bounded_set(store: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


class ChainChecker:
    """Per-agent chain state of one job; `observe` each verified batch, `expire` after each chunk."""

    def __init__(
        self,
        *,
        actor: str,
        evidence: EvidenceLog | None = None,
        gap_after_s: float = 30.0,
        gap_after_batches: int = 1000,
        window: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.actor = actor
        self._evidence = evidence
        self.gap_after_s = gap_after_s
        self.gap_after_batches = gap_after_batches
        self.window = window
        self._clock = clock
        self._agents: dict[str, _AgentChain] = {}
        self.counts: dict[str, int] = {"duplicate": 0, "gap": 0, "reorder": 0, "fork": 0, "late": 0}

    def _received_at(self, digest: str) -> list[Location]:
        """Where this job received `digest` before, per the evidence log (durable across restarts)."""
        if self._evidence is None:
            return []
        out = []
        for logged in self._evidence.find(digest):
            e = logged.entry
            if e.event == EventType.RECEIVE and e.actor == self.actor:
                a = e.attributes
                out.append((str(a.get("topic")), int(a.get("partition", -1)), int(a.get("offset", -1))))
        return out

    def observe(self, batch: VerifiedBatch) -> list[ChainFlag]:
        """Check one batch; raise `EnvelopeError(reason='duplicate')` for a duplicate, else return flags."""
        m = batch.message
        loc: Location = (m.topic, m.partition, m.offset)
        digest, agent_id = batch.sha256, batch.provenance.agent_id
        chain = self._agents.setdefault(agent_id, _AgentChain())
        earlier = chain.seen.get(digest)
        if earlier is None:
            previous = self._received_at(digest)
            if previous and loc not in previous:
                earlier = previous[0]
            elif previous:
                return []  # a replay of what this job already received there
        if earlier is not None:
            if earlier == loc:
                return []
            self.counts["duplicate"] += 1
            raise EnvelopeError(
                reason="duplicate",
                detail=(
                    f"batch {digest} of agent '{agent_id}' was already received at "
                    f"{earlier[0]}[{earlier[1]}]@{earlier[2]}"
                ),
                where=m.where(),
            )
        chain.count += 1
        _bounded_set(chain.seen, digest, loc, self.window)
        flags: list[ChainFlag] = []
        prev = batch.provenance.prev_batch_hash
        if prev:
            sibling = chain.children.get(prev)
            if sibling is not None and sibling != digest:
                flags.append(
                    ChainFlag("fork", agent_id, digest, sibling, loc, f"batch {sibling} also follows {prev}")
                )
            _bounded_set(chain.children, prev, digest, self.window)
            if prev not in chain.seen and not self._received_at(prev):
                _bounded_set(
                    chain.pending,
                    prev,
                    _Pending(digest, loc, self._clock(), chain.count),
                    self.window,
                )
        waiting = chain.pending.pop(digest, None)
        if waiting is not None and waiting.location[:2] == loc[:2] and waiting.location[2] < loc[2]:
            flags.append(
                ChainFlag(
                    "reorder",
                    agent_id,
                    digest,
                    waiting.child,
                    loc,
                    f"its successor {waiting.child} came earlier in the same partition at offset "
                    f"{waiting.location[2]}",
                )
            )
        if digest in chain.gapped:
            del chain.gapped[digest]
            flags.append(ChainFlag("late", agent_id, digest, "", loc, "arrived after its gap was reported"))
        self._count(flags)
        return flags

    def expire(self, *, force: bool = False) -> list[ChainFlag]:
        """Report as gaps the previous hashes still missing past the window (all of them if `force`)."""
        now = self._clock()
        flags: list[ChainFlag] = []
        for agent_id, chain in self._agents.items():
            for prev, p in list(chain.pending.items()):
                due = (
                    force
                    or now - p.since_s >= self.gap_after_s
                    or chain.count - p.since_count >= self.gap_after_batches
                )
                if not due:
                    continue
                del chain.pending[prev]
                if self._received_at(prev):
                    continue  # another member of the group received it (shared evidence log)
                _bounded_set(chain.gapped, prev, None, self.window)
                flags.append(
                    ChainFlag(
                        "gap",
                        agent_id,
                        p.child,
                        prev,
                        p.location,
                        f"previous batch {prev} was not received",
                    )
                )
        self._count(flags)
        return flags

    def _count(self, flags: Sequence[ChainFlag]) -> None:
        for f in flags:
            self.counts[f.kind] += 1

    def pending(self) -> int:
        """Previous hashes named but not yet received, over all agents."""
        return sum(len(c.pending) for c in self._agents.values())

    def entries(self, flags: Sequence[ChainFlag]) -> list[EvidenceEntry]:
        """Evidence entries for `flags`."""
        now = time.time_ns() // 1000
        return [f.entry(self.actor, now) for f in flags]
