"""Typed, frozen configuration of the model and of training; every error says what to fix.

>>> ModelConfig(interaction="dot").interaction
'dot'
>>> TrainConfig(strategy="fusion", fusion_lambda=0.7).fusion_lambda
0.7
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from common.config import ConfigError, check_keys

INTERACTIONS = ("dcn", "dot")
ARCHS = ("dlrm", "torchrec_dlrm", "torchrec_dlrm_dcn")
DENSE_OPTIMIZERS = ("adagrad", "sgd")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")


@enum.unique
class Strategy(str, enum.Enum):
    """How a model follows new shards (see :mod:`trainer.strategies`)."""

    ONLINE = "online"  # train on each new shard once, in time order
    PERIODIC = "periodic"  # every `period` shards, one pass over the last `window` shards
    FUSION = "fusion"  # online, then theta = lambda * theta_new + (1 - lambda) * theta_prev (dense params)
    FULL_RETRAIN = "full_retrain"  # from scratch on all shards so far, `epochs_full_retrain` epochs (baseline)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A DLRM-style model: bottom MLP on dense features, an interaction, a top MLP, one logit.

    arch: ``dlrm`` (freshrec's, below), ``torchrec_dlrm`` or ``torchrec_dlrm_dcn`` (TorchRec's own
    ``DLRM`` / ``DLRM_DCN`` classes over the same embedding collection; every embedding dim must
    equal ``bottom_mlp[-1]``; ``dcn_layers`` / ``dcn_rank`` configure DLRM_DCN's cross net).
    interaction: ``dcn`` (DCNv2 cross layers over [embeddings, bottom output]) or ``dot``
    (DLRM pairwise dot products; every embedding dim must equal ``bottom_mlp[-1]``).
    ``dcn_rank``: 0 for full-rank cross weights, else the low-rank factor (DCN-Mix style U V^T).
    ``wide``: a first-order part (Wide&Deep / DeepFM): one weight per id of every sparse feature, the
    pooled weights summed into the logit, plus a linear term of the dense features. Default: on for
    ``arch: dlrm`` (it never hurt on the shared logs, docs/benchmarks.md "Quality"), off for TorchRec's
    archs. The weights are PS tables like the others (``<feature>__wide``, FBGEMM row-wise Adagrad,
    versioned and served alike); FBGEMM's smallest row is 4 floats, so the weight is column 0 of a
    4-wide row whose other columns stay 0 (zero init, zero gradient).
    """

    interaction: str = "dcn"
    arch: str = "dlrm"
    dcn_layers: int = 2
    dcn_rank: int = 0
    bottom_mlp: tuple[int, ...] = (16,)
    top_mlp: tuple[int, ...] = (64, 32)
    wide: bool | None = None  # None: on for arch dlrm (measured, docs/benchmarks.md), off for TorchRec's

    def __post_init__(self) -> None:
        if self.wide is None:
            object.__setattr__(self, "wide", self.arch == "dlrm")
        object.__setattr__(self, "bottom_mlp", tuple(self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(self.top_mlp))
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch must be one of {list(ARCHS)}, got {self.arch!r}")
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"model.interaction must be one of {list(INTERACTIONS)}, got {self.interaction!r}")
        if not isinstance(self.wide, bool):
            raise ConfigError(f"model.wide must be true or false, got {self.wide!r}")
        if self.wide and self.arch != "dlrm":
            raise ConfigError(
                f"model.wide adds a first-order part to freshrec's own DLRM; model.arch={self.arch!r} "
                "(TorchRec's classes) has none: use arch dlrm or wide false"
            )
        _int_at_least("model.dcn_layers", self.dcn_layers, 0)
        _int_at_least("model.dcn_rank", self.dcn_rank, 0)
        if not self.bottom_mlp:
            raise ConfigError("model.bottom_mlp must list at least one layer width, e.g. [16]")
        for key in ("bottom_mlp", "top_mlp"):
            for w in getattr(self, key):
                if not isinstance(w, int) or isinstance(w, bool) or w < 1:
                    raise ConfigError(f"model.{key} must hold positive integer widths, got {getattr(self, key)!r}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    batch_size: examples per minibatch (one optimizer step each).
    sparse_optimizer / sparse_lr / sparse_eps: the update of the embedding rows, fused into FBGEMM's
    backward (rowwise_adagrad, adagrad or sgd on CPU; adam needs CUDA).
    dense_lr / dense_optimizer: the MLP and interaction parameters (``adagrad`` or ``sgd``).
    seed: parameter init (dense and embedding rows) and the shuffling of full retrains.
    strategy: online | periodic | fusion | full_retrain (see :class:`Strategy`).
    fusion_lambda: weight of the new dense params in fusion, in [0, 1].
    window / period: periodic batch update over the last ``window`` shards every ``period`` shards.
    epochs_full_retrain: passes over all data so far in a full retrain (shuffled each epoch).
    dense_clip: normalised dense features are clipped to [-dense_clip, dense_clip] (a feature
    constant so far, e.g. the hour in a 2-hour log, would otherwise become huge when it moves).
    init_scale: new embedding rows are uniform in +-init_scale (None: 1/sqrt(dim), the PS default).
    history_epochs: passes over the history (``stream --history``, ``train --data``) before following new
    data files: the first pass is progressive (each file scored, then trained on once, in time order);
    passes 2.. are training only (shuffled, seeded like a full retrain), so no progressive score ever
    comes from data the model has already seen. 1: one pass, the plain online cold start.

    The defaults of the learning rates, init_scale and epochs_full_retrain are the ones tuned on
    the Taobao log (docs/benchmarks.md, "Quality"); a full retrain beyond one epoch overfits there.
    """

    batch_size: int = 256
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.03
    sparse_eps: float = 1e-8
    dense_lr: float = 0.003
    dense_optimizer: str = "adagrad"
    seed: int = 0
    strategy: Strategy = Strategy.ONLINE
    fusion_lambda: float = 0.5
    window: int = 4
    period: int = 1
    epochs_full_retrain: int = 1
    dense_clip: float = 5.0
    init_scale: float | None = 0.01
    history_epochs: int = 1

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", Strategy(self.strategy))
        except ValueError:
            raise ConfigError(
                f"train.strategy must be one of {[s.value for s in Strategy]}, got {self.strategy!r}"
            ) from None
        _int_at_least("train.batch_size", self.batch_size, 1)
        _int_at_least("train.window", self.window, 1)
        _int_at_least("train.period", self.period, 1)
        _int_at_least("train.epochs_full_retrain", self.epochs_full_retrain, 1)
        _int_at_least("train.history_epochs", self.history_epochs, 1)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"train.seed must be an integer, got {self.seed!r}")
        for key in ("sparse_lr", "sparse_eps", "dense_lr", "dense_clip"):
            v = getattr(self, key)
            if not isinstance(v, (int, float)) or not (0 < v < float("inf")):
                raise ConfigError(f"train.{key} must be a positive finite number, got {v!r}")
        if self.init_scale is not None and not (
            isinstance(self.init_scale, (int, float)) and 0 <= self.init_scale < float("inf")
        ):
            raise ConfigError(f"train.init_scale must be None or a finite number >= 0, got {self.init_scale!r}")
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(
                f"train.sparse_optimizer must be one of {list(SPARSE_OPTIMIZERS)}, got {self.sparse_optimizer!r}"
            )
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ConfigError(
                f"train.dense_optimizer must be one of {list(DENSE_OPTIMIZERS)}, got {self.dense_optimizer!r}"
            )
        if not isinstance(self.fusion_lambda, (int, float)) or not 0.0 <= self.fusion_lambda <= 1.0:
            raise ConfigError(
                f"train.fusion_lambda must be in [0, 1] (1 keeps only the new params), got {self.fusion_lambda!r}"
            )

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """Build from a YAML mapping (``train:`` section), refusing unknown keys."""
        check_keys(cls, raw, "train")
        return cls(**raw)


def model_config_from_dict(raw: dict[str, Any]) -> ModelConfig:
    """Build from a YAML mapping (``model:`` section), refusing unknown keys."""
    check_keys(ModelConfig, raw, "model")
    return ModelConfig(**raw)


def model_config_of_version(raw: dict[str, Any] | None) -> ModelConfig:
    """The model config a stored version was trained with (its manifest's ``config.model``). A version
    written before ``model.wide`` existed has no such key and no wide tables: it loads with wide false.

    >>> model_config_of_version({"arch": "dlrm"}).wide, model_config_of_version({"wide": True}).wide
    (False, True)
    """
    raw = dict(raw or {})
    raw.setdefault("wide", False)
    return model_config_from_dict(raw)


@dataclasses.dataclass(frozen=True)
class PSOptions:
    """The parameter-server settings of a run (the ``ps:`` section); tables, the sparse optimizer,
    its learning rate and the seed come from the spec and ``train`` (see :func:`trainer.backends.ps_config_for`).

    num_shards: shard actors (partitions of every table). capacity_per_shard: rows each shard holds
    per table (the local backend holds this many per table too). admission_threshold: pulls before
    an id gets a row. ttl_versions / ttl_seconds: evict rows unseen for this many shard versions
    (sync: steps) / seconds (None: never). lfu_decay_every / lfu_decay: aged LFU, counts multiplied
    by lfu_decay every lfu_decay_every versions (None: no ageing). full_table: refuse | error, when
    a pull needs more new rows than eviction can free. lease_timeout_s: rows pulled for a step stay
    resident until its push is applied, or this many seconds (counted). mode: sync (deterministic) |
    async (bounded staleness in the worker's own steps: max_staleness, stale_policy drop | apply).
    weights_dtype: fp32 | fp16 rows. device: cpu | cuda | auto.
    actor_num_cpus: CPUs each shard actor reserves (0 lets shards share a small local Ray).
    pipeline_depth: sync mode, steps a training pull runs ahead of the updates (0: exact; d: rows
    miss the last d steps' updates while the worker computes beside the shards). sync_prefetch:
    sync, depth 0, one worker: pull step k+1's ids that step k does not touch during step k (exact).
    placement: auto (in the worker's process with one worker, shard actors otherwise) | ray | in_process.
    spread: none | nodes | spread, how shard actors are laid out over a multi-node cluster
    (:class:`paramserver.PSConfig`). See docs/paramserver.md and docs/operations.md.
    """

    num_shards: int = 2
    capacity_per_shard: int = 1 << 17
    admission_threshold: int = 1
    ttl_versions: int | None = None
    ttl_seconds: float | None = None
    lfu_decay_every: int | None = None
    lfu_decay: float = 0.5
    full_table: str = "refuse"
    lease_timeout_s: float = 300.0
    mode: str = "sync"
    max_staleness: int = 8
    stale_policy: str = "drop"
    weights_dtype: str = "fp32"
    device: str = "cpu"
    actor_num_cpus: float = 0.0
    pipeline_depth: int = 0
    sync_prefetch: bool = False
    placement: str = "auto"
    spread: str = "none"

    def __post_init__(self) -> None:
        from paramserver.config import PSConfig, TableConfig

        # one validation for every knob: the PS's own (errors name ps.<key>)
        PSConfig(tables=(TableConfig("probe", 4),), **dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PSOptions":
        check_keys(cls, raw, "ps")
        return cls(**raw)


def _int_at_least(key: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
