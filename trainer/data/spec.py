"""The feature spec: a typed, frozen description of one data set, loaded from YAML.

A new data set needs a new spec, not new code. A spec names the source columns and
their types, the time (a column, or ``time: row_order``), the event id (a column, the
columns to derive it from, or ``row``), the label rule, side tables joined by id, and
which columns become sparse features (embedding tables) and dense features (normalised
with running statistics). Example (Taobao)::

    name: taobao_userbehavior
    format: csv            # csv | tsv | jsonl | parquet (or inferred from the file suffix)
    header: false          # true | false | auto (per file: a first line naming the columns)
    columns:
      - {name: user_id, type: id}
      - {name: behavior, type: string, max_len: 8}
      - {name: ts, type: timestamp, unit: s}
    time_column: ts        # or  time: row_order
    event_id: {derive: [user_id, item_id, behavior, ts]}
    actions: {column: behavior, values: [pv, cart, fav, buy]}
    label: {actions: [cart, fav, buy]}
    sparse:
      - {name: user, column: user_id, dim: 16}
    dense:
      - {name: hour, column: ts, transform: hour_of_day}

The full reference, with every option, is docs/data.md.
"""

from __future__ import annotations

import calendar
import dataclasses
import enum
import time
from pathlib import Path
from typing import Any

from common.config import ConfigError, check_keys, load_yaml_config
from trainer.data.dynspec import DynamicSpec, dynamic_from_dict

SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"

DEFAULT_NULL_TOKENS = ("", "NaN", "nan", "null", "NULL", "None", "\\N")
TIME_MIN_DEFAULT = calendar.timegm((1990, 1, 1, 0, 0, 0))  # a time outside these bounds was read in the wrong unit
TIME_MAX_DEFAULT = calendar.timegm((2100, 1, 1, 0, 0, 0))
TIME_UNITS = {"s": 1, "ms": 1000, "us": 1_000_000}


@enum.unique
class ColumnType(str, enum.Enum):
    ID = "id"  # a decimal integer (kept) or other text (stable hash) -> int64
    INT_ID = "int_id"  # decimal int64 only; anything else is a malformed id
    STRING_ID = "string_id"  # printable UTF-8 text (no control characters), always hashed -> int64
    ID_LIST = "id_list"  # a list of ids per row (each element like ``id``) -> jagged int64
    INT = "int"
    FLOAT = "float"
    STRING = "string"
    TIMESTAMP = "timestamp"  # unix s/ms/us, a strftime ``format``, or ISO-8601 text -> int64 seconds


ID_TYPES = (ColumnType.ID, ColumnType.INT_ID, ColumnType.STRING_ID)


@enum.unique
class DenseTransform(str, enum.Enum):
    IDENTITY = "identity"  # x (after optional shift and clip)
    LOG1P = "log1p"  # log(1 + max(x + shift, 0)), after optional clip: never rejects a row
    CLIP = "clip"  # x clipped to [clip_min, clip_max]
    BUCKETIZE = "bucketize"  # index of the bucket of x among ``boundaries`` (0..len)
    MISSING = "missing"  # 1.0 where the column was missing (filled), else 0.0
    HOUR_OF_DAY = "hour_of_day"  # from a timestamp column, 0..23 (UTC)
    DAY_OF_WEEK = "day_of_week"  # from a timestamp column, 0=Monday (UTC)


@enum.unique
class LatePolicy(str, enum.Enum):
    DEFER = "defer"  # train a late event with the next data file (counted as rows_late)
    DEAD_LETTER = "dead_letter"  # write it to the dead letter with reason "late event"


@enum.unique
class Pooling(str, enum.Enum):
    SUM = "sum"
    MEAN = "mean"


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One source column.

    ``required`` columns dead-letter a row where the field is missing (absent, empty or a
    null token); optional ones take ``fill`` instead (default 0 / empty text / empty list),
    and a ``missing`` dense transform can say where that happened.
    """

    name: str
    type: ColumnType
    source: str | None = None  # the column's name in the raw file, when it differs
    required: bool = True
    fill: float | str | None = None  # value of a missing optional field (None: 0, "" or [])
    max_len: int = 256  # strings (and string ids, and each id_list element) longer than this are dead-lettered
    max_items: int = 256  # id_list: rows with more ids are dead-lettered
    separator: str | None = None  # id_list given as text: the separator of its ids (e.g. " " or "|")
    unit: str = "s"  # timestamps given as numbers: "s", "ms" or "us"
    format: str | None = None  # timestamps given as text in a strftime layout, e.g. "%y%m%d%H"
    min: float | None = None  # numbers outside [min, max] are dead-lettered; timestamps: unix seconds
    max: float | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"column name {self.name!r} must be an identifier (letters, digits, _)")
        if self.unit not in TIME_UNITS:
            raise ConfigError(f"column {self.name}: unit must be one of {sorted(TIME_UNITS)}, got {self.unit!r}")
        if self.max_len < 1 or self.max_items < 1:
            raise ConfigError(f"column {self.name}: max_len and max_items must be >= 1")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"column {self.name}: min {self.min} > max {self.max}")
        if self.separator is not None and (self.type is not ColumnType.ID_LIST or self.separator == ""):
            raise ConfigError(f"column {self.name}: 'separator' is for id_list columns and must not be empty")
        if self.format is not None:
            if self.type is not ColumnType.TIMESTAMP or "%" not in self.format:
                raise ConfigError(
                    f"column {self.name}: 'format' is a strftime layout (like '%y%m%d%H') for timestamp columns"
                )
        if self.fill is not None:
            if self.required:
                raise ConfigError(f"column {self.name}: 'fill' is for optional columns: add 'required: false'")
            if self.type is ColumnType.ID_LIST:
                raise ConfigError(f"column {self.name}: a missing id_list is the empty list; drop 'fill'")
            text = self.type in (ColumnType.STRING, ColumnType.STRING_ID)
            if text != isinstance(self.fill, str) or isinstance(self.fill, bool):
                raise ConfigError(
                    f"column {self.name}: fill must be {'text' if text else 'a number'} for a {self.type.value} column"
                )

    @property
    def source_name(self) -> str:
        return self.source or self.name

    @property
    def time_range(self) -> tuple[int, int]:
        lo = int(self.min) if self.min is not None else TIME_MIN_DEFAULT
        hi = int(self.max) if self.max is not None else TIME_MAX_DEFAULT
        return lo, hi


@dataclasses.dataclass(frozen=True)
class SparseFeature:
    """One embedding table fed by one id column: single-valued (``id``, ``int_id``,
    ``string_id``, ``int``: one id per row) or multi-valued (``id_list``: a jagged list of
    ids per row, pooled by ``pooling``). ``column_type`` is filled in by the spec."""

    name: str
    column: str
    dim: int = 16
    pooling: Pooling = Pooling.SUM
    column_type: ColumnType | None = None

    def __post_init__(self) -> None:
        if self.dim < 1 or self.dim % 4:
            raise ConfigError(
                f"sparse feature {self.name}: dim must be a positive multiple of 4 (FBGEMM), got {self.dim}"
            )

    @property
    def multi_valued(self) -> bool:
        """True when each row has a list of ids (EventBatch.lengths has an entry)."""
        return self.column_type is ColumnType.ID_LIST


@dataclasses.dataclass(frozen=True)
class DenseFeature:
    """One dense input: ``transform`` of a numeric (or timestamp) column.

    >>> # log1p(max(x + 1, 0)) clipped first to [-1, 1e6]; a bucket index; a missing flag
    >>> # {name: c1, column: I1, transform: log1p, shift: 1, clip_min: -1, clip_max: 1e6}
    >>> # {name: age_b, column: age, transform: bucketize, boundaries: [18, 30, 50]}
    >>> # {name: price_missing, column: price, transform: missing}
    """

    name: str
    column: str
    transform: DenseTransform = DenseTransform.IDENTITY
    shift: float = 0.0
    clip_min: float | None = None
    clip_max: float | None = None
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.transform is DenseTransform.BUCKETIZE:
            b = list(self.boundaries)
            if not b or b != sorted(b) or len(set(b)) != len(b):
                raise ConfigError(f"dense feature {self.name}: bucketize needs strictly increasing 'boundaries'")
        elif self.boundaries:
            raise ConfigError(f"dense feature {self.name}: 'boundaries' is for transform: bucketize")
        if self.transform is DenseTransform.CLIP and self.clip_min is None and self.clip_max is None:
            raise ConfigError(f"dense feature {self.name}: clip needs clip_min and/or clip_max")
        if self.clip_min is not None and self.clip_max is not None and self.clip_min > self.clip_max:
            raise ConfigError(f"dense feature {self.name}: clip_min {self.clip_min} > clip_max {self.clip_max}")


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
class Lateness:
    """Streaming only: an event older than the watermark minus ``allowed_s`` is late.

    ``defer`` (default) trains it with the next data file; ``dead_letter`` rejects it.
    Batch validation and ``data split`` never look at order (split sorts by time).

    Time sanity: an event more than ``max_future_s`` ahead of both the watermark and the wall
    clock is dead-lettered (reason ``future event``) and never moves the watermark.
    """

    allowed_s: int = 3600
    policy: LatePolicy = LatePolicy.DEFER
    max_future_s: int = 3600

    def __post_init__(self) -> None:
        if self.allowed_s < 0:
            raise ConfigError("lateness.allowed_s must be >= 0")
        if self.max_future_s < 0:
            raise ConfigError("lateness.max_future_s must be >= 0")


@dataclasses.dataclass(frozen=True)
class SideTable:
    """A table (e.g. an item catalogue) whose columns are joined onto each event by id.

    ``key`` is the side table's id column, ``on`` the event's column it matches. Every
    other side column becomes an event column (an event whose key is absent gets the
    column's missing value: its ``fill``, or the empty list for an id_list). ``path`` is
    absolute, or relative: looked up beside the input data file first, then beside the
    spec file; ``--side-table NAME=PATH`` overrides it.
    """

    name: str
    path: str
    key: str
    on: str
    columns: tuple[ColumnSpec, ...]
    format: str | None = None
    header: bool = True
    delimiter: str | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if self.key not in names:
            raise ConfigError(f"side table {self.name}: key {self.key!r} is not among its columns {names}")
        key_col = self.columns[names.index(self.key)]
        if key_col.type not in (*ID_TYPES, ColumnType.INT):
            raise ConfigError(f"side table {self.name}: key {self.key} must be an id column")
        for c in self.columns:
            if c.name != self.key and c.required:
                raise ConfigError(
                    f"side table {self.name}: joined column {c.name} must be 'required: false' "
                    "(an event whose key is not in the table gets its missing value)"
                )

    @property
    def joined(self) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.name != self.key)

    @property
    def layout(self) -> "Layout":
        return Layout(self.columns, self.format, self.header, self.delimiter, False, DEFAULT_NULL_TOKENS)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How to read a file's rows into columns (what the reader needs of a spec or side table)."""

    columns: tuple[ColumnSpec, ...]
    format: str | None
    header: bool | str  # True, False or "auto"
    delimiter: str | None
    pad_trailing: bool
    null_tokens: tuple[str, ...]
    also: tuple[str, ...] = ()  # columns read when a file has them (side-table columns in data files)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    label: LabelRule
    sparse: tuple[SparseFeature, ...]
    time_column: str | None = None
    time: str | None = None  # "row_order": the log has no time column; row order is time order
    dense: tuple[DenseFeature, ...] = ()
    event_id_column: str | None = None
    event_id_derive: tuple[str, ...] = ()
    event_id_row: bool = False  # event_id: row -> no duplicate detection (the row's position is its identity)
    actions: ActionSpec | None = None
    side_tables: tuple[SideTable, ...] = ()
    format: str | None = None  # csv | tsv | jsonl | parquet; None: from the file suffix
    header: bool | str = True  # True, False, or "auto" (per file: skip a first line that names the columns)
    delimiter: str | None = None  # None: "," for csv, "\t" for tsv
    pad_trailing: bool = False  # accept rows whose trailing empty fields were trimmed
    null_tokens: tuple[str, ...] = DEFAULT_NULL_TOKENS
    lateness: Lateness = Lateness()
    max_dead_share: float = 0.5  # a file with more of its rows dead-lettered stops the run
    dedup_window: int = 10_000_000  # how many recent event ids are remembered for duplicates
    dedup_horizon_s: int = 7 * 86400  # stream: ids of events older than the watermark minus this are forgotten
    spec_dir: str | None = None  # the spec file's directory (for relative side-table paths)
    dynamic: DynamicSpec | None = None  # counters, rates and sequences from earlier events (trainer.features)

    def __post_init__(self) -> None:
        joined = [c for t in self.side_tables for c in t.joined]
        names = [c.name for c in self.columns] + [c.name for c in joined]
        if len(set(names)) != len(names):
            raise ConfigError(f"spec {self.name}: duplicate column names in {names} (side-table columns included)")
        by = self.column_map
        if (self.time_column is None) == (self.time is None):
            raise ConfigError(f"spec {self.name}: give exactly one of 'time_column: NAME' or 'time: row_order'")
        if self.time is not None and self.time != "row_order":
            raise ConfigError(
                f"spec {self.name}: time must be 'row_order' (the log has no time column), got {self.time!r}"
            )
        if self.time_column is not None:
            self._need(self.time_column, "time_column")
            if by[self.time_column].type is not ColumnType.TIMESTAMP:
                raise ConfigError(f"spec {self.name}: time_column {self.time_column} must have type timestamp")
            if not by[self.time_column].required:
                raise ConfigError(f"spec {self.name}: time_column {self.time_column} must be required")
        ways = sum([self.event_id_column is not None, bool(self.event_id_derive), self.event_id_row])
        if ways != 1:
            raise ConfigError(
                f"spec {self.name}: event_id needs exactly one of {{column: NAME}}, {{derive: [COLUMNS]}} or 'row'"
            )
        for c in (self.event_id_column,) if self.event_id_column else self.event_id_derive:
            self._need(c, "event_id")
            if by[c].type is ColumnType.ID_LIST:
                raise ConfigError(f"spec {self.name}: event_id cannot use the id_list column {c}")
        for t in self.side_tables:
            self._need(t.on, f"side table {t.name} 'on'")
        sparse = []
        for f in self.sparse:
            self._need(f.column, f"sparse feature {f.name}")
            t = by[f.column].type
            if t not in (*ID_TYPES, ColumnType.INT, ColumnType.ID_LIST):
                raise ConfigError(
                    f"spec {self.name}: sparse feature {f.name} needs an id, int_id, string_id, int or id_list column"
                )
            sparse.append(dataclasses.replace(f, column_type=t))
        object.__setattr__(self, "sparse", tuple(sparse))
        for f in self.dense:
            self._need(f.column, f"dense feature {f.name}")
            t = by[f.column].type
            time_tf = f.transform in (DenseTransform.HOUR_OF_DAY, DenseTransform.DAY_OF_WEEK)
            if time_tf and t is not ColumnType.TIMESTAMP:
                raise ConfigError(
                    f"spec {self.name}: dense feature {f.name}: {f.transform.value} needs a timestamp column, not {t.value}"
                )
            if f.transform is DenseTransform.MISSING:
                if by[f.column].required:
                    raise ConfigError(
                        f"spec {self.name}: dense feature {f.name}: a missing indicator needs an optional column (required: false)"
                    )
            elif not time_tf and t not in (ColumnType.INT, ColumnType.FLOAT):
                raise ConfigError(
                    f"spec {self.name}: dense feature {f.name} needs a numeric (int or float) column, not {t.value}"
                )
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
        if self.header not in (True, False, "auto"):
            raise ConfigError(f"spec {self.name}: header must be true, false or auto, got {self.header!r}")
        if not 0 < self.max_dead_share <= 1:
            raise ConfigError(f"spec {self.name}: max_dead_share must be in (0, 1], got {self.max_dead_share}")
        if self.dedup_window < 1:
            raise ConfigError(f"spec {self.name}: dedup_window must be >= 1")
        if self.dedup_horizon_s < 0:
            raise ConfigError(f"spec {self.name}: dedup_horizon_s must be >= 0")
        if self.dynamic is not None:
            if self.row_order:
                raise ConfigError(f"spec {self.name}: dynamic features decay with event time: they need a time_column")
            self.dynamic.check(self)

    def _need(self, column: str | None, what: str) -> None:
        if column not in self.column_map:
            raise ConfigError(
                f"spec {self.name}: {what} names column {column!r}, which is not in columns {list(self.column_map)}"
            )

    @property
    def column_map(self) -> dict[str, ColumnSpec]:
        """Every column an event has: the file's, then those joined from side tables."""
        return {c.name: c for c in (*self.columns, *(c for t in self.side_tables for c in t.joined))}

    @property
    def row_order(self) -> bool:
        """True when the log has no time column (``time: row_order``)."""
        return self.time_column is None

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)

    @property
    def model_dense_names(self) -> tuple[str, ...]:
        """Every dense input of the model: the static dense features, then the dynamic ones."""
        return self.dense_names + (self.dynamic.dense_names if self.dynamic is not None else ())

    @property
    def model_sparse(self) -> tuple[SparseFeature, ...]:
        """Every embedding table of the model: the static sparse features, then the dynamic sequences
        (multi-valued, mean-pooled, one table each)."""
        if self.dynamic is None:
            return self.sparse
        seqs = tuple(
            SparseFeature(s.name, s.column, s.dim, Pooling.MEAN, ColumnType.ID_LIST) for s in self.dynamic.sequences
        )
        return self.sparse + seqs

    @property
    def multi_valued(self) -> tuple[str, ...]:
        """Names of the multi-valued (jagged) sparse features."""
        return tuple(f.name for f in self.sparse if f.multi_valued)

    @property
    def layout(self) -> Layout:
        joined = tuple(c.name for t in self.side_tables for c in t.joined)
        return Layout(
            self.columns, self.format, self.header, self.delimiter, self.pad_trailing, self.null_tokens, joined
        )

    def with_header(self, header: bool | str) -> "FeatureSpec":
        """The same spec with ``header`` overridden (``--header`` / ``--no-header``)."""
        return dataclasses.replace(self, header=header)


# ------------------------------------------------------------------------ loading
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


def _columns(raw: Any, where: str) -> tuple[ColumnSpec, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: must be a list")
    return tuple(
        _build(ColumnSpec, c, f"{where}[{i}]", type=_enum(ColumnType, f"{where}[{i}].type")) for i, c in enumerate(raw)
    )


def _tuple_of(kind: type, where: str):
    def convert(value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(
                f"{where}: expected a list of {kind.__name__ if isinstance(kind, type) else 'numbers'}, got {value!r}"
            )
        return tuple(value)

    return convert


def spec_from_dict(raw: dict[str, Any], where: str = "spec", spec_dir: str | Path | None = None) -> FeatureSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    raw = dict(raw)
    internal = sorted({"event_id_row", "event_id_column", "event_id_derive", "spec_dir"} & set(raw))
    if internal:
        raise ConfigError(f"{where}: unknown key(s) {internal}; use event_id: {{column: ..}} | {{derive: [..]}} | row")
    event_id = raw.pop("event_id", None)
    if event_id == "row":
        raw["event_id_row"] = True
    elif isinstance(event_id, dict) and set(event_id) <= {"column", "derive"}:
        raw["event_id_column"] = event_id.get("column")
        raw["event_id_derive"] = tuple(event_id.get("derive") or ())
    else:
        raise ConfigError(f"{where}: event_id must be {{column: NAME}}, {{derive: [COLUMNS]}} or row")
    if "max_out_of_order_s" in raw:
        raise ConfigError(
            f"{where}: max_out_of_order_s is gone: order is never a reason to reject a row; "
            "for streams use 'lateness: {allowed_s: N, policy: defer|dead_letter}'"
        )
    if not isinstance(raw.get("sparse"), list):
        raise ConfigError(f"{where}: 'sparse' must be a list")
    raw["columns"] = _columns(raw.get("columns"), f"{where}.columns")
    for i, f in enumerate(raw["sparse"]):
        if isinstance(f, dict) and "column_type" in f:
            raise ConfigError(f"{where}.sparse[{i}]: column_type comes from the column; drop it")
    raw["sparse"] = tuple(
        _build(SparseFeature, f, f"{where}.sparse[{i}]", pooling=_enum(Pooling, f"{where}.sparse[{i}].pooling"))
        for i, f in enumerate(raw["sparse"])
    )
    raw["dense"] = tuple(
        _build(
            DenseFeature,
            f,
            f"{where}.dense[{i}]",
            transform=_enum(DenseTransform, f"{where}.dense[{i}].transform"),
            boundaries=_tuple_of((int, float), f"{where}.dense[{i}].boundaries"),
        )
        for i, f in enumerate(raw.get("dense") or [])
    )
    raw["label"] = _build(LabelRule, raw.get("label"), f"{where}.label", actions=tuple)
    if raw.get("actions") is not None:
        raw["actions"] = _build(ActionSpec, raw["actions"], f"{where}.actions", values=tuple)
    if "lateness" in raw:
        raw["lateness"] = _build(
            Lateness, raw["lateness"], f"{where}.lateness", policy=_enum(LatePolicy, f"{where}.lateness.policy")
        )
    if "null_tokens" in raw:
        raw["null_tokens"] = _tuple_of(str, f"{where}.null_tokens")(raw["null_tokens"])
    side = raw.get("side_tables") or []
    if not isinstance(side, list):
        raise ConfigError(f"{where}.side_tables: must be a list")
    # YAML 1.1 reads a bare `on:` key as the boolean true: take it back as "on"
    side = [{("on" if k is True else k): v for k, v in t.items()} if isinstance(t, dict) else t for t in side]
    raw["side_tables"] = tuple(
        _build(
            SideTable,
            t,
            f"{where}.side_tables[{i}]",
            columns=lambda c, i=i: _columns(c, f"{where}.side_tables[{i}].columns"),
        )
        for i, t in enumerate(side)
    )
    if spec_dir is not None:
        raw["spec_dir"] = str(spec_dir)
    if raw.get("dynamic") is not None:
        raw["dynamic"] = dynamic_from_dict(raw["dynamic"], f"{where}.dynamic", _build)
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
    """Load a spec from a YAML file, or by the name of a built-in spec (``taobao``, ``movielens100k``, ...)."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = builtin_specs()
        if str(name_or_path) not in shipped:
            raise ConfigError(f"no spec file {path} and no built-in spec of that name; built-in: {sorted(shipped)}")
        path = shipped[str(name_or_path)]
    return spec_from_dict(load_yaml_config(path), where=str(path), spec_dir=path.resolve().parent)


def describe_time(secs: int) -> str:
    """'2017-11-26T01:00:00Z' for messages (years outside 1..9999 are shown as seconds)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(secs))
    except (OverflowError, OSError, ValueError):
        return f"{secs} s"
