"""Reader benchmark: validate + featurise rows/s against pyarrow's plain CSV read of the same file."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from trainer.data.fetch import SHARED_TAOBAO

DESCRIPTION = (
    "rows/s of freshrec's read + validate + featurise on the Taobao log, as a ratio against "
    "pyarrow's plain CSV read of the same file in the same run"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, default=SHARED_TAOBAO, help="CSV file (default: the shared Taobao log)")
    p.add_argument("--spec", default="taobao")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each side (median is reported)")


def _freshrec_pass(path: Path, spec) -> int:
    from trainer.data import RunningStats, Validator, iter_batches

    validator = Validator(spec)
    stats = RunningStats(len(spec.dense))
    rows = 0
    for batch in iter_batches([path], validator, progress=False):
        stats.update(batch.dense)
        stats.normalize(batch.dense)
        rows += len(batch)
    return validator.report.rows_in


def _pyarrow_pass(path: Path, spec) -> int:
    import pyarrow.csv as pcsv

    names = None if spec.header else [c.source_name for c in spec.columns]
    table = pcsv.read_csv(path, read_options=pcsv.ReadOptions(column_names=names, use_threads=False))
    return table.num_rows


def run(args: argparse.Namespace) -> dict:
    from common.errors import UserError
    from trainer.data import load_spec

    if not args.input.exists():
        raise UserError(f"{args.input} not found: pass --input, or see ../shared/data/README.md")
    spec = load_spec(args.spec)
    timings: dict[str, list[float]] = {"pyarrow": [], "freshrec": []}
    rows = {}
    _pyarrow_pass(args.input, spec), _freshrec_pass(args.input, spec)  # warm-up (page cache, imports)
    for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
        for name, fn in (("pyarrow", _pyarrow_pass), ("freshrec", _freshrec_pass)):
            t0 = time.perf_counter()
            rows[name] = fn(args.input, spec)
            timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        "input": str(args.input),
        "rows": rows["freshrec"],
        "pyarrow_csv_rows_per_s": rows["pyarrow"] / med["pyarrow"],
        "freshrec_validate_featurise_rows_per_s": rows["freshrec"] / med["freshrec"],
        "ratio_vs_pyarrow_csv": med["pyarrow"] / med["freshrec"],
        "repeats": args.repeats,
    }
