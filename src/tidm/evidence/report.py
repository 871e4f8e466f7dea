"""Audit reports over a time window of the log: what happened to data, who read it, what was deleted.

`build_report` returns a JSON-ready dict; `render_html` turns it into one self-contained HTML page
(jinja2, inline SVG lineage picture drawn here, no scripts, no external assets).
"""

from __future__ import annotations

import datetime as dt
import html
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from typing import Any

from tidm.evidence.api import EventType, EvidenceLog, LoggedEntry
from tidm.evidence.checkpoint import Verifier, open_checkpoint
from tidm.evidence.errors import NoteError
from tidm.evidence.lineage import trace

__all__ = ["build_report", "lineage_svg", "render_html"]

_EXAMPLES = 20
_POLICY_KEYS = ("policy", "policy_id", "policy_hash", "key_id", "key_ids", "kid")


def _iso(time_us: int) -> str:
    return dt.datetime.fromtimestamp(time_us / 1e6, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def _actor_kind(actor: str) -> str:
    return actor.split(":", 1)[0] if ":" in actor else actor


def build_report(
    log: EvidenceLog,
    *,
    since_us: int = 0,
    until_us: int = 2**62,
    subject: str | None = None,
    object_label: str | None = None,
    checkpoint: str | None = None,
    verifier_keys: Sequence[str] = (),
) -> dict[str, Any]:
    """Summarise entries with since_us <= time_us < until_us (and draw `subject`'s lineage if given)."""
    hops: Counter[tuple[str, str]] = Counter()
    sent: dict[str, LoggedEntry] = {}
    arrived: set[str] = set()
    quarantine: dict[str, list[dict[str, Any]]] = defaultdict(list)
    reads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    deletions: list[dict[str, Any]] = []
    policies: dict[str, set[str]] = defaultdict(set)
    dp: dict[str, float] = defaultdict(float)
    cleaning: Counter[str] = Counter()
    total = 0
    for item in log.read():
        entry = item.entry
        if not since_us <= entry.time_us < until_us:
            continue
        total += 1
        attributes = entry.attributes
        kind = _actor_kind(entry.actor)
        hops[(str(entry.event), kind)] += 1
        if entry.event == EventType.SEND and kind == "agent":
            sent[entry.subject] = item
        elif entry.event in (EventType.RECEIVE, EventType.ROUTE):
            arrived.add(entry.subject)
        if entry.event == EventType.ROUTE:
            reason = str(attributes.get("reason", attributes.get("route", "unspecified")))
            quarantine[reason].append(
                {
                    "index": item.index,
                    "subject": entry.subject,
                    "actor": entry.actor,
                    "time": _iso(entry.time_us),
                    "where": attributes.get("stored_at"),
                }
            )
        elif entry.event == EventType.FETCH:
            reads[entry.actor].append(
                {
                    "index": item.index,
                    "subject": entry.subject,
                    "object": attributes.get("object"),
                    "time": _iso(entry.time_us),
                }
            )
        elif entry.event in (EventType.DROP, EventType.EXPIRE):
            deletions.append(
                {
                    "index": item.index,
                    "event": str(entry.event),
                    "subject": entry.subject,
                    "object": attributes.get("object"),
                    "actor": entry.actor,
                    "reason": attributes.get("reason"),
                    "time": _iso(entry.time_us),
                }
            )
        elif entry.event == EventType.CONTENT_MODIFIED:
            for name, value in attributes.items():
                if isinstance(value, int) and not isinstance(value, bool) and name != "rows":
                    cleaning[name] += value
        for name in _POLICY_KEYS:
            value = attributes.get(name)
            if isinstance(value, str):
                policies[name].add(value)
            elif isinstance(value, list):
                policies[name].update(str(v) for v in value)
        epsilon = attributes.get("dp_epsilon")
        if isinstance(epsilon, int | float) and not isinstance(epsilon, bool):
            dp[entry.actor] += float(epsilon)
    lost = [item for digest, item in sent.items() if digest not in arrived]
    report: dict[str, Any] = {
        "period": {
            "from": _iso(since_us) if since_us else None,
            "to": _iso(until_us) if until_us < 2**62 else None,
        },
        "log": {
            "size": log.size(),
            "entries_in_period": total,
            "checkpoint": _checkpoint(checkpoint, verifier_keys),
        },
        "hops": [{"event": e, "actor_kind": k, "count": n} for (e, k), n in sorted(hops.items())],
        "losses": {
            "batches_sent_never_received": len(lost),
            "examples": [
                {
                    "index": i.index,
                    "subject": i.entry.subject,
                    "actor": i.entry.actor,
                    **{k: i.entry.attributes.get(k) for k in ("topic", "partition", "offset")},
                }
                for i in lost[:_EXAMPLES]
            ],
            "cleaning_counts": dict(sorted(cleaning.items())),
        },
        "quarantines": [
            {"reason": r, "count": len(v), "examples": v[:_EXAMPLES]} for r, v in sorted(quarantine.items())
        ],
        "reads": [
            {"principal": p, "count": len(v), "examples": v[:_EXAMPLES]} for p, v in sorted(reads.items())
        ],
        "deletions": deletions,
        "policies_and_keys": {name: sorted(values) for name, values in sorted(policies.items())},
        "dp_budget": [{"actor": a, "epsilon": round(e, 12)} for a, e in sorted(dp.items())],
        "lineage": None,
    }
    if subject is not None:
        report["lineage"] = _lineage(log, subject, object_label)
    return report


def _checkpoint(note: str | None, keys: Sequence[str]) -> dict[str, Any] | None:
    if note is None:
        return None
    lines = note.split("\n")
    info: dict[str, Any] = {
        "origin": lines[0],
        "size": lines[1] if len(lines) > 1 else None,
        "root": lines[2] if len(lines) > 2 else None,
        "signature_verified": None,
    }
    if keys:
        try:
            open_checkpoint(note, [Verifier.from_vkey(k) for k in keys])
            info["signature_verified"] = True
        except NoteError as exc:
            info["signature_verified"] = False
            info["problem"] = str(exc)
    return info


def _lineage(log: EvidenceLog, subject: str, label: str | None) -> dict[str, Any]:
    walk = trace(log, subject)
    nodes = []
    edges = []
    for digest, entries in walk.entries.items():
        nodes.append(
            {
                "subject": digest,
                "events": [f"{e.entry.event}@{e.entry.actor}" for e in entries],
                "source": digest in walk.sources,
            }
        )
        for parent in sorted({i for e in entries for i in e.entry.inputs if i != digest}):
            edges.append({"from": parent, "to": digest})
    document = {
        "subject": subject,
        "object": label,
        "ok": walk.ok,
        "problems": walk.problems,
        "nodes": nodes,
        "edges": edges,
    }
    document["svg"] = lineage_svg(document)
    return document


def lineage_svg(lineage: dict[str, Any]) -> str:
    """An inline SVG of a lineage DAG: the object on the right, source batches on the left."""
    subject = lineage["subject"]
    parents: dict[str, list[str]] = defaultdict(list)
    for edge in lineage["edges"]:
        parents[edge["to"]].append(edge["from"])
    depth = {subject: 0}
    queue = deque([subject])
    while queue:
        current = queue.popleft()
        for parent in parents.get(current, ()):
            if parent not in depth:
                depth[parent] = depth[current] + 1
                queue.append(parent)
    columns: dict[int, list[str]] = defaultdict(list)
    for node in lineage["nodes"]:
        columns[depth.get(node["subject"], 0)].append(node["subject"])
    by_subject = {n["subject"]: n for n in lineage["nodes"]}
    width_col, height_row, box_w, box_h = 260, 56, 230, 44
    levels = max(columns) + 1 if columns else 1
    rows = max((len(v) for v in columns.values()), default=1)
    width, height = levels * width_col + 20, rows * height_row + 20
    position = {}
    for level, members in columns.items():
        x = 10 + (levels - 1 - level) * width_col
        for row, digest in enumerate(sorted(members)):
            position[digest] = (x, 10 + row * height_row)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="10">'
    ]
    for edge in lineage["edges"]:
        if edge["from"] in position and edge["to"] in position:
            x1, y1 = position[edge["from"]]
            x2, y2 = position[edge["to"]]
            parts.append(
                f'<line x1="{x1 + box_w}" y1="{y1 + box_h // 2}" x2="{x2}" y2="{y2 + box_h // 2}" '
                'stroke="#888" stroke-width="1"/>'
            )
    for digest, (x, y) in position.items():
        node = by_subject[digest]
        fill = "#d8f0d8" if node["source"] else ("#dde8f8" if digest == subject else "#f4f4f4")
        events = sorted({e.split("@", 1)[0] for e in node["events"]})
        parts.append(
            f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4" fill="{fill}" stroke="#555"/>'
        )
        parts.append(f'<text x="{x + 6}" y="{y + 16}">{html.escape(digest[:16])}…</text>')
        parts.append(f'<text x="{x + 6}" y="{y + 32}">{html.escape(", ".join(events))[:40]}</text>')
    parts.append("</svg>")
    return "".join(parts)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>TIDM evidence audit report</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}code{font-size:90%}</style></head><body>
<h1>TIDM evidence audit report</h1>
<p>Period: {{ r.period.from or "beginning" }} to {{ r.period.to or "now" }}.
Log size {{ r.log.size }} entries, {{ r.log.entries_in_period }} in the period.</p>
<h2>Checkpoint</h2>
{% if r.log.checkpoint %}<p>Origin <code>{{ r.log.checkpoint.origin }}</code>,
size {{ r.log.checkpoint.size }},
root <code>{{ r.log.checkpoint.root }}</code>; signature verified: {{ r.log.checkpoint.signature_verified }}
{% if r.log.checkpoint.problem %}({{ r.log.checkpoint.problem }}){% endif %}</p>
{% else %}<p>No checkpoint.</p>{% endif %}
<h2>Counts per hop</h2>
<table><tr><th>event</th><th>actor kind</th><th>count</th></tr>
{% for h in r.hops %}<tr><td>{{ h.event }}</td><td>{{ h.actor_kind }}</td><td>{{ h.count }}</td></tr>
{% endfor %}
</table>
<h2>Losses</h2>
<p>Batches agents sent that no job received or quarantined: {{ r.losses.batches_sent_never_received }}.</p>
{% if r.losses.examples %}<table><tr><th>index</th><th>batch</th><th>actor</th><th>where</th></tr>
{% for e in r.losses.examples %}<tr><td>{{ e.index }}</td><td><code>{{ e.subject }}</code></td>
<td>{{ e.actor }}</td>
<td>{{ e.topic }}[{{ e.partition }}]@{{ e.offset }}</td></tr>{% endfor %}</table>{% endif %}
{% if r.losses.cleaning_counts %}<p>Cleaning counts:
{% for k, v in r.losses.cleaning_counts.items() %}{{ k }}={{ v }} {% endfor %}</p>{% endif %}
<h2>Quarantines</h2>
{% if r.quarantines %}<table><tr><th>reason</th><th>count</th></tr>
{% for q in r.quarantines %}<tr><td>{{ q.reason }}</td><td>{{ q.count }}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
<h2>Reads by principal</h2>
{% if r.reads %}<table><tr><th>principal</th><th>reads</th></tr>
{% for p in r.reads %}<tr><td>{{ p.principal }}</td><td>{{ p.count }}</td></tr>{% endfor %}</table>
{% else %}<p>None recorded.</p>{% endif %}
<h2>Deletions</h2>
{% if r.deletions %}<table><tr><th>index</th><th>event</th><th>object</th><th>actor</th><th>reason</th>
<th>time</th></tr>
{% for d in r.deletions %}<tr><td>{{ d.index }}</td><td>{{ d.event }}</td><td>{{ d.object or d.subject }}</td>
<td>{{ d.actor }}</td><td>{{ d.reason }}</td><td>{{ d.time }}</td></tr>{% endfor %}</table>
{% else %}<p>None.</p>{% endif %}
<h2>Policies and keys in force</h2>
{% if r.policies_and_keys %}<ul>{% for k, vs in r.policies_and_keys.items() %}<li>{{ k }}:
{% for v in vs %}<code>{{ v }}</code> {% endfor %}</li>{% endfor %}</ul>
{% else %}<p>None recorded.</p>{% endif %}
<h2>Differential privacy budget spent</h2>
{% if r.dp_budget %}<table><tr><th>actor</th><th>epsilon</th></tr>
{% for d in r.dp_budget %}<tr><td>{{ d.actor }}</td><td>{{ d.epsilon }}</td></tr>{% endfor %}</table>
{% else %}<p>None recorded.</p>{% endif %}
{% if r.lineage %}<h2>Lineage of {{ r.lineage.object or r.lineage.subject }}</h2>
<p>{% if r.lineage.ok %}Every path ends at a batch an agent created and a job verified.
{% else %}Broken: {{ r.lineage.problems|join("; ") }}{% endif %}</p>
{{ r.lineage.svg|safe }}{% endif %}
</body></html>
"""


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page (autoescaped; the SVG is ours and escapes its own text)."""
    import jinja2

    environment = jinja2.Environment(autoescape=True)
    return environment.from_string(_TEMPLATE).render(r=report)
