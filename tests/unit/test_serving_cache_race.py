"""Item 5a of issue 20: a swap never serves one id's embedding for another id.

A new version's hot-row cache starts as a copy of the previous version's (``RemoteTables.open``
-> ``HotRowCache.carried``) while requests on the previous version keep filling that cache.
The copy must be a snapshot: every entry in it is an (id, row) pair that was put together.
The test drives the real ``RemoteTable.lookup`` (the request path) from several threads with a
seeded id stream while the main thread opens the next version again and again, and checks every
entry of every copy against the row the fetch function gives for that id.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from paramserver.config import PSConfig, TableConfig
from serving.cache import HotRowCache
from serving.shards import RemoteTables

DIM = 8


def row_of(ids: np.ndarray) -> np.ndarray:
    """The row a shard answers for each id: the id itself in every column (any mix-up shows)."""
    return np.repeat(np.asarray(ids, np.float32)[:, None], DIM, axis=1)


def fetch(version, table, asked):
    return {s: (row_of(ids), np.ones(len(ids), bool)) for s, ids in asked.items()}


def mismatched(cache: HotRowCache) -> int:
    """Entries whose row is not their id's row (or whose known flag is off: every fetched id is known)."""
    f = cache.filled
    bad = (cache.rows[f] != row_of(cache.ids[f])).any(axis=1) | ~cache.known[f]
    return int(bad.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_opening_the_next_version_snapshots_a_cache_that_requests_keep_filling(seed):
    ps_cfg = PSConfig(tables=(TableConfig("user", DIM),), num_shards=1)
    remote = RemoteTables(
        ("user",), num_shards=2, cache_rows=1024, load=lambda v, since: {"user": np.zeros(0, np.int64)}, fetch=fetch
    )
    old = remote.open(ps_cfg, 1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def requests(k: int) -> None:
        rng = np.random.default_rng([seed, k])
        try:
            while not stop.is_set():  # many distinct ids per call: slots keep being overwritten by other ids
                ids = rng.integers(0, 1 << 40, 256)
                rows, known = old["user"].lookup(ids)
                assert (rows == row_of(ids)).all() and known.all()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows within a few copies
    threads = [threading.Thread(target=requests, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    copies, bad = 0, 0
    try:
        rng = np.random.default_rng(seed)
        deadline = threading.Event()
        timer = threading.Timer(0.8, deadline.set)
        timer.start()
        while not deadline.is_set() and not stop.is_set():
            new = remote.open(ps_cfg, 2, old)
            copies += 1
            bad += mismatched(new["user"].cache)
            if rng.random() < 0.5:  # and through the copy's own request path
                ids = rng.integers(0, 1 << 40, 64)
                rows, _ = new["user"].lookup(ids)
                bad += int((rows != row_of(ids)).any(axis=1).sum())
        timer.cancel()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        sys.setswitchinterval(switch)
    assert not errors, errors[0]
    assert copies > 10
    assert bad == 0, f"{bad} cache entries hold another id's row over {copies} copies"
    assert mismatched(old["user"].cache) == 0
