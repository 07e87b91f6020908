"""NDCG@k with graded gains, and query folds.

``ndcg_at_k(ranked_gains, ideal_gains, k)``: DCG = sum_i (2^g_i - 1) / log2(i + 2) over the first k
ranked products, divided by the DCG of the best possible order of the query's judged gains (every
judged product, wherever the ranking put it; an unjudged product has gain 0). A query with no
positive judgment has NDCG NaN (it is left out of means).

    >>> round(ndcg_at_k([2, 0, 1], [2, 1, 1], k=10), 4)
    0.8597
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dcg(gains: Sequence[float], k: int) -> float:
    g = np.asarray(gains, np.float64)[:k]
    return float(((2.0**g - 1.0) / np.log2(np.arange(2, len(g) + 2))).sum())


def ndcg_at_k(ranked_gains: Sequence[float], ideal_gains: Sequence[float], k: int = 10) -> float:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ideal = dcg(np.sort(np.asarray(ideal_gains, np.float64))[::-1], k)
    return dcg(ranked_gains, k) / ideal if ideal > 0 else float("nan")


def query_folds(query_ids: Sequence[int], folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint sets of query ids covering ``query_ids`` (a seeded permutation, split evenly)."""
    q = np.unique(np.asarray(query_ids, np.int64))
    if not 2 <= folds <= len(q):
        raise ValueError(f"folds must be in [2, {len(q)}] for {len(q)} queries, got {folds}")
    perm = np.random.default_rng(seed).permutation(q)
    return [np.sort(part) for part in np.array_split(perm, folds)]


def query_batches(query_ids: Sequence[int], batch_queries: int, seed: int) -> list[np.ndarray]:
    """The replay order: a seeded permutation of the queries cut into batches of ``batch_queries``."""
    if batch_queries < 1:
        raise ValueError(f"batch_queries must be >= 1, got {batch_queries}")
    perm = np.random.default_rng(seed).permutation(np.unique(np.asarray(query_ids, np.int64)))
    return [perm[i : i + batch_queries] for i in range(0, len(perm), batch_queries)]
