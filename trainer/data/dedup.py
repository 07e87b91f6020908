"""A bounded memory of recent event ids, for duplicate detection without per-id Python loops.

Ids are kept as sorted runs in insertion order; a lookup is one ``searchsorted`` per
run. Small neighbouring runs are merged so the number of runs stays small, and the
oldest runs are forgotten once more than ``capacity`` ids are held.
"""

from __future__ import annotations

from collections import deque

import numpy as np

MAX_RUNS = 12


class DedupWindow:
    def __init__(self, capacity: int = 10_000_000):
        if capacity < 1:
            raise ValueError("dedup capacity must be >= 1")
        self.capacity = capacity
        self._runs: deque[np.ndarray] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        found = np.zeros(len(ids), bool)
        for run in self._runs:
            pos = np.searchsorted(run, ids)
            pos = np.minimum(pos, len(run) - 1)
            found |= run[pos] == ids
        return found

    def add(self, ids: np.ndarray) -> None:
        """Remember ``ids`` (assumed not yet present and unique among themselves)."""
        if len(ids) == 0:
            return
        self._runs.append(np.sort(np.asarray(ids, np.int64)))
        self._size += len(ids)
        while len(self._runs) > MAX_RUNS:
            # merge the adjacent pair with the smallest total size
            sizes = [len(self._runs[i]) + len(self._runs[i + 1]) for i in range(len(self._runs) - 1)]
            i = int(np.argmin(sizes))
            merged = np.sort(np.concatenate([self._runs[i], self._runs[i + 1]]), kind="stable")
            self._runs[i] = merged
            del self._runs[i + 1]
        while self._size > self.capacity and len(self._runs) > 1:
            self._size -= len(self._runs.popleft())

    def state(self) -> np.ndarray:
        return np.concatenate(list(self._runs)) if self._runs else np.zeros(0, np.int64)
