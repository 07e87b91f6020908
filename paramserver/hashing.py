"""Pure, vectorised hashing: splitmix64, and the deterministic initial row of an id.

``init_rows`` depends only on (seed, table name, table dim/scale, raw id), so every process,
shard count and call order gives the same initial row for the same id. The local
reference trainer uses it to start from exactly the rows the parameter server would.
"""

from __future__ import annotations

import zlib

import numpy as np

from paramserver.config import TableConfig

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser of every element of ``x`` (any integer array), as uint64."""
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
    mixed = splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | name_hash], dtype=np.uint64))
    return mixed[0]


def init_rows(table: TableConfig, ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """Initial rows of ``ids`` for ``table``: float32 [len(ids), table.dim], uniform in ±scale.

    A pure function of (seed, table.name, table.dim, table.scale, id)::

        >>> t = TableConfig("item", dim=4)
        >>> (init_rows(t, np.array([7, -3, 7])) [0] == init_rows(t, np.array([7]))[0]).all()
        True
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    key = table_key(table, seed)
    half = (table.dim + 1) // 2  # one 64-bit hash gives two 24-bit uniforms (columns 2j and 2j+1)
    with np.errstate(over="ignore"):
        h = splitmix64(ids.view(np.uint64) ^ key)
        cols = np.arange(half, dtype=np.uint64) * _GOLDEN
        bits = splitmix64(h[:, None] + cols[None, :])
    pairs = np.empty((len(ids), half, 2), np.float32)
    pairs[:, :, 0] = bits >> np.uint64(40)
    pairs[:, :, 1] = (bits >> np.uint64(8)) & np.uint64(0xFFFFFF)
    unit = pairs.reshape(len(ids), 2 * half)[:, :table.dim]  # integers in [0, 2**24), exact in float32
    scale = np.float32(table.scale)
    return unit * np.float32(2.0 / (1 << 24)) * scale - scale
