"""Bytes a training rank receives per data file: today's broadcast of the whole file vs. the columns of only the
rows that rank trains (issue 21 item 3, docs/operations.md "Multi-node"). Exact byte counts, no timing.

    python -m bench.broadcast_bytes --window 600 --workers 2 [--data FILE.csv] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np

from trainer.data.fetch import SHARED_TAOBAO


def measure(src: Path, window_s: int, workers: int, batch_size: int, spec_name: str = "taobao") -> dict:
    from trainer.data import Validator, load_spec, read_data_file, storage
    from trainer.data.follow import read_once
    from trainer.data.split import split_into_files

    spec = load_spec(spec_name)
    raw = bcast = cols = rows = 0
    with tempfile.TemporaryDirectory() as tmp:
        files = list(split_into_files([src], Validator(spec), window_s, Path(tmp) / "data", progress=False).files)
        for f in files:
            ref = read_once(storage.stat(f), 1)
            batch = read_data_file(ref, Validator(spec, stream=True))
            n = len(batch)
            parts = [
                np.array_split(np.arange(lo, min(lo + batch_size, n)), workers)[-1] for lo in range(0, n, batch_size)
            ]
            part = batch.take(np.concatenate(parts) if parts else np.zeros(0, np.int64))  # the last rank's rows
            arrays = [part.ts, part.label, part.dense, *part.sparse.values(), *part.lengths.values()]
            raw += ref.size
            bcast += len(pickle.dumps(ref, protocol=pickle.HIGHEST_PROTOCOL))  # what broadcast_object_list sends
            cols += sum(a.nbytes for a in arrays)
            rows += n
    k = max(len(files), 1)
    return {
        "data_files": len(files),
        "rows": rows,
        "raw_bytes_per_file": raw / k,
        "broadcast_bytes_per_file_per_rank": bcast / k,
        "own_rows_column_bytes_per_file": cols / k,
        "own_rows_over_broadcast": cols / bcast if bcast else float("nan"),
        "raw_bytes_per_row": raw / max(rows, 1),
        "column_bytes_per_own_row": cols / max(rows / workers, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED_TAOBAO, help="a Taobao-format CSV (default: the shared log)")
    p.add_argument("--window", type=int, default=600, help="seconds of events per data file")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.data, args.window, args.workers, args.batch_size), indent=1))


if __name__ == "__main__":
    main()
