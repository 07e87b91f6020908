"""The data ledger: which data files, and how many rows of each, a consumer has taken.

A data file is identified by its name *and* the sha256 of its bytes: two different files
with the same name (say, both named after the same time window) are two data files and
are both consumed; the same file under a new name is recognised and not consumed twice.
A model version stores its ledger in its manifest, so it says exactly what data it has
seen; after a crash, training resumes from the ledger with no row lost or taken twice.
Data files are immutable and consumed in name order.

    ref = data_file_ref("incoming/part-000001.parquet")     # DataFileRef(name, sha256, path)
    ledger = DataLedger()
    ledger.record(ref, rows=5000, complete=True)
    ledger.to_dict()  ->  {"version": 3, "entries": [{"file": "part-000001.parquet",
                            "sha256": "9f86d0...", "rows": 5000, "complete": true}]}
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from trainer.data import storage

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class DataFileRef:
    """One data file: its name, the sha256 of its content, and where it is (a path or URL).

    Usable where a path is expected (``os.fspath``, ``str``, ``.name``)."""

    name: str
    sha256: str
    path: str

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def data_file_ref(path: str | os.PathLike) -> DataFileRef:
    """Identify a data file by name and content hash (reads the file once)."""
    if isinstance(path, DataFileRef):
        return path
    return DataFileRef(storage.base_name(str(path)), storage.sha256_of(path), str(path))


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    file: str  # file name (data files are named so that name order is time order)
    rows: int  # rows taken so far (good + dead + duplicate + late: the reader's position)
    complete: bool
    sha256: str | None = None  # content hash; None in ledgers written before hashes were kept

    @property
    def key(self) -> str:
        return self.sha256 or "name:" + self.file


class LedgerError(ValueError):
    """The ledger would go backwards, skip a data file, or was given garbage; the message says which."""


def _identity(file) -> tuple[str, str | None]:
    if isinstance(file, DataFileRef):
        return file.name, file.sha256
    return storage.base_name(str(os.fspath(file))), None


class DataLedger:
    FORMAT_VERSION = 3

    def __init__(self, entries: list[LedgerEntry] | None = None):
        self._entries: dict[str, LedgerEntry] = {}
        for e in entries or []:
            self._entries[e.key] = e

    def _find(self, file) -> LedgerEntry | None:
        name, sha = _identity(file)
        if sha is not None:  # by content; else an entry recorded by name only (no hash known)
            return self._entries.get(sha) or self._entries.get("name:" + name)
        return self._entries.get("name:" + name) or next(
            (e for e in self._entries.values() if e.file == name), None)

    def record(self, file, rows: int, complete: bool, sha256: str | None = None) -> None:
        """Record ``rows`` taken of ``file`` (a DataFileRef, or a path with ``sha256``)."""
        name, sha = _identity(file)
        sha = sha or sha256
        if sha is not None and not _SHA.match(sha):
            raise LedgerError(f"data file {name}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        prev = self._entries.get(sha) if sha else self._find(name)
        if prev is not None and (prev.complete or rows < prev.rows):
            raise LedgerError(f"data file {name}: already recorded {prev}; refusing to take it again or go back to {rows} rows")
        if prev is None and self._entries:
            last = max(e.file for e in self._entries.values())
            if name < last:
                raise LedgerError(f"data file {name} comes before {last}, which was already taken: data files are consumed in name order")
        entry = LedgerEntry(name, int(rows), bool(complete), sha)
        if prev is not None and prev.key != entry.key:
            del self._entries[prev.key]
        self._entries[entry.key] = entry

    def rows_taken(self, file) -> int:
        e = self._find(file)
        return e.rows if e else 0

    def is_complete(self, file) -> bool:
        """Taken in full: by content hash for a DataFileRef (the same file renamed counts), else by name."""
        e = self._find(file)
        return bool(e and e.complete)

    def pending(self, files: list) -> list:
        """The data files of ``files`` (paths or DataFileRefs) not yet fully taken, in name order."""
        out = [f if isinstance(f, DataFileRef) or storage.is_url(str(f)) else Path(f) for f in files]
        return sorted((f for f in out if not self.is_complete(f)), key=lambda f: _identity(f)[0])

    @property
    def entries(self) -> list[LedgerEntry]:
        """In the order the files were first taken."""
        return list(self._entries.values())

    @property
    def total_rows(self) -> int:
        return sum(e.rows for e in self._entries.values())

    def to_dict(self) -> dict:
        return {"version": self.FORMAT_VERSION,
                "entries": [{"file": e.file, "sha256": e.sha256, "rows": e.rows, "complete": e.complete} for e in self.entries]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data) -> "DataLedger":
        """Versions 1 (``shard``), 2 (``file``) and 3 (``file`` + ``sha256``); anything else is a LedgerError."""
        if not isinstance(data, dict):
            raise LedgerError(f"a ledger is a mapping with 'version' and 'entries', got {type(data).__name__}")
        version = data.get("version")
        if version not in (1, 2, cls.FORMAT_VERSION) or isinstance(version, bool):
            raise LedgerError(f"unknown ledger format version {version!r}")
        entries = data.get("entries")
        if not isinstance(entries, list):
            raise LedgerError("ledger 'entries' must be a list")
        key = "shard" if version == 1 else "file"  # version 1 called a data file a shard
        out = []
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise LedgerError(f"ledger entry {i} must be a mapping, got {e!r}"[:200])
            name, rows, complete, sha = e.get(key), e.get("rows"), e.get("complete"), e.get("sha256")
            if not isinstance(name, str) or not name or "/" in name:
                raise LedgerError(f"ledger entry {i}: '{key}' must be a file name, got {name!r}"[:200])
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
                raise LedgerError(f"ledger entry {i} ({name}): 'rows' must be an integer >= 0, got {rows!r}"[:200])
            if not isinstance(complete, bool):
                raise LedgerError(f"ledger entry {i} ({name}): 'complete' must be true or false, got {complete!r}"[:200])
            if sha is not None and not (isinstance(sha, str) and _SHA.match(sha)):
                raise LedgerError(f"ledger entry {i} ({name}): 'sha256' must be 64 hex digits or null, got {sha!r}"[:200])
            out.append(LedgerEntry(name, rows, complete, sha))
        ledger = cls(out)
        if len(ledger._entries) != len(out):
            raise LedgerError("ledger has repeated entries for the same data file")
        return ledger

    @classmethod
    def from_json(cls, text: str) -> "DataLedger":
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"ledger is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataLedger) and self.entries == other.entries
