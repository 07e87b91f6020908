"""FBGEMM table-batched embedding (TBE) building blocks shared by the shards and the local backend."""

from __future__ import annotations

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

    One ``np.unique`` then :func:`sum_by_inverse`: each output row adds its inputs in their
    original order, like ``np.add.at`` but about 20x faster, and deterministic (the same inputs
    give the same bits).
    """
    if len(ids) < 2 or (ids[1:] > ids[:-1]).all():  # already distinct and ascending (what the client sends)
        return ids, grads
    uniq, inverse = np.unique(ids, return_inverse=True)
    if len(uniq) == len(ids):
        order = np.empty_like(inverse)
        order[inverse] = np.arange(len(ids))
        return uniq, grads[order]
    return uniq, sum_by_inverse(len(uniq), inverse, grads)


def sum_by_inverse(n: int, inverse: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """``out[inverse[i]] += grads[i]`` in input order, from zeros: float32 ``[n, dim]``.

    ``torch.index_add_`` on CPU adds the rows one after the other in index order, so the result is
    bit-identical to ``np.add.at`` (and to a sum in input order), at a fraction of its cost.
    """
    out = torch.zeros((n, grads.shape[1]), dtype=torch.float32)
    out.index_add_(0, torch.from_numpy(np.ascontiguousarray(inverse, np.int64)),
                   torch.from_numpy(np.ascontiguousarray(grads, np.float32)))
    return out.numpy()
