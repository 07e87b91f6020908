"""A local, single-process reference: one plain FBGEMM TBE over a fixed id universe.

Used by the tests (the parameter server must match it bit for bit in sync mode) and by
``bench/ps.py`` as the local baseline. Rows start at :func:`init_rows`, like the PS.
"""

from __future__ import annotations

import numpy as np
import torch

from paramserver.config import PSConfig
from paramserver.hashing import init_rows
from paramserver.tbe import build_tbe


class LocalTables:
    """Every table of ``cfg`` in one TBE with one row per id of ``universe`` (ids can be any int64)."""

    def __init__(self, cfg: PSConfig, universe: dict[str, np.ndarray]) -> None:
        self.cfg = cfg
        size = max(len(np.unique(universe[t.name])) for t in cfg.tables)
        self._tbe = build_tbe(cfg.tables, max(size, 1), cfg.optimizer, cfg.learning_rate, cfg.eps, cfg.weights_dtype)
        self._keys = {}
        for t, w in zip(cfg.tables, self._tbe.split_embedding_weights()):
            keys = np.unique(universe[t.name]).astype(np.int64)
            self._keys[t.name] = keys
            w.zero_()
            w[: len(keys)] = torch.from_numpy(init_rows(t, keys, cfg.seed)).to(w.dtype)

    def rows_of(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Row indices of ``ids`` (which must be in the universe)."""
        return np.searchsorted(self._keys[table], ids)

    def forward_backward(self, ids: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """One TBE forward + fused backward: each id its own SUM bag, tables padded to one batch."""
        batch = max(len(v) for v in ids.values())
        names = [t.name for t in self.cfg.tables]
        lengths = np.zeros(len(names) * batch, np.int64)
        grad_out = np.zeros((batch, sum(t.dim for t in self.cfg.tables)), np.float32)
        indices, col = [], 0
        for i, t in enumerate(self.cfg.tables):
            if t.name in ids:
                n = len(ids[t.name])
                lengths[i * batch : i * batch + n] = 1
                indices.append(self.rows_of(t.name, ids[t.name]))
                grad_out[:n, col : col + t.dim] = grads[t.name]
            col += t.dim
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        out = self._tbe(torch.from_numpy(np.concatenate(indices)), torch.from_numpy(offsets))
        out.backward(torch.from_numpy(grad_out))

    def read(self, table: str, ids: np.ndarray) -> np.ndarray:
        w = self._tbe.split_embedding_weights()[[t.name for t in self.cfg.tables].index(table)]
        return w[torch.from_numpy(self.rows_of(table, ids))].float().numpy()
