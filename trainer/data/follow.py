"""Following a run's data files: history first, then incoming files as they land, each once, in name order.

The writer's contract (docs/data.md): write a data file under an in-progress name and rename it
when complete. In-progress names are never data files: a leading ``.`` or ``_``
(``.part-1.parquet``, ``_part-1.parquet``), a ``.tmp`` or ``.inprogress`` suffix, or
``_COPYING_`` anywhere in the name (``hdfs dfs -put``). As a safety net for writers that copy
in place, an incoming file is taken only once its size and modification time have not changed
for ``settle_s``.

Each file is read ONCE per consumption: the follower reads its bytes, hashes them, and hands
them on in the :class:`DataFileRef` (``ref.data``); the consumer parses those bytes, so the sha
in the ledger is the sha of what was trained, and every Ray Train rank trains the same rows
(rank 0 broadcasts the ref with its bytes). A file is recognised as consumed by (name, size,
mtime) without reading it again (restart in O(new data)); if its size or mtime changed, it is
read and hashed: the same bytes (touched, or a renamed copy) are skipped; other bytes under
the name of a file consumed from the same directory are a file that changed after it was
consumed: the ref is yielded with ``refused="changed"`` (the consumer records it in the ledger
with that status, dead-letters it with reason ``changed after consumption``, counts and logs
it) and it is never trained. A file named before files already consumed (a late file) is
taken like any other; its rows are judged by the spec's lateness policy.

``history`` and ``incoming`` may be directories, single files or fsspec URLs (``s3://bucket/prefix/``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator

from trainer.data import storage
from trainer.data.ledger import DataFileRef, DataLedger
from trainer.data.pipeline import is_data_file_name

HISTORY, INCOMING = 0, 1


@dataclasses.dataclass(frozen=True)
class IdleTick:
    """Yielded (with ``idle_tick_s``) while the follower waits for incoming files: the consumer may do its idle
    work (the version keeper cuts again a version whose write failed, so its files do not wait for the next one)."""

    idle_s: float


def read_once(info: storage.FileInfo, source: int) -> DataFileRef:
    """The file's bytes (read once), their sha256, and the size and mtime they were read under."""
    with storage.open_binary(info.path) as fh:
        data = fh.read()
    return DataFileRef(info.name, hashlib.sha256(data).hexdigest(), info.path, len(data), info.mtime, data, source)


def _listing(where: str | os.PathLike) -> list[storage.FileInfo]:
    s = str(where)
    if storage.is_dir(s):
        files = [f for f in storage.list_files(s) if is_data_file_name(f.name)]
    elif storage.exists(s):
        files = [storage.stat(s)]
    else:
        raise FileNotFoundError(f"input {s} does not exist")
    return sorted(files, key=lambda f: f.name)


KEEP_FOLLOW = 256  # cache entries the follower keeps before trimming what the ledger already answers
# A local incoming directory: a full poll stats every file and tests it against the ledger; between full polls a poll
# lists names only and stats just the files not yet consumed. Full polls are spaced so that they take at most
# FULL_SCAN_CPU_SHARE of a core (each one's CPU time / the share), at most FULL_SCAN_S apart, and one is always made
# before the follower ends (a drain, a stop, an idle timeout): a small directory is polled in full every time (a
# consumed file rewritten in place is found at the next poll, in name order with the others), a directory of
# thousands of consumed files costs a stat and a ledger test per file only every so often (a rewritten consumed
# file is then found within FULL_SCAN_S).
FULL_SCAN_S = 5.0
FULL_SCAN_CPU_SHARE = 0.02


def _trim(hashes: dict, yielded: set, ledger: DataLedger, listed: set[str]) -> int:
    """Drop what the ledger answers by itself: shas of complete files from ``yielded``, and the cached
    hashes of files the ledger recognises by name, size and mtime or that are no longer listed (a renamed
    copy still listed keeps its hash: it is not read again). Returns the entries left."""
    for sha in [s for s in yielded if ledger.is_complete(DataFileRef("", s, ""))]:
        yielded.discard(sha)
    for key in list(hashes):
        path, size, mtime = key
        known = ledger.by_stat(storage.base_name(path), size, mtime)
        if path not in listed or (known is not None and known.complete):
            del hashes[key]
    return len(hashes) + len(yielded)


def _trim_all(hashes: dict, yielded: set, seen: dict, ledger: DataLedger, files: list) -> int:
    """:func:`_trim`, and ``seen`` forgets files gone from the directory or consumed. Returns the entries left."""
    listed = {f.path for f in files}
    for f, done in zip(files, ledger.consumed_by_stat(files).tolist(), strict=True):
        if done:
            seen.pop(f.path, None)
    for path in [p for p in seen if p not in listed]:
        del seen[path]
    return _trim(hashes, yielded, ledger, listed) + len(seen)


def follow_data_files(
    history: str | os.PathLike | None,
    incoming: str | os.PathLike | None,
    ledger: DataLedger,
    drain: bool,
    poll_s: float = 0.2,
    idle_timeout_s: float | None = None,
    settle_s: float | None = None,
    stop=None,
    idle_tick_s: float | None = None,
) -> Iterator[DataFileRef | IdleTick]:
    """Yield DataFileRefs (with their bytes) in name order, each once: first ``history``, then ``incoming``
    as they land.

    New files in ``incoming`` are noticed within ``poll_s`` (plus ``settle_s``, default
    ``poll_s``: a file must keep its size for that long). With ``drain`` the iterator ends
    once every settled data file present has been yielded; otherwise it waits for more
    (until ``idle_timeout_s`` without a new or changing data file, if given, or until
    ``stop()`` returns true). The consumer records each file in ``ledger`` (complete only if it
    was read to its end; ``ledger.refuse`` for a ref with ``refused`` set). With ``idle_tick_s``, an
    :class:`IdleTick` is yielded every ``idle_tick_s`` while it waits for incoming files.
    """
    # bounded (issue 21): a consumed file is recognised by the ledger, so the caches below drop it (_trim);
    # ``seen`` holds only files listed and not yet consumed
    yielded: set[str] = set()  # sha256 of files yielded and not yet complete in the ledger
    hashes: dict[tuple[str, int, float], str] = {}  # (path, size, mtime) -> sha256 of what was read

    def judge(f: storage.FileInfo, source: int) -> DataFileRef | None:
        known = ledger.by_stat(f.name, f.size, f.mtime)
        if known is not None and known.complete:
            return None  # recognised without reading it
        key = (f.path, f.size, f.mtime)
        if key in hashes and (hashes[key] in yielded or ledger.is_complete(DataFileRef(f.name, hashes[key], f.path))):
            return None
        ref = read_once(f, source)
        hashes[key] = ref.sha256
        if (ref.size, ref.mtime) != (f.size, f.mtime):  # it grew while listed: the bytes read are what counts
            hashes[(f.path, ref.size, ref.mtime)] = ref.sha256
        if ref.sha256 in yielded or ledger.is_complete(ref):
            return None  # the same bytes: touched, or a renamed copy
        yielded.add(ref.sha256)
        if any(e.sha256 != ref.sha256 for e in ledger.consumed(ref.name, source)):
            return dataclasses.replace(ref, data=None, refused="changed")
        return ref

    if history is not None:
        for f in _listing(history):
            ref = judge(f, HISTORY)
            if ref is not None:
                yield ref
    if incoming is None:
        return
    settle = poll_s if settle_s is None else settle_s
    kept = [0]  # entries left by the last trim (the next one runs once the caches doubled past it)
    seen: dict[str, tuple[int, float, float]] = {}  # path -> (size, mtime, first seen with them)
    done_paths: set[str] = set()  # local files found consumed since the last full poll (bounded by the listing)
    last_full, full_every = -float("inf"), 0.0
    idle_since = last_tick = time.monotonic()
    while True:
        now = time.monotonic()
        paths = storage.list_paths(incoming) if now - last_full < full_every else None
        full = paths is None
        if full:
            cpu0 = time.thread_time()
            listed, last_full = storage.list_files(incoming), now
            done_paths.clear()
        else:
            listed = []
            for path in paths:
                if path in done_paths or not is_data_file_name(storage.base_name(path)):
                    continue
                try:
                    listed.append(storage.stat(path))
                except FileNotFoundError:  # gone between the listing and the stat
                    continue
        files = sorted((f for f in listed if is_data_file_name(f.name)), key=lambda f: f.name)
        consumed = ledger.consumed_by_stat(files).tolist()  # every file at once
        if full:  # the next full poll once this one's CPU is FULL_SCAN_CPU_SHARE of the time between them
            full_every = min(FULL_SCAN_S, (time.thread_time() - cpu0) / FULL_SCAN_CPU_SHARE)
        taken, waiting = 0, False
        for f, done in zip(files, consumed, strict=True):
            if done:  # consumed: nothing to watch (``seen`` stays bounded)
                seen.pop(f.path, None)
                done_paths.add(f.path)
                continue
            size, mtime, since = seen.get(f.path, (-1, -1.0, now))
            if (size, mtime) != (f.size, f.mtime):
                seen[f.path] = (f.size, f.mtime, now)
                since = now
                idle_since = now  # a file appearing or growing is activity, not idleness
            key = (f.path, f.size, f.mtime)
            if key in hashes and (
                hashes[key] in yielded or ledger.is_complete(DataFileRef(f.name, hashes[key], f.path))
            ):
                continue
            quiet = now - since if not f.mtime else max(now - since, time.time() - f.mtime)
            if quiet < settle or (f.size == 0 and quiet < max(settle, 1.0)):
                waiting = True  # still being written (or just appeared): keep name order, wait for it
                break
            ref = judge(f, INCOMING)
            if ref is None:
                continue
            taken += 1
            yield ref
            idle_since = time.monotonic()
            if len(hashes) + len(yielded) + len(seen) > 2 * kept[0] + KEEP_FOLLOW:  # a backlog: trim as it goes
                kept[0] = _trim_all(hashes, yielded, seen, ledger, files)
        if len(hashes) + len(yielded) + len(seen) > 2 * kept[0] + KEEP_FOLLOW:
            kept[0] = _trim_all(hashes, yielded, seen, ledger, files)
        if not taken:
            ending = (
                (drain and not waiting)
                or (idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s)
                or (stop is not None and stop())
            )
            if ending:
                if not full:  # the follower ends on a full poll: a consumed file that changed is found first
                    last_full = -float("inf")
                    continue
                return
            if idle_tick_s is not None and time.monotonic() - last_tick >= idle_tick_s:
                last_tick = time.monotonic()
                yield IdleTick(last_tick - idle_since)
            time.sleep(poll_s)
