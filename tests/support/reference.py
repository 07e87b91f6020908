"""The local references the tests check the distributed paths against, bit for bit.

* :class:`LocalTables`: one plain FBGEMM TBE over a fixed id universe; the parameter server must match it bit
  for bit in sync mode (was ``paramserver.reference``). Rows start at :func:`paramserver.hashing.init_rows`.
* :func:`local_digest`: one process, the local backend, the recovery modules' data files in order; a
  recovered or sharded run must end with its model digest.
"""

from __future__ import annotations

import numpy as np
import torch

from paramserver.config import PSConfig
from paramserver.hashing import init_rows
from paramserver.tbe import build_tbe
from trainer.config import TrainConfig
from trainer.data import load_spec

RECOVERY_SPEC = load_spec("taobao")
# the recovery modules' training settings (their digests); history_epochs 1: their streams start from a one-file
# history, which the default (auto) would pass over 3 times, and the reference follows each file once
RECOVERY_TCFG = TrainConfig(batch_size=128, seed=7, history_epochs=1)


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


def local_digest(files, root) -> str:
    """The reference model digest: one process, local backend, ``files`` in order, a version after each, in
    ``root/local-versions`` (run it with torch on one thread, as each Ray Train worker)."""
    from trainer.config import ModelConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer
    from trainer.versioning import VersionKeeper
    from versions import VersionStore

    t = LocalTrainer(RECOVERY_SPEC, ModelConfig(), RECOVERY_TCFG)
    keeper = VersionKeeper(str(root / "local-versions"), t.backend, t)
    v = Validator(RECOVERY_SPEC)
    for f in files:
        t.step_file(read_data_file(f, v), f.name, rows_read=0)
        keeper.after_file()
    keeper.wait()
    store = VersionStore(str(root / "local-versions"))
    return store.manifest(store.latest()).model_digest


def explain_mismatch(a_url: str, b_url: str) -> str:
    """Which part of the model differs between the latest versions of two stores (test diagnostics)."""
    from versions import VersionStore, table_parts

    a, b = VersionStore(a_url), VersionStore(b_url)
    va, vb = a.latest(), b.latest()
    out = []
    for table in RECOVERY_SPEC.sparse:
        ta, tb = a.materialize(va, table_parts(table.name)), b.materialize(vb, table_parts(table.name))
        for k in ta:
            if k in tb and (ta[k].shape != tb[k].shape or not np.array_equal(ta[k], tb[k])):
                out.append(f"{table.name}.{k}: {ta[k].shape} vs {tb[k].shape}")
    ca, cb = a.read_part(va, "trainer/core"), b.read_part(vb, "trainer/core")
    out += [f"core {k}" for k in ca if k not in cb or not np.array_equal(ca[k], cb[k])]
    return "; ".join(out) or "no difference in content"
