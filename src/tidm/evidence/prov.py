"""W3C PROV export of the log (PROV-JSON via the `prov` package), for other provenance tools.

Each subject (object digest) is a `prov:Entity`, each entry a `prov:Activity` of its event type,
each actor a `prov:Agent`: the activity used its inputs, generated its subject (or, for DROP/EXPIRE,
invalidated it) and was associated with its actor; subjects derive from their inputs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from tidm.evidence.api import EventType, EvidenceLog, LoggedEntry
from tidm.evidence.lineage import trace

__all__ = ["to_prov_document", "to_prov_json"]

_NAMESPACE = "https://tidm.example/evidence#"


def _entries(log: EvidenceLog, subject: str | None) -> Iterable[LoggedEntry]:
    if subject is None:
        yield from log.read()
        return
    seen: set[int] = set()
    for entries in trace(log, subject).entries.values():
        for item in entries:
            if item.index not in seen:
                seen.add(item.index)
                yield item


def to_prov_document(log: EvidenceLog, *, subject: str | None = None):  # type: ignore[no-untyped-def]
    """The log (or `subject`'s lineage) as a `prov.model.ProvDocument`."""
    from prov.model import ProvDocument

    document = ProvDocument()
    document.add_namespace("tidm", _NAMESPACE)
    entities: set[str] = set()
    agents: set[str] = set()

    def entity(digest: str) -> str:
        name = f"tidm:sha256-{digest}"
        if digest not in entities:
            entities.add(digest)
            document.entity(name, {"tidm:sha256": digest})
        return name

    for item in _entries(log, subject):
        entry = item.entry
        when = dt.datetime.fromtimestamp(entry.time_us / 1e6, tz=dt.UTC)
        attributes = {
            "prov:type": f"tidm:{entry.event}",
            "tidm:index": item.index,
            **{
                f"tidm:{k}": v
                for k, v in entry.attributes.items()
                if isinstance(v, str | int | float) and not isinstance(v, bool)
            },
        }
        activity = document.activity(f"tidm:entry-{item.index}", when, when, attributes)
        agent = f"tidm:{entry.actor.replace(':', '-')}"
        if agent not in agents:
            agents.add(agent)
            document.agent(agent, {"tidm:actor": entry.actor})
        document.wasAssociatedWith(activity, agent)
        target = entity(entry.subject)
        for parent in dict.fromkeys(entry.inputs):
            if parent == entry.subject:
                continue
            document.used(activity, entity(parent))
            document.wasDerivedFrom(target, entity(parent), activity)
        if entry.event in (EventType.DROP, EventType.EXPIRE):
            document.wasInvalidatedBy(target, activity, when)
        else:
            document.wasGeneratedBy(target, activity, when)
    return document


def to_prov_json(log: EvidenceLog, *, subject: str | None = None) -> str:
    """PROV-JSON text of the log (or of `subject`'s lineage)."""
    return str(to_prov_document(log, subject=subject).serialize(format="json", indent=1))
