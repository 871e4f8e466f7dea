"""Desensitization at the source: apply a policy to a samples batch before it is sealed.

Each (asset, signal) of a batch is resolved once to a policy rule and a classification level
(cached), then every action works on whole columns: numeric generalization and time coarsening are
NumPy array operations over the rows a rule selects; text masking and pseudonymization compute the
replacement once per distinct value (a batch holds few) and map it back with Arrow's
`dictionary_encode` / `take`. Nothing is done per row in Python.

The column work has a fixed cost per call, so a backlog the agent cuts into several batches goes
through it once (`prepare`), and each batch is then a slice of the results (`PreparedTable.piece`),
the same as `apply` on that batch alone.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tidm.edge_agent.policy import Action, KeyRing, Policy, Rule, load_policy
from tidm.edge_agent.sources.decoders.quarantine import DROPPED, FieldValue
from tidm.semantics.catalog import SignalCatalog
from tidm.semantics.classification import ClassificationMap, Level, load_classification
from tidm.semantics.schema import samples_table

if TYPE_CHECKING:
    from tidm.edge_agent.config import AgentSettings

__all__ = ["ACTIONS", "DesensitizeResult", "Desensitizer", "PreparedTable"]

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
    level: int  # the MIIT level every pair has, or -1 when they differ (then it is looked up per row)
    by_signal: np.ndarray | None  # group of each signal index when it does not depend on the asset

    def row_groups(self, asset: pa.DictionaryArray, signal: pa.DictionaryArray) -> np.ndarray:
        """Each row's rule group."""
        if self.by_signal is not None:
            groups: np.ndarray = self.by_signal.take(_indices(signal))
            return groups
        return self.lut_group.take(_pairs(self, asset, signal))


# Bounds of the per-Desensitizer caches: dictionaries seen (a source's batches reuse a few) and
# replacement texts (a plant's distinct operator ids, batch codes, ... stay well below this).
_LAYOUT_CACHE = 1024
_TEXT_CACHE = 65536
_MAX_TEXT = 4096  # the decoders' longest text value
# Up to this many distinct texts in a batch, a text rule rewrites all of them (memoized): cheaper than
# finding the ones its rows use.
_ALL_DISTINCT = 64
_TEXT_ARRAYS = 256  # bound of the per-Desensitizer cache of rewritten-text arrays


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
        # Arrow arrays of (distinct texts + their replacements), by content: a source's batches see
        # the same few texts again and again. Like the rewriters' memo, this holds clear texts in the
        # agent's memory only (never written anywhere), bounded.
        self._text_arrays: dict[tuple[str | None, ...], pa.Array] = {}
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
        lut_group = np.zeros(size, dtype=np.intp)  # bincount takes intp as it is
        lut_level = np.zeros(size, dtype=np.int8)
        for ai, asset_id in enumerate(assets):
            for si, name in enumerate(signals):
                p = self._plan(asset_id, name)
                group = group_of.setdefault((p.action, id(p.rule)), len(groups))
                if group == len(groups):
                    groups.append(p)
                lut_group[ai * n_sig + si] = group
                lut_level[ai * n_sig + si] = p.level.miit
        uniform = int(lut_level[0]) if bool((lut_level == lut_level[0]).all()) else -1
        per_asset = lut_group.reshape(-1, n_sig)
        by_signal = per_asset[0].copy() if bool((per_asset == per_asset[0]).all()) else None
        layout = _Layout(
            tuple(groups),
            lut_group,
            lut_level,
            n_sig,
            all(g.action == "pass" for g in groups),
            uniform,
            by_signal,
        )
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

    def rewrite(self, fields: Sequence[FieldValue]) -> list[Any]:
        """The quarantine's view of the policy (`FieldPolicy`): per field of a rejected payload, the
        value as its sample would leave the agent, or `DROPPED`. The values go through `apply`, so
        the quarantine keeps exactly what the policy would share. A value that is no sample value
        (an object, an overlong text) cannot be rewritten: unless the signal passes, it is replaced."""
        out: list[Any] = [DROPPED] * len(fields)
        rows: list[int] = []
        numbers: list[float | None] = []
        texts: list[str | None] = []
        for i, f in enumerate(fields):
            action = self._plan(f.asset_id, f.signal).action
            raw = f.value
            if action == "drop":
                continue
            if action == "pass" or raw is None:
                out[i] = raw
                continue
            number, text = _sample_value(raw)
            if number is None and text is None:
                out[i] = f"<{action}: not a sample value>"
                continue
            rows.append(i)
            numbers.append(number)
            texts.append(text)
        if rows:
            table = samples_table(
                ts_us=[fields[i].ts_us for i in rows],
                recv_ts_us=[fields[i].ts_us for i in rows],
                asset_id=[fields[i].asset_id for i in rows],
                signal=[fields[i].signal for i in rows],
                value=numbers,
                value_text=texts,
                quality=[0] * len(rows),
                status_code=[0] * len(rows),
                seq=rows,
            )
            kept = self.apply(table).table
            for seq, number, text in zip(
                kept.column("seq").to_pylist(),
                kept.column("value").to_pylist(),
                kept.column("value_text").to_pylist(),
                strict=True,
            ):
                out[seq] = text if text is not None else number
        return out

    def apply(self, table: pa.Table) -> DesensitizeResult:
        """Desensitize a samples table (the canonical samples schema)."""
        return self.prepare(table).piece(table)

    def prepare(self, table: pa.Table) -> PreparedTable:
        """Run the policy's column work on a whole samples table once; `piece` cuts the results.

        The agent seals a backlog as several batches cut from one table (`max_rows` rows each):
        with one pass over the table, the fixed cost of the column operations is paid once per
        table instead of once per batch."""
        n = table.num_rows
        asset = _one_chunk(table.column("asset_id"))
        signal = _one_chunk(table.column("signal"))
        layout = self._layout(tuple(asset.dictionary.to_pylist()), tuple(signal.dictionary.to_pylist()))
        if layout.untouched:
            # No rule changes this table: its batches leave as they came, without a copy.
            return PreparedTable(self, layout, n, asset, signal)

        row_group = layout.row_groups(asset, signal)
        groups = layout.groups
        # Rows per group, for the groups that act; a piece counts the passing rows as the rest.
        row_sets = [None if p.action == "pass" else row_group == index for index, p in enumerate(groups)]
        hits_of = [0 if rows is None else int(np.count_nonzero(rows)) for rows in row_sets]
        value = _one_chunk(table.column("value"))
        text = _one_chunk(table.column("value_text"))
        value_valid: np.ndarray | None = None
        nulled = False  # numbers became text: the value column's validity changed
        keep: np.ndarray | None = None
        key_of: dict[int, str] = {}
        now_us = self._clock_us()
        values_np: np.ndarray | None = None
        ts_np: np.ndarray | None = None
        recv_np: np.ndarray | None = None
        rewrite: _TextRewrite | None = None
        # Which rows change each column: a batch cut from the table replaces a column only if one
        # of its rows does (as if it had been desensitized alone).
        value_rows: np.ndarray | None = None
        text_rows: np.ndarray | None = None
        time_rows: np.ndarray | None = None

        for index, p in enumerate(groups):
            rows = row_sets[index]
            if rows is None or not hits_of[index]:
                continue
            if p.action == "drop":
                keep = ~rows if keep is None else keep & ~rows
                continue
            rule = p.rule
            assert rule is not None  # noqa: S101 - only `pass`/`drop` may be a default without a rule
            if p.action == "generalize":
                if rule.step is not None or rule.buckets is not None or rule.clamp is not None:
                    if values_np is None:
                        values_np = _floats(value)
                    # Whole column, then picked by rows: cheaper than gathering the rows. Slots under
                    # nulls hold any number; they stay null whatever it becomes.
                    with np.errstate(all="ignore"):
                        np.putmask(values_np, rows, _generalize(values_np, rule))
                    value_rows = rows if value_rows is None else value_rows | rows
                if rule.time_step_ms is not None:
                    step_us = rule.time_step_ms * 1000
                    if ts_np is None or recv_np is None:
                        ts_np = _micros(table.column("ts"))
                        recv_np = _micros(table.column("recv_ts"))
                    np.putmask(ts_np, rows, ts_np - ts_np % step_us)
                    np.putmask(recv_np, rows, recv_np - recv_np % step_us)
                    time_rows = rows if time_rows is None else time_rows | rows
                continue
            # mask / pseudonymize: text replaced per distinct value; numbers become text, value null.
            key_ids: set[str] = set()
            fn = self._rewriter(rule, now_us, key_ids)
            if key_ids:
                key_of[index] = key_ids.pop()
            if text.null_count < n:
                rewrite = rewrite or _TextRewrite(text, self._text_arrays)
                rewrite.replace(rows, fn)
                text_rows = rows if text_rows is None else text_rows | rows
            if value.null_count < n:
                if value_valid is None:
                    value_valid = _validity(value)
                num_sel = rows & value_valid
                if np.count_nonzero(num_sel):
                    rewrite = rewrite or _TextRewrite(text, self._text_arrays)
                    if values_np is None:
                        values_np = _floats(value)
                    rewrite.set_numbers(num_sel, values_np[num_sel], fn)
                    value_valid = value_valid & ~num_sel
                    nulled = True
                    value_rows = num_sel if value_rows is None else value_rows | num_sel
                    text_rows = num_sel if text_rows is None else text_rows | num_sel

        changed: dict[str, tuple[pa.Array, np.ndarray]] = {}
        if values_np is not None and value_rows is not None:
            changed["value"] = (_float_array(value, values_np, value_valid if nulled else None), value_rows)
        if rewrite is not None and text_rows is not None:
            changed["value_text"] = (rewrite.result(), text_rows)
        if ts_np is not None and recv_np is not None and time_rows is not None:
            changed["ts"] = (_timestamps(ts_np), time_rows)
            changed["recv_ts"] = (_timestamps(recv_np), time_rows)
        pair = None  # computed when a piece needs per-row levels
        return PreparedTable(self, layout, n, asset, signal, pair, row_group, changed, keep, key_of, hits_of)


class PreparedTable:
    """A samples table with the policy's column work done (`Desensitizer.prepare`)."""

    def __init__(
        self,
        owner: Desensitizer,
        layout: _Layout,
        num_rows: int,
        asset: pa.DictionaryArray,
        signal: pa.DictionaryArray,
        pair: np.ndarray | None = None,
        row_group: np.ndarray | None = None,
        changed: Mapping[str, tuple[pa.Array, np.ndarray]] | None = None,
        keep: np.ndarray | None = None,
        key_of: Mapping[int, str] | None = None,
        hits_of: list[int] | None = None,
    ) -> None:
        self._owner = owner
        self._layout = layout
        self._n = num_rows
        self._asset = asset
        self._signal = signal
        self._pair = pair
        self._row_group = row_group
        self._changed = dict(changed or {})
        self._keep = keep
        self._key_of = dict(key_of or {})
        self._hits_of = hits_of  # rows per rule group over the whole table

    def piece(self, table: pa.Table, start: int = 0) -> DesensitizeResult:
        """The result of `Desensitizer.apply` on `table`, rows [start, start + table.num_rows) of the
        prepared table (its columns may differ where the policy does not look, e.g. `seq`)."""
        n = table.num_rows
        stop = start + n
        if not 0 <= start <= stop <= self._n:
            msg = f"rows {start}..{stop} are not within the prepared {self._n} rows"
            raise ValueError(msg)
        layout = self._layout
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        if self._row_group is None:
            counts["pass"] = n
            pair = None if layout.level >= 0 else self._pairs()[start:stop]
            return _result(self._owner, table, counts, set(), _batch_level(layout, pair, n), n)
        whole = start == 0 and n == self._n
        if whole and self._hits_of is not None:
            hits_of = self._hits_of
        else:
            hits_of = np.bincount(self._row_group[start:stop], minlength=len(layout.groups)).tolist()
        for p, hits in zip(layout.groups, hits_of, strict=True):
            if p.action != "pass":
                counts[p.action] += hits
        counts["pass"] = n - sum(counts.values())
        key_ids = {key_id for index, key_id in self._key_of.items() if hits_of[index]}
        changed: dict[str, pa.Array] = {}
        touched: dict[int, bool] = {}  # ts and recv_ts share their rows: look once
        for name, (array, rows) in self._changed.items():
            if whole:
                changed[name] = array
                continue
            hit = touched.get(id(rows))
            if hit is None:
                hit = touched[id(rows)] = bool(np.count_nonzero(rows[start:stop]))
            if hit:
                changed[name] = array.slice(start, n)
        keep = None
        if self._keep is not None:
            keep = self._keep if whole else self._keep[start:stop]
            if np.count_nonzero(keep) == len(keep):
                keep = None  # no row of this piece is dropped
        out = _assemble(table, changed, keep)
        kept = n if keep is None else int(np.count_nonzero(keep))
        pair = None
        if layout.level < 0:
            pair = self._pairs() if whole else self._pairs()[start:stop]
            pair = pair if keep is None else pair[keep]
        return _result(self._owner, out, counts, key_ids, _batch_level(layout, pair, kept), n)

    def _pairs(self) -> np.ndarray:
        if self._pair is None:
            self._pair = _pairs(self._layout, self._asset, self._signal)
        return self._pair


def _result(
    owner: Desensitizer,
    table: pa.Table,
    counts: dict[str, int],
    key_ids: set[str],
    level: Level | None,
    samples_in: int,
) -> DesensitizeResult:
    return DesensitizeResult(
        table=table,
        counts=counts,
        key_ids=tuple(sorted(key_ids)),
        level=level,
        policy_id=owner.policy.id,
        policy_version=owner.policy.version,
        policy_hash=owner.policy_hash,
        samples_in=samples_in,
    )


def _pairs(layout: _Layout, asset: pa.DictionaryArray, signal: pa.DictionaryArray) -> np.ndarray:
    """Each row's (asset, signal) pair, as an index into the layout's lookup tables."""
    pair: np.ndarray = _indices(signal).astype(np.int64)
    if len(asset.dictionary) > 1:
        pair += _indices(asset).astype(np.int64) * layout.n_sig
    return pair


def _indices(array: pa.DictionaryArray) -> np.ndarray:
    """A dictionary column's indices, read in place (the samples schema has no null keys)."""
    indices = array.indices
    if indices.null_count:
        filled: np.ndarray = indices.fill_null(0).to_numpy()
        return filled
    if indices.type == pa.int32():
        raw = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=indices.offset + len(indices))
        return raw[indices.offset :]
    other: np.ndarray = indices.to_numpy()  # zero-copy without nulls
    return other


def _floats(array: pa.Array) -> np.ndarray:
    """A float64 column's values as a writable copy, nulls included as whatever their slots hold."""
    data = np.frombuffer(array.buffers()[1], dtype=np.float64, count=array.offset + len(array))
    return data[array.offset :].copy()


def _float_array(original: pa.Array, values: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """`values` as a float64 column: the original's nulls (shared bitmap) unless `valid` says otherwise."""
    if valid is None and original.offset == 0:
        return pa.Array.from_buffers(
            pa.float64(), len(values), [original.buffers()[0], pa.py_buffer(values)], original.null_count
        )
    if valid is None:
        valid = _validity(original)
    nulls = len(values) - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(pa.float64(), len(values), [bitmap, pa.py_buffer(values)], nulls)


def _batch_level(layout: _Layout, pair: np.ndarray | None, kept: int) -> Level | None:
    """The highest level among the rows kept (None if none is); per row only if the levels differ."""
    if not kept:
        return None
    if layout.level >= 0:
        return Level.from_miit(layout.level)
    assert pair is not None  # noqa: S101 - given whenever the layout's levels differ
    return Level.from_miit(int(layout.lut_level[pair].max()))


def _sample_value(raw: Any) -> tuple[float | None, str | None]:
    """(value, value_text) as a decoder would make them of a payload scalar; (None, None) if none."""
    kind = type(raw)
    if kind is bool:
        return (1.0 if raw else 0.0), None
    if kind is int or kind is float:
        try:
            number = float(raw)
        except OverflowError:
            return None, None
        return (number, None) if np.isfinite(number) else (None, None)
    if kind is str and len(raw) <= _MAX_TEXT:
        return None, raw
    return None, None


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
    array = _one_chunk(column)
    if array.null_count:
        micros: np.ndarray = pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False).copy()
        return micros
    # Read the data buffer directly: a cast through Arrow costs more than the copy for a batch.
    data = np.frombuffer(array.buffers()[1], dtype=np.int64, count=array.offset + len(array))
    return data[array.offset :].copy()


def _timestamps(micros: np.ndarray) -> pa.Array:
    """µs since the epoch as a timestamp[us, UTC] array (the buffer is shared, not copied)."""
    if micros.dtype != np.int64:  # a column with nulls came back as floats (see _micros)
        return pa.array(micros, type=pa.int64()).cast(_TS)
    return pa.Array.from_buffers(_TS, len(micros), [None, pa.py_buffer(micros)])


class _TextRewrite:
    """Rewrites rows of a string column through its distinct values: one hash pass, one final take.

    Nulls are encoded as a distinct value of their own (None), so a null text stays null wherever
    its row points, and no validity bitmap is needed to pick the rows with text."""

    def __init__(self, col: pa.Array, arrays: dict[tuple[str | None, ...], pa.Array]) -> None:
        self._arrays = arrays  # the Desensitizer's cache of value arrays, by content
        encoded = col.dictionary_encode(null_encoding="encode")
        self._distinct: list[str | None] = encoded.dictionary.to_pylist()
        indices = encoded.indices
        raw = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=indices.offset + len(indices))
        self._idx = raw[indices.offset :]
        self._values: list[str | None] = list(self._distinct)
        self._out = self._idx.copy()

    def replace(self, rows: np.ndarray, fn: Callable[[str], str]) -> None:
        """Replace the text of `rows` by `fn(text)` (nulls stay null), computed once per distinct text.

        The replacements take one slot per distinct text after the values so far, so a row's new slot
        is its distinct index plus an offset. With many distinct texts, only the ones the rows use are
        computed (the others get a placeholder no row points to)."""
        distinct = self._distinct
        if len(distinct) > _ALL_DISTINCT:
            used = np.bincount(self._idx[rows], minlength=len(distinct)).tolist()
            new = [fn(t) if u and t is not None else None for t, u in zip(distinct, used, strict=True)]
        else:
            new = [None if t is None else fn(t) for t in distinct]
        base = len(self._values)
        self._values.extend(new)
        np.putmask(self._out, rows, self._idx + np.int32(base))

    def set_numbers(self, rows: np.ndarray, numbers: np.ndarray, fn: Callable[[str], str]) -> None:
        """Give `rows` the text `fn(repr(number))`, computed once per distinct number."""
        # Distinct by bit pattern, so -0.0 and 0.0 keep their own text whatever else the batch holds.
        bits, inverse = np.unique(numbers.view(np.int64), return_inverse=True)
        base = len(self._values)
        # repr() of a float is its shortest round-trip text: the same number always gives the same input.
        self._values.extend(fn(repr(x)) for x in bits.view(np.float64).tolist())
        self._out[rows] = base + inverse.reshape(-1)

    def result(self) -> pa.Array:
        key = tuple(self._values)
        values = self._arrays.get(key)
        if values is None:
            if len(self._arrays) >= _TEXT_ARRAYS:
                self._arrays.clear()
            values = self._arrays[key] = pa.array(self._values, type=pa.string())
        out = self._out
        return values.take(pa.Array.from_buffers(pa.int32(), len(out), [None, pa.py_buffer(out)]))


def _assemble(table: pa.Table, changed: Mapping[str, pa.Array], keep: np.ndarray | None) -> pa.Table:
    out = table
    schema = table.schema  # replacing a column by one of the same field keeps every position
    for name, array in changed.items():
        i = schema.get_field_index(name)
        out = out.set_column(i, schema.field(i), array)
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
