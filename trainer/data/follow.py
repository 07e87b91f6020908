"""Following a run's data files: history first, then incoming files as they land, each once, in name order.

The producer's protocol: write a data file under a temporary name (``.part-1.parquet.tmp``,
``_part-1.parquet`` or ``part-1.parquet.tmp``: hidden or ``.tmp`` names are never data
files) and rename it when complete. As a safety net for producers that copy in place, an
incoming file is taken only once its size and modification time have not changed for
``settle_s``. Each file is identified by name and content hash (:class:`DataFileRef`):
the ledger skips what was taken (a renamed copy included), and a file whose content
changes after a failed read (it was still being copied) is yielded again.

``history`` and ``incoming`` may be directories or fsspec URLs (``s3://bucket/prefix/``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from trainer.data import storage
from trainer.data.ledger import DataFileRef, DataLedger
from trainer.data.pipeline import expand_inputs, is_data_file_name


def follow_data_files(history: str | os.PathLike | None, incoming: str | os.PathLike | None, ledger: DataLedger,
                      drain: bool, poll_s: float = 0.2, idle_timeout_s: float | None = None,
                      settle_s: float | None = None, stop=None) -> Iterator[DataFileRef]:
    """Yield DataFileRefs in name order, each once: first ``history``, then ``incoming`` as they land.

    New files in ``incoming`` are noticed within ``poll_s`` (plus ``settle_s``, default
    ``poll_s``: a file must keep its size for that long). With ``drain`` the iterator ends
    once every settled data file present has been yielded; otherwise it waits for more
    (until ``idle_timeout_s`` without a new or changing data file, if given, or until
    ``stop()`` returns true). The consumer records each file in ``ledger`` (complete only if it
    was read to its end).
    """
    yielded: set[str] = set()
    if history is not None:
        for path in expand_inputs([history]):
            ref = DataFileRef(storage.base_name(str(path)), storage.sha256_of(path), str(path))
            if not ledger.is_complete(ref) and ref.sha256 not in yielded:
                yielded.add(ref.sha256)
                yield ref
    if incoming is None:
        return
    settle = poll_s if settle_s is None else settle_s
    seen: dict[str, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen with them)
    hashes: dict[tuple[str, int, float], str] = {}
    idle_since = time.monotonic()
    while True:
        now = time.monotonic()
        files = sorted((f for f in storage.list_files(incoming) if is_data_file_name(f.name)), key=lambda f: f.name)
        fresh, waiting = [], False
        for f in files:
            size, mtime, since = seen.get(f.path, (-1, -1.0, now))
            if (size, mtime) != (f.size, f.mtime):
                seen[f.path] = (f.size, f.mtime, now)
                since = now
                idle_since = now  # a file appearing or growing is activity, not idleness
            key = (f.path, f.size, f.mtime)
            if key in hashes and (hashes[key] in yielded or ledger.is_complete(DataFileRef(f.name, hashes[key], f.path))):
                continue
            quiet = now - since if not f.mtime else max(now - since, time.time() - f.mtime)
            if quiet < settle or (f.size == 0 and quiet < max(settle, 1.0)):
                waiting = True  # still being written (or just appeared): keep name order, wait for it
                break
            if key not in hashes:
                hashes[key] = storage.sha256_of(f.path)
            ref = DataFileRef(f.name, hashes[key], f.path)
            if ref.sha256 in yielded or ledger.is_complete(ref):
                continue
            fresh.append(ref)
        for ref in fresh:
            yielded.add(ref.sha256)
            yield ref
            idle_since = time.monotonic()
        if not fresh:
            if drain and not waiting:
                return
            if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                return
            if stop is not None and stop():
                return
            time.sleep(poll_s)
