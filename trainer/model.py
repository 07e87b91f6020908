"""A DLRM-style ranking model that takes already-looked-up embeddings.

Embedding storage is not in the model: rows come from the parameter server (PS mode) or
from :class:`trainer.embeddings.LocalEmbeddings` (one process), so one class serves both::

    emb   = {"user": [B, 16], "item": [B, 16], "category": [B, 16]}   # pooled rows
    dense = [B, d]                                                      # normalised
          │
          ├─ bottom MLP(dense) ─────────────► b [B, bottom_mlp[-1]]
          ▼
    interaction  dcn: x0 = [emb..., b]; x_{l+1} = x0 * (W_l x_l + c_l) + x_l   (DCNv2)
                 dot: [b, pairwise <e_i, e_j> over {b, emb...}]               (DLRM)
          ▼
    top MLP ─► one logit [B];   loss = BCE-with-logits (mean),  score = sigmoid(logit)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from common.config import ConfigError
from trainer.config import ModelConfig


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
            self.w = nn.ModuleList(nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
                                   for _ in range(layers))
        else:
            self.w = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w in self.w:
            x = x0 * w(x) + x
        return x


class DLRM(nn.Module):
    """The model. ``tables`` maps table name -> embedding dim, in the spec's order.

    >>> m = DLRM({"user": 8, "item": 8}, dense_dim=2, cfg=ModelConfig(bottom_mlp=(8,)))
    >>> m({"user": torch.zeros(3, 8), "item": torch.zeros(3, 8)}, torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(self, tables: Mapping[str, int], dense_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
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
                raise ConfigError(f"model.interaction='dot' needs every embedding dim == bottom_mlp[-1]={b}; "
                                  f"tables {bad} differ: change bottom_mlp[-1] or the spec's dims")
            n = len(self.dims) + 1
            self._tri = torch.triu_indices(n, n, offset=1)
            width = b + n * (n - 1) // 2
        self.top = mlp(cfg.top_mlp, width)
        self.head = nn.Linear(cfg.top_mlp[-1] if cfg.top_mlp else width, 1)

    def forward(self, emb: Mapping[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        """Logits [B] from pooled rows ``emb[table]`` [B, dim] and normalised ``dense`` [B, d]."""
        if self.dense_dim == 0:  # a spec without dense features: a constant input
            dense = torch.ones(len(next(iter(emb.values()))), 1)
        b = self.bottom(dense)
        es = [emb[t] for t in self.tables]
        if self.cfg.interaction == "dcn":
            x = self.cross(torch.cat([*es, b], dim=1))
        else:
            z = torch.stack([b, *es], dim=1)  # [B, n, dim]
            gram = torch.bmm(z, z.transpose(1, 2))
            x = torch.cat([b, gram[:, self._tri[0], self._tri[1]]], dim=1)
        return self.head(self.top(x)).squeeze(1)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(logits, labels)

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


def build_model(spec, cfg: ModelConfig, seed: int = 0) -> DLRM:
    """The model for a :class:`trainer.data.FeatureSpec`, its dense params initialised from ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return DLRM({f.name: f.dim for f in spec.sparse}, len(spec.dense), cfg)
    finally:
        torch.random.set_rng_state(gen_state)
