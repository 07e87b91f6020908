"""Stable 64-bit id hashing, identical across processes, machines and releases.

Python's ``hash()`` is salted per process, so it is never used. Strings are hashed
with FNV-1a 64 over their UTF-8 bytes followed by the splitmix64 finaliser; integers
that fit in int64 are kept as they are (ids are collisionless downstream, so there is
nothing to gain by hashing them). The loops below run over byte positions of the
longest string (bounded by the spec's ``max_len``), never over ids.

>>> int(hash_strings(pa.array(["alice"]))[0]) == int(hash_strings(pa.array(["alice"]))[0])
True
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64_mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser alone on uint64 values (a bijection with good avalanche; no gamma added).
    NOT :func:`paramserver.hashing.splitmix64_next` (gamma, then this; other outputs): the ids of hashed
    strings and crosses in stored models depend on this one, so neither may change or be swapped."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def hash_strings(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Hash each string of ``arr`` to int64 (nulls hash like the empty string)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    arr = arr.cast(pa.large_binary()) if not pa.types.is_large_binary(arr.type) else arr
    n = len(arr)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0:
        return h.view(np.int64)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    if arr.null_count:
        lengths = np.where(np.asarray(arr.is_valid()), lengths, 0)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            active = np.flatnonzero(lengths > j)
            h[active] = (h[active] ^ data[starts[active] + j].astype(np.uint64)) * _FNV_PRIME
    return splitmix64_mix(h).view(np.int64)


def combine(columns: list[np.ndarray]) -> np.ndarray:
    """Combine equal-length int64 columns into one stable int64 key per row (e.g. an event id)."""
    if not columns:
        raise ValueError("combine needs at least one column")
    h = np.full(len(columns[0]), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in columns:
            h = splitmix64_mix(h ^ (np.asarray(col).astype(np.int64).view(np.uint64) + _GOLDEN))
    return h.view(np.int64)
