"""Ranking metrics (vectorised) and progressive validation.

* ``auc(labels, scores)``: the probability that a random positive scores above a random
  negative, ties counting one half (Mann-Whitney U with average ranks); equals
  ``sklearn.metrics.roc_auc_score``. NaN when only one class is present, and NaN when any score
  is NaN or infinite (a broken model is never ranked: NaN sorts last, so ranking it would give
  a model that scores NaN for every positive an AUC of 1.0).
* ``log_loss(labels, scores)``: mean of -[y log p + (1 - y) log(1 - p)], p clipped to
  [1e-7, 1 - 1e-7]; NaN when any score is NaN or infinite.
* :class:`ProgressiveValidator`: each data file is scored *before* the model trains on it. Per
  file, the exact AUC and log-loss and the count of non-finite and out-of-range scores
  (:class:`FileMetrics`); cumulatively and per version window, a fixed-size score histogram per
  class (:class:`versions.publish.ScoreHistogram`, 2048 log-odds bins), so its state does not grow
  with the number of examples. The cumulative AUC is the binned scores' AUC; its distance from the
  exact AUC of every example is at most ``auc_error_bound`` (half the share of positive/negative
  pairs whose scores share a bin), reported beside it. The cumulative log-loss is exact (a
  running sum).

Why not ``torchrec.metrics`` (installed; AUCMetric, NE, calibration): its ``compute_auc`` sorts
the raw scores of the window with ``torch.argsort`` and integrates per example, so NaN scores
(sorted first in descending order) give AUC 1.0 like the old ``auc()`` here, tied scores are
ordered arbitrarily (four equal scores with labels 1, 1, 0, 0 give 1.0, not 0.5), and a window
with one class is reported as 0.5; its windowed AUC keeps the window's raw tensors and re-sorts
them on every compute (memory O(window), not a cumulative AUC), and the publish gate, which
reads these statistics, may not import torch (``versions`` imports only ``common``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from versions.publish import ScoreHistogram

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
    """ROC AUC, ties handled; NaN when labels hold one class only or any score is not finite.

    >>> auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> auc(np.array([0, 1]), np.array([0.2, np.nan]))
    nan
    """
    y = np.asarray(labels).reshape(-1) > 0.5
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"auc: {len(y)} labels but {len(s)} scores")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(s).all():
        return float("nan")
    r = _average_ranks(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``scores``; NaN for no examples or any non-finite score.

    >>> round(log_loss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
    0.693147
    """
    y = np.asarray(labels, np.float64).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"log_loss: {len(y)} labels but {len(s)} scores")
    if len(y) == 0 or not np.isfinite(s).all():
        return float("nan")
    p = np.clip(s, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclasses.dataclass(frozen=True)
class FileMetrics:
    """Progressive metrics of one data file: scored before training on it. ``nonfinite``: scores
    that were NaN or infinite (then ``auc`` and ``log_loss`` are NaN); ``out_of_range``: finite
    scores outside [0, 1]; ``score_min``/``score_max`` over the finite scores (None when none)."""

    file: str
    examples: int
    positives: int
    auc: float
    log_loss: float
    train_seconds: float = 0.0
    nonfinite: int = 0
    out_of_range: int = 0
    score_min: float | None = None
    score_max: float | None = None

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.train_seconds if self.train_seconds > 0 else float("nan")


class ProgressiveValidator:
    """Per-file (exact) and cumulative (binned, bounded) AUC / log-loss of scores made before training.

    Its state is the latest ``keep_files`` per-file records (``files``; older ones are dropped,
    except those after ``hold_from``, the first record a version has not taken yet), running sums
    for the mean per-file AUC, and two fixed-size histograms (cumulative, and the current version
    window's): it grows neither with the number of examples nor with the number of data files
    (issue 21). ``recorded`` counts every record; ``since(n)`` gives those after the n-th. The version
    keeper moves ``hold_from`` at each cut; where none does (a replay that reads every record at the end,
    ``trainer/quality.py``), every record is kept.
    ``take_window()`` hands the histogram of the scores recorded since the last call to the
    version writer and starts a new one.

    >>> v = ProgressiveValidator()
    >>> v.record("s0", np.array([0, 1]), np.array([0.2, 0.9])).auc
    1.0
    >>> v.cumulative()["examples"]
    2
    """

    KEEP_FILES = 128  # full before a soak's warm-up (200 versions)

    def __init__(self, keep_files: int | None = None) -> None:
        self.files: list[FileMetrics] = []  # the latest records (bounded), oldest first
        self.keep_files = self.KEEP_FILES if keep_files is None else int(keep_files)
        if self.keep_files < 1:
            raise ValueError(f"keep_files must be >= 1, got {keep_files!r}")
        self.recorded = 0  # records ever made; files[0] is record number recorded - len(files)
        self.hold_from = 0  # records from this number on are kept whatever keep_files says (not yet in a version)
        self._auc_sum, self._auc_n = 0.0, 0  # mean per-file AUC over every record (files with one class left out)
        self._hist = ScoreHistogram.empty()
        self._window = ScoreHistogram.empty()
        self._loss_sum = 0.0  # sum of per-example log-loss over examples with finite scores
        self._loss_n = 0
        self._nonfinite = 0
        self._examples = 0

    def record(self, file: str, labels: np.ndarray, scores: np.ndarray, train_seconds: float = 0.0) -> FileMetrics:
        labels = np.asarray(labels, np.float32).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        h = ScoreHistogram.of(labels, scores)
        ll = log_loss(labels, scores)
        m = FileMetrics(
            file,
            len(labels),
            int((labels > 0.5).sum()),
            auc(labels, scores),
            ll,
            train_seconds,
            h.nonfinite,
            h.out_of_range,
            h.score_min,
            h.score_max,
        )
        self.files.append(m)
        self.recorded += 1
        if not np.isnan(m.auc):
            self._auc_sum += m.auc
            self._auc_n += 1
        drop = min(len(self.files) - self.keep_files, self.hold_from - (self.recorded - len(self.files)))
        if drop > 0:
            del self.files[:drop]
        self._hist = self._hist + h
        self._window = self._window + h
        self._examples += len(labels)
        self._nonfinite += h.nonfinite
        if h.nonfinite == 0 and len(labels):
            self._loss_sum += ll * len(labels)
            self._loss_n += len(labels)
        return m

    def set_train_seconds(self, seconds: float) -> None:
        """Attach the training time of the last recorded data file (known only after training on it)."""
        self.files[-1] = dataclasses.replace(self.files[-1], train_seconds=seconds)

    def since(self, mark: int) -> list[FileMetrics]:
        """The records made after the ``mark``-th (those still held: see ``hold_from``)."""
        first = self.recorded - len(self.files)
        return self.files[max(0, mark - first) :]

    def take_window(self) -> ScoreHistogram:
        """The score histogram of every example recorded since the last call (a version's window)."""
        w, self._window = self._window, ScoreHistogram.empty()
        return w

    def cumulative(self) -> dict[str, float]:
        """AUC and log-loss over every example scored so far: the AUC of the pooled binned scores
        (``auc_error_bound``: at most this far from the exact pooled AUC), the log-loss exact (a
        running sum); ``nonfinite``: examples with a NaN/inf score (when any, the AUC and the
        log-loss are NaN: a broken model never looks good)."""
        a, _, bound = self._hist.auc()
        ll = self._loss_sum / self._loss_n if self._loss_n else float("nan")
        if self._nonfinite:
            a = bound = ll = float("nan")
        return {
            "examples": self._examples,
            "auc": a,
            "auc_error_bound": bound,
            "log_loss": ll,
            "nonfinite": self._nonfinite,
        }

    def mean_file_auc(self) -> float:
        """Mean of the per-data-file AUCs over every record (files with one class only are left out)."""
        return self._auc_sum / self._auc_n if self._auc_n else float("nan")

    mean_shard_auc = mean_file_auc  # the name before issue 23 ("shard" is the PS's word); kept for callers
