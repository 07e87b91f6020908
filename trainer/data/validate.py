"""Validation: raw chunks in, good rows out as an EventBatch, every bad row dead-lettered.

The invariant, checked by the property tests::

    rows_in == rows_good + rows_dead + rows_duplicate

Each rejected row gets the first reason that applies, in this order: could not be
parsed (reader), missing field, oversized string, unparsable time, not a number,
non-finite number, out-of-range number, unknown action, event far out of time order
(older than the latest good event by more than ``max_out_of_order_s``), duplicate
event id (against the last ``dedup_window`` good events, and within the chunk).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data import columns as C
from trainer.data.batch import EventBatch
from trainer.data.deadletter import DeadLetterWriter
from trainer.data.dedup import DedupWindow
from trainer.data.hashing import combine, hash_strings
from trainer.data.reader import RawChunk
from trainer.data.reasons import Reason
from trainer.data.spec import ColumnType, DenseTransform, FeatureSpec

_REASON_CODES = list(Reason)


@dataclasses.dataclass
class ValidationReport:
    rows_in: int = 0
    rows_good: int = 0
    rows_dead: int = 0
    rows_duplicate: int = 0
    files: int = 0
    files_unreadable: int = 0
    by_reason: Counter = dataclasses.field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_good": self.rows_good,
            "rows_dead": self.rows_dead,
            "rows_duplicate": self.rows_duplicate,
            "files": self.files,
            "files_unreadable": self.files_unreadable,
            "by_reason": dict(sorted(self.by_reason.items())),
        }

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_good + self.rows_dead + self.rows_duplicate


class Validator:
    """Turns RawChunks into EventBatches for one spec, keeping counts, watermark and dedup state."""

    def __init__(self, spec: FeatureSpec, dead_letter: DeadLetterWriter | None = None):
        self.spec = spec
        self.dead_letter = dead_letter or DeadLetterWriter(None)
        self.report = ValidationReport()
        self.dedup = DedupWindow(spec.dedup_window)
        self.watermark = -(2**62)  # latest good event time, unix seconds (none yet: far past)

    # -- public -----------------------------------------------------------------
    def process(self, chunk: RawChunk) -> EventBatch:
        rep = self.report
        for rej in chunk.rejects:
            if rej.reason is Reason.UNREADABLE_FILE:
                rep.files_unreadable += 1
            else:
                rep.rows_in += 1
                rep.rows_dead += 1
            rep.by_reason[rej.reason.value] += 1
        if chunk.rejects:
            self.dead_letter.write(chunk.source, [r.row for r in chunk.rejects], [r.reason.value for r in chunk.rejects],
                                   [r.detail for r in chunk.rejects], [r.raw for r in chunk.rejects])
        n = chunk.table.num_rows
        rep.rows_in += n
        reason = np.full(n, -1, np.int16)  # index into Reason, -1 = good
        detail = np.full(n, "", object)
        parsed = self._parse(chunk.table, reason, detail)
        self._check_order_and_duplicates(parsed, reason, detail)

        good = reason < 0
        dead = np.flatnonzero(~good)
        if len(dead):
            reasons = [_REASON_CODES[c].value for c in reason[dead]]
            self.dead_letter.write(chunk.source, chunk.rows[dead], reasons, list(detail[dead]), chunk.raw_text(dead))
            rep.by_reason.update(reasons)
            dup = int(np.count_nonzero(reason[dead] == _REASON_CODES.index(Reason.DUPLICATE)))
            rep.rows_duplicate += dup
            rep.rows_dead += len(dead) - dup
        rep.rows_good += int(good.sum())
        return self._batch(chunk, parsed, good)

    # -- parsing ----------------------------------------------------------------
    def _parse(self, table: pa.Table, reason: np.ndarray, detail: np.ndarray) -> dict[str, np.ndarray]:
        spec, n = self.spec, table.num_rows
        raw: dict[str, pa.Array] = {}
        for col in spec.columns:
            if col.source_name in table.column_names:
                raw[col.name] = C.combined(table.column(col.source_name))
            else:
                raw[col.name] = pa.nulls(n, pa.string())

        def reject(mask: np.ndarray, why: Reason, what: str) -> None:
            hit = mask & (reason < 0)
            reason[hit] = _REASON_CODES.index(why)
            detail[hit] = what

        for col in spec.columns:
            arr = raw[col.name]
            if col.required:
                reject(C.missing(arr), Reason.MISSING_FIELD, col.name)
            if C.is_nested(arr) and not pa.types.is_null(arr.type):
                reject(np.ones(n, bool), Reason.NOT_A_NUMBER if col.type is not ColumnType.STRING else Reason.MISSING_FIELD, f"{col.name}: unsupported type {arr.type}")
        for col in spec.columns:
            if col.type in (ColumnType.STRING, ColumnType.ID):
                reject(C.text_length(raw[col.name]) > col.max_len, Reason.OVERSIZED_STRING, f"{col.name} longer than {col.max_len}")

        parsed: dict[str, np.ndarray] = {}
        for col in spec.columns:
            arr = raw[col.name]
            # an optional column's empty values parse as zeros and are never rejected
            optional_gap = C.missing(arr) if not col.required else np.zeros(n, bool)
            if col.type is ColumnType.TIMESTAMP:
                values, bad = C.parse_time(arr, col.unit)
                reject(bad & ~optional_gap, Reason.UNPARSABLE_TIME, col.name)
            elif col.type is ColumnType.ID:
                values, bad = C.parse_id(arr)
                reject(bad & ~optional_gap, Reason.NOT_A_NUMBER, col.name)
            elif col.type in (ColumnType.INT, ColumnType.FLOAT):
                values, bad = C.parse_int(arr) if col.type is ColumnType.INT else C.parse_float(arr)
                reject(bad & ~optional_gap, Reason.NOT_A_NUMBER, col.name)
                if col.type is ColumnType.FLOAT:
                    reject(~np.isfinite(values) & ~optional_gap, Reason.NON_FINITE, col.name)
                with np.errstate(invalid="ignore"):
                    if col.min is not None:
                        reject((values < col.min) & ~optional_gap, Reason.OUT_OF_RANGE, f"{col.name} < {col.min}")
                    if col.max is not None:
                        reject((values > col.max) & ~optional_gap, Reason.OUT_OF_RANGE, f"{col.name} > {col.max}")
            else:  # STRING: keep the arrow array; hash for keys
                values = arr
            parsed[col.name] = values

        if spec.actions is not None:
            known = pa.array(list(spec.actions.values), pa.string())
            act = pc.utf8_trim_whitespace(pc.cast(raw[spec.actions.column], pa.string())) if not C.is_nested(raw[spec.actions.column]) else pa.nulls(n, pa.string())
            is_known = C.to_numpy(pc.fill_null(pc.is_in(act, value_set=known), False))
            reject(~is_known, Reason.UNKNOWN_ACTION, spec.actions.column)
            parsed[spec.actions.column] = act
        for f in spec.dense:
            if f.transform is DenseTransform.LOG1P:
                with np.errstate(invalid="ignore"):
                    reject(~(parsed[f.column] > -1), Reason.OUT_OF_RANGE, f"{f.column} <= -1 (log1p)")
        return parsed

    def _key(self, name: str, values) -> np.ndarray:
        col = self.spec.column_map[name]
        if col.type is ColumnType.STRING:
            return hash_strings(pc.cast(values, pa.string()) if not C.is_text(values) else values)
        if col.type is ColumnType.FLOAT:
            return np.asarray(values, np.float64).view(np.int64)
        return np.asarray(values, np.int64)

    # -- order and duplicates --------------------------------------------------------
    def _check_order_and_duplicates(self, parsed: dict, reason: np.ndarray, detail: np.ndarray) -> None:
        spec = self.spec
        if spec.event_id_column:
            parsed["__event_id"] = self._key(spec.event_id_column, parsed[spec.event_id_column])
        else:
            parsed["__event_id"] = combine([self._key(c, parsed[c]) for c in spec.event_id_derive])
        ts = parsed[spec.time_column]
        cand = np.flatnonzero(reason < 0)
        if len(cand):
            t = ts[cand]
            prefix = np.maximum.accumulate(np.concatenate([[self.watermark], t]))[:-1]
            late = t < prefix - spec.max_out_of_order_s
            reason[cand[late]] = _REASON_CODES.index(Reason.OUT_OF_ORDER)
            detail[cand[late]] = f"older than the latest event by more than {spec.max_out_of_order_s}s"
        cand = np.flatnonzero(reason < 0)
        if len(cand):
            eid = parsed["__event_id"][cand]
            _, first = np.unique(eid, return_index=True)
            repeat = np.ones(len(cand), bool)
            repeat[first] = False
            repeat |= self.dedup.contains(eid)
            reason[cand[repeat]] = _REASON_CODES.index(Reason.DUPLICATE)
            detail[cand[repeat]] = "event id seen before"
            keep = cand[~repeat]
            self.dedup.add(parsed["__event_id"][keep])
            if len(keep):
                self.watermark = max(self.watermark, int(ts[keep].max()))

    # -- output -----------------------------------------------------------------------
    def _batch(self, chunk: RawChunk, parsed: dict, good: np.ndarray) -> EventBatch:
        spec = self.spec
        idx = np.flatnonzero(good)
        ts = np.asarray(parsed[spec.time_column], np.int64)[idx]
        if spec.label.actions:
            act = parsed[spec.actions.column].take(pa.array(idx, pa.int64()))
            label = C.to_numpy(pc.fill_null(pc.is_in(act, value_set=pa.array(list(spec.label.actions))), False))
        else:
            label = np.asarray(parsed[spec.label.column], np.float64)[idx] >= spec.label.threshold
        dense = np.zeros((len(idx), len(spec.dense)), np.float32)
        for j, f in enumerate(spec.dense):
            v = parsed[f.column][idx]
            if f.transform is DenseTransform.HOUR_OF_DAY:
                dense[:, j] = (v // 3600) % 24
            elif f.transform is DenseTransform.DAY_OF_WEEK:
                dense[:, j] = (v // 86400 + 3) % 7
            elif f.transform is DenseTransform.LOG1P:
                dense[:, j] = np.log1p(np.asarray(v, np.float64))
            else:
                dense[:, j] = v
        event_id = parsed["__event_id"][idx]
        cols = {"event_id": pa.array(event_id, pa.int64())}
        take = pa.array(idx, pa.int64())
        for col in spec.columns:
            v = parsed[col.name]
            if col.type is ColumnType.STRING:
                cols[col.name] = pc.cast(v, pa.string()).take(take)
            elif col.type is ColumnType.FLOAT:
                cols[col.name] = pa.array(np.asarray(v, np.float64)[idx])
            else:
                cols[col.name] = pa.array(np.asarray(v, np.int64)[idx])
        return EventBatch(
            source=chunk.source,
            event_id=event_id,
            ts=ts,
            label=label.astype(np.float32),
            sparse={f.name: np.asarray(parsed[f.column], np.int64)[idx] for f in spec.sparse},
            dense=dense,
            rows=chunk.rows[idx],
            table=pa.table(cols),
        )
