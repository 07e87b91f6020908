"""Dynamic features of a spec (``dynamic:`` section): their state, computing them, saving them.

The state holds, per key column (``item_id``, ``user_id``, ...), one table of tracked ids::

    ids        int64 [m]        ascending
    last_ts    int64 [m]        the id's latest event time (the counts' reference time; TTL)
    counts     float64 [m, C]   decayed counts at last_ts, one column per (counter, half-life)
    seq/NAME   int64 [m, N]     last N values, right-aligned (newest at column N-1)
    len/NAME   int64 [m]        valid entries of seq/NAME

Two ways to compute features (both pure: the state changes only in :meth:`observe`):

* :meth:`annotate` (events of a data file): every event sees the state plus the batch's
  strictly earlier events of its key, in (ts, row) order: what training and progressive
  validation use.
* :meth:`lookup` (candidates to score, e.g. a serving request): every row sees the state only,
  decayed to the row's time: rows never see one another.

Features are appended to the batch: dense columns after the static ones (``log1p(count)`` per
counter and half-life, then the rates) and one jagged sparse feature per sequence.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.batch import EventBatch
from trainer.data.dynspec import DynamicSpec
from trainer.features.scan import Groups, decayed_counts, decayed_lookup, sequence_lookup, sequences

NO_TIME = np.iinfo(np.int64).min


@dataclasses.dataclass
class KeyTable:
    """The state of one key column (see the module docstring)."""

    ids: np.ndarray
    last_ts: np.ndarray
    counts: np.ndarray
    seqs: dict[str, np.ndarray]
    lens: dict[str, np.ndarray]

    @classmethod
    def empty(cls, n_counts: int, seq_lengths: dict[str, int]) -> "KeyTable":
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros((0, n_counts), np.float64),
            {s: np.zeros((0, n), np.int64) for s, n in seq_lengths.items()},
            {s: np.zeros(0, np.int64) for s in seq_lengths},
        )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"ids": self.ids, "last_ts": self.last_ts, "counts": self.counts}
        out.update({f"seq/{s}": v for s, v in self.seqs.items()})
        out.update({f"len/{s}": v for s, v in self.lens.items()})
        return out

    def take(self, keep: np.ndarray) -> "KeyTable":
        return KeyTable(
            self.ids[keep],
            self.last_ts[keep],
            self.counts[keep],
            {s: v[keep] for s, v in self.seqs.items()},
            {s: v[keep] for s, v in self.lens.items()},
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


@dataclasses.dataclass(frozen=True)
class _Column:
    counter: int  # index into spec.counters
    half_life: float


class DynamicFeatures:
    """The dynamic features of one spec (see the module docstring).

    >>> dyn = DynamicFeatures(load_spec("taobao_dynamic"))          # doctest: +SKIP
    >>> batch = dyn.annotate(raw)      # events: state + earlier events of the batch   # doctest: +SKIP
    >>> dyn.observe(raw)               # fold the batch's events into the state        # doctest: +SKIP
    >>> dyn.lookup(candidates)         # rows scored against the state only            # doctest: +SKIP
    """

    def __init__(self, spec) -> None:
        if spec.dynamic is None:
            raise ValueError(f"spec {spec.name} declares no dynamic features")
        self.spec = spec
        self.d: DynamicSpec = spec.dynamic
        self.n_static = len(spec.dense)
        self.n_dense = len(self.d.dense_names)
        self._cols: dict[str, list[_Column]] = {k: [] for k in self.d.keys}
        for i, c in enumerate(self.d.counters):
            self._cols[c.key] += [_Column(i, h) for h in c.half_lives]
        self._seqs = {k: {s.name: s.length for s in self.d.sequences if s.key == k} for k in self.d.keys}
        self.tables = {k: KeyTable.empty(len(self._cols[k]), self._seqs[k]) for k in self.d.keys}
        self.watermark = NO_TIME  # the latest event time observed
        self._pending: tuple[object, dict] | None = None  # (event_id array, new tables) of the last annotate

    # ---------------------------------------------------------------- inputs
    def _ids(self, batch: EventBatch, column: str) -> np.ndarray:
        return np.asarray(batch.sparse[self.d.sparse_column(self.spec, column)], np.int64)

    def _mask(self, batch: EventBatch, actions: tuple[str, ...], positive: bool) -> np.ndarray:
        n = len(batch)
        if positive:
            return np.asarray(batch.label) > 0.5
        if actions:
            col = self.spec.actions.column
            if col not in batch.table.column_names:
                raise ValueError(
                    f"dynamic features need the action column {col!r} of every event; the batch has "
                    f"{batch.table.column_names}"
                )
            return np.asarray(
                pc.fill_null(pc.is_in(batch.table[col], value_set=pa.array(list(actions))), False).to_numpy(
                    zero_copy_only=False
                ),
                bool,
            )
        return np.ones(n, bool)

    def is_annotated(self, batch: EventBatch) -> bool:
        """True when ``batch`` already carries the dynamic features (dense width and sequences)."""
        return batch.dense.shape[1] == self.n_static + self.n_dense and all(
            s.name in batch.sparse for s in self.d.sequences
        )

    # --------------------------------------------------------------- compute
    def annotate(self, batch: EventBatch) -> EventBatch:
        """The batch's events with their features from the state and strictly earlier events of the
        batch (the state is unchanged; :meth:`observe` after it folds the events in cheaply)."""
        out, tables = self._events(batch)
        self._pending = (batch.event_id, tables)
        return out

    def observe(self, batch: EventBatch) -> None:
        """Fold the batch's events into the state (after :meth:`annotate` of the same batch: no recompute),
        then drop ids older than ``ttl_s`` and beyond ``max_ids``."""
        if len(batch) == 0:
            return
        if self._pending is not None and self._pending[0] is batch.event_id:
            tables = self._pending[1]
        else:
            tables = self._events(batch)[1]
        self._pending = None
        self.watermark = max(self.watermark, int(batch.ts.max()))
        self.tables = {k: self._bound(t) for k, t in tables.items()}

    def process(self, batch: EventBatch) -> EventBatch:
        """:meth:`annotate` then :meth:`observe`: a data file's features, and the state moved past it."""
        out = self.annotate(batch)
        self.observe(batch)
        return out

    def _events(self, batch: EventBatch) -> tuple[EventBatch, dict[str, KeyTable]]:
        n = len(batch)
        ts = np.asarray(batch.ts, np.int64)
        dense = np.zeros((n, self.n_dense), np.float64)
        raw_counts: dict[int, np.ndarray] = {}  # counter index -> decayed counts [n, H]
        seq_out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tables: dict[str, KeyTable] = {}
        for key in self.d.keys:
            t = self.tables[key]
            keys = self._ids(batch, key)
            g = Groups.of(keys, ts)
            pos = np.searchsorted(t.ids, g.uniq)
            found = (
                (pos < len(t.ids)) & (t.ids[np.minimum(pos, max(len(t.ids) - 1, 0))] == g.uniq)
                if len(t.ids)
                else np.zeros(len(g.uniq), bool)
            )
            first_ts = ts[g.order[g.start]] if n else np.zeros(0, np.int64)
            cur = np.zeros((len(g.uniq), len(self._cols[key])), np.float64)
            tref = first_ts.copy()
            cur[found] = t.counts[pos[found]]
            tref[found] = t.last_ts[pos[found]]
            cols = self._cols[key]
            new_seqs, new_lens = {}, {}
            if cols:
                masks = {
                    ci: self._mask(batch, self.d.counters[ci].actions, self.d.counters[ci].positive)
                    for ci in dict.fromkeys(c.counter for c in cols)
                }
                x = np.stack([masks[c.counter] for c in cols], axis=1).astype(np.float64)
                half = np.array([c.half_life for c in cols], np.float64)
                values, cur, tref = decayed_counts(g, ts, x, half, cur, tref)
                for ci in masks:
                    raw_counts[ci] = values[:, [j for j, c in enumerate(cols) if c.counter == ci]]
            else:  # sequences only: the reference time is the latest event time
                last = ts[g.order[g.start + g.count - 1]] if n else np.zeros(0, np.int64)
                tref = np.maximum(tref, last)
            for s in (s for s in self.d.sequences if s.key == key):
                saved = np.zeros((len(g.uniq), s.length), np.int64)
                saved_len = np.zeros(len(g.uniq), np.int64)
                saved[found] = t.seqs[s.name][pos[found]]
                saved_len[found] = t.lens[s.name][pos[found]]
                mask = self._mask(batch, s.actions, s.positive)
                vals, lens, new_seqs[s.name], new_lens[s.name] = sequences(
                    g, mask, self._ids(batch, s.column), s.length, saved, saved_len
                )
                seq_out[s.name] = (vals, lens)
            tables[key] = _merge(t, g.uniq, pos, found, tref, cur, new_seqs, new_lens)
        return self._attach(batch, self._dense(raw_counts, dense), seq_out), tables

    def lookup(self, batch: EventBatch) -> EventBatch:
        """Rows scored against the state only, decayed to each row's ``ts`` (rows never see each other)."""
        n = len(batch)
        ts = np.asarray(batch.ts, np.int64)
        raw_counts: dict[int, np.ndarray] = {}
        seq_out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key in self.d.keys:
            t = self.tables[key]
            keys = self._ids(batch, key)
            pos = np.minimum(np.searchsorted(t.ids, keys), max(len(t.ids) - 1, 0))
            found = (t.ids[pos] == keys) if len(t.ids) else np.zeros(n, bool)
            cols = self._cols[key]
            if cols:
                counts = np.zeros((n, len(cols)), np.float64)
                half = np.array([c.half_life for c in cols], np.float64)
                counts[found] = decayed_lookup(t.counts[pos[found]], t.last_ts[pos[found]], ts[found], half)
                for ci in dict.fromkeys(c.counter for c in cols):
                    raw_counts[ci] = counts[:, [j for j, c in enumerate(cols) if c.counter == ci]]
            for s in (s for s in self.d.sequences if s.key == key):
                saved = np.zeros((n, s.length), np.int64)
                lens = np.zeros(n, np.int64)
                saved[found] = t.seqs[s.name][pos[found]]
                lens[found] = t.lens[s.name][pos[found]]
                seq_out[s.name] = sequence_lookup(saved, lens)
        return self._attach(batch, self._dense(raw_counts, np.zeros((n, self.n_dense), np.float64)), seq_out)

    def _dense(self, raw: dict[int, np.ndarray], out: np.ndarray) -> np.ndarray:
        j = 0
        for i, c in enumerate(self.d.counters):
            out[:, j : j + len(c.half_lives)] = np.log1p(raw[i])
            j += len(c.half_lives)
        by = {c.name: i for i, c in enumerate(self.d.counters)}
        for r in self.d.rates:
            num_c, den_c = self.d.counters[by[r.numerator]], self.d.counters[by[r.denominator]]
            for h in self.d.rate_half_lives(r):
                num = raw[by[r.numerator]][:, num_c.half_lives.index(h)]
                den = raw[by[r.denominator]][:, den_c.half_lives.index(h)]
                out[:, j] = (num + r.prior * r.strength) / (den + r.strength)
                j += 1
        return out.astype(np.float32)

    def _attach(self, batch: EventBatch, dense: np.ndarray, seqs: dict) -> EventBatch:
        static = batch.dense[:, : self.n_static]
        sparse, lengths = dict(batch.sparse), dict(batch.lengths)
        for name, (vals, lens) in seqs.items():
            sparse[name], lengths[name] = vals, lens
        return dataclasses.replace(batch, dense=np.concatenate([static, dense], axis=1), sparse=sparse, lengths=lengths)

    # ------------------------------------------------------------- bounding
    def _bound(self, t: KeyTable) -> KeyTable:
        keep = t.last_ts >= self.watermark - self.d.ttl_s
        if not keep.all():
            t = t.take(keep)
        cap = self.d.max_ids
        if cap is not None and len(t.ids) > cap:  # keep the most recently seen (ties: the larger id)
            newest = np.sort(np.lexsort((t.ids, t.last_ts))[-cap:])
            t = t.take(newest)
        return t

    # ---------------------------------------------------------------- state
    def stats(self) -> dict[str, dict[str, float]]:
        """Per key column: tracked ids, bytes, bytes per tracked id."""
        out = {}
        for k, t in self.tables.items():
            out[k] = {
                "ids": len(t.ids),
                "bytes": t.nbytes,
                "bytes_per_id": t.nbytes / len(t.ids) if len(t.ids) else float(self.bytes_per_id(k)),
            }
        return out

    def bytes_per_id(self, key: str) -> int:
        """What one tracked id of ``key`` costs in the state (and in a version part)."""
        return 8 + 8 + 8 * len(self._cols[key]) + sum(8 * n + 8 for n in self._seqs[key].values())

    def export(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, meta) for the version's dynamic-feature part (:mod:`trainer.bundle`; copies: training may go on)."""
        arrays = {
            f"{k}/{name}": np.array(v, copy=True) for k, t in self.tables.items() for name, v in t.arrays().items()
        }
        arrays["watermark"] = np.array([self.watermark], np.int64)
        meta = {
            "keys": list(self.d.keys),
            "columns": {k: len(c) for k, c in self._cols.items()},
            "sequences": {k: dict(v) for k, v in self._seqs.items()},
            "stats": self.stats(),
        }
        return arrays, meta

    def load(self, arrays, meta) -> None:
        """Restore what :meth:`export` gave; refuses a state of a different declaration."""
        want = {
            "keys": list(self.d.keys),
            "columns": {k: len(c) for k, c in self._cols.items()},
            "sequences": {k: dict(v) for k, v in self._seqs.items()},
        }
        got = {k: meta.get(k) for k in want}
        if got != want:
            raise ValueError(
                f"the saved dynamic-feature state was declared differently ({got}) from this spec's "
                f"dynamic section ({want}): serve or resume it with the spec it was trained with"
            )
        tables = {}
        for k in self.d.keys:
            a = {name[len(k) + 1 :]: np.asarray(v) for name, v in arrays.items() if name.startswith(k + "/")}
            tables[k] = KeyTable(
                a["ids"].astype(np.int64),
                a["last_ts"].astype(np.int64),
                a["counts"].astype(np.float64).reshape(len(a["ids"]), len(self._cols[k])),
                {s: a[f"seq/{s}"].astype(np.int64).reshape(len(a["ids"]), n) for s, n in self._seqs[k].items()},
                {s: a[f"len/{s}"].astype(np.int64) for s in self._seqs[k]},
            )
        self.tables = tables
        self.watermark = int(np.asarray(arrays["watermark"])[0])
        self._pending = None

    def copy(self) -> "DynamicFeatures":
        out = copy.copy(self)
        out.tables = {
            k: KeyTable(**{f.name: copy.deepcopy(getattr(t, f.name)) for f in dataclasses.fields(t)})
            for k, t in self.tables.items()
        }
        out._pending = None
        return out

    def state_dict(self) -> dict:
        arrays, _ = self.export()
        return arrays


def _merge(t: KeyTable, uniq, pos, found, tref, cur, seqs, lens) -> KeyTable:
    """A new table: the batch's groups updated (found) and inserted (new), ids ascending (``t`` unchanged)."""
    new = ~found
    k = int(new.sum())
    m = len(t.ids)
    if k:
        at = pos[new]  # insertion points (uniq is ascending): new id i lands at at[i] + i
        moved = np.arange(m) + np.searchsorted(at, np.arange(m), side="right")  # old row i lands here

        slots = at + np.arange(k)

        def grow(old: np.ndarray, rows: np.ndarray) -> np.ndarray:
            out = np.empty((m + k,) + old.shape[1:], old.dtype)
            out[moved] = old
            out[slots] = rows
            return out

        p = moved[pos[found]]
    else:

        def grow(old: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return old.copy()

        p = pos[found]
    ids = grow(t.ids, uniq[new])
    last_ts = grow(t.last_ts, tref[new])
    last_ts[p] = tref[found]
    counts = grow(t.counts, cur[new]) if t.counts.shape[1] else np.zeros((m + k, 0), np.float64)
    if t.counts.shape[1]:
        counts[p] = cur[found]
    s_out, l_out = {}, {}
    for s in t.seqs:
        s_out[s] = grow(t.seqs[s], seqs[s][new])
        s_out[s][p] = seqs[s][found]
        l_out[s] = grow(t.lens[s], lens[s][new])
        l_out[s][p] = lens[s][found]
    return KeyTable(ids, last_ts, counts, s_out, l_out)
