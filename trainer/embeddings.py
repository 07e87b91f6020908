"""Local embedding storage: every table of a spec in ONE FBGEMM table-batched module.

This is the one-process counterpart of a parameter-server shard, built to end with the
same parameters as a sync-mode PS run (same data, same seed):

* raw int64 ids map to rows through the PS's collisionless :class:`paramserver.idmap.IdMap`
  (vectorised, sorted keys; no Python loop per id);
* a row is created the first time its id is looked up (admission threshold 1), with
  :func:`paramserver.hashing.init_rows` (a pure function of seed, table and id) and a zero
  optimizer state, exactly what ``EmbeddingShard`` does on a pull;
* the update is FBGEMM's EXACT_ROWWISE_ADAGRAD fused into backward: ``loss.backward()``
  on anything computed from :meth:`LocalEmbeddings.lookup` updates the rows it touched
  (duplicates in a batch are summed first, as the PS's ``sum_duplicates`` does).

The batch layout handed to the TBE (one id per bag, SUM pooling)::

    tables    user              item              category
    bags      b0 .. bU-1 (pad)  b0 .. bU-1 (pad)  b0 .. bU-1 (pad)   T * U bags, U = most distinct ids
    indices   slot(distinct user ids)  slot(distinct item ids) ...   length 1 each, 0 for padding
    output    [U, dim_user + dim_item + dim_category] -> per table, rows[inverse] -> [B, dim]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from common.config import ConfigError

# The swappable pieces: the id map and the deterministic row initialiser, shared with the PS.
from paramserver.config import PSConfig, TableConfig
from paramserver.hashing import init_rows
from paramserver.idmap import IdMap
from paramserver.tbe import sum_duplicates


class _GatherRows(torch.autograd.Function):
    """rows[inverse]; backward sums the gradients of repeated ids with the PS's own ``sum_duplicates``."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, inverse: torch.Tensor, ids: np.ndarray) -> torch.Tensor:
        ctx.ids = ids
        return rows[inverse]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        _, summed = sum_duplicates(ctx.ids, np.ascontiguousarray(grad.numpy(), dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(summed)), None, None


class TableFullError(RuntimeError):
    """A local table has no free row for new ids; raise ``train.table_capacity``."""

    def __init__(self, table: str, capacity: int, needed: int) -> None:
        super().__init__(f"embedding table {table!r} is full ({capacity} rows) and {needed} new ids arrived: "
                         f"raise train.table_capacity")
        self.table, self.capacity, self.needed = table, capacity, needed

    def __reduce__(self):
        return (TableFullError, (self.table, self.capacity, self.needed))


def table_configs(spec, init_scale: float | None = None) -> tuple[TableConfig, ...]:
    """The PS table configs of a :class:`trainer.data.FeatureSpec` (name, dim, init scale)."""
    return tuple(TableConfig(f.name, f.dim, init_scale) for f in spec.sparse)


def ps_config_for(spec, train, **overrides) -> PSConfig:
    """The PS config under which a sync-mode PS run matches :class:`LocalEmbeddings` (same update, init)."""
    kw = dict(tables=table_configs(spec, train.init_scale), optimizer="rowwise_adagrad", learning_rate=train.sparse_lr,
              eps=train.sparse_eps, seed=train.seed, admission_threshold=1, mode="sync",
              capacity_per_shard=train.table_capacity)
    kw.update(overrides)
    return PSConfig(**kw)


class LocalEmbeddings:
    """All tables in one ``SplitTableBatchedEmbeddingBagsCodegen`` on CPU with fused row-wise Adagrad.

    >>> from paramserver.config import TableConfig
    >>> e = LocalEmbeddings((TableConfig("user", 4),), capacity=8, lr=0.1, seed=0)
    >>> out = e.lookup({"user": np.array([7, 7, 3])})
    >>> out["user"].shape, len(e)
    (torch.Size([3, 4]), 2)
    """

    def __init__(self, tables: tuple[TableConfig, ...], capacity: int, lr: float, eps: float = 1e-8,
                 seed: int = 0) -> None:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            BoundsCheckMode,
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        if not tables:
            raise ConfigError("LocalEmbeddings needs at least one table")
        self.tables = tuple(tables)
        self.names = tuple(t.name for t in tables)
        self.capacity = capacity
        self.seed = seed
        self.lr, self.eps = lr, eps
        self._tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(capacity, t.dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for t in tables],
            optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
            learning_rate=lr,
            eps=eps,
            weights_precision=SparseType.FP32,
            output_dtype=SparseType.FP32,
            pooling_mode=PoolingMode.SUM,
            stochastic_rounding=False,
            bounds_check_mode=BoundsCheckMode.NONE,  # slots come from IdMap, always in range
            device=torch.device("cpu"),
        )
        self._weights = self._tbe.split_embedding_weights()
        self._states = [list(s) for s in self._tbe.split_optimizer_states()]
        with torch.no_grad():
            for w in self._weights:
                w.zero_()
            for states in self._states:
                for s in states:
                    s.zero_()
        self._maps = {t.name: IdMap(capacity) for t in tables}
        self._cols = np.cumsum([0] + [t.dim for t in tables])

    @classmethod
    def for_spec(cls, spec, train) -> "LocalEmbeddings":
        """Tables of ``spec`` with the sparse optimizer, capacity and seed of a :class:`TrainConfig`."""
        return cls(table_configs(spec, train.init_scale), train.table_capacity, train.sparse_lr, train.sparse_eps, train.seed)

    def __len__(self) -> int:
        return sum(len(m) for m in self._maps.values())

    def slots(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Row of each raw id of ``table``, creating (deterministically initialised) rows for new ids."""
        m = self._maps[table]
        ids = np.asarray(ids, dtype=np.int64)
        slots = m.lookup(ids)
        miss = slots < 0
        if miss.any():
            new_ids, inverse = np.unique(ids[miss], return_inverse=True)
            if len(new_ids) > m.free:
                raise TableFullError(table, self.capacity, len(new_ids))
            new_slots = m.insert(new_ids)
            t = self.names.index(table)
            idx = torch.from_numpy(new_slots)
            with torch.no_grad():
                self._weights[t].index_copy_(0, idx, torch.from_numpy(init_rows(self.tables[t], new_ids, self.seed)))
                for s in self._states[t]:
                    s.index_fill_(0, idx, 0.0)
            slots[miss] = new_slots[inverse]
        return slots

    def lookup(self, sparse: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Pooled rows {table: float32 [B, dim]} for one raw id per row per table.

        The result is part of autograd: ``backward`` through it applies the fused row-wise
        Adagrad step to the rows looked up. Under ``torch.no_grad()`` it only reads.

        Like a PS round trip, each table's ids are de-duplicated first: the TBE sees every
        distinct id once, and the gradients of a repeated id are summed by
        ``paramserver.shard.sum_duplicates`` (what ``EmbeddingShard.push`` does), so both
        paths apply bit-identical row updates.
        """
        missing = [n for n in self.names if n not in sparse]
        if missing:
            raise KeyError(f"lookup: no ids for tables {missing}; the batch has {sorted(sparse)}")
        uniq, inverse, raw = [], [], []
        for n in self.names:
            ids = np.asarray(sparse[n], dtype=np.int64)
            u, inv = np.unique(ids, return_inverse=True)
            uniq.append(self.slots(n, u))
            inverse.append(torch.from_numpy(inv.reshape(-1)))
            raw.append(ids)
        width = max(len(u) for u in uniq)
        lengths = np.zeros(len(self.names) * width, np.int64)
        for t, u in enumerate(uniq):
            lengths[t * width:t * width + len(u)] = 1
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        out = self._tbe(torch.from_numpy(np.concatenate(uniq)), torch.from_numpy(offsets))
        return {n: _GatherRows.apply(out[:len(uniq[i]), self._cols[i]:self._cols[i + 1]], inverse[i], raw[i])
                for i, n in enumerate(self.names)}

    def table_rows(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, row) of ``table``, ids ascending: comparable with ``EmbeddingShard.table_rows``."""
        ids, slots = self._maps[table].items()
        t = self.names.index(table)
        return ids, self._weights[t].detach()[torch.from_numpy(slots)].numpy().copy()

    def table_state(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, row-wise Adagrad accumulator) of ``table``, ids ascending."""
        ids, slots = self._maps[table].items()
        t = self.names.index(table)
        return ids, self._states[t][0].detach()[torch.from_numpy(slots)].numpy().copy()

    def state_dict(self) -> dict[str, dict[str, np.ndarray]]:
        """{table: {"ids", "rows", "adagrad"}} (ids ascending); a full snapshot of the embeddings."""
        out = {}
        for n in self.names:
            ids, rows = self.table_rows(n)
            out[n] = {"ids": ids, "rows": rows, "adagrad": self.table_state(n)[1]}
        return out
