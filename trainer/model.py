"""DLRM-style ranking models over TorchRec-shaped input: ``model(dense, kjt) -> logits``.

The sparse side is a :class:`trainer.sparse.BackendEmbeddingBagCollection` (KJT in, pooled
``KeyedTensor`` out) whose rows come from the embedding backend (in-process FBGEMM or the
parameter server), so one model class serves every mode. ``build_model`` makes freshrec's
own DLRM (``arch: dlrm``, below) or TorchRec's ``DLRM`` / ``DLRM_DCN`` over the same
collection (``arch: torchrec_dlrm`` / ``torchrec_dlrm_dcn``)::

    kjt   ─► embedding bag collection ─► {"user": [B, 16], "item": [B, 16], ...}   pooled rows
    dense = [B, d]                                                                   normalised
          │
          ├─ bottom MLP(dense) ─────────────► b [B, bottom_mlp[-1]]
          ▼
    interaction  dcn: x0 = [emb..., b]; x_{l+1} = x0 * (W_l x_l + c_l) + x_l   (DCNv2)
                 dot: [b, pairwise <e_i, e_j> over {b, emb...}]               (DLRM)
          ▼
    top MLP ─► one logit [B];   loss = BCE-with-logits (mean),  score = sigmoid(logit)

With ``model.wide`` (Wide&Deep / DeepFM's first-order part) the collection also holds one wide table
per sparse feature (``<feature>__wide``, rows of 4 floats: FBGEMM's smallest, zero at start) and the
logit gains ``sum_f w_f[id]`` (column 0 of each pooled wide row) plus ``wide_dense_gain * (<v, dense> + b)``,
a linear term of the normalised dense features and, with ``model.wide_bias``, an intercept ``b`` (dense
parameters, zero at start). The wide part is an LR-like path that learns like FTRL on a new log (issue 24,
docs/training.md "The wide part"):

* the weights' step: FBGEMM's row-wise Adagrad divides a row's step by the root of its accumulated
  mean squared gradient, so a weight alone in its row would move by ~2 lr per step whatever the
  gradient's size (sign-like). Column 1 of each wide row gets a constant gradient ``wide_beta / B``
  per row that uses the id (the anchor; it is never read). With ``wide_anchor: count`` (the default)
  the training core then divides each occurrence's anchor by sqrt(c), c the id's occurrences in the
  step (:func:`trainer.core.count_anchor`). An id in c rows of a batch of B with residuals r = p - y
  gets g = sum(r) / B on the weight and a = beta sqrt(c) / B on the anchor (``row``: beta c / B), so
  each step is 2 lr sum(r) / sqrt(sum over steps of (sum(r)^2 + beta^2 c)): the accumulator grows
  with the id's occurrences like FTRL's n in alpha / (beta + sqrt(n)), and a frequent id moves more
  per step than a rare one, as in FTRL (``row``: with their square, so every id moved alike whatever
  its count). ``wide_beta: 0`` is plain row-wise Adagrad (columns 1-3 stay 0);
* the dense term is multiplied by ``wide_dense_gain``: Adagrad's step on ``v`` is ~dense_lr whatever
  the scale, so its step on the logit is ``wide_dense_gain * dense_lr`` (0.003 * 16 ~ FTRL's 0.05);
  the intercept ``b`` (FTRL's bias coordinate) learns at that rate too, where the head's bias (the deep
  part's intercept) moves by dense_lr per step;
* the deep part's head starts at zero weights, so a new model's logit is its wide part's (and the
  head's bias): the deep part's random embeddings add no noise to the first rankings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from common.config import ConfigError
from trainer.config import ModelConfig
from trainer.sparse import WIDE_SUFFIX, BackendEmbeddingBagCollection, tables_for_spec


def mlp(widths: Sequence[int], in_dim: int, last_relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers.append(nn.Linear(in_dim, w))
        if last_relu or i < len(widths) - 1:
            layers.append(nn.ReLU())
        in_dim = w
    return nn.Sequential(*layers)


class CrossNet(nn.Module):
    """DCNv2 cross layers: x_{l+1} = x0 * (W_l x_l + c_l) + x_l; low-rank W = U V^T when rank > 0."""

    def __init__(self, dim: int, layers: int, rank: int = 0) -> None:
        super().__init__()
        if rank:
            self.w = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim)) for _ in range(layers)
            )
        else:
            self.w = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w in self.w:
            x = x0 * w(x) + x
        return x


class _WideWeight(torch.autograd.Function):
    """Column 0 of pooled wide rows [B, 4] -> [B]. Backward: column 0 gets the logit's gradient, column 1 a
    constant ``beta / B`` per row (the anchor: it is never read, it only enters row-wise Adagrad's
    accumulator, so the weight's step is ~ lr * g / sqrt(g^2 + beta^2), FTRL-like), columns 2-3 nothing."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.beta = beta
        ctx.width = rows.shape[1]
        return rows[:, 0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        out = grad.new_zeros(grad.shape[0], ctx.width)
        out[:, 0] = grad
        if ctx.beta:
            out[:, 1] = ctx.beta / max(grad.shape[0], 1)
        return out, None


class DLRM(nn.Module):
    """freshrec's DLRM. ``embedding_bag_collection`` gives one pooled row per feature.

    >>> from trainer.sparse import EmbeddingBagConfig
    >>> ebc = BackendEmbeddingBagCollection([EmbeddingBagConfig(num_embeddings=64, embedding_dim=8, name="user", feature_names=["user"])])
    >>> m = DLRM(ebc, dense_dim=2, cfg=ModelConfig(bottom_mlp=(8,)))
    >>> m.forward_pooled({"user": torch.zeros(3, 8)}, torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(
        self, embedding_bag_collection: BackendEmbeddingBagCollection, dense_dim: int, cfg: ModelConfig
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding_bag_collection = embedding_bag_collection
        pairs = [(t, f) for t in embedding_bag_collection.embedding_bag_configs() for f in t.feature_names]
        keys = getattr(embedding_bag_collection, "output_keys", [f for _, f in pairs])
        # wide (first-order) tables: their pooled column 0 is summed into the logit; the others are the deep part
        self.wide_keys = tuple(k for (t, _), k in zip(pairs, keys) if t.name.endswith(WIDE_SUFFIX))
        # the collection decides: build_model gives it the wide tables when model.wide is on
        tables = {k: t.embedding_dim for (t, _), k in zip(pairs, keys) if not t.name.endswith(WIDE_SUFFIX)}
        self.tables = tuple(tables)
        self.dims = tuple(tables.values())
        self.dense_dim = dense_dim
        self.bottom = mlp(cfg.bottom_mlp, max(dense_dim, 1))
        b = cfg.bottom_mlp[-1]
        if cfg.interaction == "dcn":
            width = sum(self.dims) + b
            self.cross = CrossNet(width, cfg.dcn_layers, cfg.dcn_rank)
        else:
            bad = {t: d for t, d in tables.items() if d != b}
            if bad:
                raise ConfigError(
                    f"model.interaction='dot' needs every embedding dim == bottom_mlp[-1]={b}; "
                    f"tables {bad} differ: change bottom_mlp[-1] or the spec's dims"
                )
            n = len(self.dims) + 1
            self._tri = torch.triu_indices(n, n, offset=1)
            width = b + n * (n - 1) // 2
        self.top = mlp(cfg.top_mlp, width)
        self.head = nn.Linear(cfg.top_mlp[-1] if cfg.top_mlp else width, 1)
        # the wide part's dense term: the normalised dense features, linearly (Wide&Deep's wide part sees them too)
        self.wide_dense = nn.Linear(max(dense_dim, 1), 1, bias=cfg.wide_bias) if self.wide_keys else None
        if self.wide_dense is not None:
            nn.init.zeros_(self.wide_dense.weight)
            if self.wide_dense.bias is not None:  # the wide intercept (FTRL's bias coordinate), at the term's gain
                nn.init.zeros_(self.wide_dense.bias)
            # the deep part's contribution starts at zero (its head's weights; the head's bias is the intercept):
            # on a new log the logit is the wide part's at first, the deep part grows in as it learns
            nn.init.zeros_(self.head.weight)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Logits [B] from normalised ``dense`` [B, max(d, 1)] and the sparse features ``sparse``."""
        return self.forward_pooled(self.embedding_bag_collection(sparse).to_dict(), dense)

    def forward_pooled(self, emb: Mapping[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """Logits [B] from pooled rows ``emb[feature]`` [B, dim] and ``dense`` [B, max(d, 1)]."""
        b = self.bottom(dense)
        es = [emb[t] for t in self.tables]
        if self.cfg.interaction == "dcn":
            x = self.cross(torch.cat([*es, b], dim=1))
        else:
            z = torch.stack([b, *es], dim=1)  # [B, n, dim]
            gram = torch.bmm(z, z.transpose(1, 2))
            x = torch.cat([b, gram[:, self._tri[0], self._tri[1]]], dim=1)
        logit = self.head(self.top(x)).squeeze(1)
        if self.wide_dense is not None:  # first order: sum_f w_f[id] (column 0 of the wide rows) + <v, dense> + b
            beta = self.cfg.wide_beta
            if torch.is_grad_enabled():  # training: the anchor's gradient (_WideWeight.backward)
                cols = [_WideWeight.apply(emb[k], beta) for k in self.wide_keys]
            else:  # scoring: _WideWeight's forward, the same view, without autograd.Function's own cost per call
                cols = [emb[k][:, 0] for k in self.wide_keys]
            wide = torch.stack(cols, dim=1).sum(dim=1)
            logit = logit + wide + self.cfg.wide_dense_gain * self.wide_dense(dense).squeeze(1)
        return logit

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def build_model(spec, cfg: ModelConfig, seed: int = 0) -> nn.Module:
    """The model for a :class:`trainer.data.FeatureSpec`, its dense params initialised from ``seed``.

    Every arch reads its embeddings through one :class:`BackendEmbeddingBagCollection` (one
    table per sparse feature of the spec) and takes ``(dense [B, max(d, 1)], kjt)``; a spec
    without dense features gets a constant 1 column. TorchRec's models return logits [B, 1].
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ebc = BackendEmbeddingBagCollection(tables_for_spec(spec, wide=cfg.wide))
        if cfg.arch == "dlrm":
            return DLRM(ebc, len(spec.model_dense_names), cfg)
        return _torchrec_model(ebc, max(len(spec.model_dense_names), 1), cfg)
    finally:
        torch.random.set_rng_state(gen_state)


def _torchrec_model(ebc: BackendEmbeddingBagCollection, dense_in: int, cfg: ModelConfig) -> nn.Module:
    from torchrec.models.dlrm import DLRM as TorchRecDLRM
    from torchrec.models.dlrm import DLRM_DCN

    dims = {t.name: t.embedding_dim for t in ebc.embedding_bag_configs()}
    dim = cfg.bottom_mlp[-1]
    bad = {t: d for t, d in dims.items() if d != dim}
    if bad:
        raise ConfigError(
            f"model.arch={cfg.arch!r} (TorchRec) needs every embedding dim == bottom_mlp[-1]={dim}; "
            f"tables {bad} differ: change bottom_mlp[-1] or the spec's dims"
        )
    over = [*cfg.top_mlp, 1]
    if cfg.arch == "torchrec_dlrm":
        return TorchRecDLRM(
            embedding_bag_collection=ebc,
            dense_in_features=dense_in,
            dense_arch_layer_sizes=list(cfg.bottom_mlp),
            over_arch_layer_sizes=over,
        )
    return DLRM_DCN(
        embedding_bag_collection=ebc,
        dense_in_features=dense_in,
        dense_arch_layer_sizes=list(cfg.bottom_mlp),
        over_arch_layer_sizes=over,
        dcn_num_layers=cfg.dcn_layers,
        dcn_low_rank_dim=cfg.dcn_rank or dim,
    )
