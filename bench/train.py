"""Training throughput: PS mode on Ray Train (1 and 2 workers, 2 PS shards) vs the local trainer.

The local baseline and the two PS runs alternate over ``--rounds`` rounds (which side goes first
alternates too): each round gives its own ratios, the result reports their median and range and
the load average (``os.getloadavg()``) around each round, since one run of either side moves with
the machine's background load (examples/s of training time, startup excluded).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from trainer.data.fetch import SHARED_TAOBAO

DESCRIPTION = ("training examples/s in PS mode (Ray Train, 1 and 2 workers, 2 PS shards) as a ratio against the "
               "local reference trainer (one process, FBGEMM TBE, no PS) on the same model and data in the same run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, default=SHARED_TAOBAO, help="behaviour log (default: the shared Taobao log)")
    p.add_argument("--spec", default="taobao")
    p.add_argument("--rows", type=int, default=48_000, help="use the first ROWS rows of the log")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--every", default="5m", help="data file window")
    p.add_argument("--mode", choices=["sync", "async"], default="sync", help="PS consistency mode")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds local <-> PS (default 3)")
    p.add_argument("--workers", default="1,2", help="PS worker counts to run each round (default 1,2)")


def _head(src: Path, rows: int, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= rows:
                break
            fout.write(line)


def run(args: argparse.Namespace) -> dict:
    import os
    import statistics

    import torch

    from cluster.errors import UserError
    from cluster.ray_runtime import ensure_ray
    from trainer.config import ModelConfig, PSOptions, TrainConfig
    from trainer.data import Validator, load_spec, read_data_file
    from trainer.data.split import parse_duration, split_into_files
    from trainer.local import LocalTrainer
    from trainer.run import run_ps_training

    if not args.input.exists():
        raise UserError(f"{args.input} not found: pass --input, or see ../shared/data/README.md")
    try:
        workers = [int(w) for w in str(args.workers).split(",")]
    except ValueError:
        raise UserError(f"--workers {args.workers!r}: expected worker counts like 1,2") from None
    if args.rounds < 1 or not workers or min(workers) < 1:
        raise UserError("--rounds and every --workers count must be >= 1")
    spec = load_spec(args.spec)
    mcfg, tcfg = ModelConfig(), TrainConfig(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-train-") as tmp:
        tmp = Path(tmp)
        _head(args.input, args.rows, tmp / "head.csv")
        files = split_into_files([tmp / "head.csv"], Validator(spec), parse_duration(args.every), tmp / "data",
                                 progress=False).files
        torch.set_num_threads(1)  # as each Ray Train worker does
        v = Validator(spec)
        batches = [read_data_file(f, v) for f in files]
        ensure_ray()

        def local_rate() -> tuple[float, int]:
            local = LocalTrainer(spec, mcfg, tcfg)
            seconds = examples = 0
            for b in batches:
                info = local.train(b)
                seconds += info["seconds"]
                examples += info["examples"]
            return examples / seconds, examples

        def ps_rate(w: int, r: int) -> float:
            result, _ = run_ps_training(spec, mcfg, tcfg, tmp / f"run{w}-{r}", history=tmp / "data", num_workers=w,
                                        versions=False, ps=PSOptions(num_shards=2, mode=args.mode))
            return (sum(m["examples_trained"] for m in result.metrics)
                    / sum(m["train_seconds"] for m in result.metrics))

        rounds = []
        for r in range(args.rounds):
            load_start = os.getloadavg()
            if r % 2 == 0:
                local, examples = local_rate()
                ps = {w: ps_rate(w, r) for w in workers}
            else:
                ps = {w: ps_rate(w, r) for w in workers}
                local, examples = local_rate()
            rounds.append({"local": local, "ps": ps, "load_start": load_start, "load_end": os.getloadavg()})
    med = statistics.median
    out = {
        "rows": examples,
        "files": len(files),
        "batch_size": args.batch_size,
        "mode": args.mode,
        "rounds": f"{args.rounds}, alternating (local first on even rounds)",
        "local_examples_per_s": {"median": med([r["local"] for r in rounds]),
                                 "min": min(r["local"] for r in rounds), "max": max(r["local"] for r in rounds)},
    }
    for w in workers:
        ratios = [r["ps"][w] / r["local"] for r in rounds]
        rates = [r["ps"][w] for r in rounds]
        out[f"ps_examples_per_s_{w}_workers"] = {"median": med(rates), "min": min(rates), "max": max(rates)}
        out[f"ratio_vs_local_{w}_workers"] = {"median": med(ratios), "min": min(ratios), "max": max(ratios)}
    out["load_average_1_5_15"] = [{"start": [round(x, 2) for x in r["load_start"]],
                                   "end": [round(x, 2) for x in r["load_end"]]} for r in rounds]
    return out
