"""Typed, frozen configuration of the parameter server; every error says what to fix."""

from __future__ import annotations

import dataclasses
from typing import Any

from common.config import ConfigError, check_keys

OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam")
CPU_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
WEIGHTS_DTYPES = ("fp32", "fp16")
MODES = ("sync", "async")
DEVICES = ("cpu", "cuda", "auto")
STALE_POLICIES = ("drop", "apply")
FULL_TABLE_POLICIES = ("refuse", "error")
MAX_PIPELINE_DEPTH = 4
PLACEMENTS = ("auto", "ray", "in_process")
SPREADS = ("none", "spread", "nodes")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """One embedding table: ``name``, row ``dim`` (a multiple of 4, FBGEMM's rule).

    ``init_scale``: new rows are uniform in [-init_scale, init_scale]; ``None`` means
    ``1 / sqrt(dim)``. See :func:`paramserver.init_rows`.
    """

    name: str
    dim: int
    init_scale: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"table name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.dim, int) or self.dim <= 0 or self.dim % 4:
            raise ConfigError(f"table {self.name!r}: dim must be a positive multiple of 4 (FBGEMM), got {self.dim!r}")
        if self.init_scale is not None and not (0.0 <= self.init_scale < float("inf")):
            raise ConfigError(f"table {self.name!r}: init_scale must be >= 0 and finite, got {self.init_scale!r}")

    @property
    def scale(self) -> float:
        return self.init_scale if self.init_scale is not None else self.dim**-0.5


# the PS settings a training run fills in from elsewhere (never set in its ``ps:`` section): the tables from the
# feature spec and model.wide, the sparse optimizer, its learning rate, eps and the seed from ``train:``, the
# workers from ``workers:`` (trainer.backends.ps_config_for)
RUN_FILLED = {
    "tables": "the feature spec (and model.wide)",
    "optimizer": "train.sparse_optimizer",
    "learning_rate": "train.sparse_lr",
    "eps": "train.sparse_eps",
    "seed": "train.seed",
    "num_workers": "workers",
}


@dataclasses.dataclass(frozen=True)
class PSConfig:
    """The whole parameter server: the ONE definition of every PS setting and its default.

    A training run's ``ps:`` section is a PSConfig without tables (:meth:`settings_from_dict`); the run fills
    in the fields of ``RUN_FILLED`` (:func:`trainer.backends.ps_config_for`). Shards need tables
    (:meth:`require_tables`).

    num_shards: shards (partitions of every table): 1 by default; a sync run gives the same parameters on
    any number (tests/unit/test_protocols.py), async staleness is counted per shard.
    capacity_per_shard: rows each shard holds for each table (LFU eviction beyond it); 131072 by default,
    the setting the recorded quality figures were trained with (docs/benchmarks.md, "Quality").

    capacity_per_shard: rows each shard holds for each table (LFU eviction beyond it).
    optimizer: rowwise_adagrad (default) | adagrad | sgd | adam (CUDA only).
    weights_dtype: fp32 | fp16 row storage. admission_threshold: pulls before an id gets a row.
    ttl_versions: evict rows not seen (pulled or pushed) during the last this many shard versions
    (updates applied: sync steps, async pushes); None: never. Deterministic.
    ttl_seconds: evict rows not seen for this many seconds of the shard's clock (None: never).
    lfu_decay_every / lfu_decay: aged LFU: every ``lfu_decay_every`` shard versions every resident
    row's count is multiplied by ``lfu_decay`` (floored); None: counts never decay.
    full_table: a pull that needs more new rows than eviction can free (every other row is in
    the batch or leased): "refuse" (the most frequent new ids get rows, the rest read zeros and
    their gradients are dropped; counted as refused_rows) or "error" (TableFullError, nothing changed).
    lease_timeout_s: rows pulled for a step stay resident (leased) until that step's push is
    applied; a lease not released within this many seconds is released and counted.
    mode: sync (bulk-synchronous over num_workers, deterministic) | async (bounded staleness).
    max_staleness / stale_policy: in async mode a push whose rows were read before more than
    max_staleness of the SAME worker's own pushes to that shard were applied is dropped ("drop")
    or applied anyway ("apply"); both count.
    actor_num_cpus: CPUs each shard actor reserves (0 lets shards share a small local Ray).
    pipeline_depth: sync mode, how many steps a training pull runs ahead of the updates. 0 (the
    default): the rows of step k+1 carry step k's update (exact; bit-identical to one process).
    d >= 1: step k's push and step k+1+d's pull travel in one call per shard, so a step's rows miss
    the updates of the d steps before it (staleness d, deterministic) and the worker computes
    while the shards apply. At most MAX_PIPELINE_DEPTH.
    sync_prefetch: sync mode, pipeline_depth 0, one worker: while step k computes, pull the ids of
    step k+1 that step k does not touch (their rows cannot change, so this stays exact); only the
    shared ids then wait for step k's push.
    placement: where the shards live. ray: shard actors (every worker on every node reaches them).
    in_process: threads of the one training worker's process (no Ray round trip; one worker
    only, and the shards live and die with it; a restart restores them from the last version).
    auto (the default): in_process for a training run with one worker, ray otherwise;
    :func:`paramserver.create_parameter_server` alone resolves auto to ray.
    spread: how shard actors are laid out over the nodes of a multi-node Ray cluster. none (the
    default): Ray's default scheduling (shards pack on the driver's node while it has room). nodes:
    shard i goes to the i-th alive node (nodes ordered by id, round-robin; a soft node affinity: a node
    that is gone or full falls back to any node); a restart after a node was lost lays them out again
    over the nodes alive then. spread: Ray's SPREAD strategy (best effort over nodes).
    No placement group: shards reserve ``actor_num_cpus`` CPUs (0 by default) and a bundle cannot be
    empty, so pinning by node id is the one layout that reserves nothing (docs/operations.md).
    """

    tables: tuple[TableConfig, ...] = ()
    num_shards: int = 1
    capacity_per_shard: int = 1 << 17
    optimizer: str = "rowwise_adagrad"
    learning_rate: float = 0.01
    eps: float = 1e-8
    weights_dtype: str = "fp32"
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
    num_workers: int = 1
    seed: int = 0
    device: str = "cpu"
    actor_num_cpus: float = 0.0
    pipeline_depth: int = 0
    sync_prefetch: bool = False
    placement: str = "auto"
    spread: str = "none"

    def __post_init__(self) -> None:
        tables = tuple(TableConfig(**t) if isinstance(t, dict) else t for t in self.tables)
        object.__setattr__(self, "tables", tables)
        if not all(isinstance(t, TableConfig) for t in tables):
            raise ConfigError("ps.tables must hold TableConfig objects or mappings")
        names = [t.name for t in tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"ps.tables: table names must be unique, {dup} repeat")
        _positive_int("num_shards", self.num_shards)
        _positive_int("capacity_per_shard", self.capacity_per_shard)
        _positive_int("admission_threshold", self.admission_threshold)
        _positive_int("num_workers", self.num_workers)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("weights_dtype", self.weights_dtype, WEIGHTS_DTYPES)
        _choice("mode", self.mode, MODES)
        _choice("device", self.device, DEVICES)
        _choice("stale_policy", self.stale_policy, STALE_POLICIES)
        if self.device == "cpu" and self.optimizer not in CPU_OPTIMIZERS:
            raise ConfigError(
                f"ps.optimizer={self.optimizer!r} needs CUDA: FBGEMM's CPU kernels offer only "
                f"{list(CPU_OPTIMIZERS)}; pick one of those or set ps.device to 'cuda'"
            )
        if not (self.learning_rate > 0 and self.learning_rate < float("inf")):
            raise ConfigError(f"ps.learning_rate must be a positive finite number, got {self.learning_rate!r}")
        if not (self.eps > 0 and self.eps < float("inf")):
            raise ConfigError(f"ps.eps must be a positive finite number, got {self.eps!r}")
        _choice("full_table", self.full_table, FULL_TABLE_POLICIES)
        if self.ttl_versions is not None:
            _positive_int("ttl_versions", self.ttl_versions)
        if self.lfu_decay_every is not None:
            _positive_int("lfu_decay_every", self.lfu_decay_every)
        if self.ttl_seconds is not None:
            _positive_number("ttl_seconds", self.ttl_seconds)
        _positive_number("lease_timeout_s", self.lease_timeout_s)
        if (
            isinstance(self.lfu_decay, bool)
            or not isinstance(self.lfu_decay, (int, float))
            or not 0.0 < self.lfu_decay < 1.0
        ):
            raise ConfigError(
                f"ps.lfu_decay must be a number in (0, 1) (the factor counts keep each period), got {self.lfu_decay!r}"
            )
        if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
            raise ConfigError(f"ps.max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"ps.seed must be an integer, got {self.seed!r}")
        if not (0 <= self.actor_num_cpus < float("inf")):
            raise ConfigError(f"ps.actor_num_cpus must be >= 0, got {self.actor_num_cpus!r}")
        if (
            not isinstance(self.pipeline_depth, int)
            or isinstance(self.pipeline_depth, bool)
            or not 0 <= self.pipeline_depth <= MAX_PIPELINE_DEPTH
        ):
            raise ConfigError(
                f"ps.pipeline_depth must be an integer in [0, {MAX_PIPELINE_DEPTH}] (steps a training "
                f"pull runs ahead of the updates), got {self.pipeline_depth!r}"
            )
        if self.pipeline_depth and self.mode != "sync":
            raise ConfigError(
                "ps.pipeline_depth is for sync mode (async mode already pulls the next step ahead and "
                "bounds staleness with ps.max_staleness): set ps.pipeline_depth to 0 or ps.mode to sync"
            )
        _choice("placement", self.placement, PLACEMENTS)
        _choice("spread", self.spread, SPREADS)
        if self.placement == "in_process" and self.num_workers > 1:
            raise ConfigError(
                f"ps.placement=in_process hosts the shards in the one training worker's process, but "
                f"there are {self.num_workers} workers: use ray or auto"
            )
        if not isinstance(self.sync_prefetch, bool):
            raise ConfigError(f"ps.sync_prefetch must be true or false, got {self.sync_prefetch!r}")

    def require_tables(self) -> "PSConfig":
        """This config, if it lists tables (what shards need); ConfigError otherwise."""
        if not self.tables:
            raise ConfigError("ps.tables is empty: list at least one table, e.g. {name: user_id, dim: 16}")
        return self

    def settings(self) -> dict[str, Any]:
        """The settings a run's ``ps:`` section holds (every field but those of ``RUN_FILLED``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in RUN_FILLED}

    @classmethod
    def settings_from_dict(cls, raw: dict[str, Any]) -> "PSConfig":
        """A run's ``ps:`` section (no tables: the run fills in ``RUN_FILLED``), refusing unknown keys and
        saying where each run-filled one is set instead."""
        filled = sorted(set(raw) & set(RUN_FILLED))
        if filled:
            where = "; ".join(f"ps.{k} comes from {RUN_FILLED[k]}" for k in filled)
            raise ConfigError(f"ps: {filled} cannot be set in a run's ps section: {where}")
        check_keys(cls, raw, "ps")
        return cls(**raw)

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)

    def table(self, name: str) -> TableConfig:
        for t in self.tables:
            if t.name == name:
                return t
        from paramserver.errors import UnknownTableError

        raise UnknownTableError(name, self.table_names)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "PSConfig":
        """Build from a YAML mapping (``ps:`` section), refusing unknown keys."""
        check_keys(cls, raw, "ps")
        raw = dict(raw)
        tables = []
        for i, t in enumerate(raw.get("tables", ())):
            if not isinstance(t, dict):
                raise ConfigError(f"ps.tables[{i}] must be a mapping with name and dim")
            check_keys(TableConfig, t, f"ps.tables[{i}]")
            tables.append(TableConfig(**t))
        raw["tables"] = tuple(tables)
        return cls(**raw)


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"ps.{key} must be an integer >= 1, got {value!r}")


def _positive_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"ps.{key} must be a positive finite number, got {value!r}")


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"ps.{key} must be one of {list(allowed)}, got {value!r}")
