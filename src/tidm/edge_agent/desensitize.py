"""Desensitization at the source: apply a policy to a samples batch before it is sealed.

Each (asset, signal) of a batch is resolved once to a policy rule and a classification level
(cached), then every action works on whole columns: numeric generalization and time coarsening are
NumPy array operations over the rows a rule selects; text masking and pseudonymization compute the
replacement once per distinct value (a batch holds few) and map it back with Arrow's `index_in` /
`take`. Nothing is done per row in Python.

What leaves this step is what the plant agreed to share: dropped samples are gone (and counted),
masked and pseudonymized values are replaced in `value`/`value_text`, and the result says which
policy (id, version, SHA-256), which pseudonymization key ids and which highest classification level
apply, for the batch's provenance and the agent's CREATE evidence entry.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidm.edge_agent.policy import Action, KeyRing, Policy, Rule, load_policy
from tidm.semantics.catalog import SignalCatalog
from tidm.semantics.classification import ClassificationMap, Level, load_classification

if TYPE_CHECKING:
    from tidm.edge_agent.config import AgentSettings

__all__ = ["ACTIONS", "DesensitizeResult", "Desensitizer"]

ACTIONS: tuple[Action, ...] = ("drop", "mask", "pseudonymize", "generalize", "pass")
_TS = pa.timestamp("us", tz="UTC")
_DICT = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True)
class DesensitizeResult:
    """The desensitized table and what was done to it."""

    table: pa.Table
    counts: dict[str, int]  # samples per action (every action listed, zero if unused)
    key_ids: tuple[str, ...]  # pseudonymization keys used, as `<name>@<epoch>`
    level: Level | None  # highest classification level among the signals left in the batch
    policy_id: str
    policy_version: str
    policy_hash: str
    samples_in: int = 0

    @property
    def dropped(self) -> int:
        return self.counts.get("drop", 0)

    def provenance_fields(self) -> dict[str, Any]:
        """Keyword arguments for `Provenance` (policy identity, key ids, classification)."""
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "policy_hash": self.policy_hash,
            "key_ids": self.key_ids,
            "classification": self.level.gbt if self.level is not None else "",
        }

    def evidence_attributes(self) -> dict[str, Any]:
        """Attributes for the agent's CREATE entry: policy identity, key ids, level, counts per action."""
        return {
            "policy_id": self.policy_id,
            "policy_version": self.policy_version,
            "policy_hash": self.policy_hash,
            "key_ids": list(self.key_ids),
            "classification": self.level.gbt if self.level is not None else "",
            "miit_level": self.level.miit if self.level is not None else 0,
            "samples_before_policy": self.samples_in,
            "desensitized": dict(self.counts),
        }


@dataclass(frozen=True)
class _Plan:
    action: Action
    rule: Rule | None
    level: Level


class Desensitizer:
    """Applies one policy, with a classification map and pseudonymization keys, to samples batches."""

    def __init__(
        self,
        policy: Policy,
        *,
        classification: ClassificationMap | None = None,
        keys: KeyRing | None = None,
        semantic_ids: Mapping[str, str] | None = None,
        catalog: SignalCatalog | None = None,
        epoch: int | None = None,
        clock_us: Callable[[], int] | None = None,
    ) -> None:
        self.policy = policy
        self.classification = classification or ClassificationMap()
        self.keys = keys or KeyRing()
        self._semantic_ids = dict(semantic_ids or {})
        self._catalog = catalog
        self._epoch = epoch
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._plans: dict[tuple[str, str], _Plan] = {}
        self.policy_hash = policy.sha256
        # Fail at start, not on the first batch, when a key the policy names is missing.
        now = self._clock_us()
        for name in sorted(policy.key_names()):
            self.keys.active(name, at_us=now, epoch=epoch)

    @classmethod
    def from_settings(
        cls, settings: AgentSettings, *, catalog: SignalCatalog | None = None
    ) -> Desensitizer | None:
        """Build from the agent's settings (and the AAS catalog, if any); None when no policy is set."""
        if settings.policy is None:
            return None
        policy = load_policy(settings.policy)
        classification = (
            load_classification(settings.classification) if settings.classification is not None else None
        )
        keys = KeyRing()
        ks = settings.pseudonym_keys
        if ks.file is not None:
            keys = keys.merged(KeyRing.from_file(ks.file))
        if ks.folder is not None:
            keys = keys.merged(KeyRing.from_folder(ks.folder))
        return cls(policy, classification=classification, keys=keys, catalog=catalog, epoch=ks.epoch)

    def plan(self, asset_id: str, signal: str) -> tuple[Action, Level]:
        """The action and level for one signal of one asset."""
        p = self._plan(asset_id, signal)
        return p.action, p.level

    def _plan(self, asset_id: str, signal: str) -> _Plan:
        cached = self._plans.get((asset_id, signal))
        if cached is None:
            # Level precedence: a mapping-file rule, then the AAS (catalog), then category/name defaults.
            entry = self._catalog.get(asset_id, signal) if self._catalog is not None else None
            semantic_id = (entry.semantic_id if entry else None) or self._semantic_ids.get(signal)
            found = self.classification.lookup(signal, asset_id=asset_id, semantic_id=semantic_id)
            level = entry.level if entry is not None and found.rule is None else found.level
            rule = self.policy.rule_for(signal, asset_id=asset_id, semantic_id=semantic_id, level=level)
            cached = _Plan(rule.action if rule else self.policy.default, rule, level)
            self._plans[(asset_id, signal)] = cached
        return cached

    def apply(self, table: pa.Table) -> DesensitizeResult:
        """Desensitize a samples table (the canonical samples schema)."""
        n = table.num_rows
        asset = table.column("asset_id").combine_chunks()
        signal = table.column("signal").combine_chunks()
        assets, signals = asset.dictionary.to_pylist(), signal.dictionary.to_pylist()
        n_sig = max(len(signals), 1)
        # A lookup table over the (asset, signal) combinations of the dictionaries (a batch has few):
        # the rule group and the level of each. Rows are grouped by rule, not by signal, so the column
        # work below runs once per rule whatever the number of signals it covers.
        rules: list[_Plan] = []
        group_of: dict[tuple[str, int], int] = {}
        size = max(len(assets) * n_sig, 1)
        lut_plan = np.zeros(size, dtype=np.int32)
        lut_level = np.zeros(size, dtype=np.int8)
        for ai, asset_id in enumerate(assets):
            for si, name in enumerate(signals):
                p = self._plan(asset_id, name)
                group = group_of.setdefault((p.action, id(p.rule)), len(rules))
                if group == len(rules):
                    rules.append(p)
                lut_plan[ai * n_sig + si] = group
                lut_level[ai * n_sig + si] = p.level.miit
        pair = signal.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        if len(assets) > 1:
            pair += asset.indices.to_numpy(zero_copy_only=False).astype(np.int64) * n_sig
        row_plan = lut_plan[pair]
        hits_of = np.bincount(row_plan, minlength=len(rules)) if n else np.zeros(len(rules), dtype=np.int64)

        value = table.column("value").combine_chunks()
        text = table.column("value_text").combine_chunks()
        ts = table.column("ts").combine_chunks()
        recv = table.column("recv_ts").combine_chunks()
        value_valid: np.ndarray | None = None
        text_valid: np.ndarray | None = None
        keep: np.ndarray | None = None
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        key_ids: set[str] = set()
        now_us = self._clock_us()

        values_np: np.ndarray | None = None
        rewrite: _TextRewrite | None = None
        ts_np: np.ndarray | None = None
        recv_np: np.ndarray | None = None

        for index, p in enumerate(rules):
            hits = int(hits_of[index])
            if not hits:
                continue
            counts[p.action] += hits
            if p.action == "pass":
                continue
            rows = row_plan == index
            if p.action == "drop":
                keep = ~rows if keep is None else keep & ~rows
                continue
            if value_valid is None or text_valid is None:
                value_valid = value.is_valid().to_numpy(zero_copy_only=False)
                text_valid = text.is_valid().to_numpy(zero_copy_only=False)
            rule = p.rule
            assert rule is not None  # noqa: S101 - only `pass`/`drop` may be a default without a rule
            if p.action == "generalize":
                if rule.step is not None or rule.buckets is not None or rule.clamp is not None:
                    if values_np is None:
                        values_np = value.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
                    sel = rows & value_valid
                    values_np[sel] = _generalize(values_np[sel], rule)
                if rule.time_step_ms is not None:
                    step_us = rule.time_step_ms * 1000
                    if ts_np is None:
                        ts_np = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False).copy()
                        recv_np = pc.cast(recv, pa.int64()).to_numpy(zero_copy_only=False).copy()
                    assert recv_np is not None  # noqa: S101 - set together with ts_np
                    ts_np[rows] -= ts_np[rows] % step_us
                    recv_np[rows] -= recv_np[rows] % step_us
                continue
            # mask / pseudonymize: text replaced per distinct value; numbers become text, value null.
            if p.action == "pseudonymize":
                assert rule.key is not None  # noqa: S101 - the policy validator requires a key
                k = self.keys.active(rule.key, at_us=now_us, epoch=self._epoch)
                key_ids.add(k.key_id)
                fn = _pseudonymizer(k.secret, rule)
            else:
                fn = _masker(rule)
            text_rows = rows & text_valid
            num_rows = rows & value_valid
            if text_rows.any():
                rewrite = rewrite or _TextRewrite(text, text_valid)
                rewrite.replace(text_rows, fn)
            if num_rows.any():
                rewrite = rewrite or _TextRewrite(text, text_valid)
                if values_np is None:
                    values_np = value.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
                rewrite.set_numbers(num_rows, values_np[num_rows], fn)
                value_valid = value_valid & ~num_rows
                values_np[num_rows] = np.nan

        if values_np is not None and value_valid is not None:
            value = pa.array(values_np, type=pa.float64(), mask=~value_valid)
        if rewrite is not None:
            text = rewrite.result()
        if ts_np is not None:
            ts = pa.array(ts_np, type=pa.int64()).cast(_TS)
            recv = pa.array(recv_np, type=pa.int64()).cast(_TS)
        out = _assemble(table, ts, recv, value, text, keep)
        kept = pair if keep is None else pair[keep]
        present = np.bincount(kept, minlength=size).astype(bool)
        level = Level.from_miit(int(lut_level[present].max())) if kept.size else None
        return DesensitizeResult(
            table=out,
            counts=counts,
            key_ids=tuple(sorted(key_ids)),
            level=level,
            policy_id=self.policy.id,
            policy_version=self.policy.version,
            policy_hash=self.policy_hash,
            samples_in=n,
        )


def _generalize(v: np.ndarray, rule: Rule) -> np.ndarray:
    if rule.step is not None:
        v = np.round(v / rule.step) * rule.step
    if rule.buckets is not None:
        edges = np.asarray(rule.buckets, dtype=np.float64)
        # A value becomes the lower edge of its bucket; below the first edge it joins the first bucket.
        idx = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 1)
        v = np.where(np.isnan(v), v, edges[idx])
    if rule.clamp is not None:
        v = np.clip(v, rule.clamp[0], rule.clamp[1])
    return v


def _pseudonymizer(secret: bytes, rule: Rule) -> Callable[[str], str]:
    keyed = hmac.new(secret, digestmod=hashlib.sha256)  # copying the keyed state skips re-keying

    def pseudonym(clear: str) -> str:
        mac = keyed.copy()
        mac.update(clear.encode("utf-8"))
        return f"{rule.prefix}{mac.hexdigest()[: rule.length]}"

    return pseudonym


def _masker(rule: Rule) -> Callable[[str], str]:
    def mask(clear: str) -> str:
        if rule.fixed_length is not None:
            return rule.fill * rule.fixed_length
        n = len(clear)
        head = min(rule.keep_prefix, n)
        tail = min(rule.keep_suffix, n - head)
        return clear[:head] + rule.fill * (n - head - tail) + (clear[n - tail :] if tail else "")

    return mask


class _TextRewrite:
    """Rewrites rows of a string column through its distinct values: one hash pass, one final take."""

    def __init__(self, col: pa.Array, valid: np.ndarray) -> None:
        self._col = col
        encoded = pc.dictionary_encode(col)
        self._distinct: list[str] = encoded.dictionary.to_pylist()
        self._idx = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
        self._values: list[str] = list(self._distinct)
        self._out = self._idx.astype(np.int64, copy=True)
        self._valid = valid.copy()

    def replace(self, rows: np.ndarray, fn: Callable[[str], str]) -> None:
        """Replace the text of `rows` (valid ones) by `fn(text)`, computed once per distinct text."""
        sel = rows & self._valid
        used = np.flatnonzero(np.bincount(self._idx[sel], minlength=len(self._distinct)))
        remap = np.zeros(len(self._distinct), dtype=np.int64)
        remap[used] = len(self._values) + np.arange(len(used))
        self._values.extend(fn(self._distinct[u]) for u in used.tolist())
        self._out[sel] = remap[self._idx[sel]]

    def set_numbers(self, rows: np.ndarray, numbers: np.ndarray, fn: Callable[[str], str]) -> None:
        """Give `rows` the text `fn(repr(number))`, computed once per distinct number."""
        uniq, inverse = np.unique(numbers, return_inverse=True)
        base = len(self._values)
        # repr() of a float is its shortest round-trip text: the same number always gives the same input.
        self._values.extend(fn(repr(float(x))) for x in uniq.tolist())
        self._out[rows] = base + inverse.reshape(-1)
        self._valid |= rows

    def result(self) -> pa.Array:
        values = pa.array(self._values, type=pa.string())
        return values.take(pa.array(self._out, mask=~self._valid))


def _assemble(
    table: pa.Table, ts: pa.Array, recv: pa.Array, value: pa.Array, text: pa.Array, keep: np.ndarray | None
) -> pa.Table:
    columns = {
        "ts": ts,
        "recv_ts": recv,
        "value": value,
        "value_text": text,
    }
    arrays = [columns.get(f.name, table.column(f.name)) for f in table.schema]
    out = pa.Table.from_arrays(arrays, schema=table.schema)
    if keep is None:
        return out
    out = out.filter(pa.array(keep))
    # Compact the dictionaries so the names of dropped signals do not travel in them.
    for name in ("asset_id", "signal"):
        i = out.schema.get_field_index(name)
        col = out.column(name).combine_chunks()
        indices = col.indices.to_numpy(zero_copy_only=False)
        used = np.unique(indices)
        if len(used) == len(col.dictionary):
            continue
        remap = np.zeros(len(col.dictionary), dtype=np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        compact = pa.DictionaryArray.from_arrays(
            pa.array(remap[indices]), col.dictionary.take(pa.array(used))
        )
        out = out.set_column(i, out.schema.field(i), compact)
    return out
