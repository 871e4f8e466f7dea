"""Lineage walks: from an object's digest back through `inputs` to the batches agents created.

The `inputs` links of entries form a DAG (Parquet file <- clean batch <- received batch <- published
batch <- collected batch). `trace` follows it and reports where a path breaks: a subject nobody
logged, or a chain that ends somewhere other than a batch an agent created and a job verified.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from tidm.evidence.api import EventType, LoggedEntry

__all__ = ["Finder", "Trace", "trace"]


class Finder(Protocol):
    """What a lineage walk needs of a log: entries by subject (every `EvidenceLog` has it)."""

    def find(self, subject: str) -> list[LoggedEntry]: ...


@dataclass(frozen=True)
class Trace:
    """The part of the lineage DAG reachable from `subject`."""

    subject: str
    entries: dict[str, list[LoggedEntry]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    """Subjects the walk ended at that an agent created (CREATE) and a job verified (RECEIVE)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.sources)


def _is_source(entries: list[LoggedEntry]) -> bool:
    created = any(e.entry.event == EventType.CREATE and e.entry.actor.startswith("agent:") for e in entries)
    verified = any(e.entry.event == EventType.RECEIVE and e.entry.attributes.get("verified") for e in entries)
    return created and verified


def trace(log: Finder, subject: str, *, max_subjects: int = 100_000) -> Trace:
    """Walk `inputs` back from `subject`; every path must end at an agent-created, verified batch."""
    result = Trace(subject)
    queue = deque([subject])
    seen = {subject}
    while queue:
        current = queue.popleft()
        entries = log.find(current)
        result.entries[current] = entries
        if not entries:
            result.problems.append(f"{current}: no evidence entry names this object")
            continue
        parents = {i for e in entries for i in e.entry.inputs if i != current}
        if _is_source(entries):
            result.sources.append(current)
        elif not parents:
            events = sorted({str(e.entry.event) for e in entries})
            result.problems.append(
                f"{current}: lineage ends here, but it is not a batch an agent created and a job verified "
                f"(events: {', '.join(events)})"
            )
        for parent in sorted(parents - seen):
            if len(seen) >= max_subjects:
                result.problems.append(f"{subject}: lineage larger than {max_subjects} objects, walk stopped")
                return result
            seen.add(parent)
            queue.append(parent)
    return result
