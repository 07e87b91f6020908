"""``init_rows`` (blocked, in-place hashing) gives exactly the bits of the implementation it
replaced (frozen below): the initial rows are part of every recorded digest."""

import types
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.config import TableConfig
from paramserver.hashing import init_rows, init_rows_reference

_G, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x):
    z = np.asarray(x).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _G
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def frozen_init_rows(table, ids, seed=0):
    """paramserver.hashing.init_rows as of commit 691fceb, verbatim."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    key = _splitmix64(np.array([(seed & 0xFFFFFFFF) << 32 | zlib.crc32(table.name.encode("utf-8"))], dtype=np.uint64))[
        0
    ]
    half = (table.dim + 1) // 2
    with np.errstate(over="ignore"):
        h = _splitmix64(ids.view(np.uint64) ^ key)
        cols = np.arange(half, dtype=np.uint64) * _G
        bits = _splitmix64(h[:, None] + cols[None, :])
    pairs = np.empty((len(ids), half, 2), np.float32)
    pairs[:, :, 0] = bits >> np.uint64(40)
    pairs[:, :, 1] = (bits >> np.uint64(8)) & np.uint64(0xFFFFFF)
    unit = pairs.reshape(len(ids), 2 * half)[:, : table.dim]
    scale = np.float32(table.scale)
    return unit * np.float32(2.0 / (1 << 24)) * scale - scale


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 80),
    st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
    st.integers(0, 2**40),
    st.integers(0, 1200),
    st.integers(0, 2**32 - 1),
    st.text(min_size=1, max_size=8),
)
def test_init_rows_is_bit_identical_to_the_previous_implementation(dim, init_scale, seed, n, rng_seed, name):
    ids = np.random.default_rng(rng_seed).integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64, endpoint=True)
    scale = init_scale if init_scale is not None else dim**-0.5
    table = types.SimpleNamespace(name=name, dim=dim, scale=scale)  # odd dims too (TableConfig wants x4)
    want = frozen_init_rows(table, ids, seed)
    for got in (init_rows(table, ids, seed), init_rows_reference(table, ids, seed)):
        assert got.dtype == np.float32 and got.shape == (n, dim) and got.flags.c_contiguous
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_init_rows_across_blocks_and_with_extreme_ids():
    table = TableConfig("item", dim=128, init_scale=0.05)
    ids = np.concatenate(
        [
            np.array([0, -1, 1, 2**63 - 1, -(2**63)], np.int64),
            np.random.default_rng(1).integers(-(2**63), 2**63 - 1, 9000, dtype=np.int64),
        ]
    )
    got = init_rows(table, ids, seed=7)
    assert got.tobytes() == frozen_init_rows(table, ids, 7).tobytes()
    assert (np.abs(got) <= np.float32(0.05)).all()
