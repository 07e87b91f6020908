"""The one config tree of a run (:class:`RunConfig`) and what belongs to the cluster itself (Ray).

Each package owns the config of its own part (``trainer.config.TrainConfig``,
``paramserver.PSConfig``, ``versions.SnapshotConfig``...); the tree gathers them, loads them
from a run YAML and applies command-line overrides. Errors say what to fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import ConfigError, check_keys, load_yaml_config

if TYPE_CHECKING:
    from paramserver.config import PSConfig
    from serving.config import ServeConfig
    from trainer.config import ModelConfig, TrainConfig
    from versions import PublishConfig, SnapshotConfig


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """How freshrec reaches Ray.

    ``address=None`` starts an embedded local Ray (the default on one machine);
    ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster.
    """

    address: str | None = None
    num_cpus: int | None = None
    object_store_memory: int | None = None
    namespace: str = "freshrec"
    log_to_driver: bool = False  # worker logs in the driver's terminal (freshrec -v turns it on)

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("ray.num_cpus applies only to an embedded Ray; drop it when --address is set")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The one config tree of a run: what ``train``, ``stream``, ``demo``, ``serve`` and ``config show`` use.

    Loaded from a run YAML (every section optional, unknown keys refused) and overridden from
    the command line (``--set train.batch_size=512`` or the dedicated flags)::

        spec: taobao              # a feature spec YAML file or a built-in name
        workers: 2                # Ray Train workers (dense params synchronised with DDP)
        model: {arch: dlrm, interaction: dcn, bottom_mlp: [16], top_mlp: [64, 32]}
        train: {batch_size: 256, sparse_optimizer: rowwise_adagrad, sparse_lr: 0.03, dense_lr: 0.003,
                strategy: online, seed: 0}
        ps: {num_shards: 1, capacity_per_shard: 131072, admission_threshold: 1, ttl_versions: null, ttl_seconds: null,
             lfu_decay_every: null, lfu_decay: 0.5, full_table: refuse, lease_timeout_s: 300, mode: sync,
             pipeline_depth: 0, sync_prefetch: false, placement: auto, spread: none}
        snapshots: {every_data_file: true, every_steps: null, every_seconds: null, full_every: 10, keep: 5}
        publish: {max_auc_drop: 0.02, significance: 0.001, min_examples: 500, verify_checksums: true}   # the publish gate
        serve: {poll_interval_s: 0.2, replicas: 1, grpc_port: 9000, retrieve: 200, catalogue: [],
                limits: {max_candidates: 1000, max_k: 1000}, ann_above: 1000000, ann_nprobe: 64}   # freshrec serve
        ray: {address: null}      # null: start an embedded local Ray; "auto" or host:port joins one
        storage_options: {endpoint_url: "http://minio:9000", key: ..., secret: ...}   # fsspec options of a
                                  # train/stream run's store, history and incoming URLs (never stored in a manifest)

    Where each setting is defined (its type, default and check): ``serve`` in ``serving/config.py``
    (``ServeConfig``, ``Limits``), ``ps`` in ``paramserver/config.py`` (``PSConfig``), ``model`` / ``train`` in
    ``trainer/config.py``, ``snapshots`` / ``publish`` in ``versions/``, ``ray`` here; ``freshrec config show``
    prints them all.
    """

    spec: str = "taobao"
    workers: int = 1
    model: "ModelConfig" = None  # type: ignore[assignment]  (filled in __post_init__)
    train: "TrainConfig" = None  # type: ignore[assignment]
    ps: "PSConfig" = None  # type: ignore[assignment]
    snapshots: "SnapshotConfig" = None  # type: ignore[assignment]
    publish: "PublishConfig" = None  # type: ignore[assignment]
    serve: "ServeConfig" = None  # type: ignore[assignment]
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    storage_options: dict | None = None  # fsspec options of train/stream's store and data URLs (--storage-option)

    def __post_init__(self) -> None:
        from paramserver.config import PSConfig
        from serving.config import ServeConfig
        from trainer.config import ModelConfig, TrainConfig
        from versions import PublishConfig, SnapshotConfig

        for key, cls in (
            ("model", ModelConfig),
            ("train", TrainConfig),
            ("ps", PSConfig),
            ("snapshots", SnapshotConfig),
            ("publish", PublishConfig),
            ("serve", ServeConfig),
        ):
            if getattr(self, key) is None:
                object.__setattr__(self, key, cls())
            elif not isinstance(getattr(self, key), cls):
                raise ConfigError(f"{key} must be a {cls.__name__}, got {getattr(self, key)!r}")
        if not isinstance(self.spec, str) or not self.spec:
            raise ConfigError(f"spec must name a feature spec (a YAML file or a built-in name), got {self.spec!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 1:
            raise ConfigError(f"workers must be an integer >= 1 (Ray Train workers), got {self.workers!r}")
        if self.storage_options is not None and not (
            isinstance(self.storage_options, dict) and all(isinstance(k, str) and k for k in self.storage_options)
        ):
            raise ConfigError(
                "storage_options must be a mapping of fsspec options (e.g. {endpoint_url: http://host:9000, "
                f"key: ..., secret: ...}}), got {self.storage_options!r}"
            )
        if self.ps.placement == "in_process" and self.workers > 1:
            raise ConfigError(
                f"ps.placement=in_process hosts the shards in the one training worker's process, but "
                f"workers is {self.workers}: use ps.placement=auto or ray"
            )

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        """Build from a mapping (a run YAML), refusing unknown keys in every section."""
        from paramserver.config import PSConfig
        from serving.config import ServeConfig
        from trainer.config import TrainConfig, model_config_from_dict

        check_keys(cls, raw, "config")
        kw: dict[str, Any] = {k: raw[k] for k in ("spec", "workers", "storage_options") if k in raw}
        from versions import PublishConfig, SnapshotPolicy

        builders = {
            "model": model_config_from_dict,
            "train": TrainConfig.from_dict,
            "ps": PSConfig.settings_from_dict,
            "snapshots": lambda raw: SnapshotPolicy.from_dict(raw).cfg,
            "publish": PublishConfig.from_dict,
            "serve": ServeConfig.from_dict,
            "ray": _ray_from_dict,
        }
        for key, build in builders.items():
            section = raw.get(key)
            if section is None:
                continue
            if not isinstance(section, dict):
                raise ConfigError(f"{key}: expected a mapping of settings, got {section!r}")
            try:
                kw[key] = build(section)
            except TypeError as exc:  # e.g. a list where a number belongs
                raise ConfigError(f"{key}: {exc}") from None
        return cls(**kw)

    def to_dict(self, serve: bool = True) -> dict[str, Any]:
        """Plain YAML-able values (enums as their names, tuples as lists); ``ps`` holds the settings of a run's
        ``ps:`` section (what the run fills in from elsewhere is left out). ``serve=False`` leaves the
        ``serve`` section out, and ``storage_options`` (what a training run stores in its versions' manifests:
        serving settings are not part of a model, and storage options may hold credentials)."""
        left_out = () if serve else ("serve", "storage_options")
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in left_out}
        out = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in out.items()}
        out["ps"] = self.ps.settings()
        return _plain(out)


def _ray_from_dict(raw: dict[str, Any]) -> RayConfig:
    check_keys(RayConfig, raw, "ray")
    return RayConfig(**raw)


def _plain(value: Any) -> Any:
    import enum

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["train.batch_size=512", "ps.ttl_versions=null"]`` applied to a nested mapping (values parsed as YAML).

    >>> apply_overrides({"train": {"seed": 1}}, ["train.batch_size=512", "workers=2"])
    {'train': {'seed': 1, 'batch_size': 512}, 'workers': 2}
    """
    import copy

    import yaml

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.batch_size=512")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return out


def set_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``{"serve.catalogue": ["a.csv"]}`` set in a nested mapping (Python values, not YAML text: what a
    command's flags give).

    >>> set_values({"serve": {"replicas": 2}}, {"serve.catalogue": ["a b.csv"]})
    {'serve': {'replicas': 2, 'catalogue': ['a b.csv']}}
    """
    import copy

    out = copy.deepcopy(raw)
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # e.g. serve.storage_options: null in the YAML
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[parts[-1]] = value
    return out


def load_run_config(
    path: str | Path | None = None, overrides: list[str] | None = None, values: dict[str, Any] | None = None
) -> RunConfig:
    """The effective config: defaults, then the run YAML at ``path``, then ``overrides`` (KEY=VALUE), then
    ``values`` (dotted key -> value: a command's flags)."""
    raw = load_yaml_config(path) if path else {}
    return RunConfig.from_dict(set_values(apply_overrides(raw, list(overrides or [])), dict(values or {})))
