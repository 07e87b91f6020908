"""Validation: raw chunks in, good rows out as an EventBatch, every bad row dead-lettered.

The invariant, per file and in total, checked by the property tests::

    rows_in == rows_good + rows_dead + rows_duplicate + rows_late

Each rejected row gets the first reason that applies, in this order: could not be
parsed (reader), then the column reasons of :mod:`trainer.data.parse` (control
characters, missing field, oversized string, too many items, malformed id, unparsable
time, time out of range, not a number, non-finite, out of range), unknown action,
duplicate event id (against the dedup window, and within the chunk), future event,
late event.

Order is never a reason to reject a row in batch mode (the default): ``data split``
sorts by time. With ``stream=True`` (a trainer following data files as they land) an
event older than the watermark (the latest good event time so far) minus
``lateness.allowed_s`` is late: under ``policy: defer`` it is held back, counted in
``rows_late``, and handed to the consumer with the next data file
(:meth:`Validator.take_late`, which :func:`trainer.data.read_data_file` calls first);
under ``policy: dead_letter`` it is dead-lettered with reason ``late event``. An event more
than ``lateness.max_future_s`` ahead of both the watermark and the wall clock is dead-lettered
with reason ``future event`` and never moves the watermark.

The dedup window remembers the ids of good events, bounded by count (``dedup_window``) and,
in a stream, by time (ids of events older than the watermark minus ``dedup_horizon_s`` are
forgotten). ``event_id: row`` specs (criteo) have no event ids and no duplicate detection:
their exactly-once rests on the ledger alone (a file's rows are taken once, a resumed run
starts after the rows a version took, see :meth:`Validator.start_file`).

The stream's state (dedup window, watermark, row ordinal, deferred late rows) is saved with
every model version and restored with it (:mod:`trainer.data.state`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data import columns as C
from trainer.data import storage
from trainer.data.batch import EventBatch
from trainer.data.counts import FileReport, ValidationReport
from trainer.data.deadletter import DeadLetterWriter
from trainer.data.dedup import DedupWindow
from trainer.data.hashing import combine, hash_strings
from trainer.data.parse import REASON_CODES, Jagged, Rejections, parse_columns, take_value, to_arrow
from trainer.data.reader import RawChunk
from trainer.data.reasons import Reason
from trainer.data.sidetable import LoadedSideTable, load_side_table, resolve_path
from trainer.data.spec import ColumnType, DenseTransform, FeatureSpec, LatePolicy

_DUP = REASON_CODES.index(Reason.DUPLICATE)
MAX_FILE_REPORTS = 10_000  # per-file reports kept in ValidationReport.per_file (the latest), a batch run
STREAM_FILE_REPORTS = 64  # the same in a stream (issue 21: a week-long run keeps the latest only)


class Validator:
    """Turns RawChunks into EventBatches for one spec, keeping counts, watermark, dedup state
    and (in a stream) the late rows deferred to the next data file.

    ``side_tables`` overrides where a side table is read from: ``{"items": "/data/items.tsv"}``.
    """

    def __init__(
        self,
        spec: FeatureSpec,
        dead_letter: DeadLetterWriter | None = None,
        stream: bool = False,
        side_tables: dict[str, str] | None = None,
    ):
        self.spec = spec
        self.dead_letter = dead_letter or DeadLetterWriter(None)
        self.stream = stream
        self.report = ValidationReport()
        self.dedup = DedupWindow(spec.dedup_window)
        self.watermark = -(2**62)  # latest good event time, unix seconds (none yet: far past)
        self.last_file: FileReport | None = None
        self._file: FileReport | None = None
        self._late: list[EventBatch] = []
        self._ordinal = 0  # time: row_order -> the next row's ordinal
        self._skip = 0  # rows of the current file still to skip (taken by an earlier, partial read)
        self.clock = time.time  # the wall clock (time sanity); tests may pin it
        self._side_paths = dict(side_tables or {})
        self._side: dict[str, LoadedSideTable] = {}

    # -- files ------------------------------------------------------------------------
    def start_file(self, name: str, skip_rows: int = 0) -> FileReport:
        """Begin a file's report; ``skip_rows``: its first rows were taken by an earlier read that stopped
        part-way (the ledger's position), so they are passed over, uncounted."""
        if self._file is not None:
            self.finish_file()
        self.report.files += 1
        self._file = FileReport(str(name))
        self._skip = int(skip_rows)
        return self._file

    def finish_file(self) -> FileReport | None:
        """Close the current file's report (adds its warnings); it becomes ``last_file``."""
        f, self._file = self._file, None
        if f is not None:
            f.finish()
            self.report.add(f, STREAM_FILE_REPORTS if self.stream else MAX_FILE_REPORTS)
            self.last_file = f
        return f

    def take_late(self) -> EventBatch | None:
        """The late rows deferred so far (stream, policy defer), to train with the next data
        file; None if there are none. They are counted in ``rows_late`` of the file they came from."""
        late, self._late = self._late, []
        return EventBatch.concat(late) if late else None

    # -- public -----------------------------------------------------------------
    def process(self, chunk: RawChunk) -> EventBatch:
        if self._file is None:
            self.start_file(chunk.source)
        if self._skip:
            chunk = self._skip_taken(chunk)
        rep, frep = self.report, self._file
        rows_rej = [r for r in chunk.rejects if r.row > 0]
        for rej in chunk.rejects:
            if rej.row == 0:  # the whole file
                rep.files_unreadable += 1
                if rej.reason is Reason.HEADER_MISMATCH:
                    frep.error = rej.detail
                else:
                    frep.unreadable = rej.detail
            rep.by_reason[rej.reason.value] += 1
            frep.by_reason[rej.reason.value] += 1
        self._count(len(rows_rej), dead=len(rows_rej))
        if chunk.rejects:
            self.dead_letter.write(
                chunk.source,
                [r.row for r in chunk.rejects],
                [r.reason.value for r in chunk.rejects],
                [r.detail for r in chunk.rejects],
                [r.raw for r in chunk.rejects],
            )
        n = chunk.table.num_rows
        rej = Rejections(n)
        parsed, missing = self._parse(chunk, rej)
        late = self._order_and_duplicates(chunk, parsed, rej)

        dead = np.flatnonzero(~rej.good)
        dup = 0
        if len(dead):
            reasons = [REASON_CODES[c].value for c in rej.code[dead]]
            self.dead_letter.write(
                chunk.source, chunk.rows[dead], reasons, list(rej.detail[dead]), chunk.raw_text(dead)
            )
            rep.by_reason.update(reasons)
            frep.by_reason.update(reasons)
            dup = int(np.count_nonzero(rej.code[dead] == _DUP))
        good = rej.good & ~late
        batch = self._batch(chunk, parsed, missing, good)
        self._count(n, good=int(good.sum()), dead=len(dead) - dup, dup=dup, late=int(late.sum()))
        frep.positives += int((batch.label > 0.5).sum())
        if late.any():
            self._late.append(self._batch(chunk, parsed, missing, late))
        return batch

    def _skip_taken(self, chunk: RawChunk) -> RawChunk:
        """The chunk without the rows an earlier partial read took (the first ``self._skip`` rows)."""
        numbers = np.sort(np.concatenate([chunk.rows, np.array([r.row for r in chunk.rejects if r.row > 0], np.int64)]))
        k = min(self._skip, len(numbers))
        if k == 0:
            return chunk
        self._skip -= k
        last = numbers[k - 1]
        keep = np.flatnonzero(chunk.rows > last)
        table = chunk.table.take(pa.array(keep, pa.int64()))
        raw = chunk.raw_text
        return dataclasses.replace(
            chunk,
            table=table,
            rows=chunk.rows[keep],
            rejects=[r for r in chunk.rejects if r.row == 0 or r.row > last],
            raw_text=lambda index, raw=raw, keep=keep: raw(keep[index]),
        )

    def _count(self, rows_in: int, good: int = 0, dead: int = 0, dup: int = 0, late: int = 0) -> None:
        for r in (self.report, self._file):
            r.rows_in += rows_in
            r.rows_good += good
            r.rows_dead += dead
            r.rows_duplicate += dup
            r.rows_late += late

    # -- parsing ----------------------------------------------------------------
    def _parse(self, chunk: RawChunk, rej: Rejections) -> tuple[dict, dict]:
        spec, table, n = self.spec, chunk.table, chunk.table.num_rows
        parsed, missing = parse_columns(table, spec.columns, spec.null_tokens, rej)
        for side in spec.side_tables:
            present = all(c.name in table.column_names for c in side.joined)
            if present or n == 0:  # a data file written by split carries the joined columns
                p, m = parse_columns(table, side.joined, spec.null_tokens, rej)
            else:
                p, m = self._side_table(side, chunk.source).join(parsed[side.on])
            parsed.update(p)
            missing.update(m)
        if spec.actions is not None:
            raw = (
                table.column(spec.column_map[spec.actions.column].source_name)
                if spec.column_map[spec.actions.column].source_name in table.column_names
                else pa.nulls(n, pa.string())
            )
            raw = C.combined(raw)
            act = (
                pc.utf8_trim_whitespace(pc.cast(raw, pa.string())) if not C.is_nested(raw) else pa.nulls(n, pa.string())
            )
            known = pa.array(list(spec.actions.values), pa.string())
            rej(
                ~C.to_numpy(pc.fill_null(pc.is_in(act, value_set=known), False)),
                Reason.UNKNOWN_ACTION,
                spec.actions.column,
            )
            parsed[spec.actions.column] = act
        return parsed, missing

    def _side_table(self, side, source: str) -> LoadedSideTable:
        if side.name not in self._side:
            path = resolve_path(side, source, self.spec.spec_dir, self._side_paths.get(side.name))
            loaded = self._side[side.name] = load_side_table(side, path, self.dead_letter)
            if loaded.warning and self._file is not None:
                self._file.warnings.append(loaded.warning)
        return self._side[side.name]

    def _key(self, name: str, values) -> np.ndarray:
        col = self.spec.column_map[name]
        if col.type is ColumnType.STRING:
            return hash_strings(pc.cast(values, pa.string()) if not C.is_text(values) else values)
        if col.type is ColumnType.FLOAT:
            return np.asarray(values, np.float64).view(np.int64)
        return np.asarray(values, np.int64)

    # -- order and duplicates --------------------------------------------------------
    def _order_and_duplicates(self, chunk: RawChunk, parsed: dict, rej: Rejections) -> np.ndarray:
        """Mark duplicates (and, in a stream, late rows); return the deferred-late mask."""
        spec, n = self.spec, chunk.table.num_rows
        if spec.row_order:
            parsed["__ts"] = self._ordinal + np.arange(n, dtype=np.int64)
            self._ordinal += n
        else:
            parsed["__ts"] = np.asarray(parsed[spec.time_column], np.int64)
        if spec.event_id_column:
            parsed["__event_id"] = self._key(spec.event_id_column, parsed[spec.event_id_column])
        elif spec.event_id_derive:
            parsed["__event_id"] = combine([self._key(c, parsed[c]) for c in spec.event_id_derive])
        else:  # event_id: row -> the file's name and the row number
            name = hash_strings(pa.array([storage.base_name(chunk.source)]))[0]
            parsed["__event_id"] = combine([np.full(n, name, np.int64), chunk.rows])
        late = np.zeros(n, bool)
        cand = np.flatnonzero(rej.good)
        timed = self.stream and not spec.row_order
        if len(cand) and timed:  # time sanity before anything remembers the event
            limit = max(self.watermark, int(self.clock())) + spec.lateness.max_future_s
            future = parsed["__ts"][cand] > limit
            if future.any():
                rej(
                    _mask(n, cand[future]),
                    Reason.FUTURE,
                    f"more than {spec.lateness.max_future_s}s ahead of the watermark and the wall clock",
                )
                cand = cand[~future]
        if len(cand) and not spec.event_id_row:
            eid = parsed["__event_id"][cand]
            _, first = np.unique(eid, return_index=True)
            repeat = np.ones(len(cand), bool)
            repeat[first] = False
            repeat |= self.dedup.contains(eid)
            rej(_mask(n, cand[repeat]), Reason.DUPLICATE, "event id seen before")
            fresh = cand[~repeat]
            self.dedup.add(parsed["__event_id"][fresh], parsed["__ts"][fresh])
        cand = np.flatnonzero(rej.good)
        if len(cand) and timed:
            ts = parsed["__ts"][cand]
            prefix = np.maximum.accumulate(np.concatenate([[self.watermark], ts]))[:-1]
            is_late = ts < prefix - spec.lateness.allowed_s
            if spec.lateness.policy is LatePolicy.DEAD_LETTER:
                rej(
                    _mask(n, cand[is_late]),
                    Reason.LATE,
                    f"older than the watermark by more than {spec.lateness.allowed_s}s",
                )
            else:
                late[cand[is_late]] = True
            on_time = cand[~is_late]
            if len(on_time):
                self.watermark = max(self.watermark, int(parsed["__ts"][on_time].max()))
            if not spec.event_id_row:  # the time bound of the dedup window
                self.dedup.forget(self.watermark - spec.dedup_horizon_s)
        elif len(cand) and not spec.row_order:
            self.watermark = max(self.watermark, int(parsed["__ts"][cand].max()))
        return late

    # -- output -----------------------------------------------------------------------
    def _batch(self, chunk: RawChunk, parsed: dict, missing: dict, keep: np.ndarray) -> EventBatch:
        spec = self.spec
        idx = np.flatnonzero(keep)
        ts = parsed["__ts"][idx]
        if spec.label.actions:
            act = parsed[spec.actions.column].take(pa.array(idx, pa.int64()))
            label = C.to_numpy(pc.fill_null(pc.is_in(act, value_set=pa.array(list(spec.label.actions))), False))
        else:
            label = np.asarray(parsed[spec.label.column], np.float64)[idx] >= spec.label.threshold
        dense = np.zeros((len(idx), len(spec.dense)), np.float32)
        for j, f in enumerate(spec.dense):
            dense[:, j] = dense_values(f, parsed[f.column], missing.get(f.column), idx)
        event_id = parsed["__event_id"][idx]
        everything = len(idx) == len(keep)  # the usual case: no copies

        def rows(value):
            return value if everything else take_value(value, idx)

        cols = {"event_id": pa.array(event_id, pa.int64())}
        gaps = {}
        for col in spec.column_map.values():
            cols[col.name] = to_arrow(col, rows(parsed[col.name]))
            m = missing.get(col.name)
            if m is not None and not col.required and (m := m[idx]).any():
                gaps[col.name] = m
        sparse, lengths = {}, {}
        for f in spec.sparse:
            v = rows(parsed[f.column])
            if isinstance(v, Jagged):
                sparse[f.name], lengths[f.name] = v.values, v.lengths
            else:
                sparse[f.name] = np.asarray(v, np.int64)
        return EventBatch(
            source=chunk.source,
            event_id=event_id,
            ts=ts,
            label=label.astype(np.float32),
            sparse=sparse,
            dense=dense,
            rows=chunk.rows[idx],
            table=pa.table(cols),
            lengths=lengths,
            missing=gaps,
        )


def _mask(n: int, index: np.ndarray) -> np.ndarray:
    m = np.zeros(n, bool)
    m[index] = True
    return m


def dense_values(f, values, missing: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """One dense feature for rows ``idx`` (see DenseTransform); never rejects a row."""
    if f.transform is DenseTransform.MISSING:
        return missing[idx].astype(np.float32) if missing is not None else np.zeros(len(idx), np.float32)
    v = np.asarray(values)[idx]
    if f.transform is DenseTransform.HOUR_OF_DAY:
        return (v // 3600) % 24
    if f.transform is DenseTransform.DAY_OF_WEEK:
        return (v // 86400 + 3) % 7
    x = v.astype(np.float64) + f.shift
    if f.clip_min is not None or f.clip_max is not None:
        x = np.clip(
            x, f.clip_min if f.clip_min is not None else -np.inf, f.clip_max if f.clip_max is not None else np.inf
        )
    if f.transform is DenseTransform.LOG1P:
        return np.log1p(np.maximum(x, 0.0))
    if f.transform is DenseTransform.BUCKETIZE:
        return np.searchsorted(np.asarray(f.boundaries, np.float64), x, side="right").astype(np.float64)
    return x
