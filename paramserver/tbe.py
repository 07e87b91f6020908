"""FBGEMM table-batched embedding (TBE) building blocks shared by the shards and the local backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from paramserver.config import TableConfig


def build_tbe(
    tables: Sequence[TableConfig],
    rows: int,
    optimizer: str = "rowwise_adagrad",
    learning_rate: float = 0.01,
    eps: float = 1e-8,
    weights_dtype: str = "fp32",
    device: torch.device | None = None,
):
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

    optim = {
        "rowwise_adagrad": OptimType.EXACT_ROWWISE_ADAGRAD,
        "adagrad": OptimType.EXACT_ADAGRAD,
        "sgd": OptimType.EXACT_SGD,
        "adam": OptimType.ADAM,
    }[optimizer]
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


#: The CPU optimizers whose fused update :func:`fused_update` calls directly (FBGEMM's CPU kernels).
DIRECT_UPDATE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")

FusedUpdate = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def fused_update(tbe, optimizer: str) -> FusedUpdate | None:
    """The TBE's own backward kernel with the optimizer fused in, callable without the forward.

    A push only needs the update: ``tbe(indices, offsets).backward(grad_output)`` runs the
    forward lookup, saves it for autograd and then calls
    ``torch.ops.fbgemm.split_embedding_backward_codegen_<optimizer>_cpu`` with the module's
    buffers. The function returned calls that same op with the same buffers (weights,
    placements, offsets, optimizer state, the learning-rate tensor, eps, weight decay ...), so
    the update is bit-identical and the forward is not paid:

    >>> update = fused_update(tbe, "rowwise_adagrad")      # doctest: +SKIP
    >>> update(indices, offsets, grad_output)             # == tbe(indices, offsets).backward(grad_output)

    ``indices``/``offsets`` are int64 as the module's forward takes them (SUM pooling, no
    per-sample weights); ``grad_output`` is float32 ``[B, total_D]``. ``None`` where there is no
    such CPU kernel (a CUDA module, Adam): use forward + backward there.
    """
    if optimizer not in DIRECT_UPDATE_OPTIMIZERS or not getattr(tbe, "use_cpu", False):
        return None
    op = getattr(torch.ops.fbgemm, f"split_embedding_backward_codegen_{optimizer}_cpu")
    m = tbe

    def update(indices: torch.Tensor, offsets: torch.Tensor, grad_output: torch.Tensor) -> None:
        args = m.optimizer_args  # read per call, as the forward does
        if args.gradient_clipping:  # what the autograd backward does before the kernel
            grad_output = grad_output.clamp(-args.max_gradient, args.max_gradient)
        common = (
            grad_output,
            m.weights_host,
            m.weights_placements,
            m.weights_offsets,
            m.D_offsets,
            m.max_D,
            m.hash_size_cumsum,
            m.total_hash_size_bits,
            indices,
            offsets,
            m.pooling_mode,
            None,
            args.stochastic_rounding,
        )
        if optimizer == "sgd":
            op(*common, m.learning_rate_tensor, output_dtype=m.output_dtype)
        elif optimizer == "adagrad":
            op(
                *common,
                m.momentum1_host,
                m.momentum1_placements,
                m.momentum1_offsets,
                m.learning_rate_tensor,
                eps=args.eps,
                output_dtype=m.output_dtype,
            )
        else:
            op(
                *common,
                m.momentum1_host,
                m.momentum1_placements,
                m.momentum1_offsets,
                m.learning_rate_tensor,
                eps=args.eps,
                weight_decay=args.weight_decay,
                weight_decay_mode=args.weight_decay_mode,
                max_norm=args.max_norm,
                output_dtype=m.output_dtype,
            )

    return update


def autograd_update(tbe) -> FusedUpdate:
    """The same update through the module: forward, then backward (which runs the fused optimizer)."""

    def update(indices: torch.Tensor, offsets: torch.Tensor, grad_output: torch.Tensor) -> None:
        tbe(indices, offsets).backward(grad_output)

    return update


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
    out.index_add_(
        0,
        torch.from_numpy(np.ascontiguousarray(inverse, np.int64)),
        torch.from_numpy(np.ascontiguousarray(grads, np.float32)),
    )
    return out.numpy()
