"""Vectorised parsing of raw columns (any arrow type, usually text) into typed numpy arrays.

Every parser returns ``(values, bad)``: ``values`` a numpy array (garbage where ``bad``),
and ``bad`` a boolean mask with the rows whose value could not be parsed. No Python
loop runs per value.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.hashing import hash_strings
from trainer.data.spec import TIME_UNITS as TIME_SCALE

_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"
_FLOAT_RE = r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)\s*$"
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d")


def _no_nulls(arr: pa.Array, fill) -> pa.Array:
    return pc.fill_null(arr, fill) if arr.null_count else arr


def to_numpy(arr: pa.Array) -> np.ndarray:
    """An arrow array as numpy (copies only where arrow must, e.g. booleans)."""
    return arr.to_numpy(zero_copy_only=False)


def combined(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    return arr


def is_text(arr: pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)


def is_nested(arr: pa.Array) -> bool:
    """Not a scalar column (lists, structs, binary): not parseable as one value."""
    t = arr.type
    return pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)


def missing(arr: pa.Array, null_tokens: tuple[str, ...] = ("",)) -> np.ndarray:
    """Null, or text that is blank or one of ``null_tokens`` (after trimming whitespace).

    >>> missing(pa.array(["7", "", " NaN ", None, "null"]), ("", "NaN", "null")).tolist()
    [False, True, True, True, True]
    """
    miss = ~to_numpy(arr.is_valid()) if arr.null_count else np.zeros(len(arr), bool)
    if is_text(arr):
        trimmed = pc.utf8_trim_whitespace(arr)
        blank = pc.equal(trimmed, "")
        if null_tokens:
            blank = pc.or_(blank, pc.is_in(trimmed, value_set=pa.array(list(null_tokens), pa.string())))
        miss |= to_numpy(pc.fill_null(blank, True))
    elif pa.types.is_null(arr.type):
        miss[:] = True
    return miss


# C0 controls except TAB, DEL, and the C1 controls; STRICT adds TAB (for string ids)
_CONTROL = r"[\x00-\x08\x0a-\x1f\x7f-\x9f]"
_CONTROL_STRICT = r"[\x00-\x1f\x7f-\x9f]"


def has_control(arr: pa.Array, strict: bool = False) -> np.ndarray:
    """Rows whose text (or, for a list column, any text element) holds a control character."""
    n = len(arr)
    pattern = _CONTROL_STRICT if strict else _CONTROL
    if is_text(arr):
        return _match(arr, pattern)
    if is_list(arr):
        flat = pc.list_flatten(arr)
        if not is_text(flat) or len(flat) == 0:
            return np.zeros(n, bool)
        hit = _match(flat, pattern)
        rows = np.repeat(np.arange(n), list_lengths(arr))
        out = np.zeros(n, bool)
        out[rows[hit]] = True
        return out
    return np.zeros(n, bool)


def is_list(arr: pa.Array) -> bool:
    return pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)


def list_lengths(arr: pa.Array) -> np.ndarray:
    return to_numpy(pc.fill_null(pc.list_value_length(arr), 0)).astype(np.int64)


def text_length(arr: pa.Array) -> np.ndarray:
    if not is_text(arr):
        return np.zeros(len(arr), np.int64)
    return to_numpy(pc.fill_null(pc.utf8_length(arr), 0)).astype(np.int64)


def _match(arr: pa.Array, pattern: str) -> np.ndarray:
    return to_numpy(pc.fill_null(pc.match_substring_regex(arr, pattern), False))


def _cast_where(arr: pa.Array, ok: np.ndarray, to: pa.DataType, fill: str) -> np.ndarray:
    safe = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(arr), pa.scalar(fill, arr.type))
    return to_numpy(pc.cast(safe, to))


def parse_int(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    n = len(arr)
    if pa.types.is_integer(arr.type):
        return to_numpy(_no_nulls(pc.cast(arr, pa.int64(), safe=False), 0)), np.zeros(n, bool)
    if pa.types.is_floating(arr.type):
        v = to_numpy(_no_nulls(arr, 0.0)).astype(np.float64)
        ok = np.isfinite(v) & (np.floor(v) == v) & (np.abs(v) < 2**62)
        return np.where(ok, v, 0).astype(np.int64), ~ok
    if is_text(arr):
        ok = _match(arr, _INT_RE)
        return _cast_where(arr, ok, pa.int64(), "0"), ~ok
    return np.zeros(n, np.int64), np.ones(n, bool)


def parse_id(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Integer ids pass through; other text is hashed (stable, see hashing.py)."""
    if is_text(arr):
        ints, not_int = parse_int(arr)
        if not not_int.any():
            return ints, not_int
        hashed = hash_strings(pc.utf8_trim_whitespace(arr))
        return np.where(not_int, hashed, ints), np.zeros(len(arr), bool)
    return parse_int(arr)


def parse_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    n = len(arr)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return to_numpy(_no_nulls(pc.cast(arr, pa.float64(), safe=False), 0.0)), np.zeros(n, bool)
    if is_text(arr):
        ok = _match(arr, _FLOAT_RE)
        return _cast_where(arr, ok, pa.float64(), "0"), ~ok
    if pa.types.is_boolean(arr.type):
        return to_numpy(pc.fill_null(arr, False)).astype(np.float64), np.zeros(n, bool)
    return np.zeros(n, np.float64), np.ones(n, bool)


def parse_string_id(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Text ids, always hashed (so "007" and "7" differ); integers (data files) pass through."""
    if is_text(arr):
        return hash_strings(pc.utf8_trim_whitespace(arr)), np.zeros(len(arr), bool)
    if pa.types.is_integer(arr.type):
        return parse_int(arr)
    return np.zeros(len(arr), np.int64), np.ones(len(arr), bool)


def parse_time(arr: pa.Array, unit: str = "s", fmt: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """To int64 unix seconds. Numbers are in ``unit`` (s, ms or us); text in the strftime
    layout ``fmt`` when given (strictly: the text must be exactly what the layout prints),
    else a number or ISO-8601 text. Arrow timestamps and dates (data files) are converted."""
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        secs = pc.cast(pc.cast(arr, pa.timestamp("s"), safe=False), pa.int64())
        return to_numpy(pc.fill_null(secs, 0)), ~to_numpy(arr.is_valid())
    if fmt is not None and is_text(arr):
        trimmed = pc.utf8_trim_whitespace(arr)
        parsed = pc.strptime(trimmed, format=fmt, unit="s", error_is_null=True)
        ok = to_numpy(pc.fill_null(pc.equal(pc.strftime(parsed, format=fmt), trimmed), False))
        secs = to_numpy(pc.fill_null(pc.cast(parsed, pa.int64()), 0))
        return np.where(ok, secs, 0), ~ok
    scale = float(TIME_SCALE[unit])
    values, bad = parse_float(arr)
    with np.errstate(invalid="ignore"):
        ok = ~bad & np.isfinite(values) & (np.abs(values / scale) < 1e15)
    secs = np.where(ok, np.floor(np.where(ok, values, 0) / scale), 0).astype(np.int64)
    if is_text(arr) and not ok.all():
        for tf in _TIME_FORMATS:
            todo = ~ok
            if not todo.any():
                break
            parsed = pc.strptime(pc.utf8_trim_whitespace(arr), format=tf, unit="s", error_is_null=True)
            got = to_numpy(parsed.is_valid()) & todo
            if got.any():
                secs = np.where(got, to_numpy(pc.fill_null(pc.cast(parsed, pa.int64()), 0)), secs)
                ok |= got
    return secs, ~ok


@dataclasses.dataclass(frozen=True)
class ParsedList:
    """An id_list column parsed: flat ids row after row, and per-row facts.

    >>> p = parse_id_list(pa.array(["7 alice", "", None, "8"]), " ")
    >>> p.lengths.tolist(), p.values[[0, 2]].tolist()
    ([2, 0, 0, 1], [7, 8])
    """

    values: np.ndarray  # int64 [sum(lengths)]
    lengths: np.ndarray  # int64 [n]: ids per row (empty elements dropped)
    bad: np.ndarray  # bool [n]: an element is not an id (e.g. 1.5, a nested value)
    longest: np.ndarray  # int64 [n]: characters of the longest text element


def jagged_take(values: np.ndarray, lengths: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``index`` of a jagged column (flat ``values`` row after row, ``lengths`` per row).

    >>> jagged_take(np.array([1, 2, 3, 4]), np.array([2, 0, 2]), np.array([2, 0]))
    (array([3, 4, 1, 2]), array([2, 2]))
    """
    index = np.asarray(index, np.int64)
    lengths = np.asarray(lengths, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
    new_len = lengths[index]
    total = int(new_len.sum())
    if total == 0:
        return values[:0].copy(), new_len
    new_starts = np.cumsum(new_len) - new_len
    gather = np.repeat(starts[index] - new_starts, new_len) + np.arange(total, dtype=np.int64)
    return values[gather], new_len


def parse_id_list(arr: pa.Array, separator: str | None) -> ParsedList:
    """Text split on ``separator`` (without one, the whole text is one id), or a list column
    (Parquet/Arrow list, JSON array) of ints or texts. Each element parses like an ``id``;
    empty and null elements are dropped."""
    n = len(arr)
    if is_text(arr):
        lists = (
            pc.split_pattern(arr, separator)
            if separator
            else pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)), arr)
        )
        if arr.null_count:
            lists = pc.if_else(arr.is_valid(), lists, pa.nulls(n, lists.type))
    elif is_list(arr):
        lists = arr
    else:
        return ParsedList(np.zeros(0, np.int64), np.zeros(n, np.int64), np.ones(n, bool), np.zeros(n, np.int64))
    raw_len = list_lengths(lists)
    flat = combined(pc.list_flatten(lists))
    rows = np.repeat(np.arange(n, dtype=np.int64), raw_len)
    if len(flat) != len(rows):  # null lists with non-empty ranges: flatten skipped them
        valid = to_numpy(lists.is_valid())
        raw_len = np.where(valid, raw_len, 0)
        rows = np.repeat(np.arange(n, dtype=np.int64), raw_len)
    longest = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    if len(flat) == 0:
        return ParsedList(np.zeros(0, np.int64), np.zeros(n, np.int64), bad, longest)
    if is_text(flat):
        keep = ~missing(flat, ("",))
        lens = text_length(flat)
        np.maximum.at(longest, rows, lens)
        values, elem_bad = parse_id(flat)
    elif pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type) or pa.types.is_null(flat.type):
        keep = to_numpy(flat.is_valid()) if not pa.types.is_null(flat.type) else np.zeros(len(flat), bool)
        values, elem_bad = parse_int(flat)
        elem_bad &= keep
    else:
        keep = np.ones(len(flat), bool)
        values, elem_bad = np.zeros(len(flat), np.int64), np.ones(len(flat), bool)
    bad[rows[elem_bad]] = True
    lengths = np.bincount(rows[keep], minlength=n).astype(np.int64)
    return ParsedList(np.asarray(values, np.int64)[keep], lengths, bad, longest)
