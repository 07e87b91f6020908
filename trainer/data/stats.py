"""Running mean/variance of dense features, mergeable across workers, saved with a model version.

Uses Chan et al.'s parallel update, so ``a.merge(b)`` equals the statistics of the
concatenated data (up to float rounding) whatever the split.

>>> s = RunningStats(2); s.update(np.array([[1., 10.], [3., 30.]])); s.mean
array([ 2., 20.])
"""

from __future__ import annotations

import numpy as np


class RunningStats:
    def __init__(self, dim: int, eps: float = 1e-6):
        self.dim = dim
        self.eps = eps
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, x: np.ndarray) -> "RunningStats":
        x = np.asarray(x, np.float64)
        x = x.reshape(len(x), self.dim) if self.dim == 0 else x.reshape(-1, self.dim)
        if len(x):
            other = RunningStats(self.dim, self.eps)
            other.count = len(x)
            other.mean = x.mean(axis=0)
            other.m2 = ((x - other.mean) ** 2).sum(axis=0)
            self.merge(other)
        return self

    def merge(self, other: "RunningStats") -> "RunningStats":
        if other.dim != self.dim:
            raise ValueError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n
        return self

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.count if self.count else np.ones(self.dim)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std, as a NEW float32 array (the caller may write into it); a copy of x before any update."""
        if self.count == 0:
            return np.array(x, np.float32)  # never an alias of the input: scoring must not change a batch
        return ((np.asarray(x, np.float64) - self.mean) / np.sqrt(self.var + self.eps)).astype(np.float32)

    def state_dict(self) -> dict:
        return {
            "dim": self.dim,
            "eps": self.eps,
            "count": self.count,
            "mean": self.mean.tolist(),
            "m2": self.m2.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> "RunningStats":
        s = cls(int(state["dim"]), float(state["eps"]))
        s.count = int(state["count"])
        s.mean = np.asarray(state["mean"], np.float64)
        s.m2 = np.asarray(state["m2"], np.float64)
        return s
