"""Vectorised parsing of raw columns (any arrow type, usually text) into typed numpy arrays.

Every parser returns ``(values, bad)``: ``values`` a numpy array (garbage where ``bad``),
and ``bad`` a boolean mask with the rows whose value could not be parsed. No Python
loop runs per value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainer.data.hashing import hash_strings

_INT_RE = r"^\s*[+-]?\d{1,18}\s*$"
_FLOAT_RE = r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)\s*$"
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d")


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
    t = arr.type
    return pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_null(t)


def missing(arr: pa.Array) -> np.ndarray:
    """Null, or empty/blank text."""
    miss = ~to_numpy(arr.is_valid())
    if is_text(arr):
        blank = to_numpy(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), True))
        miss |= blank
    elif pa.types.is_null(arr.type):
        miss[:] = True
    return miss


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
        return to_numpy(pc.fill_null(pc.cast(arr, pa.int64(), safe=False), 0)), np.zeros(n, bool)
    if pa.types.is_floating(arr.type):
        v = to_numpy(pc.fill_null(arr, 0.0)).astype(np.float64)
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
        return to_numpy(pc.fill_null(pc.cast(arr, pa.float64()), 0.0)), np.zeros(n, bool)
    if is_text(arr):
        ok = _match(arr, _FLOAT_RE)
        return _cast_where(arr, ok, pa.float64(), "0"), ~ok
    if pa.types.is_boolean(arr.type):
        return to_numpy(pc.fill_null(arr, False)).astype(np.float64), np.zeros(n, bool)
    return np.zeros(n, np.float64), np.ones(n, bool)


def parse_time(arr: pa.Array, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """To int64 unix seconds. Numbers are in ``unit`` (s or ms); text may be ISO-8601."""
    n = len(arr)
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        secs = pc.cast(pc.cast(arr, pa.timestamp("s"), safe=False), pa.int64())
        return to_numpy(pc.fill_null(secs, 0)), np.zeros(n, bool)
    scale = 1000.0 if unit == "ms" else 1.0
    values, bad = parse_float(arr)
    with np.errstate(invalid="ignore"):
        ok = ~bad & np.isfinite(values) & (np.abs(values / scale) < 1e11)
    secs = np.where(ok, np.floor(np.where(ok, values, 0) / scale), 0).astype(np.int64)
    if is_text(arr) and not ok.all():
        for fmt in _TIME_FORMATS:
            todo = ~ok
            if not todo.any():
                break
            parsed = pc.strptime(pc.utf8_trim_whitespace(arr), format=fmt, unit="s", error_is_null=True)
            got = to_numpy(parsed.is_valid()) & todo
            if got.any():
                secs = np.where(got, to_numpy(pc.fill_null(pc.cast(parsed, pa.int64()), 0)), secs)
                ok |= got
    return secs, ~ok
