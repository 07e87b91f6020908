"""The feature spec: a typed, frozen description of one data set, loaded from YAML.

A new data set needs a new spec, not new code. A spec names the source columns and
their types, the time column, the event id (a column, or the columns to derive it
from), the label rule, and which columns become sparse features (embedding tables)
and dense features (normalised with running statistics). Example (Taobao)::

    name: taobao_userbehavior
    format: csv            # csv | tsv | jsonl | parquet (or inferred from the file suffix)
    header: false
    columns:
      - {name: user_id, type: id}
      - {name: behavior, type: string, max_len: 8}
      - {name: ts, type: timestamp, unit: s}
    time_column: ts
    event_id: {derive: [user_id, item_id, behavior, ts]}
    actions: {column: behavior, values: [pv, cart, fav, buy]}
    label: {actions: [cart, fav, buy]}
    sparse:
      - {name: user, column: user_id, dim: 16}
    dense:
      - {name: hour, column: ts, transform: hour_of_day}
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from common.config import ConfigError, check_keys, load_yaml_config

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"


@enum.unique
class ColumnType(str, enum.Enum):
    ID = "id"  # an integer or string identifier -> int64 (strings by stable hash)
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    TIMESTAMP = "timestamp"  # unix seconds/ms or ISO-8601 text -> int64 seconds


@enum.unique
class DenseTransform(str, enum.Enum):
    IDENTITY = "identity"
    LOG1P = "log1p"
    HOUR_OF_DAY = "hour_of_day"  # from a timestamp column, 0..23 (UTC)
    DAY_OF_WEEK = "day_of_week"  # from a timestamp column, 0=Monday (UTC)


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    source: str | None = None  # the column's name in the raw file, when it differs
    required: bool = True
    max_len: int = 256  # strings (and string ids) longer than this are dead-lettered
    unit: str = "s"  # timestamps given as numbers: "s" or "ms"
    min: float | None = None  # numbers outside [min, max] are dead-lettered
    max: float | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"column name {self.name!r} must be an identifier (letters, digits, _)")
        if self.unit not in ("s", "ms"):
            raise ConfigError(f"column {self.name}: unit must be 's' or 'ms', got {self.unit!r}")
        if self.max_len < 1:
            raise ConfigError(f"column {self.name}: max_len must be >= 1")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"column {self.name}: min {self.min} > max {self.max}")

    @property
    def source_name(self) -> str:
        return self.source or self.name


@dataclasses.dataclass(frozen=True)
class SparseFeature:
    """One embedding table fed by one id column."""

    name: str
    column: str
    dim: int = 16

    def __post_init__(self) -> None:
        if self.dim < 1 or self.dim % 4:
            raise ConfigError(f"sparse feature {self.name}: dim must be a positive multiple of 4 (FBGEMM), got {self.dim}")


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    name: str
    column: str
    transform: DenseTransform = DenseTransform.IDENTITY


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """Positive when the action is in ``actions``, or when ``column`` >= ``threshold``."""

    actions: tuple[str, ...] = ()
    column: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        by_action = bool(self.actions)
        by_threshold = self.column is not None
        if by_action == by_threshold:
            raise ConfigError("label: give either 'actions: [...]' or 'column' with 'threshold', not both or neither")
        if by_threshold and self.threshold is None:
            raise ConfigError(f"label: column {self.column} needs a 'threshold'")


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    column: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    time_column: str
    label: LabelRule
    sparse: tuple[SparseFeature, ...]
    dense: tuple[DenseFeature, ...] = ()
    event_id_column: str | None = None
    event_id_derive: tuple[str, ...] = ()
    actions: ActionSpec | None = None
    format: str | None = None  # csv | tsv | jsonl | parquet; None: from the file suffix
    header: bool = True
    delimiter: str | None = None  # None: "," for csv, "\t" for tsv
    max_out_of_order_s: int = 3600
    dedup_window: int = 10_000_000  # how many recent event ids are remembered for duplicates

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"spec {self.name}: duplicate column names in {names}")
        by = self.column_map
        self._need(self.time_column, "time_column")
        if by[self.time_column].type is not ColumnType.TIMESTAMP:
            raise ConfigError(f"spec {self.name}: time_column {self.time_column} must have type timestamp")
        if (self.event_id_column is None) == (not self.event_id_derive):
            raise ConfigError(f"spec {self.name}: event_id needs exactly one of 'column' or 'derive: [columns]'")
        for c in ((self.event_id_column,) if self.event_id_column else self.event_id_derive):
            self._need(c, "event_id")
        for f in self.sparse:
            self._need(f.column, f"sparse feature {f.name}")
            if by[f.column].type not in (ColumnType.ID, ColumnType.INT):
                raise ConfigError(f"spec {self.name}: sparse feature {f.name} needs an id or int column")
        for f in self.dense:
            self._need(f.column, f"dense feature {f.name}")
            t = by[f.column].type
            time_tf = f.transform in (DenseTransform.HOUR_OF_DAY, DenseTransform.DAY_OF_WEEK)
            if time_tf != (t is ColumnType.TIMESTAMP):
                raise ConfigError(f"spec {self.name}: dense feature {f.name}: {f.transform.value} does not fit a {t.value} column")
            if not time_tf and t not in (ColumnType.INT, ColumnType.FLOAT):
                raise ConfigError(f"spec {self.name}: dense feature {f.name} needs a numeric column")
        if not self.sparse:
            raise ConfigError(f"spec {self.name}: at least one sparse feature is needed")
        tables = [f.name for f in self.sparse] + [f.name for f in self.dense]
        if len(set(tables)) != len(tables):
            raise ConfigError(f"spec {self.name}: feature names must be unique, got {tables}")
        if self.actions is not None:
            self._need(self.actions.column, "actions")
        if self.label.actions:
            if self.actions is None:
                raise ConfigError(f"spec {self.name}: a label by actions needs an 'actions' section")
            unknown = set(self.label.actions) - set(self.actions.values)
            if unknown:
                raise ConfigError(f"spec {self.name}: label actions {sorted(unknown)} are not in actions.values")
        else:
            self._need(self.label.column, "label")
        if self.format not in (None, "csv", "tsv", "jsonl", "parquet"):
            raise ConfigError(f"spec {self.name}: format must be csv, tsv, jsonl or parquet, got {self.format!r}")
        if self.max_out_of_order_s < 0:
            raise ConfigError(f"spec {self.name}: max_out_of_order_s must be >= 0")

    def _need(self, column: str | None, what: str) -> None:
        if column not in self.column_map:
            raise ConfigError(f"spec {self.name}: {what} names column {column!r}, which is not in columns {list(self.column_map)}")

    @property
    def column_map(self) -> dict[str, ColumnSpec]:
        return {c.name: c for c in self.columns}

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)


def _build(cls: type, raw: Any, where: str, **convert: Any):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    check_keys(cls, raw, where)
    kwargs = dict(raw)
    for key, fn in convert.items():
        if key in kwargs:
            kwargs[key] = fn(kwargs[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def spec_from_dict(raw: dict[str, Any], where: str = "spec") -> FeatureSpec:
    raw = dict(raw)
    event_id = raw.pop("event_id", None)
    if not isinstance(event_id, dict) or not (set(event_id) <= {"column", "derive"}):
        raise ConfigError(f"{where}: event_id must be {{column: NAME}} or {{derive: [COLUMNS]}}")
    raw["event_id_column"] = event_id.get("column")
    raw["event_id_derive"] = tuple(event_id.get("derive") or ())
    for key in ("columns", "sparse"):
        if not isinstance(raw.get(key), list):
            raise ConfigError(f"{where}: '{key}' must be a list")
    raw["columns"] = tuple(
        _build(ColumnSpec, c, f"{where}.columns[{i}]", type=_enum(ColumnType, f"{where}.columns[{i}].type"))
        for i, c in enumerate(raw["columns"])
    )
    raw["sparse"] = tuple(_build(SparseFeature, f, f"{where}.sparse[{i}]") for i, f in enumerate(raw["sparse"]))
    raw["dense"] = tuple(
        _build(DenseFeature, f, f"{where}.dense[{i}]", transform=_enum(DenseTransform, f"{where}.dense[{i}].transform"))
        for i, f in enumerate(raw.get("dense") or [])
    )
    raw["label"] = _build(LabelRule, raw.get("label"), f"{where}.label", actions=tuple)
    if raw.get("actions") is not None:
        raw["actions"] = _build(ActionSpec, raw["actions"], f"{where}.actions", values=tuple)
    return _build(FeatureSpec, raw, where)


def _enum(cls: type[enum.Enum], where: str):
    def convert(value: Any):
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {[m.value for m in cls]}") from None

    return convert


def builtin_specs() -> dict[str, Path]:
    """The specs shipped with freshrec, by name (file stem)."""
    return {p.stem: p for p in sorted(SPECS_DIR.glob("*.yaml"))}


def load_spec(name_or_path: str | Path) -> FeatureSpec:
    """Load a spec from a YAML file, or by the name of a built-in spec (``taobao``, ``movielens100k``)."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = builtin_specs()
        if str(name_or_path) not in shipped:
            raise ConfigError(f"no spec file {path} and no built-in spec of that name; built-in: {sorted(shipped)}")
        path = shipped[str(name_or_path)]
    return spec_from_dict(load_yaml_config(path), where=str(path))
