"""TorchRec-shaped sparse input and an ``EmbeddingBagCollection`` whose rows live in a backend.

A minibatch's sparse features are a TorchRec ``KeyedJaggedTensor`` (KJT): per feature, a list
of ids per row (one id for single-valued features, any number for multi-valued ones)::

    feature   row 0      row 1    row 2
    user      [17]       [4]      [17]         lengths [1, 1, 1]
    genre     [3, 8]     []       [8, 9, 11]   lengths [2, 0, 3]
    KJT(keys=["user", "genre"], values=[17, 4, 17, 3, 8, 8, 9, 11], lengths=[1, 1, 1, 2, 0, 3])

:class:`BackendEmbeddingBagCollection` answers like TorchRec's ``EmbeddingBagCollection``
(KJT in, ``KeyedTensor`` of pooled rows out), so a model written against TorchRec, such as
``torchrec.models.dlrm.DLRM``, runs unchanged. Its rows are not parameters of the module:
the training core pulls them from the embedding backend (in-process FBGEMM or the
parameter server) and *stages* them before the forward pass; the forward pools them on the
worker (sum or mean per bag) and, after ``backward``, :meth:`take_grads` hands the
gradient of every looked-up id back for the push. One step::

    ids  = ebc.table_ids(kjt)                      {table: int64 [nnz_t]} (duplicates kept)
    rows = backend.wait(backend.pull_many(ids))     {table: float32 [nnz_t, dim]}
    ebc.stage(ids, rows, requires_grad=True)
    loss(model(dense, kjt)).backward()              pooled on the worker
    backend.push_many(ebc.take_grads())            {table: (ids, grads [nnz_t, dim])}

The backend de-duplicates: each distinct id is pulled once and the gradients of a repeated
id are summed before the update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from common.config import ConfigError
from trainer.data.columns import jagged_take


def take_jagged(values: np.ndarray, lengths: np.ndarray, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
    """The bags of ``rows`` (an index array or a slice) of a jagged feature, vectorised: a slice is a
    view, one id per row is a plain gather, anything else :func:`trainer.data.columns.jagged_take`.

    >>> take_jagged(np.array([3, 8, 8, 9, 11]), np.array([2, 0, 3]), np.array([2, 0]))
    (array([ 8,  9, 11,  3,  8]), array([3, 2]))
    """
    if isinstance(rows, slice):
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        lo, hi, _ = rows.indices(len(lengths))
        return values[offsets[lo] : offsets[hi]], lengths[lo:hi]
    rows = np.asarray(rows, np.int64)
    if len(values) == len(lengths) and (lengths == 1).all():  # single-valued: one id per row
        return values[rows], lengths[rows]
    return jagged_take(values, lengths, rows)


def batch_to_kjt(batch, features: Sequence[str], rows: np.ndarray | slice | None = None) -> KeyedJaggedTensor:
    """The KJT of ``features`` for ``rows`` of ``batch`` (all rows when None)."""
    values, lengths = [], []
    for name in features:
        v, ln = batch.jagged(name)
        if rows is not None:
            v, ln = take_jagged(v, ln, rows)
        values.append(v)
        lengths.append(ln)
    return KeyedJaggedTensor(
        keys=list(features),
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths)),
    )


#: The wide (first-order) table of feature ``f`` is ``f + WIDE_SUFFIX``; its rows are WIDE_DIM floats,
#: FBGEMM's smallest row (TBE asserts "embedding_dim must be a multiple of 4"), of which the model uses column 0.
WIDE_SUFFIX = "__wide"
WIDE_DIM = 4


def wide_table_names(spec) -> list[str]:
    """The wide tables of a spec (one per sparse feature of ``spec.model_sparse``); a spec feature whose
    name already ends in ``__wide`` is refused (it would collide)."""
    names = [f.name for f in spec.model_sparse]
    bad = [n for n in names if n.endswith(WIDE_SUFFIX)]
    if bad:
        raise ConfigError(
            f"sparse feature(s) {bad} end in {WIDE_SUFFIX!r}, the suffix of model.wide's tables: "
            "rename them in the spec or set model.wide false"
        )
    return [n + WIDE_SUFFIX for n in names]


def tables_for_spec(spec, num_embeddings: int = 1 << 17, wide: bool = False) -> list[EmbeddingBagConfig]:
    """TorchRec table configs of a feature spec: one table per sparse feature, named after it
    (the dynamic sequences of ``spec.model_sparse`` included); with ``wide``, then one wide table
    per feature (``<feature>__wide``, dim :data:`WIDE_DIM`, same pooling) that reads the same feature.

    ``num_embeddings`` is informational (rows live in the backend, which admits and evicts).
    """
    out = []
    for f in spec.model_sparse:
        pooling = PoolingType.MEAN if getattr(f, "pooling", "sum") == "mean" else PoolingType.SUM
        out.append(
            EmbeddingBagConfig(
                num_embeddings=num_embeddings, embedding_dim=f.dim, name=f.name, feature_names=[f.name], pooling=pooling
            )
        )
    if wide:
        for f, name in zip(spec.model_sparse, wide_table_names(spec)):
            pooling = PoolingType.MEAN if getattr(f, "pooling", "sum") == "mean" else PoolingType.SUM
            out.append(
                EmbeddingBagConfig(
                    num_embeddings=num_embeddings,
                    embedding_dim=WIDE_DIM,
                    name=name,
                    feature_names=[f.name],
                    pooling=pooling,
                )
            )
    return out


class BackendEmbeddingBagCollection(EmbeddingBagCollectionInterface):
    """An ``EmbeddingBagCollection`` whose rows are staged from an embedding backend (see module doc).

    >>> ebc = BackendEmbeddingBagCollection([EmbeddingBagConfig(num_embeddings=8, embedding_dim=4, name="t", feature_names=["f"])])
    >>> kjt = KeyedJaggedTensor(["f"], torch.tensor([5, 6, 5]), lengths=torch.tensor([2, 1]))
    >>> ebc.stage(ebc.table_ids(kjt), {"t": np.ones((3, 4), np.float32)}, requires_grad=False)
    >>> ebc(kjt).to_dict()["f"].tolist()
    [[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]]
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig], device: torch.device | None = None) -> None:
        super().__init__()
        if not tables:
            raise ConfigError("BackendEmbeddingBagCollection needs at least one table")
        names = [t.name for t in tables]
        if len(set(names)) != len(names):
            raise ConfigError(f"table names must be unique, got {names}")
        for t in tables:
            if t.pooling not in (PoolingType.SUM, PoolingType.MEAN):
                raise ConfigError(f"table {t.name}: pooling {t.pooling} is not supported (sum or mean)")
            if not t.feature_names:
                raise ConfigError(f"table {t.name} lists no feature_names")
        self._configs = list(tables)
        self._device = device or torch.device("cpu")
        # a feature may feed several tables (a wide table beside its deep one): the KJT holds it once, and
        # the pooled output is keyed by the feature for its first table, by the table's name for the others
        self.feature_names: list[str] = list(dict.fromkeys(f for t in tables for f in t.feature_names))
        keys, seen = [], set()
        for t in tables:
            for f in t.feature_names:
                if f in seen and len(t.feature_names) != 1:
                    raise ConfigError(
                        f"table {t.name} re-reads feature {f}, which an earlier table reads: such a "
                        "table must read that one feature only (its output is keyed by its name)"
                    )
                keys.append(t.name if f in seen else f)
                seen.add(f)
        if len(set(keys)) != len(keys):
            raise ConfigError(
                f"pooled output keys collide: {keys} (a table re-reading a feature is keyed by its "
                "own name, which must not be a feature name)"
            )
        self.output_keys: list[str] = keys  # per (table, feature) in order: the key of its pooled rows
        self._ids: dict[str, np.ndarray] = {}
        self._rows: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------- TorchRec interface
    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return self._configs

    def is_weighted(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------ backend traffic
    def table_ids(self, features: KeyedJaggedTensor) -> dict[str, np.ndarray]:
        """Ids to pull per table: the values of the table's features, in feature order (duplicates kept)."""
        by_key = _values_by_key(features)
        missing = [f for f in self.feature_names if f not in by_key]
        if missing:
            raise KeyError(f"the KJT has no feature(s) {missing}; it holds {list(by_key)}")
        out = {}
        for t in self._configs:
            parts = [by_key[f][0].numpy() for f in t.feature_names]
            out[t.name] = parts[0].astype(np.int64, copy=False) if len(parts) == 1 else np.concatenate(parts)
        return out

    def stage(self, ids: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray], requires_grad: bool) -> None:
        """Rows for the next forward pass, aligned with ``table_ids`` of its KJT."""
        self._ids = dict(ids)
        staged = {}
        for t in self._configs:
            r = rows[t.name]
            tensor = torch.from_numpy(r) if isinstance(r, np.ndarray) else r
            if tensor.shape != (len(ids[t.name]), t.embedding_dim):
                raise ValueError(
                    f"table {t.name}: staged rows {tuple(tensor.shape)} do not fit "
                    f"{len(ids[t.name])} ids x dim {t.embedding_dim}"
                )
            staged[t.name] = tensor.to(self._device).requires_grad_(requires_grad)
        self._rows = staged

    def take_grads(self, scale: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{table: (ids, float32 grads [n, dim])} of the last backward, times ``scale``; clears the stage."""
        out = {}
        for t in self._configs:
            rows = self._rows[t.name]
            if rows.grad is None:
                grad = np.zeros(tuple(rows.shape), np.float32)
            else:
                grad = rows.grad.detach().cpu().numpy()
                if scale != 1.0:
                    grad = grad * np.float32(scale)
            out[t.name] = (self._ids[t.name], np.ascontiguousarray(grad, np.float32))
        self._rows, self._ids = {}, {}
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if not self._rows:
            raise RuntimeError(
                "no rows staged: the training core pulls rows from the embedding backend and "
                "calls stage() before each forward pass (see trainer.core)"
            )
        by_key = _values_by_key(features)
        pooled, dims = [], []
        for t in self._configs:
            rows = self._rows[t.name]
            at = 0
            for f in t.feature_names:
                values, lengths = by_key[f]
                n = len(values)
                pooled.append(_pool(rows[at : at + n], lengths, t.pooling))
                dims.append(t.embedding_dim)
                at += n
        return KeyedTensor(keys=list(self.output_keys), length_per_key=dims, values=torch.cat(pooled, dim=1))


def _values_by_key(features: KeyedJaggedTensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    keys = features.keys()
    lengths = features.lengths()
    stride = features.stride()
    per_key = lengths.view(len(keys), stride) if len(keys) else lengths
    counts = per_key.sum(dim=1).tolist()
    values = torch.split(features.values(), counts)
    return {k: (values[i], per_key[i]) for i, k in enumerate(keys)}


def _pool(rows: torch.Tensor, lengths: torch.Tensor, pooling: PoolingType) -> torch.Tensor:
    """Sum (or mean) of each bag's rows: [n_values, dim] -> [batch, dim]; empty bags give zeros."""
    if len(rows) == len(lengths) and bool((lengths == 1).all()):
        return rows  # one id per row: the bag is the row itself (exact)
    bag = torch.repeat_interleave(torch.arange(len(lengths), device=rows.device), lengths.to(rows.device))
    out = torch.zeros(len(lengths), rows.shape[1], dtype=rows.dtype, device=rows.device).index_add(0, bag, rows)
    if pooling is PoolingType.MEAN:
        out = out / lengths.clamp(min=1).to(out.dtype).unsqueeze(1)
    return out


def find_collection(model: torch.nn.Module) -> BackendEmbeddingBagCollection:
    """The one BackendEmbeddingBagCollection inside ``model`` (DDP-wrapped or not)."""
    found = [m for m in model.modules() if isinstance(m, BackendEmbeddingBagCollection)]
    if len(found) != 1:
        raise ConfigError(
            f"the model must hold exactly one BackendEmbeddingBagCollection (its embedding rows come "
            f"from the backend), found {len(found)}: build it with trainer.model.build_model or pass "
            f"one to your TorchRec model"
        )
    return found[0]
