"""The data ledger: which data files, and how many rows of each, a consumer has taken.

A model version stores its ledger in its manifest, so it says exactly what data it
has seen; after a crash, training resumes from the ledger with no row lost or taken
twice. Data files are immutable and consumed in name order.

    ledger = DataLedger()
    ledger.record("incoming/part-000001.parquet", rows=5000, complete=True)
    ledger.to_json()  ->  '{"version": 2, "entries": [{"file": "part-000001.parquet", ...}]}'
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    file: str  # file name (data files are named so that name order is time order)
    rows: int  # rows taken so far (good + dead + duplicate: the reader's position)
    complete: bool


class LedgerError(ValueError):
    """The ledger would go backwards or skip a data file; the message says which."""


class DataLedger:
    FORMAT_VERSION = 2

    def __init__(self, entries: list[LedgerEntry] | None = None):
        self._entries: dict[str, LedgerEntry] = {e.file: e for e in (entries or [])}

    def record(self, file: str | Path, rows: int, complete: bool) -> None:
        name = Path(file).name
        prev = self._entries.get(name)
        if prev is not None and (prev.complete or rows < prev.rows):
            raise LedgerError(f"data file {name}: already recorded {prev}; refusing to take it again or go back to {rows} rows")
        if prev is None and self._entries:
            last = max(self._entries)
            if name < last:
                raise LedgerError(f"data file {name} comes before {last}, which was already taken: data files are consumed in name order")
        self._entries[name] = LedgerEntry(name, int(rows), bool(complete))

    def rows_taken(self, file: str | Path) -> int:
        e = self._entries.get(Path(file).name)
        return e.rows if e else 0

    def is_complete(self, file: str | Path) -> bool:
        e = self._entries.get(Path(file).name)
        return bool(e and e.complete)

    def pending(self, files: list[str | Path]) -> list[Path]:
        """The data files of ``files`` not yet fully taken, in name order."""
        return sorted((Path(f) for f in files if not self.is_complete(f)), key=lambda p: p.name)

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
        version = data.get("version")
        if version not in (1, cls.FORMAT_VERSION):
            raise LedgerError(f"unknown ledger format version {version!r}")
        key = "shard" if version == 1 else "file"  # version 1 called a data file a shard
        return cls([LedgerEntry(str(e[key]), int(e["rows"]), bool(e["complete"])) for e in data["entries"]])

    @classmethod
    def from_json(cls, text: str) -> "DataLedger":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataLedger) and self.entries == other.entries
