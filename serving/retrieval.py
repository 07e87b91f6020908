"""Candidate retrieval: exact top-k inner product over a version's item embeddings (torch).

The index is the item table of one version (every item the version holds, new ones included),
rebuilt with each version. A query is the user's embedding row::

    scores = item_rows [N, d] @ user_row [d]      one matrix-vector product
    scores[excluded or filtered out] = -inf
    top = topk(scores, n)                         ids and inner products, best first

Exact search costs O(N d) per query: about 1 ms for 1M 16-d items on one core. Above
``ann_above`` items a replica builds :class:`serving.ann.AnnItemIndex` (FAISS IVF) instead. Both
implement :class:`CandidateIndex` (a ``typing.Protocol``); the conformance test
``tests/unit/test_protocols.py`` holds every implementation to it.

>>> idx = ItemIndex(np.array([1, 2, 3]), torch.tensor([[1., 0.], [0., 1.], [2., 0.]]))
>>> idx.top(np.array([1., 0.], np.float32), 2)[0].tolist()
[3, 1]
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class CandidateIndex(Protocol):
    """The item index of one version: the items a replica retrieves candidates from.

    ``ids``: int64 ascending; ``rows``: float32 [N, d] aligned with them (numpy or torch);
    ``categories``: int64 [N] aligned, or None without a catalogue. ``top(query, n, exclude, category)``:
    (ids int64 [<= n], inner products float32), best first; ``exclude``d ids and items outside
    ``category`` are never returned; a category filter without categories is a ValueError.
    """

    ids: np.ndarray
    rows: object
    categories: np.ndarray | None

    def __len__(self) -> int: ...

    def top(
        self, query: np.ndarray, n: int, exclude: np.ndarray | None = None, category: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class ItemIndex:
    """Exact retrieval (a :class:`CandidateIndex`): one matrix-vector product per query."""

    def __init__(self, ids: np.ndarray, rows: torch.Tensor, categories: np.ndarray | None = None) -> None:
        self.ids = np.ascontiguousarray(ids, np.int64)  # ascending
        self.rows = rows  # float32 [N, d], aligned with ids
        self.categories = categories  # int64 [N] aligned with ids, or None (no catalogue)

    def __len__(self) -> int:
        return len(self.ids)

    def top(
        self, query: np.ndarray, n: int, exclude: np.ndarray | None = None, category: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item ids int64 [<= n], inner products float32) best first; ``exclude`` ids and items
        outside ``category`` (needs categories) are never returned."""
        if len(self.ids) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = torch.mv(self.rows, torch.from_numpy(np.ascontiguousarray(query, np.float32)))
        allowed = len(self.ids)
        if category is not None:
            if self.categories is None:
                raise ValueError("a category filter needs the item catalogue (serve --catalogue FILES)")
            off = torch.from_numpy(self.categories != category)
            scores.masked_fill_(off, float("-inf"))
            allowed -= int(off.sum())
        if exclude is not None and len(exclude):
            exclude = np.asarray(exclude, np.int64)
            pos = np.minimum(np.searchsorted(self.ids, exclude), len(self.ids) - 1)
            pos = np.unique(pos[self.ids[pos] == exclude])
            if len(pos):
                allowed -= int(torch.isfinite(scores[torch.from_numpy(pos)]).sum())
                scores[torch.from_numpy(pos)] = float("-inf")
        n = min(n, max(allowed, 0))
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        vals, pos = torch.topk(scores, n)
        return self.ids[pos.numpy()], vals.numpy()
