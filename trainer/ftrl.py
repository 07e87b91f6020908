"""An FTRL-Proximal logistic regression: the baseline every quality figure is compared with.

The standard online LR of CTR prediction (McMahan et al., "Ad Click Prediction: a View from
the Trenches", KDD 2013), on the same inputs as the model and in the same order:

* every sparse feature of the spec (``spec.model_sparse``, dynamic sequences included) by the
  hashing trick: id ``v`` of feature ``j`` is coordinate ``splitmix64(v, j, seed) mod 2**bits``
  with value 1 (``1 / bag length`` for a mean-pooled feature);
* the dense features as they are given to the model: normalised with running statistics over
  the training rows seen so far and clipped to ``+-dense_clip`` (:class:`trainer.data.RunningStats`,
  exactly as :meth:`trainer.core.TrainerCore._dense`), one coordinate each;
* a bias coordinate.

Per coordinate i (z, n start at 0; g the gradient of the log-loss, summed over the minibatch,
g2 the sum of the per-row squared gradients)::

    w_i   = 0                                                   if |z_i| <= l1
          = -(z_i - sign(z_i) * l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise
    sigma = (sqrt(n_i + g2_i) - sqrt(n_i)) / alpha
    z_i  += g_i - sigma * w_i ;  n_i += g2_i

A minibatch is one vectorised step (``np.unique`` + ``np.bincount`` over its non-zeros; no loop per
row or per id); ``batch_size=1`` is textbook per-example FTRL. Nothing is random: the state is a
function of the data, the hyper-parameters and the hash ``seed``.

:meth:`FTRLProximal.step_file` is progressive validation (score the file, then train on it), as
:meth:`trainer.core.TrainerCore.step_file`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from paramserver.hashing import splitmix64_next  # the same function as the PS's (tests/unit/test_hash_names.py)
from trainer.data import EventBatch, RunningStats


def hash_coordinates(ids: np.ndarray, feature: int, seed: int, bits: int) -> np.ndarray:
    """Coordinates in ``[0, 2**bits)`` of the ids of feature number ``feature`` (int64).

    >>> hash_coordinates(np.array([1, 2, 1]), 0, 0, 10).tolist()[0] == hash_coordinates(np.array([1]), 0, 0, 10)[0]
    True
    """
    salt = splitmix64_next(np.array([(int(seed) & 0xFFFFFFFF) << 32 | (feature & 0xFFFFFFFF)], np.uint64))[0]
    h = splitmix64_next(np.ascontiguousarray(ids).astype(np.int64, copy=False).view(np.uint64) ^ salt)
    return (h & np.uint64((1 << bits) - 1)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FTRLConfig:
    """FTRL-Proximal hyper-parameters.

    alpha, beta: per-coordinate learning rate alpha / (beta + sqrt(n_i)). l1, l2: regularisation
    (l1 > 0 makes the weights sparse). bits: 2**bits hashed coordinates for the ids. batch_size:
    rows per vectorised step (1: per-example FTRL). dense_clip: as ``train.dense_clip``. seed: the hash.
    """

    alpha: float = 0.05
    beta: float = 1.0
    l1: float = 0.1
    l2: float = 1.0
    bits: int = 22
    batch_size: int = 16
    dense_clip: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("alpha", "beta"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0 < v < float("inf"):
                raise ValueError(f"ftrl.{key} must be a positive finite number, got {v!r}")
        for key in ("l1", "l2"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ValueError(f"ftrl.{key} must be a finite number >= 0, got {v!r}")
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 30:
            raise ValueError(f"ftrl.bits must be an integer in [1, 30], got {self.bits!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"ftrl.batch_size must be an integer >= 1, got {self.batch_size!r}")


@dataclasses.dataclass
class _Design:
    """A batch as a CSR design matrix: row r's non-zeros are coords/values[offsets[r]:offsets[r+1]]."""

    coords: np.ndarray  # int64 [nnz]
    values: np.ndarray  # float64 [nnz]
    offsets: np.ndarray  # int64 [n + 1]
    label: np.ndarray  # float64 [n]


class FTRLProximal:
    """Online logistic regression by FTRL-Proximal over a feature spec's inputs (see the module doc).

    >>> from trainer.data import load_spec                                   # doctest: +SKIP
    >>> lr = FTRLProximal(load_spec("taobao"), FTRLConfig())               # doctest: +SKIP
    >>> scores = lr.step_file(batch)   # progressive: scored before it is trained on   # doctest: +SKIP
    """

    def __init__(self, spec, cfg: FTRLConfig | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or FTRLConfig()
        self.sparse = [(f.name, getattr(f, "pooling", "sum") == "mean") for f in spec.model_sparse]
        self.n_dense = len(spec.model_dense_names)
        self._base = 1 << self.cfg.bits  # coordinates: hashed ids, then bias, then the dense features
        size = self._base + 1 + self.n_dense
        self.z = np.zeros(size, np.float64)
        self.n = np.zeros(size, np.float64)
        self.stats = RunningStats(self.n_dense)
        self.examples_trained = 0

    # ---------------------------------------------------------------- inputs
    def _design(self, batch: EventBatch) -> _Design:
        n = len(batch)
        rows, coords, values = [], [], []
        for j, (name, mean) in enumerate(self.sparse):
            v, ln = batch.jagged(name)
            ln = np.asarray(ln, np.int64)
            rows.append(np.repeat(np.arange(n, dtype=np.int64), ln))
            coords.append(hash_coordinates(np.asarray(v), j, self.cfg.seed, self.cfg.bits))
            values.append(np.repeat(1.0 / np.maximum(ln, 1), ln) if mean else np.ones(int(ln.sum()), np.float64))
        rows.append(np.arange(n, dtype=np.int64))  # bias
        coords.append(np.full(n, self._base, np.int64))
        values.append(np.ones(n, np.float64))
        if self.n_dense:
            x = self.stats.normalize(np.asarray(batch.dense, np.float32)).astype(np.float64)
            np.clip(x, -self.cfg.dense_clip, self.cfg.dense_clip, out=x)
            rows.append(np.repeat(np.arange(n, dtype=np.int64), self.n_dense))
            coords.append(np.tile(np.arange(self.n_dense, dtype=np.int64) + self._base + 1, n))
            values.append(x.reshape(-1))
        r = np.concatenate(rows)
        order = np.argsort(r, kind="stable")
        counts = np.bincount(r, minlength=n)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return _Design(
            np.concatenate(coords)[order], np.concatenate(values)[order], offsets, np.asarray(batch.label, np.float64)
        )

    # --------------------------------------------------------------- weights
    def _weights(self, idx: np.ndarray) -> np.ndarray:
        c = self.cfg
        z = self.z[idx]
        w = -(z - np.sign(z) * c.l1) / ((c.beta + np.sqrt(self.n[idx])) / c.alpha + c.l2)
        w[np.abs(z) <= c.l1] = 0.0
        return w

    def weights(self) -> np.ndarray:
        """The current weights of every coordinate (hashed ids, bias, dense)."""
        return self._weights(np.arange(len(self.z)))

    def _logits(self, d: _Design, lo: int, hi: int) -> tuple[np.ndarray, ...]:
        """(logits of rows lo..hi, their distinct coordinates, the inverse map, those weights, each non-zero's row)."""
        s, e = d.offsets[lo], d.offsets[hi]
        uniq, inv = np.unique(d.coords[s:e], return_inverse=True)
        w = self._weights(uniq)
        row = np.repeat(np.arange(hi - lo), np.diff(d.offsets[lo : hi + 1]))
        v = d.values[s:e]
        logit = np.bincount(row, weights=w[inv] * v, minlength=hi - lo)
        return logit, uniq, inv, w, row

    # --------------------------------------------------------------- scoring
    def score(self, batch: EventBatch) -> np.ndarray:
        """Probabilities float32 [n]; nothing changes (statistics included)."""
        d = self._design(batch)
        n = len(batch)
        out = np.empty(n, np.float32)
        step = 8192
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            out[lo:hi] = _sigmoid(self._logits(d, lo, hi)[0])
        return out

    # -------------------------------------------------------------- training
    def train(self, batch: EventBatch, epochs: int = 1) -> None:
        """``epochs`` passes over ``batch`` in its order, ``batch_size`` rows per FTRL step. The dense
        statistics first take in the batch (training rows only), as the model's do."""
        if self.n_dense:
            self.stats.update(batch.dense)
        d = self._design(batch)
        n, bs, alpha = len(batch), self.cfg.batch_size, self.cfg.alpha
        for _ in range(epochs):
            for lo in range(0, n, bs):
                hi = min(lo + bs, n)
                logit, uniq, inv, w, row = self._logits(d, lo, hi)
                gv = (_sigmoid(logit) - d.label[lo:hi])[row] * d.values[d.offsets[lo] : d.offsets[hi]]
                g = np.bincount(inv, weights=gv, minlength=len(uniq))
                g2 = np.bincount(inv, weights=gv * gv, minlength=len(uniq))
                n_old = self.n[uniq]
                sigma = (np.sqrt(n_old + g2) - np.sqrt(n_old)) / alpha
                self.z[uniq] += g - sigma * w
                self.n[uniq] = n_old + g2
            self.examples_trained += n

    def step_file(self, batch: EventBatch) -> np.ndarray:
        """Progressive validation: the scores of ``batch`` before training on it, then one pass over it."""
        scores = self.score(batch)
        self.train(batch)
        return scores

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the state: z, n and the dense statistics (for tests and comparisons)."""
        st = self.stats.state_dict()
        return {"z": self.z.copy(), "n": self.n.copy(), **{f"stats/{k}": np.asarray(v).copy() for k, v in st.items()}}


def progressive_ftrl(spec, files: Sequence[EventBatch], cfg: FTRLConfig | None = None) -> list[np.ndarray]:
    """Each file's progressive-validation scores (scored before training on it), in order."""
    lr = FTRLProximal(spec, cfg)
    return [lr.step_file(f) for f in files]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35.0, 35.0)))
