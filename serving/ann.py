"""Approximate candidate retrieval for large catalogues: a FAISS IVF inner-product index per version.

Exact retrieval (:class:`serving.retrieval.ItemIndex`) costs O(N d) per query; above
``ServeConfig.ann_above`` items (default one million) a replica builds this index instead::

    coarse quantizer: nlist centroids (k-means on a sample of the item rows)
    inverted lists:   each item in the list of its nearest centroid (by inner product)
    query:            the nprobe best lists scanned exactly -> top n by inner product

Following versions: the next version's index is a copy of this one with only the items its
deltas changed (or added, or removed) re-assigned (:meth:`AnnItemIndex.updated`), so it follows
a stream of small deltas in O(N) memory copy + O(changed) work; the centroids are kept until a
version changes more than ``retrain_share`` of the items. Each version owns its copy: a request
retrieves with the index of the version that scores it.

Filters: excluded ids and a category become a FAISS ``IDSelector`` (searched inside the index,
never post-filtered away).

>>> idx = AnnItemIndex.build(np.arange(4000), np.random.default_rng(0).standard_normal((4000, 8)).astype("f4"))
>>> ids, scores = idx.top(idx.rows[7], 5)
>>> len(ids)
5
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover: faiss-cpu is pinned in requirements.txt
        raise RuntimeError("the ANN index needs faiss-cpu (pip install faiss-cpu, pinned in requirements.txt)") from exc
    return faiss


@dataclasses.dataclass(frozen=True)
class AnnOptions:
    """nlist: inverted lists (0: about sqrt(N)); train_iterations: k-means iterations; nprobe: lists scanned per query; train_sample: rows
    the centroids are trained on; retrain_share: a version changing more items than this retrains."""

    nlist: int = 0
    nprobe: int = 64
    train_iterations: int = 10
    train_sample: int = 100_000
    retrain_share: float = 0.2
    seed: int = 0


class AnnItemIndex:
    """Approximate retrieval: a :class:`serving.retrieval.CandidateIndex` (``ids``, ``rows``, ``categories``,
    ``top``), like the exact :class:`serving.retrieval.ItemIndex`; with ``nprobe >= nlist`` it is exact."""

    def __init__(
        self, ids: np.ndarray, rows: np.ndarray, index, categories: np.ndarray | None, options: AnnOptions
    ) -> None:
        self.ids = ids  # int64 ascending
        self.rows = rows  # float32 [N, d] aligned with ids (numpy)
        self.index = index  # faiss IndexIVFFlat, ids as labels
        self.categories = categories
        self.options = options

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(
        cls, ids: np.ndarray, rows, categories: np.ndarray | None = None, options: AnnOptions = AnnOptions()
    ) -> "AnnItemIndex":
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, np.int64)
        rows = np.ascontiguousarray(rows.numpy() if hasattr(rows, "numpy") else rows, np.float32)
        n, d = rows.shape
        nlist = options.nlist or max(1, min(int(math.sqrt(max(n, 1))), max(n // 39, 1)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = rows
        if n > options.train_sample:
            pick = np.random.default_rng(options.seed).choice(n, options.train_sample, replace=False)
            sample = rows[np.sort(pick)]
        index.cp.seed = options.seed
        index.cp.niter = options.train_iterations
        index.train(sample)
        index.add_with_ids(rows, ids)
        index.nprobe = min(options.nprobe, nlist)
        return cls(ids, rows, index, categories, options)

    def updated(self, ids: np.ndarray, rows, categories: np.ndarray | None = None) -> "AnnItemIndex":
        """The index of the next version (its full item table ``ids``/``rows``): a copy of this one with
        the changed, new and removed items re-assigned; a full rebuild when too much changed."""
        faiss = _faiss()
        ids = np.ascontiguousarray(ids, np.int64)
        rows = np.ascontiguousarray(rows.numpy() if hasattr(rows, "numpy") else rows, np.float32)
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        same_id = self.ids[pos] == ids if len(self.ids) else np.zeros(len(ids), bool)
        changed = ~same_id
        changed[same_id] = (self.rows[pos[same_id]] != rows[same_id]).any(axis=1)
        removed = np.setdiff1d(self.ids, ids, assume_unique=True)
        moved = int(changed.sum()) + len(removed)
        if moved > self.options.retrain_share * max(len(ids), 1):
            return AnnItemIndex.build(ids, rows, categories, self.options)
        index = faiss.clone_index(self.index)
        gone = np.concatenate([removed, ids[changed & same_id]])
        if len(gone):
            index.remove_ids(faiss.IDSelectorBatch(gone))
        if changed.any():
            index.add_with_ids(rows[changed], ids[changed])
        return AnnItemIndex(ids, rows, index, categories, self.options)

    def top(
        self, query: np.ndarray, n: int, exclude: np.ndarray | None = None, category: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        if len(self.ids) == 0 or n <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sel = None
        if category is not None:
            if self.categories is None:
                raise ValueError("a category filter needs the item catalogue (serve --catalogue FILES)")
            allowed = self.ids[self.categories == category]
            if exclude is not None and len(exclude):
                allowed = np.setdiff1d(allowed, np.asarray(exclude, np.int64))
            if len(allowed) == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            sel = faiss.IDSelectorBatch(allowed)
        elif exclude is not None and len(exclude):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.asarray(exclude, np.int64)))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=self.index.nprobe) if sel is not None else None
        q = np.ascontiguousarray(query, np.float32).reshape(1, -1)
        k = min(n, len(self.ids))
        scores, labels = self.index.search(q, k, params=params) if params is not None else self.index.search(q, k)
        keep = labels[0] >= 0
        return labels[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)
