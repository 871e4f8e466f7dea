"""Access grants and usage logging: every read is checked against the principal's grants and
recorded in the evidence log, allowed or denied.

A grant scopes reads by site, asset and table globs, a classification ceiling, an optional
validity window and an optional read-count limit. The count is taken from the evidence log
itself: each allowed read lists the grant's subject among its `inputs`, so `by_input` counts it,
and there is no separate counter to drift from what the log says.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tidm.evidence.api import EventType, EvidenceEntry, EvidenceLog
from tidm.semantics.classification import Level
from tidm.storage.errors import AccessDenied, GrantsFileError

__all__ = [
    "AccessControl",
    "Decision",
    "Grant",
    "Principal",
    "ReadRequest",
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


def grant_subject(principal: str, grant_id: str) -> str:
    """The evidence subject standing for a grant; allowed reads list it among their inputs."""
    return hashlib.sha256(f"tidm-grant\n{principal}\n{grant_id}".encode()).hexdigest()


def _match(value: str | None, patterns: Sequence[str]) -> bool:
    if value is None:
        return "*" in patterns
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


class AccessControl:
    """Principals and their grants; decides reads and records every decision as evidence."""

    def __init__(self, principals: Sequence[Principal], evidence: EvidenceLog) -> None:
        self._principals = {p.name: p for p in principals}
        self._evidence = evidence

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
        return len(self._evidence.by_input(grant_subject(principal, grant_id)))

    def decide(
        self,
        principal: str,
        request: ReadRequest,
        levels: Mapping[str, Level],
        *,
        now: dt.datetime | None = None,
    ) -> Decision:
        """The first grant that allows the request wins; otherwise the most specific refusal."""
        now = now or dt.datetime.now(dt.UTC)
        who = self._principals.get(principal)
        if who is None:
            return Decision(principal, None, False, f"unknown principal {principal!r}")
        reasons: list[str] = []
        for grant in who.grants:
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
            if grant.valid_from and now < grant.valid_from:
                reasons.append(f"grant {grant.id}: not valid before {grant.valid_from.isoformat()}")
                continue
            if grant.valid_until and now >= grant.valid_until:
                reasons.append(f"grant {grant.id}: expired at {grant.valid_until.isoformat()}")
                continue
            asked = request.signals if request.signals is not None else tuple(sorted(levels))
            above = tuple(s for s in asked if levels.get(s, Level.CORE) > grant.ceiling)
            if request.signals is not None and above:
                reasons.append(
                    f"grant {grant.id}: signals {', '.join(above)} are above its classification ceiling "
                    f"'{grant.ceiling.gbt}'"
                )
                continue
            if grant.max_reads is not None and self.reads_used(principal, grant.id) >= grant.max_reads:
                reasons.append(f"grant {grant.id}: read limit of {grant.max_reads} reached")
                continue
            return Decision(principal, grant.id, True, "allowed", withheld=above, ceiling=grant.ceiling)
        reason = "; ".join(reasons) if reasons else f"principal {principal!r} has no grants"
        return Decision(principal, None, False, reason)

    def record(self, decision: Decision, request: ReadRequest, objects: Sequence[str]) -> None:
        """Append a FETCH entry for the decision (allowed reads name the objects they read)."""
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
        }
        subject = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        attributes: dict[str, Any] = {
            "decision": "allowed" if decision.allowed else "denied",
            "principal": decision.principal,
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
            attributes["reason"] = decision.reason
        else:
            attributes["grant"] = decision.grant_id
        inputs = (grant_subject(decision.principal, decision.grant_id),) if decision.grant_id else ()
        self._evidence.append(
            [
                EvidenceEntry(
                    event=EventType.FETCH,
                    subject=subject,
                    actor=f"principal:{decision.principal}",
                    time_us=time.time_ns() // 1000,
                    inputs=inputs if decision.allowed else (),
                    attributes=attributes,
                )
            ]
        )


def load_access(path: Path, evidence: EvidenceLog) -> AccessControl:
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
    return AccessControl(principals, evidence)
