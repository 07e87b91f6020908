"""The data ledger: which shard files, and how many rows of each, a consumer has taken.

A model version stores its ledger in its manifest, so it says exactly what data it
has seen; after a crash, training resumes from the ledger with no row lost or taken
twice. Shards are immutable and consumed in name order.

    ledger = DataLedger()
    ledger.record("shards/part-000001.parquet", rows=5000, complete=True)
    ledger.to_json()  ->  '{"version": 1, "entries": [{"shard": "part-000001.parquet", ...}]}'
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    shard: str  # file name (shards are named so that name order is time order)
    rows: int  # rows taken so far (good + dead + duplicate: the reader's position)
    complete: bool


class LedgerError(ValueError):
    """The ledger would go backwards or skip a shard; the message says which."""


class DataLedger:
    FORMAT_VERSION = 1

    def __init__(self, entries: list[LedgerEntry] | None = None):
        self._entries: dict[str, LedgerEntry] = {e.shard: e for e in (entries or [])}

    def record(self, shard: str | Path, rows: int, complete: bool) -> None:
        name = Path(shard).name
        prev = self._entries.get(name)
        if prev is not None and (prev.complete or rows < prev.rows):
            raise LedgerError(f"shard {name}: already recorded {prev}; refusing to take it again or go back to {rows} rows")
        if prev is None and self._entries:
            last = max(self._entries)
            if name < last:
                raise LedgerError(f"shard {name} comes before {last}, which was already taken: shards are consumed in name order")
        self._entries[name] = LedgerEntry(name, int(rows), bool(complete))

    def rows_taken(self, shard: str | Path) -> int:
        e = self._entries.get(Path(shard).name)
        return e.rows if e else 0

    def is_complete(self, shard: str | Path) -> bool:
        e = self._entries.get(Path(shard).name)
        return bool(e and e.complete)

    def pending(self, shards: list[str | Path]) -> list[Path]:
        """The shards of ``shards`` not yet fully taken, in name order."""
        return sorted((Path(s) for s in shards if not self.is_complete(s)), key=lambda p: p.name)

    @property
    def entries(self) -> list[LedgerEntry]:
        return [self._entries[k] for k in sorted(self._entries)]

    @property
    def total_rows(self) -> int:
        return sum(e.rows for e in self._entries.values())

    def to_dict(self) -> dict:
        return {"version": self.FORMAT_VERSION, "entries": [dataclasses.asdict(e) for e in self.entries]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "DataLedger":
        if data.get("version") != cls.FORMAT_VERSION:
            raise LedgerError(f"unknown ledger format version {data.get('version')!r}")
        return cls([LedgerEntry(str(e["shard"]), int(e["rows"]), bool(e["complete"])) for e in data["entries"]])

    @classmethod
    def from_json(cls, text: str) -> "DataLedger":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataLedger) and self.entries == other.entries
