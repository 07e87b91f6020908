"""A bounded memory of recent event ids, for duplicate detection without per-id Python loops.

Each :meth:`DedupWindow.add` is one *generation* (a sequence number): its ids, with their
event times, are kept as a sorted run; a lookup is one ``searchsorted`` per run, and small
neighbouring runs are merged so the number of runs stays small. The window is bounded twice:

- by count: once more than ``capacity`` ids are held, whole generations are forgotten, oldest
  first (the newest generation is always kept);
- by time: ids whose event time is older than ``floor`` (the caller passes the watermark minus
  the horizon) are forgotten.

Both rules depend only on the window's content (ids, times, generations), never on how it
is split in runs, so a window restored from a model version (one run) forgets exactly what
the uninterrupted window forgets: a resumed run drops exactly the duplicates it would have.

Saved incrementally: :meth:`export` gives the ids added since a generation mark and the ids
forgotten since a journal mark (a model version's delta holds only those; see
:mod:`trainer.data.state`).
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
        self._runs: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()  # (ids sorted, ts, generation)
        self._size = 0
        self.generation = 0  # the next add's generation
        self._gen_counts: dict[int, int] = {}  # generation -> ids held (oldest first)
        self._forgotten: list[np.ndarray] = []  # ids forgotten since the journal was last trimmed
        self.forgotten_base = 0  # journal position of self._forgotten[0]

    def __len__(self) -> int:
        return self._size

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        found = np.zeros(len(ids), bool)
        for run, _, _ in self._runs:
            pos = np.searchsorted(run, ids)
            pos = np.minimum(pos, len(run) - 1)
            found |= run[pos] == ids
        return found

    def add(self, ids: np.ndarray, ts: np.ndarray | None = None, floor: int | None = None) -> None:
        """Remember ``ids`` (assumed not yet present and unique among themselves) with their event times
        ``ts`` as one generation; then forget what the bounds say (``floor``: forget ids older than it)."""
        ids = np.asarray(ids, np.int64)
        ts = np.zeros(len(ids), np.int64) if ts is None else np.asarray(ts, np.int64)
        if len(ids):
            order = np.argsort(ids, kind="stable")
            self._runs.append((ids[order], ts[order], np.full(len(ids), self.generation, np.int64)))
            self._size += len(ids)
            self._gen_counts[self.generation] = len(ids)
            self.generation += 1
            self._merge_runs()
        self.forget(floor)

    def _merge_runs(self) -> None:
        while len(self._runs) > MAX_RUNS:  # merge the adjacent pair with the smallest total size
            sizes = [len(self._runs[i][0]) + len(self._runs[i + 1][0]) for i in range(len(self._runs) - 1)]
            i = int(np.argmin(sizes))
            a, b = self._runs[i], self._runs[i + 1]
            ids = np.concatenate([a[0], b[0]])
            order = np.argsort(ids, kind="stable")
            self._runs[i] = (ids[order], np.concatenate([a[1], b[1]])[order], np.concatenate([a[2], b[2]])[order])
            del self._runs[i + 1]

    def forget(self, floor: int | None = None) -> None:
        """Apply the bounds: ids with event time < ``floor``; then whole generations, oldest first, while
        more than ``capacity`` ids are held."""
        cutoff = None
        if self._size > self.capacity:
            held, gens = self._size, list(self._gen_counts)
            i = 0
            while held > self.capacity and i < len(gens) - 1:  # the newest generation is always kept
                held -= self._gen_counts[gens[i]]
                i += 1
            cutoff = gens[i] if i else None
        if cutoff is None and floor is None:
            return
        runs: deque = deque()
        for ids, ts, gen in self._runs:
            drop = np.zeros(len(ids), bool)
            if cutoff is not None and gen.min() < cutoff:
                drop |= gen < cutoff
            if floor is not None and ts.min() < floor:
                drop |= ts < floor
            if drop.any():
                self._forgotten.append(ids[drop])
                for g, c in zip(*np.unique(gen[drop], return_counts=True)):
                    left = self._gen_counts.get(int(g), 0) - int(c)
                    if left > 0:
                        self._gen_counts[int(g)] = left
                    else:
                        self._gen_counts.pop(int(g), None)
                self._size -= int(drop.sum())
                keep = ~drop
                ids, ts, gen = ids[keep], ts[keep], gen[keep]
            if len(ids):
                runs.append((ids, ts, gen))
        self._runs = runs

    # -- state -------------------------------------------------------------------------
    @property
    def journal_end(self) -> int:
        """Position after the last forgotten-id batch (a mark for :meth:`export`)."""
        return self.forgotten_base + len(self._forgotten)

    def export(self, since_generation: int = 0, since_journal: int | None = None) -> dict[str, np.ndarray]:
        """Keyed arrays ``{"ids", "ts", "generation"}`` of the ids added at or after ``since_generation``
        (all with 0), sorted by id; with ``since_journal`` also ``deleted``: ids forgotten since then."""
        parts = [
            (ids[gen >= since_generation], ts[gen >= since_generation], gen[gen >= since_generation])
            for ids, ts, gen in self._runs
        ]
        ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        ts = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        gen = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
        order = np.argsort(ids, kind="stable")
        out = {"ids": ids[order], "ts": ts[order], "generation": gen[order]}
        if since_journal is not None:
            start = max(since_journal - self.forgotten_base, 0)
            gone = self._forgotten[start:]
            out["deleted"] = np.unique(np.concatenate(gone)) if gone else np.zeros(0, np.int64)
        return out

    def trim_journal(self, upto: int) -> None:
        """Drop the forgotten-id batches before journal position ``upto`` (they are in a committed version)."""
        n = max(0, min(upto - self.forgotten_base, len(self._forgotten)))
        del self._forgotten[:n]
        self.forgotten_base += n

    def load(self, arrays: dict[str, np.ndarray] | None, generation: int) -> None:
        """Replace the window by ``arrays`` (:meth:`export`'s keys) and the next generation number."""
        self._runs.clear()
        self._forgotten, self.forgotten_base = [], 0
        self._size = 0
        self._gen_counts = {}
        self.generation = int(generation)
        if arrays is not None and len(arrays["ids"]):
            ids = np.asarray(arrays["ids"], np.int64)
            order = np.argsort(ids, kind="stable")
            self._runs.append(
                (
                    ids[order],
                    np.asarray(arrays["ts"], np.int64)[order],
                    np.asarray(arrays["generation"], np.int64)[order],
                )
            )
            self._size = len(ids)
            g, c = np.unique(self._runs[0][2], return_counts=True)
            self._gen_counts = {int(a): int(b) for a, b in zip(g, c)}

    def state(self) -> np.ndarray:
        return np.concatenate([r[0] for r in self._runs]) if self._runs else np.zeros(0, np.int64)
