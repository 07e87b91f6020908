"""Typed, frozen configuration shared by the CLI and the packages.

Each package owns the config of its own part (``trainer.data.FeatureSpec``,
``paramserver.PSConfig``...); this module holds what belongs to the cluster itself
and the helpers every config uses: YAML loading with errors that say what to fix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ConfigError with the file name on any problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist: pass an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a YAML mapping at the top level, got {type(data).__name__}")
    return data


def check_keys(cls: type, raw: dict[str, Any], where: str) -> None:
    """Refuse keys the dataclass ``cls`` does not know, naming the allowed ones."""
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


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
