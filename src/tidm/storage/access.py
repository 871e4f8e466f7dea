"""Access grants and usage logging: every read is checked against the principal's grants and
recorded in the evidence log, allowed or denied.

A grant scopes reads by site, asset and table globs, a classification ceiling, an optional
validity window and an optional read-count limit. The count is taken from the evidence log itself:
there is no separate counter to drift from what the log says. What counts (`counts_against`): FETCH
entries whose decision is `allowed` or `reserved`, recorded by the read side (`served_by`), naming the
grant and its principal and listing the grant's subject among their `inputs`, and not naming a
`reservation` (those are outcomes of a reservation already counted). Nothing else that lists the grant
as an input counts, so an entry of another kind cannot use up someone's reads.

A read takes its count before any data flows, atomically, by one of two ledgers:

- `LocalLedger` (SQLite evidence, one host): check and record run in one `BEGIN IMMEDIATE`
  transaction (`SqliteEvidenceLog.append_checked`), so concurrent reads, in one process or several
  sharing the file, are serialised by SQLite's writer lock and never exceed `max_reads`. (On a log
  without that hook, the in-memory one of tests, a process lock does the same within one process.)
- `SequencedLedger` (evidence through Kafka and the notary, any number of `tidm serve` replicas): the
  notary's total order decides. A read appends a `reserved` FETCH entry to the evidence topic and waits
  (bounded) until the notary has sequenced it into the store; reservation k of a grant is granted iff
  fewer than `max_reads` counted entries of that grant precede it in the log. Every replica reads the
  same log, so all agree on which reservations won, and N replicas never grant more than `max_reads` in
  total, with no coordinator besides the notary TIDM already has. A replica counts its own in-flight
  reservations too, refusing at once when sequenced plus in-flight already reach the limit. The outcome
  follows as a FETCH naming the reservation: `allowed` for a winner, `denied` for a reservation refused
  by its rank (or by `valid_until` passing while it waited). A reservation whose sequencing is not
  seen in time is refused (503) but still counts once the notary sequences it: the limit errs towards
  refusing, never towards one read more. An auditor recounts the same way, from the log alone.
  Why this and not a counter of its own: the notary already gives every replica one total order, and
  the log is then the counter (nothing to drift, nothing more to run, and auditable offline).

`valid_until` and `valid_from` are checked at the moment the count is taken (inside the transaction,
or after the reservation is sequenced), not only when the request arrived.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import math
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidm.evidence import merkle
from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog, LoggedEntry
from tidm.evidence.entry import canonical_bytes
from tidm.semantics.classification import Level
from tidm.storage.errors import AccessDenied, GrantsFileError, LedgerUnavailable

__all__ = [
    "COUNTED_DECISIONS",
    "AccessControl",
    "Decision",
    "Grant",
    "LocalLedger",
    "Principal",
    "ReadLedger",
    "ReadRequest",
    "RefusalLimiter",
    "SequencedLedger",
    "counts_against",
    "grant_subject",
    "load_access",
]


class Grant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    sites: tuple[str, ...] = ("*",)
    assets: tuple[str, ...] = ("*",)
    tables: tuple[str, ...] = ("clean",)
    ceiling: Level = Level.GENERAL
    valid_from: dt.datetime | None = None
    valid_until: dt.datetime | None = None
    max_reads: int | None = Field(default=None, ge=0)

    @field_validator("ceiling", mode="before")
    @classmethod
    def _level(cls, value: object) -> Level:
        return Level.parse(value, where="ceiling")

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            msg = "validity times need a timezone (e.g. 2026-01-01T00:00:00Z)"
            raise ValueError(msg)
        return value


class Principal(BaseModel):
    """A team or service that reads; HTTP callers are identified by bearer tokens (stored hashed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    token_sha256: tuple[str, ...] = ()
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True)
class ReadRequest:
    """What a principal asks to read."""

    site: str | None
    asset: str
    table: str
    start_us: int
    end_us: int
    signals: tuple[str, ...] | None
    channel: str  # "api", "cli" or "http"


@dataclass(frozen=True)
class Decision:
    principal: str
    grant_id: str | None
    allowed: bool
    reason: str
    withheld: tuple[str, ...] = ()
    """Signals left out because they are above the grant's classification ceiling."""
    ceiling: Level = Level.GENERAL
    visible: bool = True
    """False when no grant covers the request's scope: to the caller it does not exist."""
    public_reason: str = ""
    """The reason without other grants' scope (what a caller may be told)."""


def grant_subject(principal: str, grant_id: str) -> str:
    """The evidence subject standing for a grant; allowed reads list it among their inputs."""
    return hashlib.sha256(f"tidm-grant\n{principal}\n{grant_id}".encode()).hexdigest()


def _match(value: str | None, patterns: Sequence[str]) -> bool:
    if value is None:
        return "*" in patterns
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


COUNTED_DECISIONS = frozenset({"allowed", "reserved"})
"""FETCH decisions that use up one read of a grant."""


def counts_against(logged: EvidenceEntry, principal: str, grant_id: str) -> bool:
    """True when `logged` is a read the read side recorded as using up one read of the grant."""
    attributes = logged.attributes
    return (
        logged.event == EventType.FETCH
        and attributes.get("decision") in COUNTED_DECISIONS
        and attributes.get("principal") == principal
        and attributes.get("grant") == grant_id
        and isinstance(attributes.get("served_by"), str)
        and "reservation" not in attributes
        and grant_subject(principal, grant_id) in logged.inputs
    )


def _counted(entries: Sequence[LoggedEntry], principal: str, grant_id: str) -> int:
    return sum(1 for item in entries if counts_against(item.entry, principal, grant_id))


def _time_refusal(grant: Grant, now: dt.datetime) -> str | None:
    if grant.valid_from and now < grant.valid_from:
        return f"grant {grant.id}: not valid before {grant.valid_from.isoformat()}"
    if grant.valid_until and now >= grant.valid_until:
        return f"grant {grant.id}: expired at {grant.valid_until.isoformat()}"
    return None


def _limit_refusal(grant: Grant) -> str:
    return f"grant {grant.id}: read limit of {grant.max_reads} reached"


Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ReadLedger(Protocol):
    """Takes a grant's read count atomically (see the module docstring)."""

    def used(self, principal: str, grant_id: str) -> int:
        """Reads of the grant counted so far (with this process's in-flight ones)."""
        ...

    def commit(
        self,
        grant: Grant,
        principal: str,
        allowed: EvidenceEntry,
        denied: Callable[[str], EvidenceEntry],
        clock: Clock,
    ) -> str | None:
        """Record `allowed` if the grant still admits one more read now; else record `denied(reason)`.
        Returns None when the read may go ahead, else the reason it was refused."""
        ...


class LocalLedger:
    """Check and record in one transaction of the evidence log (SQLite), or under a process lock."""

    def __init__(self, evidence: EvidenceLog) -> None:
        self._evidence = evidence
        self._lock = threading.Lock()

    def used(self, principal: str, grant_id: str) -> int:
        return _counted(self._evidence.by_input(grant_subject(principal, grant_id)), principal, grant_id)

    def commit(
        self,
        grant: Grant,
        principal: str,
        allowed: EvidenceEntry,
        denied: Callable[[str], EvidenceEntry],
        clock: Clock,
    ) -> str | None:
        refusal: list[str] = []

        def decide(lookup: Callable[[str], list[LoggedEntry]]) -> list[EvidenceEntry]:
            reason = _time_refusal(grant, clock())
            if reason is None and grant.max_reads is not None:
                used = _counted(lookup(grant_subject(principal, grant.id)), principal, grant.id)
                if used >= grant.max_reads:
                    reason = _limit_refusal(grant)
            if reason is not None:
                refusal.append(reason)
                return [denied(reason)]
            return [allowed]

        checked = getattr(self._evidence, "append_checked", None)
        if checked is not None:
            checked(decide)
        else:
            with self._lock:
                self._evidence.append(decide(self._evidence.by_input))
        return refusal[0] if refusal else None


class SequencedLedger:
    """Read counts decided by the notary's total order, shared by every replica (module docstring).

    `sink` appends to the evidence topic; `view` is the store the notary writes (read-only here) and
    `refresh` makes it see the notary's latest appends.
    """

    def __init__(
        self,
        sink: EvidenceLog,
        view: EvidenceLog,
        refresh: Callable[[], None],
        *,
        timeout_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> None:
        self._sink = sink
        self._view = view
        self._refresh = refresh
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._position = 0
        self._counted: dict[str, int] = defaultdict(int)
        self._inflight: dict[str, int] = defaultdict(int)
        self._waiting: dict[bytes, str] = {}
        self._ranks: dict[bytes, int] = {}
        self._scanned_at = -math.inf
        with self._cond:
            self._scan()

    def _scan(self) -> None:
        """Follow the log from where the last scan stopped (caller holds the condition)."""
        self._refresh()
        size = self._view.size()
        for item in self._view.read(self._position, size):
            entry = item.entry
            principal, grant_id = entry.attributes.get("principal"), entry.attributes.get("grant")
            if not (isinstance(principal, str) and isinstance(grant_id, str)):
                continue
            if not counts_against(entry, principal, grant_id):
                continue
            subject = grant_subject(principal, grant_id)
            mine = self._waiting.pop(item.leaf_hash, None)
            if mine is not None:
                self._ranks[item.leaf_hash] = self._counted[subject]
                self._inflight[mine] -= 1
            self._counted[subject] += 1
        self._position = max(self._position, size)
        self._scanned_at = time.monotonic()
        self._cond.notify_all()

    def _fresh(self) -> None:
        if time.monotonic() - self._scanned_at >= self.poll_s:
            self._scan()

    def used(self, principal: str, grant_id: str) -> int:
        subject = grant_subject(principal, grant_id)
        with self._cond:
            self._fresh()
            return self._counted[subject] + self._inflight[subject]

    def commit(
        self,
        grant: Grant,
        principal: str,
        allowed: EvidenceEntry,
        denied: Callable[[str], EvidenceEntry],
        clock: Clock,
    ) -> str | None:
        if grant.max_reads is None:
            reason = _time_refusal(grant, clock())
            self._sink.append([denied(reason) if reason else allowed])
            return reason
        subject = grant_subject(principal, grant.id)
        reserved = replace(allowed, attributes={**allowed.attributes, "decision": "reserved"})
        leaf = merkle.leaf_hash(canonical_bytes(reserved))
        with self._cond:
            self._fresh()
            reason = _time_refusal(grant, clock())
            if reason is None and self._counted[subject] + self._inflight[subject] >= grant.max_reads:
                reason = _limit_refusal(grant)
            if reason is None:
                self._inflight[subject] += 1
                self._waiting[leaf] = subject
        if reason is not None:
            self._sink.append([denied(reason)])
            return reason
        try:
            self._sink.append([reserved])
        except BaseException:
            with self._cond:  # never sent: it will not be sequenced, so it is not in flight
                if self._waiting.pop(leaf, None) is not None:
                    self._inflight[subject] -= 1
            raise
        rank = self._rank_of(leaf)
        if rank is None:
            reason = f"grant {grant.id}: the read could not be counted in time (evidence log not sequenced)"
        elif rank >= grant.max_reads:
            reason = _limit_refusal(grant)
        else:
            reason = _time_refusal(grant, clock())
        if reason is None:
            # The outcome, for readers of the log; it names its reservation and counts no further.
            self._sink.append(
                [replace(allowed, attributes={**allowed.attributes, "reservation": reserved.subject})]
            )
            return None
        refusal = denied(reason)
        refusal = replace(refusal, attributes={**refusal.attributes, "reservation": reserved.subject})
        self._sink.append([refusal])
        if rank is None:
            raise LedgerUnavailable(reason)
        return reason

    def _rank_of(self, leaf: bytes) -> int | None:
        """The reservation's rank among its grant's counted reads, once the notary sequenced it."""
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while leaf not in self._ranks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if time.monotonic() - self._scanned_at >= self.poll_s:
                    self._scan()
                else:
                    self._cond.wait(timeout=min(self.poll_s, left))
            return self._ranks.pop(leaf)


@dataclass
class _Burst:
    started: float
    repeats: int
    sample: EvidenceEntry


class RefusalLimiter:
    """Records refusals so that a flood cannot fill the log: per key (caller, status, endpoint) the
    first refusal of an interval is logged at once; further ones in that interval are counted and
    logged as one entry (`repeats`: how many, `interval_s`) when the interval is over (`flush_due`,
    called periodically and on the next refusal of that key) or at `flush`. Keys beyond
    `max_keys` in one interval share one overflow key, so memory stays bounded too."""

    def __init__(self, evidence: EvidenceLog, interval_s: float, *, max_keys: int = 10_000) -> None:
        self._evidence = evidence
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._bursts: dict[tuple[str, ...], _Burst] = {}
        self.logged = 0
        self.counted = 0

    def submit(self, key: tuple[str, ...], entry: EvidenceEntry) -> None:
        now = time.monotonic()
        out: list[EvidenceEntry] = []
        with self._lock:
            if key not in self._bursts and len(self._bursts) >= self.max_keys:
                key = ("overflow",)
            burst = self._bursts.get(key)
            if burst is not None and now - burst.started < self.interval_s:
                burst.repeats += 1
                burst.sample = entry
                self.counted += 1
                return
            if burst is not None and burst.repeats:
                out.append(self._summary(burst))
            self._bursts[key] = _Burst(now, 0, entry)
            out.append(entry)
            self.logged += len(out)
        self._evidence.append(out)

    def _summary(self, burst: _Burst) -> EvidenceEntry:
        attributes = {**burst.sample.attributes, "repeats": burst.repeats, "interval_s": self.interval_s}
        return replace(burst.sample, attributes=attributes)

    def flush_due(self, *, everything: bool = False) -> int:
        """Log the counts of intervals that are over (all of them with `everything`)."""
        now = time.monotonic()
        out: list[EvidenceEntry] = []
        with self._lock:
            for key, burst in list(self._bursts.items()):
                if everything or now - burst.started >= self.interval_s:
                    if burst.repeats:
                        out.append(self._summary(burst))
                    del self._bursts[key]
            self.logged += len(out)
        if out:
            self._evidence.append(out)
        return len(out)

    def flush(self) -> int:
        return self.flush_due(everything=True)


class AccessControl:
    """Principals and their grants; decides reads and records every decision as evidence.

    `served_by` names the read side's identity in the entries it records; `ledger` takes read counts
    (default: `LocalLedger` over `evidence`).
    """

    def __init__(
        self,
        principals: Sequence[Principal],
        evidence: EvidenceLog,
        *,
        ledger: ReadLedger | None = None,
        served_by: str = "serve",
        clock: Clock = _utcnow,
    ) -> None:
        self._principals = {p.name: p for p in principals}
        self._evidence = evidence
        self._ledger = ledger or LocalLedger(evidence)
        self.served_by = served_by
        self._clock = clock
        self.refusals: RefusalLimiter | None = None

    @property
    def principals(self) -> Mapping[str, Principal]:
        return dict(self._principals)

    @property
    def evidence(self) -> EvidenceLog:
        return self._evidence

    def principal(self, name: str) -> Principal:
        found = self._principals.get(name)
        if found is None:
            msg = f"unknown principal {name!r}"
            raise AccessDenied(msg)
        return found

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token belongs to (compared in constant time, stored hashed)."""
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        for principal in self._principals.values():
            if any(hmac.compare_digest(digest, t) for t in principal.token_sha256):
                return principal
        msg = "invalid bearer token"
        raise AccessDenied(msg)

    def reads_used(self, principal: str, grant_id: str) -> int:
        return self._ledger.used(principal, grant_id)

    def valid_grants(self, principal: str, *, now: dt.datetime | None = None) -> list[Grant]:
        """The principal's grants valid now (validity window; read limits not considered)."""
        now = now or self._clock()
        who = self._principals.get(principal)
        return [g for g in (who.grants if who else ()) if _time_refusal(g, now) is None]

    def decide(
        self,
        principal: str,
        request: ReadRequest,
        levels: Mapping[str, Level],
        *,
        now: dt.datetime | None = None,
        exclude: frozenset[str] = frozenset(),
    ) -> Decision:
        """The first grant that allows the request wins; otherwise the most specific refusal."""
        now = now or self._clock()
        who = self._principals.get(principal)
        if who is None:
            return Decision(principal, None, False, f"unknown principal {principal!r}")
        reasons: list[str] = []
        public: list[str] = []
        for grant in who.grants:
            if grant.id in exclude:
                continue
            scope = (
                _match(request.site, grant.sites)
                and _match(request.asset, grant.assets)
                and _match(request.table, grant.tables)
            )
            if not scope:
                reasons.append(
                    f"grant {grant.id}: asset {request.asset!r} / table {request.table!r}"
                    f"{f' / site {request.site!r}' if request.site else ''} is outside its scope"
                )
                continue
            timing = _time_refusal(grant, now)
            if timing is not None:
                reasons.append(timing)
                public.append(timing)
                continue
            asked = request.signals if request.signals is not None else tuple(sorted(levels))
            above = tuple(s for s in asked if levels.get(s, Level.CORE) > grant.ceiling)
            if request.signals is not None and above:
                reasons.append(
                    f"grant {grant.id}: signals {', '.join(above)} are above its classification ceiling "
                    f"'{grant.ceiling.gbt}'"
                )
                public.append(reasons[-1])
                continue
            if grant.max_reads is not None and self.reads_used(principal, grant.id) >= grant.max_reads:
                reasons.append(_limit_refusal(grant))
                public.append(reasons[-1])
                continue
            return Decision(principal, grant.id, True, "allowed", withheld=above, ceiling=grant.ceiling)
        reason = "; ".join(reasons) if reasons else f"principal {principal!r} has no grants"
        return Decision(principal, None, False, reason, visible=bool(public), public_reason="; ".join(public))

    def admit(
        self,
        principal: str,
        request: ReadRequest,
        levels: Mapping[str, Level],
        objects: Sequence[str],
    ) -> Decision:
        """Decide the read and take its count atomically, recording the outcome as FETCH evidence.

        A grant whose count or validity refuses at the moment of the read is skipped for the next
        grant that allows it; when none does, the refusal is recorded and returned (allowed=False).
        """
        refused: dict[str, str] = {}
        while True:
            decision = self.decide(principal, request, levels, exclude=frozenset(refused))
            if not decision.allowed or decision.grant_id is None:
                if refused:
                    # The ledger recorded each refusal it made; the rest are grants that don't apply.
                    why = "; ".join(refused.values())
                    return Decision(principal, None, False, why, public_reason=why)
                self.record(decision, request, [])
                return decision
            grant = next(g for g in self.principal(principal).grants if g.id == decision.grant_id)
            reason = self._ledger.commit(
                grant,
                principal,
                self.fetch_entry(decision, request, objects),
                lambda why: self.fetch_entry(Decision(principal, None, False, why), request, []),
                self._clock,
            )
            if reason is None:
                return decision
            refused[grant.id] = reason

    def fetch_entry(
        self,
        decision: Decision,
        request: ReadRequest,
        objects: Sequence[str],
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> EvidenceEntry:
        """The FETCH entry of a decision (allowed reads name the objects they read)."""
        manifest = {
            "principal": decision.principal,
            "asset": request.asset,
            "site": request.site,
            "table": request.table,
            "start_us": request.start_us,
            "end_us": request.end_us,
            "signals": list(request.signals) if request.signals is not None else None,
            "objects": list(objects),
            "time_ns": time.time_ns(),
            "nonce": uuid.uuid4().hex,
        }
        subject = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        attributes: dict[str, Any] = {
            "decision": "allowed" if decision.allowed else "denied",
            "principal": decision.principal,
            "served_by": self.served_by,
            "channel": request.channel,
            "asset": request.asset,
            "table": request.table,
            "start_us": request.start_us,
            "end_us": request.end_us,
            "objects": list(objects[:200]),
            "object_count": len(objects),
        }
        if request.site:
            attributes["site"] = request.site
        if request.signals is not None:
            attributes["signals"] = list(request.signals[:200])
        if decision.withheld:
            attributes["withheld"] = list(decision.withheld[:200])
        if not decision.allowed:
            attributes["reason"] = decision.reason[:1000]
        else:
            attributes["grant"] = decision.grant_id
        attributes.update(extra or {})
        inputs = (grant_subject(decision.principal, decision.grant_id),) if decision.grant_id else ()
        return EvidenceEntry(
            event=EventType.FETCH,
            subject=subject,
            actor=f"principal:{decision.principal}",
            time_us=time.time_ns() // 1000,
            inputs=inputs if decision.allowed else (),
            attributes=attributes,
        )

    def record(
        self,
        decision: Decision,
        request: ReadRequest,
        objects: Sequence[str],
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append a FETCH entry for the decision, as is (no read count taken: see `admit`).

        With `limit_refusals` on, refusals go through the limiter (one entry per key and interval)."""
        entry = self.fetch_entry(decision, request, objects, extra=extra)
        if not decision.allowed and self.refusals is not None:
            endpoint = str((extra or {}).get("endpoint", "samples"))
            status = str((extra or {}).get("status", 403))
            self.refusals.submit((decision.principal, status, endpoint), entry)
            return
        self._evidence.append([entry])

    def limit_refusals(self, interval_s: float) -> RefusalLimiter:
        """Record refusals rate-limited from now on (a service under a flood); returns the limiter."""
        if self.refusals is None:
            self.refusals = RefusalLimiter(self._evidence, interval_s)
        return self.refusals


def load_access(
    path: Path, evidence: EvidenceLog, *, ledger: ReadLedger | None = None, served_by: str = "serve"
) -> AccessControl:
    """Read a grants file: {principals: {name: {token_sha256: [...], grants: [...]}}}."""
    where = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        msg = f"cannot read grants file {where}: {exc.strerror}"
        raise GrantsFileError(msg) from exc
    except yaml.YAMLError as exc:
        msg = f"{where}: not valid YAML: {exc}"
        raise GrantsFileError(msg) from exc
    principals_doc = doc.get("principals") if isinstance(doc, dict) else None
    if not isinstance(principals_doc, dict):
        msg = f"{where}: expected a mapping 'principals: {{name: {{grants: [...]}}}}'"
        raise GrantsFileError(msg)
    principals = []
    for name, body in principals_doc.items():
        try:
            principals.append(Principal.model_validate({"name": str(name), **(body or {})}))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            msg = f"{where}: principals.{name}: {problems}"
            raise GrantsFileError(msg) from None
    return AccessControl(principals, evidence, ledger=ledger, served_by=served_by)
