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

import functools
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


@dataclass(frozen=True)
class _Layout:
    """What a batch's (asset, signal) dictionaries resolve to, computed once per pair of dictionaries."""

    groups: tuple[_Plan, ...]  # one per distinct (action, rule)
    lut_group: np.ndarray  # group of each (asset index * n_sig + signal index)
    lut_level: np.ndarray  # MIIT level of each pair
    n_sig: int
    untouched: bool  # every pair passes: the batch can leave as it is


# Bounds of the per-Desensitizer caches: dictionaries seen (a source's batches reuse a few) and
# replacement texts (a plant's distinct operator ids, batch codes, ... stay well below this).
_LAYOUT_CACHE = 1024
_TEXT_CACHE = 65536


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
        self._layouts: dict[tuple[tuple[str, ...], tuple[str, ...]], _Layout] = {}
        # Replacement text per (rule, key id) spec, memoized across batches (an LRU per spec).
        self._rewriters: dict[tuple[int, str], Callable[[str], str]] = {}
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

    def _layout(self, assets: tuple[str, ...], signals: tuple[str, ...]) -> _Layout:
        """The rule group and level of every (asset, signal) pair of two dictionaries (cached)."""
        key = (assets, signals)
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        n_sig = max(len(signals), 1)
        # Rows are grouped by rule, not by signal, so the column work runs once per rule whatever
        # the number of signals it covers.
        groups: list[_Plan] = []
        group_of: dict[tuple[str, int], int] = {}
        size = max(len(assets) * n_sig, 1)
        lut_group = np.zeros(size, dtype=np.int32)
        lut_level = np.zeros(size, dtype=np.int8)
        for ai, asset_id in enumerate(assets):
            for si, name in enumerate(signals):
                p = self._plan(asset_id, name)
                group = group_of.setdefault((p.action, id(p.rule)), len(groups))
                if group == len(groups):
                    groups.append(p)
                lut_group[ai * n_sig + si] = group
                lut_level[ai * n_sig + si] = p.level.miit
        layout = _Layout(tuple(groups), lut_group, lut_level, n_sig, all(g.action == "pass" for g in groups))
        if len(self._layouts) >= _LAYOUT_CACHE:
            self._layouts.clear()  # dictionaries that change all the time: recompute, stay bounded
        self._layouts[key] = layout
        return layout

    def _rewriter(self, rule: Rule, now_us: int, key_ids: set[str]) -> Callable[[str], str]:
        """The text replacement of a mask/pseudonymize rule, memoized across batches."""
        key_id = ""
        if rule.action == "pseudonymize":
            assert rule.key is not None  # noqa: S101 - the policy validator requires a key
            k = self.keys.active(rule.key, at_us=now_us, epoch=self._epoch)
            key_id = k.key_id
            key_ids.add(key_id)
        spec = (id(rule), key_id)
        fn = self._rewriters.get(spec)
        if fn is None:
            base = _pseudonymizer(k.secret, rule) if key_id else _masker(rule)
            fn = functools.lru_cache(maxsize=_TEXT_CACHE)(base)
            self._rewriters[spec] = fn
        return fn

    def apply(self, table: pa.Table) -> DesensitizeResult:
        """Desensitize a samples table (the canonical samples schema)."""
        n = table.num_rows
        asset = _one_chunk(table.column("asset_id"))
        signal = _one_chunk(table.column("signal"))
        layout = self._layout(tuple(asset.dictionary.to_pylist()), tuple(signal.dictionary.to_pylist()))
        pair = signal.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if len(asset.dictionary) > 1:
            pair = pair + asset.indices.to_numpy(zero_copy_only=False).astype(np.int64) * layout.n_sig
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        if layout.untouched:
            # No rule changes this batch: it leaves as it came, without a copy.
            counts["pass"] = n
            return self._result(table, counts, set(), layout, pair, n)

        row_group = layout.lut_group[pair]
        hits_of = np.bincount(row_group, minlength=len(layout.groups))
        value = _one_chunk(table.column("value"))
        text = _one_chunk(table.column("value_text"))
        value_valid: np.ndarray | None = None
        text_valid: np.ndarray | None = None
        keep: np.ndarray | None = None
        key_ids: set[str] = set()
        now_us = self._clock_us()
        values_np: np.ndarray | None = None
        values_changed = False
        ts_np: np.ndarray | None = None
        recv_np: np.ndarray | None = None
        rewrite: _TextRewrite | None = None

        for index, p in enumerate(layout.groups):
            hits = int(hits_of[index])
            if not hits:
                continue
            counts[p.action] += hits
            if p.action == "pass":
                continue
            rows = row_group == index
            if p.action == "drop":
                keep = ~rows if keep is None else keep & ~rows
                continue
            if value_valid is None or text_valid is None:
                value_valid = _validity(value)
                text_valid = _validity(text)
            rule = p.rule
            assert rule is not None  # noqa: S101 - only `pass`/`drop` may be a default without a rule
            if p.action == "generalize":
                if rule.step is not None or rule.buckets is not None or rule.clamp is not None:
                    if values_np is None:
                        values_np = value.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
                    sel = rows & value_valid
                    values_np[sel] = _generalize(values_np[sel], rule)
                    values_changed = True
                if rule.time_step_ms is not None:
                    step_us = rule.time_step_ms * 1000
                    if ts_np is None:
                        ts_np = _micros(table.column("ts"))
                        recv_np = _micros(table.column("recv_ts"))
                    assert recv_np is not None  # noqa: S101 - set together with ts_np
                    ts_np[rows] -= ts_np[rows] % step_us
                    recv_np[rows] -= recv_np[rows] % step_us
                continue
            # mask / pseudonymize: text replaced per distinct value; numbers become text, value null.
            fn = self._rewriter(rule, now_us, key_ids)
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
                values_changed = True

        if values_changed and values_np is not None and value_valid is not None:
            value = pa.array(values_np, type=pa.float64(), mask=~value_valid)
        # Only the columns that changed are replaced; the others stay as they came (no copy).
        changed: dict[str, pa.Array] = {}
        if values_changed:
            changed["value"] = value
        if rewrite is not None:
            changed["value_text"] = rewrite.result()
        if ts_np is not None:
            changed["ts"] = pa.array(ts_np, type=pa.int64()).cast(_TS)
            changed["recv_ts"] = pa.array(recv_np, type=pa.int64()).cast(_TS)
        out = _assemble(table, changed, keep)
        return self._result(out, counts, key_ids, layout, pair if keep is None else pair[keep], n)

    def _result(
        self,
        table: pa.Table,
        counts: dict[str, int],
        key_ids: set[str],
        layout: _Layout,
        kept: np.ndarray,
        samples_in: int,
    ) -> DesensitizeResult:
        level = Level.from_miit(int(layout.lut_level[kept].max())) if kept.size else None
        return DesensitizeResult(
            table=table,
            counts=counts,
            key_ids=tuple(sorted(key_ids)),
            level=level,
            policy_id=self.policy.id,
            policy_version=self.policy.version,
            policy_hash=self.policy_hash,
            samples_in=samples_in,
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


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _validity(array: pa.Array) -> np.ndarray:
    """Which rows are not null, as a bool array (read from the validity bitmap)."""
    n = len(array)
    bitmap = array.buffers()[0]
    if array.null_count == 0 or bitmap is None:
        return np.full(n, array.null_count == 0, dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little", count=array.offset + n)
    valid: np.ndarray = bits[array.offset :].astype(bool)
    return valid


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as a writable int64 array of µs."""
    micros: np.ndarray = pc.cast(_one_chunk(column), pa.int64()).to_numpy(zero_copy_only=False).copy()
    return micros


class _TextRewrite:
    """Rewrites rows of a string column through its distinct values: one hash pass, one final take."""

    def __init__(self, col: pa.Array, valid: np.ndarray) -> None:
        encoded = pc.dictionary_encode(col)
        self._distinct: list[str] = encoded.dictionary.to_pylist()
        indices = encoded.indices
        # Read the indices buffer directly: slots of null rows hold some index, never used below.
        raw = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=indices.offset + len(indices))
        self._idx = raw[indices.offset :]
        self._values: list[str] = list(self._distinct)
        self._out = self._idx.astype(np.int64)
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


def _assemble(table: pa.Table, changed: Mapping[str, pa.Array], keep: np.ndarray | None) -> pa.Table:
    out = table
    for name, array in changed.items():
        i = out.schema.get_field_index(name)
        out = out.set_column(i, out.schema.field(i), array)
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
