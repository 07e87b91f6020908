"""Config errors and YAML helpers shared by every package's typed configs."""

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
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a YAML mapping at the top level, got {type(data).__name__}")
    return data


def check_keys(cls: type, raw: dict[str, Any], where: str) -> None:
    """Refuse keys the dataclass ``cls`` does not know, naming the allowed ones."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
