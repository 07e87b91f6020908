"""FBGEMM table-batched embedding (TBE) building blocks shared by the shards and the local backend."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from paramserver.config import TableConfig


def build_tbe(tables: Sequence[TableConfig], rows: int, optimizer: str = "rowwise_adagrad", learning_rate: float = 0.01,
              eps: float = 1e-8, weights_dtype: str = "fp32", device: torch.device | None = None):
    """One FBGEMM ``SplitTableBatchedEmbeddingBagsCodegen`` holding ``rows`` rows of every table.

    SUM pooling, the optimizer fused into backward, deterministic fp16 updates (no stochastic
    rounding), no bounds check (slots come from :class:`paramserver.idmap.IdMap`).
    """
    device = device or torch.device("cpu")
    from fbgemm_gpu.split_embedding_configs import EmbOptimType as OptimType
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
        BoundsCheckMode,
        EmbeddingLocation,
        PoolingMode,
    )
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    optim = {"rowwise_adagrad": OptimType.EXACT_ROWWISE_ADAGRAD, "adagrad": OptimType.EXACT_ADAGRAD,
             "sgd": OptimType.EXACT_SGD, "adam": OptimType.ADAM}[optimizer]
    if device.type == "cuda":
        location, compute = EmbeddingLocation.DEVICE, ComputeDevice.CUDA
    else:
        location, compute = EmbeddingLocation.HOST, ComputeDevice.CPU
    specs = [(rows, t.dim, location, compute) for t in tables]
    return SplitTableBatchedEmbeddingBagsCodegen(
        specs,
        optimizer=optim,
        learning_rate=learning_rate,
        eps=eps,
        weights_precision=SparseType.FP16 if weights_dtype == "fp16" else SparseType.FP32,
        output_dtype=SparseType.FP32,
        pooling_mode=PoolingMode.SUM,
        stochastic_rounding=False,  # deterministic fp16 updates (sync mode is bit-exact)
        bounds_check_mode=BoundsCheckMode.NONE,  # slots come from IdMap, always in range
        device=device,
    )



def sum_duplicates(ids: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ids (ascending) and the float32 sum of the grads of each, added in input order.

    >>> sum_duplicates(np.array([7, 3, 7]), np.array([[1.], [2.], [4.]], np.float32))
    (array([3, 7]), array([[2.],
           [5.]], dtype=float32))

    The sum is a sparse one-hot matrix (CSR, rows = distinct ids) times ``grads``: each
    output row adds its inputs in their original order, like ``np.add.at`` but about 5x
    faster, and deterministic (the same inputs give the same bits).
    """
    if len(ids) < 2 or (ids[1:] > ids[:-1]).all():  # already distinct and ascending (what the client sends)
        return ids, grads
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = np.empty(len(ids), dtype=bool)
    first[:1] = True
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    uniq = sorted_ids[starts]
    if len(uniq) == len(ids):
        return uniq, grads[order]
    crow = torch.from_numpy(np.append(starts, len(ids)).astype(np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks sparse CSR as beta
        onehot = torch.sparse_csr_tensor(crow, torch.from_numpy(order.astype(np.int64)),
                                         torch.ones(len(ids), dtype=torch.float32), size=(len(uniq), len(ids)))
        summed = onehot @ torch.from_numpy(np.ascontiguousarray(grads))
    return uniq, summed.numpy()
