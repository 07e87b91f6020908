"""Dynamic-feature throughput: rows/s of computing a spec's dynamic features (events in time order,
each from strictly earlier events, and the state moved past them) against the reader's rows/s
(read + validate + featurise) on the same log in the same run, alternating rounds."""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from trainer.data.fetch import SHARED_TAOBAO

DESCRIPTION = (
    "rows/s of dynamic-feature computation (taobao_dynamic: counters, rates, sequences; state "
    "updated file by file) as a ratio against the reader's rows/s on the same log, same run"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, default=SHARED_TAOBAO, help="the log (default: the shared Taobao log)")
    p.add_argument("--spec", default="taobao_dynamic", help="a spec with a dynamic section")
    p.add_argument("--every", default="5m", help="data files of this time window (features move file by file)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of each side (median is reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (numpy is what runs here)")


def _reader_pass(path: Path, spec) -> int:
    from trainer.data import RunningStats, Validator, iter_batches

    validator = Validator(spec)
    stats = RunningStats(len(spec.dense))
    for batch in iter_batches([path], validator, progress=False):
        stats.update(batch.dense)
        stats.normalize(batch.dense)
    return validator.report.rows_in


def _features_pass(files, spec) -> tuple[int, dict]:
    from trainer.features import DynamicFeatures

    dyn = DynamicFeatures(spec)
    for f in files:
        dyn.process(f)
    return sum(len(f) for f in files), dyn.stats()


def run(args: argparse.Namespace) -> dict:
    import torch

    from common.config import ConfigError
    from common.errors import UserError
    from trainer.data import load_spec
    from trainer.data.split import parse_duration
    from trainer.quality import log_files

    torch.set_num_threads(args.threads)
    if not args.input.exists():
        raise UserError(f"{args.input} not found: pass --input, or see ../shared/data/README.md")
    if args.rounds < 1:
        raise UserError("--rounds must be >= 1")
    try:
        spec = load_spec(args.spec)
        every = parse_duration(args.every)
    except (ConfigError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if spec.dynamic is None:
        raise UserError(f"spec {spec.name} declares no dynamic features: use taobao_dynamic or add a dynamic section")
    files, _ = log_files(spec, [args.input], every_s=every)
    _reader_pass(args.input, spec), _features_pass(files, spec)  # warm-up
    secs: dict[str, list[float]] = {"reader": [], "features": []}
    load = [os.getloadavg()[0]]
    rows = {}
    for _ in range(args.rounds):  # alternating, so drift hits both sides alike
        t0 = time.perf_counter()
        rows["reader"] = _reader_pass(args.input, spec)
        secs["reader"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rows["features"], state = _features_pass(files, spec)
        secs["features"].append(time.perf_counter() - t0)
        load.append(os.getloadavg()[0])
    ratios = [r / f for r, f in zip(secs["reader"], secs["features"])]  # features rows/s over reader rows/s
    return {
        "input": str(args.input),
        "spec": spec.name,
        "files": len(files),
        "rows": rows["features"],
        "reader_rows_per_s": rows["reader"] / statistics.median(secs["reader"]),
        "features_rows_per_s": rows["features"] / statistics.median(secs["features"]),
        "ratio_features_vs_reader": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "rounds": args.rounds,
        "load_avg_1m": [round(x, 2) for x in (min(load), max(load))],
        "feature_state": state,
    }
