"""Split validated events into time-ordered data files: one per time window, or N rows each.

Input order does not matter: a log exported user by user (each user's events in time
order, users one after another) is sorted by time first, in bounded memory. Good rows
are gathered in runs of ``memory_rows``; when the input holds more, each run is sorted
and spilled to a temporary Parquet file and the runs are merged (a k-way merge that
holds one small batch per run). A spec with ``time: row_order`` is cut by count
(``rows_per_file``) in row order, without sorting.

File names sort in time order:

* by window: ``part-20171126T010000Z.parquet`` (the window's UTC start);
* by count with a time column: ``part-20171126T010000Z-000003.parquet`` (first event, sequence);
* by count in row order: ``part-000003.parquet``.

Files are written under a temporary name and renamed, so a follower never sees a
half-written data file; an existing data file is never overwritten (data files are
immutable). Data files carry the canonical typed columns, joined side-table columns
included, so they are read back with the same spec; a missing field of an optional column
is stored as a null (not its fill), so reading the file back sees it missing, as reading the
input did (a ``transform: missing`` flag such as Criteo's ``i1_missing`` keeps its value).
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.data.batch import EventBatch
from trainer.data.pipeline import iter_batches
from trainer.data.validate import Validator

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_MEMORY_ROWS = 2_000_000
MERGE_BATCH = 65_536


def parse_duration(text: str) -> int:
    """'5m' -> 300 seconds (units s, m, h, d)."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"duration {text!r} must look like 30s, 5m, 1h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _stamp(ts: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


def data_file_name(window_start: int) -> str:
    return "part-" + _stamp(window_start) + ".parquet"


@dataclasses.dataclass(frozen=True)
class SplitResult:
    files: tuple[Path, ...]
    rows: tuple[int, ...]
    spilled_runs: int = 0  # sorted runs written to disk (0: the input fit in memory)


def stored_table(batch: EventBatch) -> pa.Table:
    """``batch.table`` as a data file stores it: each missing field of an optional column a null
    (``batch.missing``), which the reader takes as missing again (and fills as it did the first time)."""
    table = batch.table
    for name, mask in batch.missing.items():
        i = table.schema.get_field_index(name)
        col = table.column(i).combine_chunks()
        table = table.set_column(i, name, pc.if_else(pa.array(mask), pa.scalar(None, col.type), col))
    return table


def write_data_file_atomic(table: pa.Table, path: Path) -> None:
    if path.exists():
        raise FileExistsError(
            f"data file {path} already exists; data files are immutable: split into an empty directory"
        )
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)


def _times(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column)
    if pa.types.is_timestamp(col.type):
        col = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64())
    return col.to_numpy()


def sorted_by_time(
    tables: Iterable[pa.Table], column: str, memory_rows: int, tmp_dir: str | None, runs_out: list | None = None
) -> Iterator[pa.Table]:
    """The rows of ``tables`` in (stable) time order, as tables, holding at most about
    ``memory_rows`` rows (plus one merge batch per spilled run) in memory."""
    buffer: list[pa.Table] = []
    held = 0
    with tempfile.TemporaryDirectory(prefix="freshrec-split-", dir=tmp_dir) as tmp:
        runs: list[Path] = []

        def spill() -> None:
            nonlocal buffer, held
            table = _sort(pa.concat_tables(buffer), column)
            path = Path(tmp) / f"run-{len(runs):05d}.parquet"
            pq.write_table(table, path, row_group_size=MERGE_BATCH)
            runs.append(path)
            buffer, held = [], 0

        for t in tables:
            while t.num_rows:
                piece = t.slice(0, memory_rows - held)
                t = t.slice(piece.num_rows)
                buffer.append(piece)
                held += piece.num_rows
                if held >= memory_rows:
                    spill()
        if not runs:
            if buffer:
                yield _sort(pa.concat_tables(buffer), column)
            return
        if buffer:
            spill()
        if runs_out is not None:
            runs_out.append(len(runs))
        yield from _merge(runs, column)


def _sort(table: pa.Table, column: str) -> pa.Table:
    return table.take(pa.array(np.argsort(_times(table, column), kind="stable")))


def _merge(runs: list[Path], column: str) -> Iterator[pa.Table]:
    """k-way merge of sorted runs: emit every buffered row at or before the smallest
    buffered maximum (no later row of any run can come before it), refill what emptied."""
    readers = [pq.ParquetFile(p).iter_batches(batch_size=MERGE_BATCH) for p in runs]
    buffers: dict[int, pa.Table] = {}

    def refill(i: int) -> None:
        for rb in readers[i]:
            if rb.num_rows:
                buffers[i] = pa.Table.from_batches([rb])
                return
        buffers.pop(i, None)

    for i in range(len(readers)):
        refill(i)
    while buffers:
        order = sorted(buffers)  # run index: ties keep the earlier run first (stable)
        frontier = min(int(_times(buffers[i], column)[-1]) for i in order)
        out, heads = [], []
        for i in order:
            ts = _times(buffers[i], column)
            cut = int(np.searchsorted(ts, frontier, side="right"))
            if cut:
                out.append(buffers[i].slice(0, cut))
            rest = buffers[i].slice(cut)
            if rest.num_rows:
                buffers[i] = rest
            else:
                heads.append(i)
        for i in heads:
            refill(i)
        if out:
            yield _sort(pa.concat_tables(out), column)


def split_into_files(
    inputs: Iterable,
    validator: Validator,
    every_s: int | None,
    out_dir: str | Path,
    progress: bool = True,
    rows_per_file: int | None = None,
    memory_rows: int = DEFAULT_MEMORY_ROWS,
    tmp_dir: str | None = None,
    max_dead_share: float | None = None,
) -> SplitResult:
    """Validate ``inputs`` and write their good rows as data files (see the module docstring).

    Give ``every_s`` (window length) or ``rows_per_file``; a ``time: row_order`` spec needs
    ``rows_per_file``. With ``max_dead_share`` a file with more of its rows dead-lettered
    stops the split with a FileQualityError.
    """
    spec = validator.spec
    if (every_s is None) == (rows_per_file is None):
        raise ValueError("give either a window length (--every) or a row count (--rows), not both")
    if spec.row_order and every_s is not None:
        raise ValueError(f"spec {spec.name} has no time column (time: row_order): cut it by count with --rows N")
    if rows_per_file is not None and rows_per_file < 1:
        raise ValueError("--rows must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    rows: list[int] = []

    def write(table: pa.Table, name: str) -> None:
        path = out / name
        write_data_file_atomic(table, path)
        files.append(path)
        rows.append(table.num_rows)

    tables = (
        stored_table(b) for b in iter_batches(inputs, validator, progress=progress, max_dead_share=max_dead_share)
    )
    runs: list[int] = []
    if spec.row_order:
        stream: Iterator[pa.Table] = tables
    else:
        stream = sorted_by_time(tables, spec.time_column, memory_rows, tmp_dir, runs)
    if rows_per_file is not None:
        for seq, table in enumerate(_by_count(stream, rows_per_file)):
            if spec.row_order:
                write(table, f"part-{seq:06d}.parquet")
            else:
                write(table, f"part-{_stamp(int(_times(table, spec.time_column)[0]))}-{seq:06d}.parquet")
    else:
        for start, table in _by_window(stream, spec.time_column, every_s):
            write(table, data_file_name(start))
    return SplitResult(tuple(files), tuple(rows), runs[0] if runs else 0)


def _by_count(stream: Iterator[pa.Table], n: int) -> Iterator[pa.Table]:
    held: list[pa.Table] = []
    count = 0
    for t in stream:
        while t.num_rows:
            take = min(n - count, t.num_rows)
            held.append(t.slice(0, take))
            count += take
            t = t.slice(take)
            if count == n:
                yield pa.concat_tables(held).combine_chunks()
                held, count = [], 0
    if count:
        yield pa.concat_tables(held).combine_chunks()


def _by_window(stream: Iterator[pa.Table], column: str, every_s: int) -> Iterator[tuple[int, pa.Table]]:
    """(window start, rows) for a time-sorted stream; a window is complete when a later one starts."""
    current, held = None, []
    for t in stream:
        win = _times(t, column) // every_s
        bounds = np.flatnonzero(np.diff(win)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(win)]])):
            w = int(win[lo])
            if current is not None and w != current:
                yield current * every_s, pa.concat_tables(held).combine_chunks()
                held = []
            current = w
            held.append(t.slice(int(lo), int(hi - lo)))
    if held:
        yield current * every_s, pa.concat_tables(held).combine_chunks()
