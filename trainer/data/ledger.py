"""The data ledger: which data files, and how many rows of each, a consumer has taken.

A data file is identified by its name *and* the sha256 of its bytes: two different files
with the same name (say, both named after the same time window) are two data files and
are both consumed; the same file under a new name is recognised and not consumed twice.
A model version stores its ledger (:mod:`trainer.bundle`: a keyed part of its own, a delta
holding only the entries that changed), so it says exactly what data it has seen; after a
crash, training resumes from the ledger with no row lost or taken twice. Each entry also
keeps the file's size and modification time, so a restart recognises consumed files without
reading them again, and its status: ``ok``, or ``changed`` (a file whose bytes changed after
it was consumed: refused, never trained twice). A file named before consumed ones (a late
file) is recorded like any other: its rows are judged by the lateness policy.

Memory (issue 21): the ledger stays exact (every consumed file is refused again, by content
hash, for the whole run and after a restart), but only the latest ``HOT_ENTRIES`` complete
entries (and every partly taken one) are Python objects; older complete entries are moved to
columns of numpy arrays (:class:`_Cold`: about 110 bytes plus the name per data file, instead
of ~600 as objects), looked up by binary search on 64-bit hashes of their key and name (a
hash match is confirmed on the stored name/sha256, so a collision never refuses a new file).
``held()`` gives the sizes for the ``freshrec_trainer_state_entries_rows`` gauge.

    ref = data_file_ref("incoming/part-000001.parquet")     # DataFileRef(name, sha256, path)
    ledger = DataLedger()
    ledger.record(ref, rows=5000, complete=True)
    ledger.to_dict()  ->  {"version": 3, "entries": [{"file": "part-000001.parquet",
                            "sha256": "9f86d0...", "rows": 5000, "complete": true}]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from trainer.data import storage

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class DataFileRef:
    """One data file: its name, the sha256 of its content, and where it is (a path or URL).

    Usable where a path is expected (``os.fspath``, ``str``, ``.name``)."""

    name: str
    sha256: str | None
    path: str
    size: int | None = None
    mtime: float | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False, compare=False)  # the bytes read, once
    source: int = 0  # 0: history, 1: incoming (a changed file is judged within its own directory)
    refused: str | None = None  # "changed": its bytes changed after it was consumed (never trained)

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
    size: int | None = None  # bytes and modification time when taken: a restart recognises the file by them
    mtime: float | None = None
    status: str = "ok"  # "ok", or "changed": bytes changed after the file was consumed (refused, 0 rows)
    source: int = 0  # 0: history, 1: incoming

    @property
    def key(self) -> str:
        return self.sha256 or "name:" + self.file


STATUSES = ("ok", "changed")
NAME_BYTES = 256  # a file name in the saved ledger (fixed width: the parts of a chain merge row by row)


MTIME_TOLERANCE_S = 1e-6  # a file is recognised by name, size and mtime (to this tolerance) without reading it


def _same_stat(e: "LedgerEntry", size: int, mtime: float) -> bool:
    return e.size == size and e.mtime is not None and abs(e.mtime - mtime) < MTIME_TOLERANCE_S


class LedgerError(ValueError):
    """The ledger would go backwards, take a file twice, or was given garbage; the message says which."""


def _identity(file) -> tuple[str, str | None]:
    if isinstance(file, DataFileRef):
        return file.name, file.sha256
    return storage.base_name(str(os.fspath(file))), None


def _key_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little", signed=True)


def _name_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(b"name\0" + name.encode()).digest()[:8], "little", signed=True)


HOT_ENTRIES = 128  # complete entries kept as objects (the latest); older ones go to the compact columns


class _Cold:
    """Complete ledger entries as columns (append order), with sorted indexes on the 64-bit hashes
    of their key and of their name. Rows are only ever added (a complete entry is never replaced:
    taking a file again is refused)."""

    def __init__(self) -> None:
        z = np.zeros
        self.key_id, self.name_id = z(0, np.int64), z(0, np.int64)
        self.name_blob, self.name_off = z(0, np.uint8), z(1, np.int64)  # row i: blob[off[i]:off[i + 1]]
        self.sha, self.has_sha = z((0, 32), np.uint8), z(0, bool)
        self.rows, self.size, self.mtime = z(0, np.int64), z(0, np.int64), z(0, np.float64)
        self.status, self.source, self.order = z(0, np.int8), z(0, np.int8), z(0, np.int64)
        self.by_key, self.by_name = z(0, np.int64), z(0, np.int64)  # argsorts of key_id / name_id
        self.key_sorted, self.name_sorted = z(0, np.int64), z(0, np.int64)  # key_id[by_key], name_id[by_name]
        self.total_rows = 0

    def __len__(self) -> int:
        return len(self.key_id)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray))

    def add(self, entries: list[LedgerEntry], orders: list[int]) -> None:
        names = [e.file.encode() for e in entries]
        sha = np.zeros((len(entries), 32), np.uint8)
        for i, e in enumerate(entries):  # one row per data file moved (once in its life)
            if e.sha256:
                sha[i] = np.frombuffer(bytes.fromhex(e.sha256), np.uint8)
        self.add_columns(
            key_id=np.array([_key_id(e.key) for e in entries], np.int64),
            name_id=np.array([_name_id(e.file) for e in entries], np.int64),
            name_blob=np.frombuffer(b"".join(names), np.uint8),
            name_len=np.array([len(n) for n in names], np.int64),
            sha=sha,
            has_sha=np.array([e.sha256 is not None for e in entries], bool),
            rows=np.array([e.rows for e in entries], np.int64),
            size=np.array([-1 if e.size is None else e.size for e in entries], np.int64),
            mtime=np.array([np.nan if e.mtime is None else e.mtime for e in entries], np.float64),
            status=np.array([STATUSES.index(e.status) for e in entries], np.int8),
            source=np.array([e.source for e in entries], np.int8),
            order=np.array(orders, np.int64),
        )

    def add_columns(
        self, *, key_id, name_id, name_blob, name_len, sha, has_sha, rows, size, mtime, status, source, order
    ):
        """Append complete entries given as columns (``name_blob``: their names' bytes back to back)."""
        cat = np.concatenate
        self.key_id = cat([self.key_id, key_id.astype(np.int64)])
        self.name_id = cat([self.name_id, name_id.astype(np.int64)])
        self.name_blob = cat([self.name_blob, name_blob.astype(np.uint8)])
        self.name_off = cat([self.name_off, self.name_off[-1] + np.cumsum(name_len.astype(np.int64))])
        self.sha = cat([self.sha, sha.astype(np.uint8).reshape(-1, 32)])
        self.has_sha = cat([self.has_sha, has_sha.astype(bool)])
        self.rows = cat([self.rows, rows.astype(np.int64)])
        self.size = cat([self.size, size.astype(np.int64)])
        self.mtime = cat([self.mtime, mtime.astype(np.float64)])
        self.status = cat([self.status, status.astype(np.int8)])
        self.source = cat([self.source, source.astype(np.int8)])
        self.order = cat([self.order, order.astype(np.int64)])
        self.by_key = np.argsort(self.key_id, kind="stable")
        self.by_name = np.argsort(self.name_id, kind="stable")
        self.key_sorted, self.name_sorted = self.key_id[self.by_key], self.name_id[self.by_name]
        self.total_rows += int(rows.sum())

    def name(self, i: int) -> str:
        return bytes(self.name_blob[self.name_off[i] : self.name_off[i + 1]]).decode()

    def entry(self, i: int) -> LedgerEntry:
        size, mtime = int(self.size[i]), float(self.mtime[i])
        return LedgerEntry(
            self.name(i),
            int(self.rows[i]),
            True,
            bytes(self.sha[i]).hex() if self.has_sha[i] else None,
            None if size < 0 else size,
            None if np.isnan(mtime) else mtime,
            STATUSES[int(self.status[i])],
            int(self.source[i]),
        )

    @staticmethod
    def _match(ordered: np.ndarray, index: np.ndarray, value: int) -> list[int]:
        lo, hi = np.searchsorted(ordered, value, "left"), np.searchsorted(ordered, value, "right")
        return index[lo:hi].tolist()

    def get(self, key: str) -> LedgerEntry | None:
        for i in self._match(self.key_sorted, self.by_key, _key_id(key)):
            e = self.entry(i)
            if e.key == key:  # the hash matched: confirm on the stored key
                return e
        return None

    def named(self, name: str) -> list[LedgerEntry]:
        """The entries of files named ``name``, oldest first."""
        rows = self._match(self.name_sorted, self.by_name, _name_id(name))
        return [e for i in sorted(rows, key=lambda i: int(self.order[i])) if (e := self.entry(i)).file == name]

    def names(self, rows: np.ndarray, width: int = NAME_BYTES) -> np.ndarray:
        """The names of ``rows`` as a (len(rows), width) uint8 array, zero-padded (vectorised)."""
        start, lens = self.name_off[rows], self.name_off[rows + 1] - self.name_off[rows]
        if len(lens) and int(lens.max()) > width:
            raise LedgerError(f"a data file name is longer than {width} bytes: rename it")
        pos = start[:, None] + np.arange(width)[None, :]
        inside = np.arange(width)[None, :] < lens[:, None]
        if not len(self.name_blob):
            return np.zeros((len(rows), width), np.uint8)
        return np.where(inside, self.name_blob[np.minimum(pos, len(self.name_blob) - 1)], 0).astype(np.uint8)


class DataLedger:
    FORMAT_VERSION = 3

    def __init__(self, entries: list[LedgerEntry] | None = None, hot_entries: int | None = None):
        self._entries: dict[str, LedgerEntry] = {}  # the latest entries (every partly taken one among them)
        self._by_name: dict[str, list[str]] = {}
        self._changed: dict[str, int] = {}  # key -> change sequence number (for incremental saving)
        self._removed: list[tuple[int, str]] = []  # (sequence, key) of entries replaced since the journal mark
        self._cold = _Cold()  # older complete entries, compactly
        self.hot_entries = HOT_ENTRIES if hot_entries is None else int(hot_entries)
        self.seq = 0
        self._loading = True
        for e in entries or []:
            self._put(e)
        self._loading = False
        self._spill()

    def _put(self, e: LedgerEntry) -> None:
        if self._cold.get(e.key) is not None:
            raise LedgerError(f"data file {e.file}: already recorded {self._cold.get(e.key)}")
        old = self._entries.get(e.key)
        if old is not None and old.file != e.file:  # a partly taken file finished under another name
            self._by_name[old.file].remove(e.key)
            if not self._by_name[old.file]:
                del self._by_name[old.file]
        self._entries[e.key] = e
        keys = self._by_name.setdefault(e.file, [])
        if e.key not in keys:
            keys.append(e.key)
        self.seq += 1
        self._changed[e.key] = self.seq
        if not self._loading:
            self._spill()

    def _spill(self) -> None:
        """Move the oldest complete entries to the compact columns once more than ``hot_entries`` are held
        (half of them at a time: amortised, each entry moves once)."""
        if len(self._entries) <= self.hot_entries:
            return
        done = [k for k, e in self._entries.items() if e.complete]
        if len(done) <= self.hot_entries:
            return
        done.sort(key=self._changed.__getitem__)
        move = done[: len(done) - self.hot_entries // 2]
        self._cold.add([self._entries[k] for k in move], [self._changed[k] for k in move])
        for k in move:
            e = self._entries.pop(k)
            self._by_name[e.file].remove(k)
            if not self._by_name[e.file]:
                del self._by_name[e.file]
            del self._changed[k]

    def _get(self, key: str) -> LedgerEntry | None:
        return self._entries.get(key) or self._cold.get(key)

    def _named(self, name: str) -> list[LedgerEntry]:
        """Every entry of files named ``name``: the compact (older) ones first."""
        return self._cold.named(name) + [self._entries[k] for k in self._by_name.get(name, ())]

    def _drop(self, key: str) -> None:
        e = self._entries.pop(key)  # only a partly taken entry is ever replaced (always held as an object)
        self._by_name[e.file].remove(key)
        self._changed.pop(key, None)
        self.seq += 1
        self._removed.append((self.seq, key))

    def _find(self, file) -> LedgerEntry | None:
        name, sha = _identity(file)
        if sha is not None:  # by content; else an entry recorded by name only (no hash known)
            return self._get(sha) or self._get("name:" + name)
        return self._get("name:" + name) or next(iter(self._named(name)), None)

    def record(self, file, rows: int, complete: bool, sha256: str | None = None) -> None:
        """Record ``rows`` taken of ``file`` (a DataFileRef, or a path with ``sha256``). A partly taken
        entry of the same name (the file was still being copied) is replaced by the new one."""
        name, sha = _identity(file)
        sha = sha or sha256
        if sha is not None and not _SHA.match(sha):
            raise LedgerError(f"data file {name}: sha256 must be 64 lowercase hex digits, got {sha!r}")
        prev = self._get(sha) if sha else self._find(name)
        if prev is not None and (prev.complete or rows < prev.rows):
            raise LedgerError(
                f"data file {name}: already recorded {prev}; refusing to take it again or go back to {rows} rows"
            )
        partial = self.partial(name)
        size, mtime = getattr(file, "size", None), getattr(file, "mtime", None)
        entry = LedgerEntry(
            name,
            int(rows),
            bool(complete),
            sha,
            None if size is None else int(size),
            None if mtime is None else float(mtime),
            "ok",
            int(getattr(file, "source", 0)),
        )
        for old in {k for k in (prev.key if prev else None, partial.key if partial else None) if k} - {entry.key}:
            self._drop(old)
        self._put(entry)

    def refuse(self, ref: "DataFileRef", status: str = "changed") -> LedgerEntry:
        """Record ``ref`` as refused (0 rows, never to be taken): its bytes changed after consumption."""
        if status not in STATUSES[1:]:
            raise LedgerError(f"unknown refusal status {status!r}")
        entry = LedgerEntry(ref.name, 0, True, ref.sha256, ref.size, ref.mtime, status, ref.source)
        if (old := self._get(entry.key)) is not None:
            raise LedgerError(f"data file {ref.name}: already recorded {old}")
        self._put(entry)
        return entry

    def partial(self, name: str) -> LedgerEntry | None:
        """The partly taken entry of a file named ``name`` (``complete=False``), if any."""
        return next((self._entries[k] for k in self._by_name.get(name, ()) if not self._entries[k].complete), None)

    def consumed(self, name: str, source: int | None = None) -> list[LedgerEntry]:
        """Entries of files named ``name`` taken in full (from ``source``, if given)."""
        return [
            e for e in self._named(name) if e.complete and e.status == "ok" and (source is None or e.source == source)
        ]

    def by_stat(self, name: str, size: int, mtime: float) -> LedgerEntry | None:
        """The entry of a file with this name, size and modification time (recognised without reading it)."""
        return next((e for e in self._named(name) if _same_stat(e, size, mtime)), None)

    def consumed_by_stat(self, files: list) -> np.ndarray:
        """For each ``storage.FileInfo`` of ``files``: whether ``by_stat`` finds a complete entry for it (the
        follower's test, per poll, of every file in its directory). The compact columns are matched at once
        (the names' 64-bit hashes against their sorted index, then size, mtime and the stored name bytes);
        only the few files not settled there go through the held entries one by one."""
        n = len(files)
        out = np.zeros(n, bool)
        if not n:
            return out
        names = [f.name for f in files]
        cold = self._cold
        if len(cold):
            ids = np.fromiter((_name_id(x) for x in names), np.int64, n)
            lo = np.searchsorted(cold.name_sorted, ids, "left")
            count = np.searchsorted(cold.name_sorted, ids, "right") - lo
            one = np.flatnonzero(count == 1)  # the usual case: one entry of that name
            if len(one):
                rows = cold.by_name[lo[one]]
                sizes = np.fromiter((files[i].size for i in one), np.int64, len(one))
                mtimes = np.fromiter((files[i].mtime for i in one), np.float64, len(one))
                hit = (cold.size[rows] == sizes) & (np.abs(cold.mtime[rows] - mtimes) < MTIME_TOLERANCE_S)
                if hit.any():  # confirm the hash's match on the stored name
                    h = np.flatnonzero(hit)
                    encoded = [names[i].encode() for i in one[h]]
                    stored = cold.name_off[rows[h] + 1] - cold.name_off[rows[h]]
                    fits = np.array([len(e) <= NAME_BYTES for e in encoded], bool) & (stored <= NAME_BYTES)
                    same = np.zeros(len(h), bool)
                    if fits.any():
                        width = max(len(e) for e, ok in zip(encoded, fits, strict=True) if ok)
                        width = max(width, int(stored[fits].max()), 1)
                        blob = b"".join(e.ljust(width, b"\0") for e, ok in zip(encoded, fits, strict=True) if ok)
                        want = np.frombuffer(blob, np.uint8).reshape(-1, width)
                        same[fits] = (cold.names(rows[h][fits], width) == want).all(axis=1)
                    for j in np.flatnonzero(~fits).tolist():  # a name longer than the columns' width: as a string
                        same[j] = cold.name(int(rows[h[j]])) == names[int(one[h[j]])]
                    out[one[h[same]]] = True
            for i in np.flatnonzero(count > 1).tolist():  # a name taken more than once (rare): entry by entry
                out[i] = any(_same_stat(e, files[i].size, files[i].mtime) for e in cold.named(names[i]))
        for i in np.flatnonzero(~out).tolist():  # the held (latest) entries: at most HOT_ENTRIES
            held = (self._entries[k] for k in self._by_name.get(names[i], ()))
            e = next((e for e in held if _same_stat(e, files[i].size, files[i].mtime)), None)
            out[i] = e is not None and e.complete
        return out

    def is_complete(self, file) -> bool:
        """Taken in full (or refused): by content hash for a DataFileRef (the same file renamed counts), else by name."""
        e = self._find(file)
        return bool(e and e.complete)

    def pending(self, files: list) -> list:
        """The data files of ``files`` (paths or DataFileRefs) not yet fully taken, in name order."""
        out = [f if isinstance(f, DataFileRef) or storage.is_url(str(f)) else Path(f) for f in files]
        return sorted((f for f in out if not self.is_complete(f)), key=lambda f: _identity(f)[0])

    @property
    def entries(self) -> list[LedgerEntry]:
        """In the order the files were first taken (the compactly held, older ones first)."""
        c = self._cold
        return [c.entry(i) for i in np.argsort(c.order, kind="stable").tolist()] + list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries) + len(self._cold)

    @property
    def total_rows(self) -> int:
        return self._cold.total_rows + sum(e.rows for e in self._entries.values())

    def held(self) -> dict[str, int]:
        """What the ledger holds in memory: entries as objects (bounded by ``hot_entries`` plus the partly
        taken ones), entries held compactly, their bytes, and the replaced-entry journal (trimmed at commit)."""
        return {
            "objects": len(self._entries),
            "compact": len(self._cold),
            "compact_bytes": self._cold.nbytes,
            "journal": len(self._removed),
        }

    # -- incremental saving (trainer.data.state, trainer.bundle) ----------------------------
    def to_arrays(self, since: int = 0) -> dict[str, np.ndarray]:
        """Keyed arrays of the entries changed after sequence ``since`` (0: all) and, as ``deleted``,
        the entries replaced after it; ``order`` keeps the order the entries were taken in."""
        keys = [k for k, s in self._changed.items() if s > since]
        es = [self._entries[k] for k in keys]
        names = [e.file.encode() for e in es]
        if any(len(n) > NAME_BYTES for n in names):
            raise LedgerError(f"a data file name is longer than {NAME_BYTES} bytes: rename it")
        name_arr = np.zeros((len(es), NAME_BYTES), np.uint8)
        for i, n in enumerate(names):  # one row per changed file, not per event
            name_arr[i, : len(n)] = np.frombuffer(n, np.uint8)
        sha = np.zeros((len(es), 32), np.uint8)
        for i, e in enumerate(es):
            if e.sha256:
                sha[i] = np.frombuffer(bytes.fromhex(e.sha256), np.uint8)
        ids = np.array([_key_id(k) for k in keys], np.int64)
        out = {
            "ids": ids,
            "name": name_arr,
            "name_len": np.array([len(n) for n in names], np.int64),
            "sha256": sha,
            "has_sha": np.array([e.sha256 is not None for e in es], bool),
            "rows": np.array([e.rows for e in es], np.int64),
            "complete": np.array([e.complete for e in es], bool),
            "size": np.array([-1 if e.size is None else e.size for e in es], np.int64),
            "mtime": np.array([np.nan if e.mtime is None else e.mtime for e in es], np.float64),
            "status": np.array([STATUSES.index(e.status) for e in es], np.int8),
            "source": np.array([e.source for e in es], np.int8),
            "order": np.array([self._changed[k] for k in keys], np.int64),
        }
        c = self._cold
        if len(c):
            rows = np.flatnonzero(c.order > since)
            cold = {
                "ids": c.key_id[rows],
                "name": c.names(rows),
                "name_len": (c.name_off[rows + 1] - c.name_off[rows]).astype(np.int64),
                "sha256": c.sha[rows],
                "has_sha": c.has_sha[rows],
                "rows": c.rows[rows],
                "complete": np.ones(len(rows), bool),
                "size": c.size[rows],
                "mtime": c.mtime[rows],
                "status": c.status[rows],
                "source": c.source[rows],
                "order": c.order[rows],
            }
            out = {k: np.concatenate([cold[k], v]) for k, v in out.items()}
            ids = out["ids"]
        order = np.argsort(ids, kind="stable")
        out = {k: v[order] for k, v in out.items()}
        out["deleted"] = np.array(
            sorted({_key_id(k) for s, k in self._removed if s > since} - set(ids.tolist())), np.int64
        )
        return out

    def trim_journal(self, upto: int) -> None:
        """Forget replaced entries recorded up to sequence ``upto`` (a committed version holds them)."""
        self._removed = [(s, k) for s, k in self._removed if s > upto]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "DataLedger":
        """The inverse of :meth:`to_arrays` over a whole (merged) ledger: the same ledger as recording its
        entries one by one in their saved order (``DataLedger(entries)``), built as columns. A restart reads
        every file ever consumed, so the complete entries that go to the compact columns are moved there as
        arrays; only the latest ``hot_entries // 2`` and the partly taken ones become objects."""
        n = len(arrays["ids"])
        ids = np.asarray(arrays["ids"], np.int64)
        if len(np.unique(ids)) != n:
            raise LedgerError(f"the saved ledger has {n} entries but only {len(np.unique(ids))} distinct data files")
        order = np.argsort(arrays["order"], kind="stable")  # position p gets the sequence number p + 1
        col = {k: np.asarray(v)[order] for k, v in arrays.items() if k != "deleted"}
        lens = col["name_len"].astype(np.int64)
        if n and (int(lens.min()) < 1 or int(lens.max()) > NAME_BYTES):
            raise LedgerError(f"the saved ledger has a data file name of {int(lens.max())} bytes (1-{NAME_BYTES})")
        led = cls()
        complete = np.flatnonzero(col["complete"].astype(bool))
        cold = (
            complete[: len(complete) - led.hot_entries // 2]
            if n > led.hot_entries and len(complete) > led.hot_entries
            else complete[:0]
        )
        if len(cold):  # what the constructor's one spill would move, in one go
            inside = np.arange(NAME_BYTES)[None, :] < lens[cold][:, None]
            blob = np.ascontiguousarray(col["name"][cold][:, :NAME_BYTES][inside]).astype(np.uint8)
            off = np.concatenate([[0], np.cumsum(lens[cold])])
            raw = blob.tobytes()
            led._cold.add_columns(
                key_id=col["ids"][cold],
                name_id=np.fromiter(  # the one per-file step: a 64-bit hash of each name (hashlib)
                    (_name_id(raw[a:b].decode()) for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)),
                    np.int64,
                    len(cold),
                ),
                name_blob=blob,
                name_len=lens[cold],
                sha=col["sha256"][cold],
                has_sha=col["has_sha"][cold],
                rows=col["rows"][cold],
                size=col["size"][cold],
                mtime=col["mtime"][cold],
                status=col["status"][cold],
                source=col["source"][cold],
                order=cold.astype(np.int64) + 1,
            )
        held = np.ones(n, bool)
        held[cold] = False
        for p in np.flatnonzero(held).tolist():  # at most hot_entries // 2 complete ones, and the partly taken
            size, mtime = int(col["size"][p]), float(col["mtime"][p])
            e = LedgerEntry(
                bytes(col["name"][p, : int(lens[p])]).decode(),
                int(col["rows"][p]),
                bool(col["complete"][p]),
                bytes(col["sha256"][p]).hex() if bool(col["has_sha"][p]) else None,
                None if size < 0 else size,
                None if np.isnan(mtime) else mtime,
                STATUSES[int(col["status"][p])],
                int(col["source"][p]),
            )
            if _key_id(e.key) != int(col["ids"][p]):
                raise LedgerError(f"the saved ledger's entry for {e.file} does not match its id")
            led._entries[e.key] = e
            led._by_name.setdefault(e.file, []).append(e.key)
            led._changed[e.key] = p + 1
        led.seq = n
        led._removed = []
        return led

    def to_dict(self) -> dict:
        return {"version": self.FORMAT_VERSION, "entries": [_entry_dict(e) for e in self.entries]}

    def changed_since(self, since: int) -> list[dict]:
        """The entries changed after sequence ``since``, as dicts (what a manifest lists)."""
        c = self._cold
        cold = [c.entry(i) for i in np.flatnonzero(c.order > since)[np.argsort(c.order[c.order > since])].tolist()]
        return [_entry_dict(e) for e in cold] + [
            _entry_dict(self._entries[k]) for k, s in self._changed.items() if s > since
        ]

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
                raise LedgerError(
                    f"ledger entry {i} ({name}): 'complete' must be true or false, got {complete!r}"[:200]
                )
            if sha is not None and not (isinstance(sha, str) and _SHA.match(sha)):
                raise LedgerError(
                    f"ledger entry {i} ({name}): 'sha256' must be 64 hex digits or null, got {sha!r}"[:200]
                )
            size, mtime, status = e.get("size"), e.get("mtime"), e.get("status", "ok")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise LedgerError(
                    f"ledger entry {i} ({name}): 'size' must be an integer >= 0 or null, got {size!r}"[:200]
                )
            if mtime is not None and (not isinstance(mtime, (int, float)) or isinstance(mtime, bool)):
                raise LedgerError(f"ledger entry {i} ({name}): 'mtime' must be a number or null, got {mtime!r}"[:200])
            if status not in STATUSES:
                raise LedgerError(
                    f"ledger entry {i} ({name}): 'status' must be one of {STATUSES}, got {status!r}"[:200]
                )
            source = e.get("source", 0)
            if source not in (0, 1) or isinstance(source, bool):
                raise LedgerError(f"ledger entry {i} ({name}): 'source' must be 0 or 1, got {source!r}"[:200])
            out.append(
                LedgerEntry(name, rows, complete, sha, size, None if mtime is None else float(mtime), status, source)
            )
        ledger = cls(out)
        ledger._removed = []
        if len(ledger) != len(out):
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


def _entry_dict(e: LedgerEntry) -> dict:
    d = {"file": e.file, "sha256": e.sha256, "rows": e.rows, "complete": e.complete}
    if e.size is not None:
        d["size"] = e.size
    if e.mtime is not None:
        d["mtime"] = e.mtime
    if e.status != "ok":
        d["status"] = e.status
    if e.source:
        d["source"] = e.source
    return d
