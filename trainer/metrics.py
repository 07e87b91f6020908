"""Ranking metrics (vectorised) and progressive validation.

* ``auc(labels, scores)``: the probability that a random positive scores above a random
  negative, ties counting one half (Mann-Whitney U with average ranks); equals
  ``sklearn.metrics.roc_auc_score``. NaN when only one class is present.
* ``log_loss(labels, scores)``: mean of -[y log p + (1 - y) log(1 - p)], p clipped to
  [1e-7, 1 - 1e-7].
* :class:`ProgressiveValidator`: each shard is scored *before* the model trains on it;
  the validator keeps per-shard metrics and cumulative ones over every scored example.
"""

from __future__ import annotations

import dataclasses

import numpy as np

EPS = 1e-7


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, ties handled; NaN when labels hold one class only.

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"auc: {len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``scores``; NaN for no examples.

    >>> round(log_loss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
    0.693147
    """
    y = np.asarray(labels, np.float64).reshape(-1)
    p = np.clip(np.asarray(scores, np.float64).reshape(-1), EPS, 1 - EPS)
    if len(y) != len(p):
        raise ValueError(f"log_loss: {len(y)} labels but {len(p)} scores")
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclasses.dataclass(frozen=True)
class FileMetrics:
    """Progressive metrics of one data file: scored before training on it."""

    file: str
    examples: int
    positives: int
    auc: float
    log_loss: float
    train_seconds: float = 0.0

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else float("nan")


class ProgressiveValidator:
    """Per-shard and cumulative AUC / log-loss of scores made before training.

    >>> v = ProgressiveValidator()
    >>> v.record("s0", np.array([0, 1]), np.array([0.2, 0.9])).auc
    1.0
    >>> v.cumulative()["examples"]
    2
    """

    def __init__(self) -> None:
        self.files: list[FileMetrics] = []
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []

    def record(self, file: str, labels: np.ndarray, scores: np.ndarray, train_seconds: float = 0.0) -> FileMetrics:
        labels = np.asarray(labels, np.float32).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        m = FileMetrics(file, len(labels), int((labels > 0.5).sum()), auc(labels, scores),
                         log_loss(labels, scores), train_seconds)
        self.files.append(m)
        self._labels.append(labels)
        self._scores.append(scores)
        return m

    def set_train_seconds(self, seconds: float) -> None:
        """Attach the training time of the last recorded shard (known only after training on it)."""
        self.files[-1] = dataclasses.replace(self.files[-1], train_seconds=seconds)

    def cumulative(self) -> dict[str, float]:
        """AUC and log-loss over every example scored so far (one pooled ranking)."""
        if not self.files:
            return {"examples": 0, "auc": float("nan"), "log_loss": float("nan")}
        y = np.concatenate(self._labels)
        s = np.concatenate(self._scores)
        return {"examples": len(y), "auc": auc(y, s), "log_loss": log_loss(y, s)}

    def mean_shard_auc(self) -> float:
        """Mean of the per-shard AUCs (shards with one class only are left out)."""
        vals = [m.auc for m in self.files if not np.isnan(m.auc)]
        return float(np.mean(vals)) if vals else float("nan")
