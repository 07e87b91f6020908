"""Split validated events into time-ordered data files, one per time window.

A data file is named after the UTC start of its window, ``part-20171126T010000Z.parquet``,
so name order is time order. A window is written once no later good row can fall in it
(the validator refuses rows older than the latest by more than ``max_out_of_order_s``),
so memory holds only the open windows. Files are written under a temporary name and
renamed, so a follower never sees a half-written data file; an existing data file is
never overwritten (data files are immutable).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.data.pipeline import iter_batches
from trainer.data.validate import Validator

_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """'5m' -> 300 seconds (units s, m, h, d)."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"duration {text!r} must look like 30s, 5m, 1h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def data_file_name(window_start: int) -> str:
    return "part-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(window_start)) + ".parquet"


@dataclasses.dataclass(frozen=True)
class SplitResult:
    files: tuple[Path, ...]
    rows: tuple[int, ...]


def write_data_file_atomic(table: pa.Table, path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"data file {path} already exists; data files are immutable: split into an empty directory")
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)


def split_into_files(inputs: Iterable[str | Path], validator: Validator, every_s: int, out_dir: str | Path,
                      progress: bool = True) -> SplitResult:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tol = validator.spec.max_out_of_order_s
    open_windows: dict[int, list[pa.Table]] = {}
    files: list[Path] = []
    rows: list[int] = []

    def flush(upto: int | None) -> None:
        for w in sorted(open_windows):
            if upto is not None and (w + 1) * every_s > upto:
                break
            table = pa.concat_tables(open_windows.pop(w))
            order = np.argsort(table.column("ts").to_numpy(), kind="stable")
            path = out / data_file_name(w * every_s)
            write_data_file_atomic(table.take(pa.array(order)), path)
            files.append(path)
            rows.append(table.num_rows)

    for batch in iter_batches(inputs, validator, progress=progress):
        win = batch.ts // every_s
        order = np.argsort(win, kind="stable")
        bounds = np.flatnonzero(np.diff(win[order])) + 1
        for idx in np.split(order, bounds):
            open_windows.setdefault(int(win[idx[0]]), []).append(batch.table.take(pa.array(idx)))
        flush(validator.watermark - tol)
    flush(None)
    return SplitResult(tuple(files), tuple(rows))
