"""What a committed version says about itself: :class:`PartInfo` and :class:`Manifest` (JSON).

``MANIFEST.json`` of version 12, a delta on 11 (abridged)::

    {"version": 12, "parent": 11, "kind": "delta", "step": 5400,
     "committed_at": 1795430400.5, "committed_at_iso": "2026-11-23T16:00:00.500000+00:00",
     "ledger": {"version": 2, "entries": [{"file": "part-20261123T1550Z.parquet", "rows": 5000, "complete": true}]},
     "data_files": ["part-20261123T1550Z.parquet"],
     "rows": 1843211, "bytes": 2315776,
     "model_digest": "9f86d0...",
     "parts": [{"name": "ps/shard-0/user", "sha256": "2c26b4...", "bytes": 1048640, "rows": 8127,
                "meta": {"merge": "by_id", "table": "user", "shard": 0, "num_shards": 2, "rows_after": 921605}},
               {"name": "dense", "sha256": "fcde2b...", "bytes": 201088, "rows": 0, "meta": {}}],
     "extra": {"spec": "taobao", "metrics": {"auc": 0.71}}}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

KINDS = ("full", "delta")


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """One written part: its name, checksum and size, entries (``rows``), and the writer's ``meta``.

    ``meta["merge"] == "by_id"`` marks a keyed part (an ``ids`` array plus per-id arrays, and
    in a delta a ``deleted`` array) that :meth:`VersionStore.materialize` merges across a chain.
    """

    name: str
    sha256: str
    bytes: int
    rows: int = 0
    meta: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PartInfo":
        return cls(str(d["name"]), str(d["sha256"]), int(d["bytes"]), int(d.get("rows", 0)), dict(d.get("meta", {})))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A committed version (see the module docstring for the JSON)."""

    version: int
    parent: int | None
    kind: str
    step: int
    committed_at: float
    committed_at_iso: str
    ledger: dict
    data_files: tuple[str, ...]
    rows: int
    bytes: int
    model_digest: str
    parts: tuple[PartInfo, ...]
    extra: dict = dataclasses.field(default_factory=dict)

    def part(self, name: str) -> PartInfo:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"version {self.version} has no part {name!r}; parts: {[p.name for p in self.parts]}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["data_files"] = list(self.data_files)
        d["parts"] = [p.to_dict() for p in self.parts]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def summary(self) -> dict:
        """The fields ``freshrec snapshots list`` shows."""
        return {
            "version": self.version,
            "parent": self.parent,
            "kind": self.kind,
            "step": self.step,
            "committed_at": self.committed_at_iso,
            "data_files": list(self.data_files),
            "rows": self.rows,
            "bytes": self.bytes,
            "model_digest": self.model_digest,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        return cls(
            version=int(d["version"]),
            parent=None if d.get("parent") is None else int(d["parent"]),
            kind=str(d["kind"]),
            step=int(d["step"]),
            committed_at=float(d["committed_at"]),
            committed_at_iso=str(d["committed_at_iso"]),
            ledger=dict(d.get("ledger") or {}),
            data_files=tuple(d.get("data_files", ())),
            rows=int(d.get("rows", 0)),
            bytes=int(d.get("bytes", 0)),
            model_digest=str(d.get("model_digest", "")),
            parts=tuple(PartInfo.from_dict(p) for p in d.get("parts", ())),
            extra=dict(d.get("extra") or {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        return cls.from_dict(json.loads(text))


def data_files_of(ledger: dict | None) -> tuple[str, ...]:
    """Names of the data files a ledger records (``DataLedger.to_dict()``: entries with ``file``)."""
    out = []
    for e in (ledger or {}).get("entries", ()):
        if isinstance(e, dict):
            name = e.get("file", e.get("shard", e.get("name")))  # format 1 said "shard"
            if name is not None:
                out.append(str(name))
    return tuple(out)


def now() -> tuple[float, str]:
    """(unix time, ISO 8601 UTC) of this instant."""
    t = datetime.datetime.now(datetime.UTC)
    return t.timestamp(), t.isoformat()


def rows_of(parts: list[PartInfo] | tuple[PartInfo, ...], kind: str) -> int:
    """Embedding rows the model holds after a version: the writers' ``rows_after`` when every keyed
    part has it, else (a full version) the entries of the keyed parts."""
    keyed = [p for p in parts if p.meta.get("merge") == "by_id"]
    if keyed and all("rows_after" in p.meta for p in keyed):
        return sum(int(p.meta["rows_after"]) for p in keyed)
    return sum(p.rows for p in keyed) if kind == "full" else 0


def as_json_value(value: Any, what: str) -> Any:
    """``value`` round-tripped through JSON (so a manifest holds exactly what it will read back)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None
