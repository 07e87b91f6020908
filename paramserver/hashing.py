"""Pure, vectorised hashing: splitmix64, and the deterministic initial row of an id.

``init_rows`` depends only on (seed, table name, table dim/scale, raw id), so every process,
shard count and call order gives the same initial row for the same id. The local
reference trainer uses it to start from exactly the rows the parameter server would.
"""

from __future__ import annotations

import sys
import zlib

import numpy as np

from paramserver.config import TableConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_BLOCK_WORDS = 32 * 1024  # 64-bit words hashed per block of init_rows (256 KiB: stays in cache)


def splitmix64_next(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output for state ``x`` (every element of any integer array), as uint64: the golden gamma
    added, then the finaliser. NOT :func:`trainer.data.hashing.splitmix64_mix` (the finaliser alone, other
    outputs): each is baked into stored data (shard routing, cut slices, initial rows, the serving cache, FTRL
    coordinates here), so neither may change or be swapped for the other."""
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def table_key(table: TableConfig, seed: int) -> np.uint64:
    """A 64-bit key for (seed, table name): the per-table seed of :func:`init_rows`."""
    name_hash = zlib.crc32(table.name.encode("utf-8"))
    mixed = splitmix64_next(np.array([(seed & 0xFFFFFFFF) << 32 | name_hash], dtype=np.uint64))
    return mixed[0]


def init_rows(table: TableConfig, ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Initial rows of ``ids`` for ``table``: float32 [len(ids), table.dim], uniform in ±scale.

    A pure function of (seed, table.name, table.dim, table.scale, id)::

        >>> t = TableConfig("item", dim=4)
        >>> bool((init_rows(t, np.array([7, -3, 7]))[0] == init_rows(t, np.array([7]))[0]).all())
        True

    Column pair (2j, 2j+1) of id x comes from ``b = splitmix64_next(splitmix64_next(x ^ key) + j * golden)``:
    column 2j is bits 40..63 of b, column 2j+1 bits 8..31, each a 24-bit integer u mapped to
    ``u * 2**-23 * scale - scale`` in float32. The hashes run in place over blocks of about 32k
    64-bit words (cache-resident), and the two 24-bit fields are the upper 24 bits of b's two
    32-bit halves, so they are taken with one 32-bit shift, not two 64-bit shifts and a mask
    (:func:`init_rows_reference` is the plain form; the two agree bit for bit, a unit test checks it).
    """
    if sys.byteorder != "little":  # the 32-bit halves below assume little-endian words
        return init_rows_reference(table, ids, seed)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    key = table_key(table, seed)
    half = (table.dim + 1) // 2  # one 64-bit hash gives two 24-bit uniforms (columns 2j and 2j+1)
    with np.errstate(over="ignore"):
        h = splitmix64_next(ids.view(np.uint64) ^ key)
        cols = np.arange(half, dtype=np.uint64) * _GOLDEN + _GOLDEN  # splitmix64's first add folded in
    out = np.empty((n, half, 2), np.float32)
    rows = max(1, _BLOCK_WORDS // half)
    z = np.empty((min(n, rows), half), np.uint64)
    tmp = np.empty_like(z)
    with np.errstate(over="ignore"):
        for a in range(0, n, rows):
            b = min(n, a + rows)
            zb, tb = z[: b - a], tmp[: b - a]
            np.add(h[a:b, None], cols[None, :], out=zb)
            np.right_shift(zb, _S30, out=tb)
            zb ^= tb
            zb *= _M1
            np.right_shift(zb, _S27, out=tb)
            zb ^= tb
            zb *= _M2
            np.right_shift(zb, _S31, out=tb)
            zb ^= tb
            halves = zb.view(np.uint32)  # [bits 0..31, bits 32..63] of every hash (little-endian)
            halves >>= np.uint32(8)  # [bits 8..31, bits 40..63]: the fields of columns 2j+1 and 2j
            fields = halves.view(np.int32).reshape(b - a, half, 2)  # < 2**24: int32 -> float32 is exact
            out[a:b, :, 0] = fields[:, :, 1]
            out[a:b, :, 1] = fields[:, :, 0]
    unit = out.reshape(n, 2 * half)
    if 2 * half != table.dim:
        unit = np.ascontiguousarray(unit[:, : table.dim])
    scale = np.float32(table.scale)
    np.multiply(unit, np.float32(2.0 / (1 << 24)), out=unit)  # the reference's operations, in its order
    np.multiply(unit, scale, out=unit)
    np.subtract(unit, scale, out=unit)
    return unit


def init_rows_reference(table: TableConfig, ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """:func:`init_rows` written plainly (whole-array temporaries): the definition it must match."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    key = table_key(table, seed)
    half = (table.dim + 1) // 2
    with np.errstate(over="ignore"):
        h = splitmix64_next(ids.view(np.uint64) ^ key)
        cols = np.arange(half, dtype=np.uint64) * _GOLDEN
        bits = splitmix64_next(h[:, None] + cols[None, :])
    pairs = np.empty((len(ids), half, 2), np.float32)
    pairs[:, :, 0] = bits >> np.uint64(40)
    pairs[:, :, 1] = (bits >> np.uint64(8)) & np.uint64(0xFFFFFF)
    unit = pairs.reshape(len(ids), 2 * half)[:, : table.dim]  # integers in [0, 2**24), exact in float32
    scale = np.float32(table.scale)
    return unit * np.float32(2.0 / (1 << 24)) * scale - scale
