"""A collisionless, vectorised map from raw int64 ids to row slots.

Keys are kept sorted (``np.searchsorted`` looks a whole batch up at once); new keys are
merged in one ``np.insert`` per batch and removed keys with one boolean mask, so there is
no Python loop over ids. Free slots are a stack. Distinct ids never share a slot:
every slot is owned by at most one key (``slot_key``/``occupied`` are its inverse).

``CountTable`` is the same sorted structure holding per-id counts for ids that are not
admitted yet (frequency admission).
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.empty(0, dtype=np.int64)


def _find(keys: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``ids`` in sorted ``keys`` and whether each one is there."""
    if len(keys) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.searchsorted(keys, ids)
    clipped = np.minimum(pos, len(keys) - 1)
    return clipped, keys[clipped] == ids


class IdMap:
    """Raw id -> slot in ``[0, capacity)``.

    >>> m = IdMap(4); m.insert(np.array([-9, 2**40])).tolist()
    [0, 1]
    >>> m.lookup(np.array([2**40, 5, -9])).tolist()
    [1, -1, 0]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys = _EMPTY
        self._slots = _EMPTY
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # stack: pop from the end
        self._n_free = capacity
        self.slot_key = np.zeros(capacity, dtype=np.int64)
        self.occupied = np.zeros(capacity, dtype=bool)

    def __len__(self) -> int:
        return self.capacity - self._n_free

    @property
    def free(self) -> int:
        return self._n_free

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id (int64), -1 where the id has no slot."""
        pos, hit = _find(self._keys, ids)
        if len(self._keys) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        return np.where(hit, self._slots[pos], -1)

    def insert(self, ids: np.ndarray) -> np.ndarray:
        """Give each of ``ids`` (distinct, absent) a free slot; returns the slots in input order."""
        n = len(ids)
        if n > self._n_free:
            raise ValueError(f"IdMap.insert: {n} new ids but only {self._n_free} free slots")
        if n == 0:
            return _EMPTY
        slots = self._free[self._n_free - n:self._n_free][::-1].copy()
        self._n_free -= n
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        at = np.searchsorted(self._keys, sorted_ids)
        self._keys = np.insert(self._keys, at, sorted_ids)
        self._slots = np.insert(self._slots, at, slots[order])
        self.slot_key[slots] = ids
        self.occupied[slots] = True
        return slots

    def remove_slots(self, slots: np.ndarray) -> np.ndarray:
        """Free ``slots`` (distinct, occupied); returns the raw ids that owned them."""
        if len(slots) == 0:
            return _EMPTY
        ids = self.slot_key[slots].copy()
        keep = np.ones(len(self._keys), dtype=bool)
        pos, _ = _find(self._keys, ids)
        keep[pos] = False
        self._keys = self._keys[keep]
        self._slots = self._slots[keep]
        self.occupied[slots] = False
        self._free[self._n_free:self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        return ids

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, slots), ids ascending."""
        return self._keys.copy(), self._slots.copy()


class CountTable:
    """Counts (and last step seen) of ids waiting for admission; bounded to ``limit`` entries."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys = _EMPTY
        self._counts = _EMPTY
        self._last = _EMPTY

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, ids: np.ndarray, counts: np.ndarray, step: int) -> np.ndarray:
        """Add ``counts`` for distinct ``ids``; returns every id's total count so far."""
        pos, hit = _find(self._keys, ids)
        self._counts[pos[hit]] += counts[hit]
        self._last[pos[hit]] = step
        totals = counts.astype(np.int64, copy=True)
        totals[hit] = self._counts[pos[hit]]
        new = ~hit
        if new.any():
            order = np.argsort(ids[new], kind="stable")
            new_ids = ids[new][order]
            at = np.searchsorted(self._keys, new_ids)
            self._keys = np.insert(self._keys, at, new_ids)
            self._counts = np.insert(self._counts, at, counts[new][order].astype(np.int64))
            self._last = np.insert(self._last, at, np.full(len(new_ids), step, dtype=np.int64))
        if len(self._keys) > self.limit:  # forget the least recently seen ids, down to 90% (amortised)
            target = max(1, (self.limit * 9) // 10)
            keep = np.sort(np.argpartition(-self._last, target - 1)[:target])
            self._keys, self._counts, self._last = self._keys[keep], self._counts[keep], self._last[keep]
        return totals

    def peek(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The totals :meth:`add` would return for distinct ``ids``, without changing anything."""
        pos, hit = _find(self._keys, ids)
        totals = counts.astype(np.int64, copy=True)
        totals[hit] += self._counts[pos[hit]]
        return totals

    def discard(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (those present)."""
        pos, hit = _find(self._keys, ids)
        if hit.any():
            keep = np.ones(len(self._keys), dtype=bool)
            keep[pos[hit]] = False
            self._keys, self._counts, self._last = self._keys[keep], self._counts[keep], self._last[keep]

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (ids ascending, counts, last step seen)."""
        return self._keys.copy(), self._counts.copy(), self._last.copy()

    def load(self, ids: np.ndarray, counts: np.ndarray, last: np.ndarray) -> None:
        """Replace the content with (distinct ``ids``, ``counts``, ``last``) (a restored version)."""
        order = np.argsort(np.asarray(ids, np.int64), kind="stable")
        self._keys = np.asarray(ids, np.int64)[order]
        self._counts = np.asarray(counts, np.int64)[order]
        self._last = np.asarray(last, np.int64)[order]
