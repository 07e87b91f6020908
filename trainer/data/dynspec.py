"""Dynamic-feature declarations of a feature spec: decayed per-id counters, smoothed rates and
behaviour sequences, all computed from earlier events (``trainer.features`` computes them).

In a spec's YAML (the full reference is docs/features.md)::

    dynamic:
      ttl_s: 604800            # an id with no event for this long is dropped from the state
      max_ids: null            # optional cap per key column (the ids seen longest ago go first)
      counters:                # one dense feature log1p(count) per half-life
        - {name: item_views, key: item_id, actions: [pv], half_lives: [1h, 1d]}
        - {name: item_likes, key: item_id, positive: true, half_lives: [1d]}
      rates:                   # (numerator + prior * strength) / (denominator + strength), per common half-life
        - {name: item_cvr, numerator: item_buys, denominator: item_views, prior: 0.05, strength: 10}
      sequences:               # the key's last `length` values of `column`, a mean-pooled jagged feature
        - {name: user_items, key: user_id, column: item_id, length: 20, dim: 16}

Keys and sequence columns must be the columns of single-valued sparse features (the parsed ids
the model already reads, in training and in serving alike).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from common.config import ConfigError, check_keys

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(value: Any, where: str) -> float:
    """A positive duration in seconds from a number or text like ``90``, ``30m``, ``1h``, ``1d``."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a duration (use seconds or 30m, 1h, 1d)")
    if isinstance(value, (int, float)):
        secs = float(value)
    else:
        m = _DURATION.match(str(value).strip())
        if not m:
            raise ConfigError(f"{where}: {value!r} is not a duration (use seconds or 30m, 1h, 1d)")
        secs = float(m.group(1)) * _UNITS[m.group(2)]
    if not secs > 0:
        raise ConfigError(f"{where}: a duration must be > 0, got {value!r}")
    return secs


def duration_label(secs: float) -> str:
    """3600 -> '1h', 86400 -> '1d', 90 -> '90s' (the suffix of a counter's feature names)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s".replace(".", "p")


@dataclasses.dataclass(frozen=True)
class CounterSpec:
    """Exponentially decayed count of a key's earlier events (those of ``actions``, or positive ones
    with ``positive: true``, or all), one value per half-life: an event ``dt`` seconds ago counts
    2^(-dt / half_life)."""

    name: str
    key: str
    half_lives: tuple[float, ...] = (3600.0, 86400.0)
    actions: tuple[str, ...] = ()
    positive: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"dynamic counter {self.name!r}: the name must be an identifier")
        if not self.half_lives or len(set(self.half_lives)) != len(self.half_lives):
            raise ConfigError(f"dynamic counter {self.name}: half_lives must be a non-empty list without repeats")
        if self.actions and self.positive:
            raise ConfigError(f"dynamic counter {self.name}: give 'actions' or 'positive: true', not both")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{duration_label(h)}" for h in self.half_lives)


@dataclasses.dataclass(frozen=True)
class RateSpec:
    """A smoothed ratio of two counters of the same key, for each half-life both have:
    (numerator + prior * strength) / (denominator + strength)."""

    name: str
    numerator: str
    denominator: str
    prior: float = 0.0
    strength: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"dynamic rate {self.name!r}: the name must be an identifier")
        if not self.strength > 0:
            raise ConfigError(f"dynamic rate {self.name}: strength must be > 0 (it keeps the ratio finite)")


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """The key's last ``length`` values of ``column`` (oldest first), over its earlier events of
    ``actions`` / positive ones / all: a multi-valued sparse feature with its own table."""

    name: str
    key: str
    column: str
    length: int = 20
    dim: int = 16
    actions: tuple[str, ...] = ()
    positive: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"dynamic sequence {self.name!r}: the name must be an identifier")
        if not 1 <= self.length <= 1024:
            raise ConfigError(f"dynamic sequence {self.name}: length must be in 1..1024, got {self.length}")
        if self.dim < 1 or self.dim % 4:
            raise ConfigError(f"dynamic sequence {self.name}: dim must be a positive multiple of 4 (FBGEMM)")
        if self.actions and self.positive:
            raise ConfigError(f"dynamic sequence {self.name}: give 'actions' or 'positive: true', not both")


@dataclasses.dataclass(frozen=True)
class DynamicSpec:
    counters: tuple[CounterSpec, ...] = ()
    rates: tuple[RateSpec, ...] = ()
    sequences: tuple[SequenceSpec, ...] = ()
    ttl_s: float = 30 * 86400.0
    max_ids: int | None = None

    def __post_init__(self) -> None:
        if not (self.counters or self.sequences):
            raise ConfigError("dynamic: declare at least one counter or sequence (or drop the section)")
        if not self.ttl_s > 0:
            raise ConfigError("dynamic.ttl_s must be > 0")
        if self.max_ids is not None and self.max_ids < 1:
            raise ConfigError("dynamic.max_ids must be >= 1 (or null: no cap)")
        names = [c.name for c in self.counters] + [r.name for r in self.rates] + [s.name for s in self.sequences]
        if len(set(names)) != len(names):
            raise ConfigError(f"dynamic: names must be unique, got {names}")
        by = {c.name: c for c in self.counters}
        for r in self.rates:
            for side in (r.numerator, r.denominator):
                if side not in by:
                    raise ConfigError(f"dynamic rate {r.name}: {side!r} is not a counter; counters: {sorted(by)}")
            num, den = by[r.numerator], by[r.denominator]
            if num.key != den.key:
                raise ConfigError(
                    f"dynamic rate {r.name}: numerator and denominator count different keys ({num.key} vs {den.key})"
                )
            if not self.rate_half_lives(r):
                raise ConfigError(f"dynamic rate {r.name}: {r.numerator} and {r.denominator} share no half-life")

    def rate_half_lives(self, r: RateSpec) -> tuple[float, ...]:
        by = {c.name: c for c in self.counters}
        den = set(by[r.denominator].half_lives)
        return tuple(h for h in by[r.numerator].half_lives if h in den)

    @property
    def keys(self) -> tuple[str, ...]:
        """Key columns in declaration order (one state table each)."""
        return tuple(dict.fromkeys([c.key for c in self.counters] + [s.key for s in self.sequences]))

    @property
    def dense_names(self) -> tuple[str, ...]:
        """The dense features, in the order they follow the spec's static ones: counters, then rates."""
        out = [n for c in self.counters for n in c.features]
        out += [f"{r.name}_{duration_label(h)}" for r in self.rates for h in self.rate_half_lives(r)]
        return tuple(out)

    def check(self, spec) -> None:
        """Refuse references the spec cannot satisfy (called by FeatureSpec)."""
        single = {f.column: f.name for f in spec.sparse if not f.multi_valued}
        actions = set(spec.actions.values) if spec.actions is not None else set()
        static = set(spec.dense_names) | {f.name for f in spec.sparse}
        for what, item in [("counter", c) for c in self.counters] + [("sequence", s) for s in self.sequences]:
            cols = [item.key] + ([item.column] if what == "sequence" else [])
            for col in cols:
                if col not in single:
                    raise ConfigError(
                        f"spec {spec.name}: dynamic {what} {item.name} reads column {col!r}, which feeds "
                        f"no single-valued sparse feature; add one "
                        f"(sparse: - {{name: .., column: {col}}}) "
                        f"or use one of {sorted(single)}"
                    )
            unknown = set(item.actions) - actions
            if unknown:
                raise ConfigError(
                    f"spec {spec.name}: dynamic {what} {item.name}: actions {sorted(unknown)} are not "
                    f"in the spec's actions.values {sorted(actions)}"
                )
        clash = static & (set(self.dense_names) | {s.name for s in self.sequences})
        if clash:
            raise ConfigError(f"spec {spec.name}: dynamic feature names {sorted(clash)} clash with static features")

    def sparse_column(self, spec, column: str) -> str:
        """The single-valued sparse feature that reads ``column``."""
        return next(f.name for f in spec.sparse if f.column == column and not f.multi_valued)


def _half_lives(where: str):
    def convert(value: Any) -> tuple[float, ...]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of durations, got {value!r}")
        return tuple(duration_s(v, f"{where}[{i}]") for i, v in enumerate(value))

    return convert


def _names(where: str):
    def convert(value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of action names, got {value!r}")
        return tuple(value)

    return convert


def dynamic_from_dict(raw: Any, where: str, build) -> DynamicSpec:
    """Parse the ``dynamic:`` section (``build`` is the spec loader's dataclass builder)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    check_keys(DynamicSpec, raw, where)
    out = dict(raw)
    for key in ("counters", "rates", "sequences"):
        if not isinstance(out.get(key, []), list):
            raise ConfigError(f"{where}.{key}: must be a list")
    out["counters"] = tuple(
        build(
            CounterSpec,
            c,
            f"{where}.counters[{i}]",
            half_lives=_half_lives(f"{where}.counters[{i}].half_lives"),
            actions=_names(f"{where}.counters[{i}].actions"),
        )
        for i, c in enumerate(out.get("counters") or [])
    )
    out["rates"] = tuple(build(RateSpec, r, f"{where}.rates[{i}]") for i, r in enumerate(out.get("rates") or []))
    out["sequences"] = tuple(
        build(SequenceSpec, s, f"{where}.sequences[{i}]", actions=_names(f"{where}.sequences[{i}].actions"))
        for i, s in enumerate(out.get("sequences") or [])
    )
    if "ttl_s" in out:
        out["ttl_s"] = duration_s(out["ttl_s"], f"{where}.ttl_s")
    return build(DynamicSpec, out, where)
