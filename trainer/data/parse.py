"""Raw columns -> typed values for a list of ColumnSpecs, rejecting bad rows with a reason.

Used for events (by the Validator) and for side tables. Each row gets the first reason
that applies, in this order: control characters, missing field, oversized string, too
many items, malformed id, unparsable time, time out of range, not a number, non-finite
number, out-of-range number. Values:

=============================  ===================================================
column type                    parsed value
=============================  ===================================================
id, int_id, string_id, int     int64 [n]
float                          float64 [n]
timestamp                      int64 [n] unix seconds
string                         pyarrow string array [n]
id_list                        Jagged(values int64 [sum(lengths)], lengths int64 [n])
=============================  ===================================================

A missing field (null, blank, or a null token) of an optional column takes the column's
``fill`` (0, "" or the empty list by default); ``missing[name]`` marks where.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data import columns as C
from trainer.data.hashing import hash_strings
from trainer.data.reasons import Reason
from trainer.data.spec import ID_TYPES, ColumnSpec, ColumnType, describe_time

REASON_CODES = list(Reason)


@dataclasses.dataclass(frozen=True)
class Jagged:
    values: np.ndarray  # int64, ids of row 0, then row 1, ...
    lengths: np.ndarray  # int64 [n]

    def take(self, index: np.ndarray) -> "Jagged":
        return Jagged(*C.jagged_take(self.values, self.lengths, index))

    def to_arrow(self) -> pa.Array:
        offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(
            np.int32 if self.lengths.sum() < 2**31 else np.int64
        )
        cls = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
        return cls.from_arrays(pa.array(offsets), pa.array(self.values, pa.int64()))


class Rejections:
    """The first reason (and a detail) per row; -1 = good so far."""

    def __init__(self, n: int):
        self.code = np.full(n, -1, np.int16)
        self.detail = np.full(n, "", object)

    def __call__(self, mask: np.ndarray, why: Reason, what: str) -> None:
        hit = np.asarray(mask, bool) & (self.code < 0)
        if hit.any():
            self.code[hit] = REASON_CODES.index(why)
            self.detail[hit] = what

    @property
    def good(self) -> np.ndarray:
        return self.code < 0


def raw_column(table: pa.Table, col: ColumnSpec) -> pa.Array:
    if col.source_name in table.column_names:
        return C.combined(table.column(col.source_name))
    if col.name in table.column_names:
        return C.combined(table.column(col.name))
    return pa.nulls(table.num_rows, pa.string())


def parse_columns(
    table: pa.Table, columns: tuple[ColumnSpec, ...], null_tokens: tuple[str, ...], reject: Rejections
) -> tuple[dict, dict[str, np.ndarray]]:
    """(parsed values by column name, missing mask by column name); bad rows go to ``reject``."""
    n = table.num_rows
    raw = {c.name: raw_column(table, c) for c in columns}
    miss = {}
    for col in columns:
        arr = raw[col.name]
        reject(C.has_control(arr, strict=col.type is ColumnType.STRING_ID), Reason.CONTROL_CHARACTERS, col.name)
        if C.is_list(arr) and col.type is ColumnType.ID_LIST:
            miss[col.name] = ~C.to_numpy(arr.is_valid())
        else:
            miss[col.name] = C.missing(arr, null_tokens)
    for col in columns:
        if col.required:
            reject(miss[col.name], Reason.MISSING_FIELD, col.name)
    parsed: dict = {}
    for col in columns:
        parsed[col.name] = _parse_one(col, raw[col.name], miss[col.name], reject, n)
    return parsed, miss


def _parse_one(col: ColumnSpec, arr: pa.Array, gap: np.ndarray, reject: Rejections, n: int):
    t = col.type
    if t is ColumnType.ID_LIST:
        p = C.parse_id_list(arr, col.separator)
        reject(p.bad & ~gap, Reason.MALFORMED_ID, f"{col.name}: an element is not an id")
        reject((p.lengths > col.max_items) & ~gap, Reason.TOO_MANY_ITEMS, f"{col.name}: more than {col.max_items} ids")
        reject(
            (p.longest > col.max_len) & ~gap, Reason.OVERSIZED_STRING, f"{col.name}: an id longer than {col.max_len}"
        )
        if gap.any():  # a missing list (or a null token) is the empty list
            lengths = np.where(gap, 0, p.lengths)
            values = p.values[np.repeat(~gap, p.lengths)]
            return Jagged(values, lengths)
        return Jagged(p.values, p.lengths)
    if C.is_nested(arr) and not pa.types.is_null(arr.type):
        reject(
            ~gap,
            Reason.MALFORMED_ID if t in ID_TYPES else Reason.NOT_A_NUMBER,
            f"{col.name}: unsupported type {arr.type}",
        )
        return np.zeros(n, np.int64) if t is not ColumnType.STRING else pa.nulls(n, pa.string())
    if t in (ColumnType.STRING, ColumnType.ID, ColumnType.STRING_ID):
        reject(C.text_length(arr) > col.max_len, Reason.OVERSIZED_STRING, f"{col.name} longer than {col.max_len}")
    if t is ColumnType.STRING:
        fill = col.fill if col.fill is not None else ""
        text = pc.cast(arr, pa.string()) if not C.is_text(arr) else arr
        return pc.if_else(pa.array(gap), pa.scalar(fill, text.type), text) if gap.any() else text
    fill = fill_value(col)
    if t is ColumnType.TIMESTAMP:
        values, bad = C.parse_time(arr, col.unit, col.format)
        reject(
            bad & ~gap,
            Reason.UNPARSABLE_TIME,
            f"{col.name}: not a time in layout {col.format}"
            if col.format
            else f"{col.name}: not a number nor ISO-8601 time",
        )
        lo, hi = col.time_range
        out = ~bad & ~gap & ((values < lo) | (values >= hi))
        reject(
            out,
            Reason.TIME_OUT_OF_RANGE,
            f"{col.name} outside {describe_time(lo)}..{describe_time(hi)} read as unit '{col.unit}': "
            "is the unit right (s, ms, us)?",
        )
    elif t in ID_TYPES:
        if t is ColumnType.ID:
            values, bad = C.parse_id(arr)
        elif t is ColumnType.INT_ID:
            values, bad = C.parse_int(arr)
        else:
            values, bad = C.parse_string_id(arr)
        what = {
            ColumnType.ID: "not an id",
            ColumnType.INT_ID: "not a decimal int64 (up to 18 digits)",
            ColumnType.STRING_ID: "not a text id",
        }[t]
        reject(bad & ~gap, Reason.MALFORMED_ID, f"{col.name}: {what}")
    else:  # INT, FLOAT
        values, bad = C.parse_int(arr) if t is ColumnType.INT else C.parse_float(arr)
        reject(bad & ~gap, Reason.NOT_A_NUMBER, col.name)
        if t is ColumnType.FLOAT:
            reject(~np.isfinite(values) & ~gap, Reason.NON_FINITE, col.name)
        with np.errstate(invalid="ignore"):
            if col.min is not None:
                reject((values < col.min) & ~gap, Reason.OUT_OF_RANGE, f"{col.name} < {col.min}")
            if col.max is not None:
                reject((values > col.max) & ~gap, Reason.OUT_OF_RANGE, f"{col.name} > {col.max}")
    if gap.any():
        values = np.where(gap, np.asarray(fill, values.dtype), values)
    return values


def fill_value(col: ColumnSpec):
    """What a missing field of an optional column becomes: its ``fill`` (a string id's fill
    hashed like any string id), else 0 or the empty text."""
    if col.type is ColumnType.STRING:
        return col.fill if col.fill is not None else ""
    if col.fill is None:
        return 0
    if isinstance(col.fill, str):
        return int(hash_strings(pa.array([col.fill.strip()]))[0])
    return col.fill


def take_value(value, index: np.ndarray):
    """Rows ``index`` of a parsed value (numpy, arrow or Jagged)."""
    if isinstance(value, Jagged):
        return value.take(index)
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        return value.take(pa.array(index, pa.int64()))
    return np.asarray(value)[index]


def to_arrow(col: ColumnSpec, value) -> pa.Array:
    """A parsed column as the typed arrow column data files store."""
    if isinstance(value, Jagged):
        return value.to_arrow()
    if col.type is ColumnType.STRING:
        return pc.cast(value, pa.string())
    if col.type is ColumnType.FLOAT:
        return pa.array(np.asarray(value, np.float64))
    if col.type is ColumnType.TIMESTAMP:
        return pa.array(np.asarray(value, np.int64)).cast(pa.timestamp("s", tz="UTC"))
    return pa.array(np.asarray(value, np.int64))
