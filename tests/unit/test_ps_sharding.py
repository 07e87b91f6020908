"""Pure routing: shard_of and group_by_shard, no Ray."""

import numpy as np
import pytest

from paramserver import shard_of
from paramserver.sharding import group_by_shard


def test_shard_of_is_in_range_and_deterministic():
    ids = np.array([0, -1, 2**63 - 1, -(2**63), 12345678901234], dtype=np.int64)
    for n in (1, 2, 3, 4, 7):
        s = shard_of(ids, n)
        assert s.dtype == np.int64 and ((s >= 0) & (s < n)).all()
        assert (s == shard_of(ids.copy(), n)).all()
        assert (shard_of(ids[::-1], n) == s[::-1]).all()  # per id, independent of order


def test_sequential_ids_spread_evenly():
    counts = np.bincount(shard_of(np.arange(100_000), 4), minlength=4)
    assert (np.abs(counts - 25_000) < 600).all(), counts


def test_one_shard_takes_everything_and_bad_count_is_refused():
    assert (shard_of(np.arange(10), 1) == 0).all()
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(np.arange(3), 0)


def test_group_by_shard_partitions_positions_in_order():
    ids = np.array([5, 9, -3, 5, 2**40, 7, 8, 11])
    groups = group_by_shard(ids, 3)
    assert len(groups) == 3
    allpos = np.concatenate(groups)
    assert sorted(allpos.tolist()) == list(range(len(ids)))
    shards = shard_of(ids, 3)
    for s, pos in enumerate(groups):
        assert (shards[pos] == s).all()
        assert (np.diff(pos) > 0).all()  # original relative order kept
