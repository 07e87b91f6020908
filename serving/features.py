"""Request features -> the EventBatch the training core scores, with the training code's parsing.

A request gives raw values keyed by the spec's column names: context columns once (the user,
the time, the device ...), candidate columns once per candidate. They become the same typed
columns a data file gives the trainer (``trainer.data.parse.parse_columns``: ids kept or
hashed, times parsed, numbers checked) and the same dense features
(``trainer.data.validate.dense_values``), so nothing is re-implemented on the serving side::

    context    {"user_id": 7, "ts": 1511658000}             parsed once, broadcast to every candidate
    columns    {"item_id": [42, 9], "category_id": [3, 3]}  one value per candidate, parsed per row
      -> EventBatch(sparse={"user": [7, 7], "item": [42, 9], "category": [3, 3]},
                    dense=[[hour, weekday], [hour, weekday]])  (raw: the core normalises)

A context value (and a constant default) is parsed as one row and its parsed value repeated (numpy /
arrow take, no per-row Python): the same bits as parsing it on every row, since parsing is row-wise. At
n = 100 the parser's cost is per column, not per row, so parsing once alone saves little: the parsed
value of each (column, value) is also kept in a bounded LRU (``ONCE_CACHE`` per model version), so a
user, a time or a default seen before is not parsed again.

With dynamic features (``spec.dynamic``) the core adds them from the served version's state,
decayed to the request's time column (:mod:`trainer.features`); a request never changes the state.

A needed column the request leaves out is filled and reported in ``defaulted``: the time
column with the request's arrival time; an item-side column (``category_id``) from the item
catalogue; anything else with the column's missing value (its ``fill``, else 0: an id whose
row is the cold-start row).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from common.config import ConfigError
from serving.errors import InvalidRequestError
from trainer.data.batch import EventBatch
from trainer.data.parse import REASON_CODES, Jagged, Rejections, fill_value, parse_columns, take_value
from trainer.data.spec import ID_TYPES, ColumnType, FeatureSpec
from trainer.data.validate import dense_values

MAX_REPORTED = 5  # bad candidates named in one error message
ONCE_CACHE = 4096  # parsed context values (and constant defaults) kept per model version


@dataclasses.dataclass(frozen=True)
class SpecRoles:
    """Which sparse features of a spec are the user and the item, and which columns describe an item.

    >>> from trainer.data import load_spec
    >>> r = SpecRoles.of(load_spec("taobao"))
    >>> r.user_column, r.item_column, r.item_columns
    ('user_id', 'item_id', ('item_id', 'category_id'))
    """

    user_feature: str | None
    item_feature: str | None
    user_column: str | None
    item_column: str | None
    item_columns: tuple[str, ...]  # the item column and the columns that travel with an item
    needed: tuple[str, ...]  # every column a feature reads, in spec order

    @classmethod
    def of(cls, spec: FeatureSpec, user_feature: str | None = None, item_feature: str | None = None) -> "SpecRoles":
        user = _feature(spec, user_feature, "user")
        item = _feature(spec, item_feature, "item")
        ucol = spec_feature(spec, user).column if user else None
        icol = spec_feature(spec, item).column if item else None
        needed = []
        for col in [*(f.column for f in spec.sparse), *(f.column for f in spec.dense)]:
            if col not in needed:
                needed.append(col)
        if spec.dynamic is not None and spec.time_column not in needed:  # dynamic features decay to the request time
            needed.append(spec.time_column)
        item_cols: list[str] = [icol] if icol else []
        for side in spec.side_tables:
            if side.on == icol:
                item_cols += [c.name for c in side.joined]
        for col in needed:
            if (
                icol
                and col != icol
                and col.split("_")[0] in ("category", "cate", "brand", "price", "genre", "shop", "seller", "item")
            ):
                item_cols.append(col)
        return cls(user, item, ucol, icol, tuple(dict.fromkeys(item_cols)), tuple(needed))


def spec_feature(spec: FeatureSpec, name: str):
    for f in spec.sparse:
        if f.name == name:
            return f
    raise ConfigError(f"spec {spec.name} has no sparse feature {name!r}; it has {[f.name for f in spec.sparse]}")


def _feature(spec: FeatureSpec, given: str | None, role: str) -> str | None:
    if given is not None:
        return spec_feature(spec, given).name
    for f in spec.sparse:
        if f.name == role:
            return f.name
    for f in spec.sparse:
        if f.column.startswith(role):
            return f.name
    return None


class RequestFeatures:
    """Builds scoring batches for one spec (see the module docstring). Thread-safe (its one state, the cache
    of parsed context values, is a bounded LRU under a lock).

    ``catalogue(item_ids) -> {column: parsed values}`` gives item-side columns a request left out.
    """

    def __init__(self, spec: FeatureSpec, roles: SpecRoles, catalogue=None) -> None:
        self.spec, self.roles, self.catalogue = spec, roles, catalogue
        by = spec.column_map
        self.columns = tuple(by[c] for c in roles.needed)
        self.known = set(by)
        self._once_cache: OrderedDict[tuple, tuple] = OrderedDict()  # (column, value key) -> parsed (_parse_once)
        self._lock = threading.Lock()

    def batch(
        self, context: Mapping[str, object], columns: Mapping[str, pa.Array], n: int, now: int | None = None
    ) -> tuple[EventBatch, tuple[str, ...]]:
        """(EventBatch of ``n`` rows, columns defaulted); InvalidRequestError naming what is wrong.

        ``context[col]`` is one raw value (int, str or float); ``columns[col]`` an arrow array of n.

        A column that is the same on every row (a context value, a default that is a constant: the
        request's time, a fill) is parsed ONCE, as one row, and its parsed value broadcast to the n rows;
        only the candidate columns (and the catalogue's per-item values) are parsed row by row. Parsing is
        row-wise (each row's value and rejection depend on that row's raw value alone), so the batch is
        the one the n repeated rows would parse to, bit for bit
        (tests/unit/test_bench_serving_fastpaths.py compares the two over generated requests).
        """
        both = sorted(set(context) & set(columns))
        if both:
            raise InvalidRequestError(f"column(s) {both} given both in context and per candidate: give each once")
        unknown = sorted((set(context) | set(columns)) - self.known)
        if unknown:
            raise InvalidRequestError(
                f"unknown column(s) {unknown}; the spec {self.spec.name} has columns {sorted(self.known)}"
            )
        for name, arr in columns.items():
            if len(arr) != n:
                raise InvalidRequestError(f"candidate column {name!r} has {len(arr)} values for {n} candidates")
        once: dict[str, tuple] = {}  # the same value on every row: (cache key, one-row raw array)
        per_row: dict[str, pa.Array] = {}  # n rows
        defaulted = []
        for col in self.columns:
            if col.name in columns:
                per_row[col.name] = columns[col.name]
            elif col.name in context:
                value = context[col.name]
                once[col.name] = (("context", type(value).__name__, _exact(value)), _repeat(value, 1))
            else:
                defaulted.append(col.name)
                arr = self._default(col, columns, context, n, now)
                if arr is None:
                    one = self._constant_default(col, now)
                    once[col.name] = (("default", _exact(one[0].as_py())), one)
                else:
                    per_row[col.name] = arr
        if n <= 1:  # nothing to broadcast: one parse of every column (n rows of each)
            per_row = {**per_row, **{k: _rows(one, n) for k, (_, one) in once.items()}}
            once = {}
        batch = self._parse(once, per_row, n, context)
        return batch, tuple(sorted(defaulted))

    def _parse_once(self, col, key: tuple, one: pa.Array) -> tuple:
        """(parsed one-row value, missing mask [1], problem or None) of one column's one value: parsed alone, as
        one row, the first time; then from a bounded cache (parsing is a pure function of the column and the
        raw value, so a hit is the same bits; ``key`` tells every value apart: its kind, and a float's exact
        bits). The user, the time of day's second and the defaults repeat from request to request."""
        ck = (col.name, key)
        with self._lock:
            hit = self._once_cache.get(ck)
            if hit is not None:
                self._once_cache.move_to_end(ck)
                return hit
        rej = Rejections(1)
        p1, m1 = parse_columns(pa.table({col.name: one}), (col,), self.spec.null_tokens, rej)
        problem = None if rej.good.all() else _describe(rej, {col.name: None} if key[0] == "context" else {}, True)
        out = (p1[col.name], m1[col.name], problem)
        with self._lock:
            self._once_cache[ck] = out
            while len(self._once_cache) > ONCE_CACHE:
                self._once_cache.popitem(last=False)
        return out

    def _default(self, col, columns, context, n: int, now: int | None) -> pa.Array | None:
        """The catalogue's values of an item-side column for the request's items (n rows); None when the
        column's default is a constant (:meth:`_constant_default`)."""
        item = self.roles.item_column
        if col.name == self.spec.time_column:
            return None
        if col.name in self.roles.item_columns and self.catalogue is not None and item is not None:
            ids = columns.get(item)
            if ids is None and item in context:
                ids = _repeat(context[item], n)
            if ids is not None:
                values = self.catalogue.lookup(col.name, self._ids_of(item, ids))
                if values is not None:
                    return pa.array(values)
        return None

    def _constant_default(self, col, now: int | None) -> pa.Array:
        """One row of a left-out column's constant default: the request's arrival time for the time
        column, else the column's missing value."""
        if col.name == self.spec.time_column:
            return pa.array(np.full(1, int(time.time()) if now is None else now, np.int64))
        if col.type is ColumnType.STRING:
            return pa.array([fill_value(col)], pa.string())
        if col.type is ColumnType.ID_LIST:
            return pa.nulls(1, pa.string())  # a missing id list is the empty list
        return pa.array(np.full(1, fill_value(col), np.float64 if col.type is ColumnType.FLOAT else np.int64))

    def _ids_of(self, name: str, arr: pa.Array) -> np.ndarray:
        """Parsed ids of an item column (for the catalogue); malformed ones are refused later by _parse."""
        col = self.spec.column_map[name]
        if col.type in (ColumnType.ID, ColumnType.INT_ID) and pa.types.is_int64(arr.type) and not arr.null_count:
            return arr.to_numpy()  # int64 ids (a request's column form) parse to themselves: no second parse
        rej = Rejections(len(arr))
        parsed, _ = parse_columns(pa.table({name: arr}), (col,), self.spec.null_tokens, rej)
        return np.asarray(parsed[name], np.int64)

    def _parse(self, once: dict, per_row: dict, n: int, context: Mapping[str, object]) -> EventBatch:
        """Parse ``once`` (one row each) and ``per_row`` (n rows each), broadcast the first to n rows."""
        nulls = self.spec.null_tokens
        parsed, missing, problems = {}, {}, []
        if once:
            zero = np.zeros(n, np.int64)
            for col in self.columns:
                if col.name in once:
                    value, miss, problem = self._parse_once(col, *once[col.name])
                    if problem is not None:
                        problems.append(problem)
                    parsed[col.name], missing[col.name] = take_value(value, zero), miss[zero]
        if per_row:
            ints = [c for c in self.columns if c.name in per_row and _passes_through(c, per_row)]
            for c in ints:  # int64 ids parse to themselves (no null, no text): nothing to check or convert
                parsed[c.name], missing[c.name] = per_row[c.name].to_numpy(zero_copy_only=False), np.zeros(n, bool)
            cols = tuple(c for c in self.columns if c.name in per_row and c not in ints)
            if cols:
                rej = Rejections(n)
                pn, mn = parse_columns(pa.table(per_row), cols, nulls, rej)
                if not rej.good.all():
                    problems.append(_describe(rej, context))
                parsed.update(pn)
                missing.update(mn)
        if problems:
            raise InvalidRequestError("; ".join(problems))
        table = pa.table(
            {c.name: per_row[c.name] if c.name in per_row else _rows(once[c.name][1], n) for c in self.columns}
        )
        idx = np.arange(n)
        dense = np.zeros((n, len(self.spec.dense)), np.float32)
        for j, f in enumerate(self.spec.dense):
            dense[:, j] = dense_values(f, parsed[f.column], missing.get(f.column), idx)
        if not np.isfinite(dense).all():
            raise InvalidRequestError(
                f"a dense feature is not finite for candidate(s) "
                f"{np.flatnonzero(~np.isfinite(dense).all(axis=1))[:MAX_REPORTED].tolist()}"
            )
        sparse, lengths = {}, {}
        for f in self.spec.sparse:
            v = parsed[f.column]
            if isinstance(v, Jagged):
                sparse[f.name], lengths[f.name] = v.values, v.lengths
            else:
                sparse[f.name] = np.asarray(v, np.int64)
        zeros = np.zeros(n, np.int64)
        tcol = self.spec.time_column
        ts = np.asarray(parsed[tcol], np.int64) if tcol in parsed else zeros  # dynamic features decay to it
        return EventBatch(
            source="<request>",
            event_id=zeros,
            ts=ts,
            label=np.zeros(n, np.float32),
            sparse=sparse,
            dense=dense,
            rows=idx,
            table=table,
            lengths=lengths,
        )


def parse_user_id(features: RequestFeatures, value) -> int:
    """The user feature's id of one raw user value (int, str or float), parsed as the user column alone; the
    whole one-row batch (``features.batch({user_column: value}, {}, 1)``) when the user feature is a list."""
    roles, spec = features.roles, features.spec
    col = spec.column_map[roles.user_column]
    rej = Rejections(1)
    parsed, _ = parse_columns(pa.table({col.name: _repeat(value, 1)}), (col,), spec.null_tokens, rej)
    if not rej.good.all():
        raise InvalidRequestError(_describe(rej, {col.name: value}))
    v = parsed[col.name]
    if isinstance(v, Jagged):  # an id-list user feature: the batch's own path
        batch, _ = features.batch({col.name: value}, {}, 1)
        return int(batch.sparse[roles.user_feature][0])
    return int(np.asarray(v, np.int64)[0])


def _passes_through(col, per_row: Mapping[str, pa.Array]) -> bool:
    """Whether ``parse_columns`` would give the column ``col`` of ``per_row`` back as it is: an id column (id,
    int_id, string_id) read from an int64 arrow array without nulls parses to the same int64 values, none
    missing, no row rejected (no text: no control character, blank, null token or oversized string; integers
    pass through every id parser). The column form of a Score request's ids, the ids Recommend retrieved and the
    catalogue's int values are such arrays: they skip the parser's dozen arrow/numpy calls per column
    (``tests/unit/test_serve_cpu_paths.py`` compares with the parser)."""
    if col.type not in ID_TYPES:
        return False
    if col.source_name != col.name and col.source_name in per_row:  # the parser would read another column
        return False
    arr = per_row[col.name]
    return isinstance(arr, pa.Array) and pa.types.is_int64(arr.type) and arr.null_count == 0


def _exact(value):
    """A cache key that tells apart every value that may parse differently: a float by its exact bits (-0.0 and
    0.0 differ, every NaN is its own), anything else as it is (its kind is a separate part of the key)."""
    return value.hex() if isinstance(value, float) else value


def _rows(one: pa.Array, n: int) -> pa.Array:
    """A one-row arrow array repeated to n rows (the raw column a data file would hold): ``pa.repeat`` of its
    scalar, the same array as ``take`` of row 0 n times at a sixth of the cost."""
    return pa.repeat(one[0], n)


def _repeat(value, n: int) -> pa.Array:
    if isinstance(value, str):
        return pa.array([value] * n, pa.string()) if n else pa.array([], pa.string())
    if isinstance(value, float):
        return pa.array(np.full(n, value, np.float64))
    return pa.array(np.full(n, value, np.int64))


def _describe(rej: Rejections, context: Mapping[str, object], every_row: bool = False) -> str:
    """'context user_id: malformed id (user_id: not an id)' or 'candidates [3, 7]: ...'; ``every_row``: the
    rejections of the columns parsed once (a bad default holds for every candidate)."""
    bad = np.flatnonzero(~rej.good)
    problems = []
    for code in np.unique(rej.code[bad]):
        rows = bad[rej.code[bad] == code]
        detail = str(rej.detail[rows[0]])
        column = detail.split(":")[0].split(" ")[0]
        reason = REASON_CODES[int(code)].value
        if column in context:
            problems.append(f"context {column}: {reason} ({detail})")
        elif every_row:
            problems.append(f"every candidate: {reason} ({detail})")
        else:
            shown = rows[:MAX_REPORTED].tolist()
            more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
            problems.append(f"candidates {shown}{more}: {reason} ({detail})")
    return "; ".join(problems)
