"""Routing ids to shards: pure functions, testable without Ray.

``shard_of`` hashes (splitmix64) so that sequential ids spread evenly; ``group_by_shard``
returns, for each shard, the positions of its ids, in their original relative order.
"""

from __future__ import annotations

import numpy as np

from paramserver.hashing import splitmix64_next


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index (int64, in [0, num_shards)) of every id in ``ids``.

    >>> shard_of(np.array([0, 1, 2, 3]), 1).tolist()
    [0, 0, 0, 0]
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    ids = np.asarray(ids, dtype=np.int64)
    if num_shards == 1:
        return np.zeros(ids.shape, dtype=np.int64)
    return (splitmix64_next(ids.view(np.uint64)) % np.uint64(num_shards)).astype(np.int64)


def group_by_shard(ids: np.ndarray, num_shards: int) -> list[np.ndarray]:
    """Positions into ``ids`` of each shard's ids: ``out[s]`` is an int64 index array.

    >>> [p.tolist() for p in group_by_shard(np.array([5, 6, 7]), 1)]
    [[0, 1, 2]]
    """
    shards = shard_of(ids, num_shards)
    if num_shards == 1:
        return [np.arange(len(shards), dtype=np.int64)]
    order = np.argsort(shards, kind="stable")
    bounds = np.searchsorted(shards[order], np.arange(num_shards + 1))
    return [order[bounds[s] : bounds[s + 1]] for s in range(num_shards)]
