"""Collisionless, vectorised maps from raw int64 ids to row slots, O(ids in the call).

``_HashIndex`` is an open-addressing hash table written in numpy: a power-of-two array of
buckets, each holding a *slot* (int32; -1 empty, -2 deleted). The key of a slot is not kept in
the bucket: it is read from the owner's ``slot -> key`` array (``IdMap.slot_key``), so a bucket
costs 4 bytes. A batch is processed in vectorised *rounds*: every id still looking gathers its
current bucket, the ids that are done (found, or hit an empty bucket) leave, the others move on
along a triangular probe sequence (``h, h+1, h+3, h+6, ...`` mod 2**k, which visits every bucket).
Inserts of new ids resolve collisions inside a batch by letting each contended bucket go to
exactly one claimant per round (the losers probe on). Deletion leaves a tombstone; an insert
reuses the first free or deleted bucket on its path (keys inserted are known to be absent), and
the index is rebuilt (O(entries), amortised over at least ``capacity / 4`` deletions) once
live + deleted buckets pass 3/4 of the array. Live keys stay at load factor <= 1/2.

``IdMap`` (raw id -> slot of a fixed-capacity table) keeps what it always kept: free slots are
a stack (so which slot an id gets is exactly what it was with the sorted map before),
``slot_key`` / ``occupied`` are its inverse, and ``items()`` returns ids ascending.

``CountTable`` holds per-id counts (and last step seen) for ids that are not admitted yet
(frequency admission): dense entry arrays indexed by the same hash index, bounded to ``limit``
entries (beyond it the least recently seen are forgotten, down to 90%, chosen exactly as the
sorted table before chose them: ranked in ascending-id order).

Memory per slot of capacity: ``slot_key`` 8 B, ``occupied`` 1 B, the free stack 8 B, and the
index 4 B x (2 to 4 buckets per slot) = 8-16 B; 25-33 B per row in all.
"""

from __future__ import annotations

import numpy as np

_EMPTY = np.empty(0, dtype=np.int64)
_FREE = -1  # bucket never used
_DELETED = -2  # tombstone: a key was removed here; probing goes on past it
_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_MAX_LIVE = 0.5  # live buckets / buckets
_MAX_USED = 0.75  # (live + deleted) / buckets: beyond it the index is rebuilt


def _mix(ids: np.ndarray) -> np.ndarray:
    """A 64-bit avalanche (murmur3's finaliser) of every id, as uint64."""
    z = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(33)
        z *= _MIX1
        z ^= z >> np.uint64(33)
        z *= _MIX2
        z ^= z >> np.uint64(33)
    return z


def _buckets_for(entries: int) -> int:
    """The power of two of buckets that holds ``entries`` live keys at load factor <= 1/2 (>= 8)."""
    need = max(8, int(np.ceil(max(entries, 1) / _MAX_LIVE)))
    return 1 << (need - 1).bit_length()


class _HashIndex:
    """key -> slot for keys held in an external ``slot -> key`` array (see the module docstring).

    Every method takes that array (``keys_of``) as an argument, so its owner may replace it."""

    def __init__(self, entries: int) -> None:
        self._alloc(_buckets_for(entries))
        self.live = 0
        self.deleted = 0

    def _alloc(self, buckets: int) -> None:
        self.mask = buckets - 1
        self.bits = buckets.bit_length() - 1
        self.dtype = np.int32 if buckets < 2**31 else np.int64
        self.table = np.full(buckets, _FREE, dtype=self.dtype)

    @property
    def buckets(self) -> int:
        return self.mask + 1

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def _start(self, ids: np.ndarray) -> np.ndarray:
        if self.bits == 0:
            return np.zeros(len(ids), np.int64)
        return (_mix(ids) >> np.uint64(64 - self.bits)).astype(np.int64)

    def lookup(self, ids: np.ndarray, keys_of: np.ndarray) -> np.ndarray:
        """Slot of each of ``ids`` (int64), -1 where the id is not held."""
        n = len(ids)
        out = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.live == 0:
            return out
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        pos = self._start(ids)
        act = None  # None: every id still looks (the first round needs no gathers of ids)
        keys = ids
        step = 0
        while len(pos):
            b = self.table[pos].astype(np.int64, copy=False)
            hit = b >= 0
            hit[hit] = keys_of[b[hit]] == keys[hit]
            if act is None:
                out[hit] = b[hit]
            else:
                out[act[hit]] = b[hit]
            go = (b != _FREE) & ~hit  # a deleted bucket or another key: probe on
            if not go.any():
                break
            where = np.flatnonzero(go)
            act = where if act is None else act[where]
            keys, pos = keys[where], pos[where]
            step += 1
            pos = (pos + step) & self.mask
        return out

    def insert(self, ids: np.ndarray, slots: np.ndarray, keys_of: np.ndarray) -> None:
        """Index distinct ``ids`` (none held yet) at ``slots``; grows or cleans the index first if needed."""
        n = len(ids)
        if n == 0:
            return
        if self.live + n > _MAX_LIVE * self.buckets or self.live + self.deleted + n > _MAX_USED * self.buckets:
            raise _NeedsRebuild(self.live + n)
        self._place(np.ascontiguousarray(ids, np.int64), np.asarray(slots))

    def _place(self, ids: np.ndarray, slots: np.ndarray) -> None:
        pos = self._start(ids)
        val = slots.astype(self.dtype, copy=False)
        table = self.table
        step = 0
        reused = 0
        while len(pos):
            b = table[pos]
            open_ = b < 0  # free or deleted: an absent key may take it
            cand = np.flatnonzero(open_)
            won = np.zeros(len(pos), dtype=bool)
            if len(cand):
                cp = pos[cand]
                # each contended bucket goes to one claimant: write claim marks, read back who holds it
                marks = (-3 - np.arange(len(cand))).astype(self.dtype)
                table[cp] = marks
                mine = table[cp] == marks
                winners = cand[mine]
                reused += int(np.count_nonzero(b[winners] == _DELETED))
                table[pos[winners]] = val[winners]
                won[winners] = True
            keep = np.flatnonzero(~won)
            if len(keep) == 0:
                break
            pos, val = pos[keep], val[keep]
            step += 1
            pos = (pos + step) & self.mask
        self.live += len(ids)
        self.deleted -= reused

    def remove(self, ids: np.ndarray, slots: np.ndarray) -> None:
        """Unindex distinct held ``ids`` whose slots are ``slots``: their buckets become tombstones."""
        n = len(ids)
        if n == 0:
            return
        pos = self._start(np.ascontiguousarray(ids, np.int64))
        want = np.asarray(slots, dtype=np.int64)
        step = 0
        while len(pos):
            b = self.table[pos]
            hit = b == want
            if np.any(b[~hit] == _FREE):
                raise KeyError("IdMap: removing an id that is not held")
            self.table[pos[hit]] = _DELETED
            keep = np.flatnonzero(~hit)
            if len(keep) == 0:
                break
            pos, want = pos[keep], want[keep]
            step += 1
            pos = (pos + step) & self.mask
        self.live -= n
        self.deleted += n

    def repoint(self, ids: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Held ``ids`` move from slots ``old`` to slots ``new`` (their buckets are rewritten)."""
        if len(ids) == 0:
            return
        pos = self._start(np.ascontiguousarray(ids, np.int64))
        want = np.asarray(old, dtype=np.int64)
        to = np.asarray(new).astype(self.dtype)
        step = 0
        while len(pos):
            b = self.table[pos]
            hit = b == want
            self.table[pos[hit]] = to[hit]
            keep = np.flatnonzero(~hit)
            if len(keep) == 0:
                break
            pos, want, to = pos[keep], want[keep], to[keep]
            step += 1
            pos = (pos + step) & self.mask

    def rebuild(self, ids: np.ndarray, slots: np.ndarray, entries: int) -> None:
        """Drop everything and index ``(ids, slots)`` in an index sized for ``entries`` live keys."""
        buckets = max(_buckets_for(entries), _buckets_for(len(ids)))
        if buckets != self.buckets:
            self._alloc(buckets)
        else:
            self.table.fill(_FREE)
        self.live = 0
        self.deleted = 0
        self._place(np.ascontiguousarray(ids, np.int64), np.asarray(slots))


class _NeedsRebuild(Exception):
    def __init__(self, entries: int) -> None:
        self.entries = entries


class IdMap:
    """Raw id -> slot in ``[0, capacity)``.

    >>> m = IdMap(4); m.insert(np.array([-9, 2**40])).tolist()
    [0, 1]
    >>> m.lookup(np.array([2**40, 5, -9])).tolist()
    [1, -1, 0]
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._index = _HashIndex(capacity)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)  # stack: pop from the end
        self._n_free = capacity
        self.slot_key = np.zeros(capacity, dtype=np.int64)
        self.occupied = np.zeros(capacity, dtype=bool)

    def __len__(self) -> int:
        return self.capacity - self._n_free

    @property
    def free(self) -> int:
        return self._n_free

    @property
    def nbytes(self) -> int:
        """Bytes the map holds (index, slot -> id, occupancy, free stack)."""
        return self._index.nbytes + self.slot_key.nbytes + self.occupied.nbytes + self._free.nbytes

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id (int64), -1 where the id has no slot."""
        return self._index.lookup(ids, self.slot_key)

    def insert(self, ids: np.ndarray) -> np.ndarray:
        """Give each of ``ids`` (distinct, absent) a free slot; returns the slots in input order."""
        n = len(ids)
        if n > self._n_free:
            raise ValueError(f"IdMap.insert: {n} new ids but only {self._n_free} free slots")
        if n == 0:
            return _EMPTY
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        slots = self._free[self._n_free - n : self._n_free][::-1].copy()
        self._n_free -= n
        self.slot_key[slots] = ids
        self.occupied[slots] = True
        try:
            self._index.insert(ids, slots, self.slot_key)
        except _NeedsRebuild as need:  # too many tombstones: re-index every held id (amortised)
            held = np.flatnonzero(self.occupied)
            self._index.rebuild(self.slot_key[held], held, max(need.entries, self.capacity))
        return slots

    def remove_slots(self, slots: np.ndarray) -> np.ndarray:
        """Free ``slots`` (distinct, occupied); returns the raw ids that owned them."""
        if len(slots) == 0:
            return _EMPTY
        slots = np.asarray(slots, dtype=np.int64)
        ids = self.slot_key[slots].copy()
        self._index.remove(ids, slots)
        self.occupied[slots] = False
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        return ids

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, slots), ids ascending (O(capacity + rows log rows): for versions, not steps)."""
        slots = np.flatnonzero(self.occupied)
        ids = self.slot_key[slots]
        order = np.argsort(ids, kind="stable")
        return ids[order], slots[order]


class CountTable:
    """Counts (and last step seen) of ids waiting for admission; bounded to ``limit`` entries."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._index = _HashIndex(16)
        self._n = 0
        self._keys = np.zeros(16, np.int64)
        self._counts = np.zeros(16, np.int64)
        self._last = np.zeros(16, np.int64)

    def __len__(self) -> int:
        return self._n

    def _grow(self, n: int) -> None:
        size = len(self._keys)
        if n <= size:
            return
        while size < n:
            size *= 2
        for name in ("_keys", "_counts", "_last"):
            arr = np.zeros(size, np.int64)
            arr[: self._n] = getattr(self, name)[: self._n]
            setattr(self, name, arr)

    def _reindex(self, entries: int) -> None:
        self._index.rebuild(self._keys[: self._n], np.arange(self._n), entries)

    def add(self, ids: np.ndarray, counts: np.ndarray, step: int) -> np.ndarray:
        """Add ``counts`` for distinct ``ids``; returns every id's total count so far."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        pos = self._index.lookup(ids, self._keys)
        hit = pos >= 0
        ph = pos[hit]
        self._counts[ph] += counts[hit]
        self._last[ph] = step
        totals = counts.astype(np.int64, copy=True)
        totals[hit] = self._counts[ph]
        new = np.flatnonzero(~hit)
        if len(new):
            k, at = len(new), self._n
            self._grow(at + k)
            self._keys[at : at + k] = ids[new]
            self._counts[at : at + k] = counts[new]
            self._last[at : at + k] = step
            self._n += k
            try:
                self._index.insert(ids[new], np.arange(at, at + k), self._keys)
            except _NeedsRebuild as need:
                self._reindex(need.entries)
        if self._n > self.limit:  # forget the least recently seen ids, down to 90% (amortised)
            target = max(1, (self.limit * 9) // 10)
            order = np.argsort(self._keys[: self._n])  # rank in ascending-id order, as the sorted table did
            keep = order[np.sort(np.argpartition(-self._last[: self._n][order], target - 1)[:target])]
            self._set(self._keys[keep], self._counts[keep], self._last[keep])
        return totals

    def peek(self, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The totals :meth:`add` would return for distinct ``ids``, without changing anything."""
        pos = self._index.lookup(ids, self._keys)
        hit = pos >= 0
        totals = counts.astype(np.int64, copy=True)
        totals[hit] += self._counts[pos[hit]]
        return totals

    def discard(self, ids: np.ndarray) -> None:
        """Forget ``ids`` (those present): O(len(ids)); the last entries move into the holes."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        pos = self._index.lookup(ids, self._keys)
        gone = pos[pos >= 0]
        if len(gone) == 0:
            return
        self._index.remove(self._keys[gone], gone)
        n_after = self._n - len(gone)
        holes = np.sort(gone[gone < n_after])
        tail = np.ones(self._n - n_after, dtype=bool)
        tail[gone[gone >= n_after] - n_after] = False
        movers = n_after + np.flatnonzero(tail)  # live entries beyond the new end, as many as the holes
        if len(movers):
            self._index.repoint(self._keys[movers], movers, holes)
            for arr in (self._keys, self._counts, self._last):
                arr[holes] = arr[movers]
        self._n = n_after

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (ids ascending, counts, last step seen)."""
        order = np.argsort(self._keys[: self._n])
        return self._keys[order], self._counts[order], self._last[order]

    def load(self, ids: np.ndarray, counts: np.ndarray, last: np.ndarray) -> None:
        """Replace the content with (distinct ``ids``, ``counts``, ``last``) (a restored version)."""
        order = np.argsort(np.asarray(ids, np.int64), kind="stable")
        self._set(
            np.asarray(ids, np.int64)[order], np.asarray(counts, np.int64)[order], np.asarray(last, np.int64)[order]
        )

    def _set(self, keys: np.ndarray, counts: np.ndarray, last: np.ndarray) -> None:
        n = len(keys)
        size = max(16, len(self._keys) if n <= len(self._keys) else 1 << (n - 1).bit_length())
        self._keys, self._counts, self._last = (np.zeros(size, np.int64) for _ in range(3))
        self._keys[:n], self._counts[:n], self._last[:n] = keys, counts, last
        self._n = n
        self._reindex(max(n, min(self.limit, len(self._keys))))
