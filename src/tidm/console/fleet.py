"""The Fleet view's work: scrape each configured process's own health endpoint (/readyz, /metrics),
as a kubelet and Prometheus do, and turn the numbers into one row per process.

Rates (samples/s, objects/s) come from two successive scrapes of the same process (the console
keeps the previous one), so the first view after a start shows none yet. A process that does not
answer is shown as down with the reason, never hidden.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from threading import Lock

from prometheus_client.parser import text_string_to_metric_families

from tidm.console.config import FleetTarget

__all__ = ["Fleet", "ProcessView", "parse_metrics"]

Samples = dict[str, list[tuple[dict[str, str], float]]]
_MAX_BODY = 4 * 1024 * 1024


def parse_metrics(text: str) -> Samples:
    """Prometheus text exposition -> {sample name: [(labels, value)]}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def _total(samples: Samples, *names: str) -> float | None:
    for name in names:
        for candidate in (name, f"{name}_total"):
            if candidate in samples:
                return sum(v for _, v in samples[candidate])
    return None


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    for candidate in (name, f"{name}_total"):
        if candidate in samples:
            return {labels.get(label, ""): v for labels, v in samples[candidate]}
    return {}


@dataclass
class ProcessView:
    """One process as the Fleet view shows it."""

    name: str
    kind: str
    url: str
    up: bool
    ready: bool | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    numbers: dict[str, float | None] = field(default_factory=dict)
    sources: list[dict[str, object]] = field(default_factory=list)
    error: str | None = None


def _http_get(url: str, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "text/plain, application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URLs
            return int(response.status), response.read(_MAX_BODY)
    except urllib.error.HTTPError as exc:  # /readyz answers 503 with its checks when not ready
        return int(exc.code), exc.read(_MAX_BODY)


class Fleet:
    """Scrapes the configured processes; remembers the last scrape of each for rates."""

    def __init__(
        self,
        targets: Sequence[FleetTarget],
        *,
        timeout_s: float = 2.0,
        get: Callable[[str, float], tuple[int, bytes]] = _http_get,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._targets = list(targets)
        self._timeout_s = timeout_s
        self._get = get
        self._clock = clock
        self._last: dict[str, tuple[float, Samples]] = {}
        self._lock = Lock()

    def scrape(self) -> list[ProcessView]:
        """Every target, concurrently (bounded by the timeout each)."""
        if not self._targets:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(self._targets))) as pool:
            return list(pool.map(self._one, self._targets))

    def _one(self, target: FleetTarget) -> ProcessView:
        base = str(target.url).rstrip("/")
        view = ProcessView(target.name, target.kind, base, up=False)
        try:
            status, body = self._get(f"{base}/readyz", self._timeout_s)
            ready = json.loads(body) if body[:1] == b"{" else {}
            view.ready = status == 200
            view.checks = {str(k): bool(v) for k, v in dict(ready.get("checks", {})).items()}
            status, body = self._get(f"{base}/metrics", self._timeout_s)
            if status != 200:
                view.error = f"/metrics answered {status}"
                return view
            samples = parse_metrics(body.decode("utf-8", errors="replace"))
        except (OSError, ValueError) as exc:
            view.error = f"{base} does not answer: {type(exc).__name__}: {exc}"[:300]
            return view
        view.up = True
        now = self._clock()
        with self._lock:
            previous = self._last.get(target.name)
            self._last[target.name] = (now, samples)
        self._fill(view, samples, previous, now)
        return view

    @staticmethod
    def _rate(
        name: str, samples: Samples, previous: tuple[float, Samples] | None, now: float
    ) -> float | None:
        if previous is None or now <= previous[0]:
            return None
        current, before = _total(samples, name), _total(previous[1], name)
        if current is None or before is None or current < before:
            return None  # a restart resets counters: no rate across it
        return (current - before) / (now - previous[0])

    def _fill(
        self, view: ProcessView, samples: Samples, previous: tuple[float, Samples] | None, now: float
    ) -> None:
        numbers: dict[str, float | None] = {}
        if view.kind == "agent":
            numbers["samples in"] = _total(samples, "tidm_agent_samples_in")
            numbers["samples/s"] = self._rate("tidm_agent_samples_in", samples, previous, now)
            numbers["batches published"] = _total(samples, "tidm_agent_batches_published")
            numbers["queue depth"] = _total(samples, "tidm_agent_queue_depth")
            numbers["quarantined payloads"] = _total(samples, "tidm_agent_quarantined_payloads")
            connected = _by_label(samples, "tidm_agent_source_connected", "source")
            counts = _by_label(samples, "tidm_agent_samples", "source")
            reconnects = _by_label(samples, "tidm_agent_source_reconnects", "source")
            view.sources = [
                {
                    "name": name,
                    "connected": bool(up),
                    "samples": counts.get(name, 0.0),
                    "reconnects": reconnects.get(name, 0.0),
                }
                for name, up in sorted(connected.items())
            ]
        else:
            prefix = f"tidm_{view.kind}_"
            for name, values in sorted(samples.items()):
                if name.startswith(prefix) and not name.endswith("_created"):
                    numbers[name[len(prefix) :].replace("_", " ")] = sum(v for _, v in values)
            if view.kind == "job":
                numbers["objects/s"] = self._rate("tidm_job_objects", samples, previous, now)
                numbers["rows landed/s"] = self._rate("tidm_job_rows_landed", samples, previous, now)
        view.numbers = numbers


def totals(views: Sequence[ProcessView], kind: str, number: str) -> float:
    """The sum of one number over the processes of a kind that answered."""
    return sum(v.numbers.get(number) or 0.0 for v in views if v.kind == kind and v.up)


def by_kind(views: Sequence[ProcessView]) -> Mapping[str, list[ProcessView]]:
    out: dict[str, list[ProcessView]] = {"agent": [], "job": [], "notary": []}
    for view in views:
        out.setdefault(view.kind, []).append(view)
    return out
