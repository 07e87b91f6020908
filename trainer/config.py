"""Typed, frozen configuration of the model and of training; every error says what to fix.

>>> ModelConfig(interaction="dot").interaction
'dot'
>>> TrainConfig(strategy="fusion", fusion_lambda=0.7).fusion_lambda
0.7
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.config import ConfigError, check_keys
from paramserver.config import PSConfig

INTERACTIONS = ("dcn", "dot")
ARCHS = ("dlrm", "torchrec_dlrm", "torchrec_dlrm_dcn")
DENSE_OPTIMIZERS = ("adagrad", "sgd")
SPARSE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")
WIDE_ANCHORS = ("row", "count")
HISTORY_AUTO = "auto"  # train.history_epochs: passes from the history's size (TrainConfig.history_passes)


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
    ``wide_beta`` / ``wide_anchor`` / ``wide_dense_gain`` / ``wide_bias``: how the wide part learns like an
    FTRL-Proximal LR (trainer/model.py, docs/training.md "The first-order (wide) part"): the anchor's
    size, ``count`` (an id's Adagrad accumulator grows with its occurrences, FTRL's n) or ``row`` (with
    their square: the second pass's path), the dense term's rate, and the wide intercept.
    """

    interaction: str = "dcn"
    arch: str = "dlrm"
    dcn_layers: int = 2
    dcn_rank: int = 0
    bottom_mlp: tuple[int, ...] = (16,)
    top_mlp: tuple[int, ...] = (64, 32)
    wide: bool | None = None  # None: on for arch dlrm (measured, docs/benchmarks.md), off for TorchRec's
    wide_beta: float = 2.0  # the wide weights' FTRL-like step (trainer/model.py); 0: plain row-wise Adagrad
    wide_dense_gain: float = 16.0  # the wide dense term learns at this multiple of train.dense_lr; 1: as the rest
    wide_bias: bool = True  # the wide part's own intercept (FTRL's bias coordinate), at wide_dense_gain
    wide_anchor: str = "count"  # row: anchor beta/B per row using an id; count: beta/(B sqrt(c)), c = the id's rows

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
        if not isinstance(self.wide_bias, bool):
            raise ConfigError(f"model.wide_bias must be true or false, got {self.wide_bias!r}")
        if self.wide_anchor not in WIDE_ANCHORS:
            raise ConfigError(f"model.wide_anchor must be one of {list(WIDE_ANCHORS)}, got {self.wide_anchor!r}")
        if self.wide and self.arch != "dlrm":
            raise ConfigError(
                f"model.wide adds a first-order part to freshrec's own DLRM; model.arch={self.arch!r} "
                "(TorchRec's classes) has none: use arch dlrm or wide false"
            )
        for key in ("wide_beta", "wide_dense_gain"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"model.{key} must be a finite number >= 0, got {v!r}")
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
    comes from data the model has already seen. 1: one pass, the plain online cold start. ``auto`` (the
    default): as many passes as it takes for the history to have given at least ``history_steps`` optimizer
    steps (a pass over files of n_1, n_2, ... rows is sum ceil(n_i / batch_size) steps), at most
    ``history_max_epochs`` (:meth:`history_passes`): a small new log gets several passes, a long history
    one (so a production run's cold start is the plain one). A run without history (``stream`` over
    incoming files only) makes no extra pass either way. The default and its figures: docs/benchmarks.md,
    "Issue 24, sixth pass".

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
    history_epochs: int | str = HISTORY_AUTO  # or an integer >= 1; auto: from the history's size, history_passes()
    history_steps: int = 48  # auto: pass until the history has given this many steps (docs/benchmarks.md, issue 24)
    history_max_epochs: int = 3  # auto: at most this many passes

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
        if self.history_epochs != HISTORY_AUTO:
            if isinstance(self.history_epochs, str):
                raise ConfigError(
                    f"train.history_epochs must be an integer >= 1 or {HISTORY_AUTO!r} (passes from the history's "
                    f"size), got {self.history_epochs!r}"
                )
            _int_at_least("train.history_epochs", self.history_epochs, 1)
        _int_at_least("train.history_steps", self.history_steps, 1)
        _int_at_least("train.history_max_epochs", self.history_max_epochs, 1)
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

    def history_steps_of(self, file_rows: Sequence[int]) -> int:
        """Optimizer steps of one pass over history files of ``file_rows`` rows (each file its own minibatches
        of ``batch_size`` rows, as the progressive pass trains them).

        >>> TrainConfig(batch_size=256).history_steps_of([4000, 40, 0])
        17
        """
        b = self.batch_size
        return sum(-(-int(r) // b) for r in file_rows if r > 0)

    def history_passes(self, file_rows: Sequence[int]) -> int:
        """Passes over a history of data files of ``file_rows`` rows: ``history_epochs``, or with ``auto`` the
        fewest passes whose steps reach ``history_steps``, between 1 and ``history_max_epochs`` (1 for an
        empty history).

        >>> cfg = TrainConfig(history_epochs="auto")  # 48 steps, at most 3 passes, batch 256
        >>> [cfg.history_passes(rows) for rows in ([80], [4000], [8000], [6400], [12800], [3549, 3644, 3770, 3822], [])]
        [3, 3, 2, 2, 1, 1, 1]
        >>> TrainConfig(history_epochs=2).history_passes([10**6])
        2
        """
        if self.history_epochs != HISTORY_AUTO:
            return self.history_epochs
        steps = self.history_steps_of(file_rows)
        if steps == 0:
            return 1
        return max(1, min(self.history_max_epochs, -(-self.history_steps // steps)))

    def history_done(self, file_rows: Sequence[int]) -> bool:
        """Whether a history of ``file_rows`` so far already settles on one pass whatever follows (``auto``: it
        has given ``history_steps`` steps, or ``history_max_epochs`` is 1; an integer: 1), so that its files need
        not be kept for more passes.

        >>> cfg = TrainConfig(history_epochs="auto")
        >>> cfg.history_done([4000] * 2), cfg.history_done([4000] * 3), TrainConfig(history_epochs=3).history_done([10**6])
        (False, True, False)
        >>> TrainConfig(history_max_epochs=1).history_done([])  # auto capped at one pass: nothing to keep
        True
        """
        if self.history_epochs != HISTORY_AUTO:
            return self.history_epochs == 1
        return self.history_max_epochs == 1 or self.history_steps_of(file_rows) >= self.history_steps

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
    raw.setdefault("wide_beta", 0.0)  # versions before the LR-like wide path (issue 24): as they were trained
    raw.setdefault("wide_dense_gain", 1.0)
    raw.setdefault("wide_bias", False)  # versions before the wide intercept: none
    raw.setdefault("wide_anchor", "row")
    return model_config_from_dict(raw)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Everything a PS-mode training run is (what :func:`trainer.run.run_ps_training` runs).

    spec: the feature spec (a :class:`trainer.data.FeatureSpec`). run_dir: the run directory
    (:mod:`trainer.runfiles`). model / train / ps: the model, training and parameter-server settings
    (``ps``: a :class:`paramserver.PSConfig` without tables; the run fills in its tables, sparse optimizer,
    seed and workers, :func:`trainer.backends.ps_config_for`).
    history / incoming: the directories (or fsspec URLs) of the data files: the history first, then
    files landing in incoming; ``drain``: stop once incoming is empty (else follow it), after
    ``idle_timeout_s`` without a new file (None: never). num_workers: Ray Train workers.
    keep_ps: leave the shard actors running after the run (the caller gets the client).
    versions: keep model versions in ``store_url`` (None: ``RUN_DIR/versions``; ``storage_options``
    for fsspec) at the boundaries ``snapshots`` (a versions.SnapshotConfig; None: its defaults) picks,
    behind the publish gate ``publish`` (a versions.PublishConfig; None: its defaults), each version's
    manifest carrying ``version_extra``; a run directory with committed versions resumes from the newest.
    max_restarts: failures of the worker group (a shard actor or a worker died) restarted from the last
    committed version, in the whole run (:class:`trainer.failure.FailurePolicy`).
    """

    spec: Any
    run_dir: Path
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    ps: PSConfig = dataclasses.field(default_factory=PSConfig)
    history: str | Path | None = None
    incoming: str | Path | None = None
    drain: bool = True
    num_workers: int = 1
    idle_timeout_s: float | None = None
    keep_ps: bool = False
    versions: bool = True
    store_url: str | None = None
    storage_options: dict | None = None
    snapshots: Any = None  # versions.SnapshotConfig | None
    publish: Any = None  # versions.PublishConfig | None
    version_extra: dict = dataclasses.field(default_factory=dict)
    max_restarts: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        object.__setattr__(self, "version_extra", dict(self.version_extra or {}))
        for key, cls in (("model", ModelConfig), ("train", TrainConfig), ("ps", PSConfig)):
            if not isinstance(getattr(self, key), cls):
                raise ConfigError(f"TrainJob.{key} must be a {cls.__name__}, got {getattr(self, key)!r}")
        _int_at_least("workers (TrainJob.num_workers)", self.num_workers, 1)
        _int_at_least("TrainJob.max_restarts", self.max_restarts, 0)
        if self.idle_timeout_s is not None and not (
            isinstance(self.idle_timeout_s, (int, float)) and 0 < self.idle_timeout_s < float("inf")
        ):
            raise ConfigError(
                f"idle_timeout_s must be None or a positive number of seconds, got {self.idle_timeout_s!r}"
            )
        if self.history is None and self.incoming is None:
            raise ConfigError("a training run needs data files: give history (--data/--history) or incoming")
        if not self.versions and self.store_url is not None:
            raise ConfigError(f"versions=False keeps no versions, but store_url is {self.store_url!r}: drop one")

    def replace(self, **changes: Any) -> TrainJob:
        return dataclasses.replace(self, **changes)


def _int_at_least(key: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
