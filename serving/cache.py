"""A replica's hot-row cache in front of read-only table shards: direct-mapped, vectorised.

``capacity`` slots (a power of two); an id lives in slot ``splitmix64_next(id) & (capacity - 1)``.
A lookup of n ids is a handful of array operations, no per-id Python::

    slot  = hash(ids) & mask
    hit   = slot_ids[slot] == ids            rows of hits come from the cache
    miss  -> fetch(unique missing ids)       one call per shard, by the caller
    put   -> slot_ids[slot(miss)] = miss     a colliding id simply replaces the older one

Each entry also holds whether the version had a row for the id (``known``), so a cached
cold-start row still counts as unknown. A cache belongs to ONE model version; the next version
starts from a copy without the ids its deltas changed (:meth:`carried`).

Thread safety: ``get``, ``put`` and ``carried`` each hold the cache's lock, so an entry's id, row
and flags are written and read together. ``carried`` is a snapshot of the previous version's cache
taken while requests on that version keep filling it: it never pairs one id with another id's row
(issue 20; ``tests/unit/test_serving_cache_race.py``). The lock is held for array copies only, never
for a fetch. The cache is bounded: ``capacity`` entries, whatever the traffic.

>>> c = HotRowCache(4, dim=2)
>>> rows, known, miss = c.get(np.array([7, 8]))
>>> miss.tolist()
[0, 1]
>>> c.put(np.array([7, 8]), np.ones((2, 2), np.float32), np.array([True, False]))
>>> rows, known, miss = c.get(np.array([8, 7]))
>>> miss.tolist(), known.tolist()
([], [False, True])
"""

from __future__ import annotations

import threading

import numpy as np

from paramserver.hashing import splitmix64_next


class HotRowCache:
    def __init__(self, capacity: int, dim: int) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"cache capacity must be a power of two >= 1, got {capacity}")
        self.capacity, self.dim = capacity, dim
        self._mask = np.uint64(capacity - 1)
        self.ids = np.zeros(capacity, np.int64)
        self.filled = np.zeros(capacity, bool)  # a slot holds an entry (ids alone cannot say: every int64 is an id)
        self.known = np.zeros(capacity, bool)
        self.rows = np.zeros((capacity, dim), np.float32)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def slots(self, ids: np.ndarray) -> np.ndarray:
        return (splitmix64_next(np.asarray(ids, np.int64).view(np.uint64)) & self._mask).astype(np.int64)

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows float32 [n, dim], known [n], positions of the misses): rows of misses are zeros."""
        ids = np.asarray(ids, np.int64)
        slot = self.slots(ids)
        with self._lock:
            hit = self.filled[slot] & (self.ids[slot] == ids)
            rows = self.rows[slot]  # fancy indexing copies: later puts never change an answer
            known = self.known[slot] & hit
            miss = np.flatnonzero(~hit)
            self.hits += len(ids) - len(miss)
            self.misses += len(miss)
        rows[~hit] = 0.0
        return rows, known, miss

    def put(self, ids: np.ndarray, rows: np.ndarray, known: np.ndarray) -> None:
        """Store entries (distinct ids); an id whose slot is taken replaces the entry there."""
        ids = np.asarray(ids, np.int64)
        slot = self.slots(ids)
        with self._lock:
            self.ids[slot] = ids
            self.rows[slot] = rows
            self.known[slot] = known
            self.filled[slot] = True

    def carried(self, changed: np.ndarray | None) -> "HotRowCache":
        """A copy for the next version without the entries of ``changed`` ids (None: an empty cache).

        The copy is what the next version's model reads; this cache stays as it is for the requests
        still running on the previous version (they may go on filling it: the copy is taken under
        this cache's lock, a consistent snapshot)."""
        out = HotRowCache(self.capacity, self.dim)
        if changed is None:
            return out
        with self._lock:
            out.ids[:], out.rows[:], out.known[:], out.filled[:] = self.ids, self.rows, self.known, self.filled
        changed = np.asarray(changed, np.int64)
        if len(changed):
            slot = self.slots(changed)
            stale = out.ids[slot] == changed
            out.filled[slot[stale]] = False
        return out

    @property
    def size(self) -> int:
        with self._lock:
            return int(self.filled.sum())
