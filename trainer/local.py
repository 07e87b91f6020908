"""LocalTrainer: the model trained in one process, no parameter server.

It is the reference the PS-mode trainer must match in sync mode, and the engine of the
quality benchmark. One training step on a minibatch of B rows::

    ids {table: int64 [B]} ─► LocalEmbeddings.lookup ─► {table: [B, dim]} ─┐
    dense float32 [B, d] ─► RunningStats.normalize ─────────────────────────┴► DLRM ─► logits [B]
    loss = mean BCE-with-logits;  loss.backward()  (fused row-wise Adagrad on the rows)
    dense_optimizer.step()                           (Adagrad or SGD on the MLP/interaction)

Rules that a PS-mode trainer must follow to end with the same parameters:

* ``train(batch)`` first folds ``batch.dense`` into the running statistics (training data
  only; scoring never changes them), then normalises the whole batch with them (clipped
  to +-dense_clip), then
  walks minibatches of ``batch_size`` rows in order (or in a seeded permutation when
  ``shuffle``); the last minibatch may be short.
* A new id's row is ``init_rows(table, id, seed)`` with zero Adagrad state, created the
  first time the id is looked up (scoring included: rows are the same either way).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.data import EventBatch, RunningStats
from trainer.embeddings import LocalEmbeddings
from trainer.metrics import ProgressiveValidator, FileMetrics
from trainer.model import DLRM, build_model

SCORE_BATCH = 8192


def dense_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.dense_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.dense_lr)
    return torch.optim.Adagrad(params, lr=cfg.dense_lr, eps=1e-10)


def normalize_dense(stats: RunningStats, dense: np.ndarray, clip: float) -> np.ndarray:
    """Running-stats normalisation, clipped to +-clip (float32 [n, d])."""
    x = stats.normalize(dense)
    return np.clip(x, -clip, clip, out=x)


def score_minibatches(model: torch.nn.Module, dense: np.ndarray, sparse: dict[str, np.ndarray], lookup,
                      device: torch.device | None = None) -> np.ndarray:
    """Probabilities float32 [n], SCORE_BATCH rows at a time, no gradients.

    ``dense`` is already normalised; ``lookup({table: ids}) -> {table: tensor [b, dim]}`` gives
    the embedding rows (local TBE or parameter server).
    """
    n = len(dense)
    out = np.empty(n, np.float32)
    model.eval()
    with torch.no_grad():
        for lo in range(0, n, SCORE_BATCH):
            hi = min(lo + SCORE_BATCH, n)
            emb = lookup({k: v[lo:hi] for k, v in sparse.items()})
            dense_t = torch.from_numpy(dense[lo:hi])
            if device is not None:
                emb = {k: v.to(device) for k, v in emb.items()}
                dense_t = dense_t.to(device)
            out[lo:hi] = DLRM.scores(model(emb, dense_t)).cpu().numpy()
    return out


class LocalTrainer:
    """Train and score one model in this process.

    >>> t = LocalTrainer(load_spec("taobao"), ModelConfig(), TrainConfig(seed=1))  # doctest: +SKIP
    >>> t.step_file(shard_batch, "part-20171126T010000Z")                           # doctest: +SKIP
    FileMetrics(shard='part-...', examples=4012, positives=389, auc=0.61, log_loss=0.33, ...)
    """

    def __init__(self, spec, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
        self.spec = spec
        self.model_cfg = model_cfg
        self.cfg = train_cfg
        self.model: DLRM = build_model(spec, model_cfg, train_cfg.seed)
        self.embeddings = LocalEmbeddings.for_spec(spec, train_cfg)
        self.stats = RunningStats(len(spec.dense))
        self.optimizer = dense_optimizer(self.model.parameters(), train_cfg)
        self.validator = ProgressiveValidator()
        self.examples_trained = 0  # every example of every epoch
        self.train_seconds = 0.0
        self.steps = 0

    def fresh(self) -> "LocalTrainer":
        """A new, untrained trainer with the same spec and configs (a full retrain starts here)."""
        return LocalTrainer(self.spec, self.model_cfg, self.cfg)

    # ------------------------------------------------------------------ scoring
    def score(self, batch: EventBatch) -> np.ndarray:
        """Probabilities float32 [n] for ``batch`` (no training, statistics unchanged)."""
        return score_minibatches(self.model, self._normalize(batch.dense), batch.sparse, self.embeddings.lookup)

    # ----------------------------------------------------------------- training
    def train(self, batch: EventBatch, epochs: int = 1, shuffle: bool = False) -> dict[str, float]:
        """``epochs`` passes over ``batch`` in minibatches; returns {"examples", "seconds", "loss"}.

        ``shuffle`` visits rows in a permutation drawn from (seed, epoch, examples trained so
        far); otherwise in the batch's order (time order for a shard).
        """
        t0 = time.perf_counter()
        self.stats.update(batch.dense)
        dense = torch.from_numpy(self._normalize(batch.dense))
        labels = torch.from_numpy(np.ascontiguousarray(batch.label, np.float32))
        n, bs = len(batch), self.cfg.batch_size
        self.model.train()
        total_loss, seen = 0.0, 0
        for epoch in range(epochs):
            if shuffle:
                rng = np.random.default_rng([self.cfg.seed, epoch, self.examples_trained])
                order = rng.permutation(n)
            else:
                order = None
            for lo in range(0, n, bs):
                idx = order[lo:lo + bs] if order is not None else slice(lo, min(lo + bs, n))
                emb = self.embeddings.lookup({k: v[idx] for k, v in batch.sparse.items()})
                ti = torch.from_numpy(idx) if order is not None else idx
                loss = DLRM.loss(self.model(emb, dense[ti]), labels[ti])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()  # also the fused row-wise Adagrad step on the embedding rows
                self.optimizer.step()
                self.steps += 1
                m = len(labels[ti])
                total_loss += loss.item() * m
                seen += m
            self.examples_trained += n
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        return {"examples": seen, "seconds": seconds, "loss": total_loss / max(seen, 1)}

    def step_file(self, batch: EventBatch, name: str = "") -> FileMetrics:
        """Progressive validation: score ``batch`` with the current model, record, then train once."""
        scores = self.score(batch)
        self.validator.record(name or batch.source, batch.label, scores)
        info = self.train(batch)
        self.validator.set_train_seconds(info["seconds"])
        return self.validator.files[-1]

    def _normalize(self, dense: np.ndarray) -> np.ndarray:
        return normalize_dense(self.stats, dense, self.cfg.dense_clip)

    # -------------------------------------------------------------------- state
    def dense_state(self) -> dict[str, torch.Tensor]:
        """A copy of the dense (MLP and interaction) parameters."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_dense_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def state_dict(self) -> dict:
        """Everything that defines the model: dense params, embeddings, feature stats, optimizer."""
        return {
            "model": self.dense_state(),
            "dense_optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "embeddings": self.embeddings.state_dict(),
            "stats": self.stats.state_dict(),
            "examples_trained": self.examples_trained,
            "steps": self.steps,
        }
