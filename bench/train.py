"""Training throughput: PS mode on Ray Train (1 and 2 workers, 2 PS shards) vs the local trainer."""

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


def _head(src: Path, rows: int, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= rows:
                break
            fout.write(line)


def run(args: argparse.Namespace) -> dict:
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
    spec = load_spec(args.spec)
    mcfg, tcfg = ModelConfig(), TrainConfig(batch_size=args.batch_size)
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-train-") as tmp:
        tmp = Path(tmp)
        _head(args.input, args.rows, tmp / "head.csv")
        files = split_into_files([tmp / "head.csv"], Validator(spec), parse_duration(args.every), tmp / "data",
                                 progress=False).files
        torch.set_num_threads(1)  # as each Ray Train worker does
        local = LocalTrainer(spec, mcfg, tcfg)
        v = Validator(spec)
        batches = [read_data_file(f, v) for f in files]
        seconds = examples = 0
        for b in batches:
            info = local.train(b)
            seconds += info["seconds"]
            examples += info["examples"]
        local_rate = examples / seconds
        ensure_ray()
        ps_rate = {}
        for workers in (1, 2):
            result, _ = run_ps_training(spec, mcfg, tcfg, tmp / f"run{workers}", history=tmp / "data",
                                        num_workers=workers, ps=PSOptions(num_shards=2, mode=args.mode))
            ps_rate[str(workers)] = (sum(m["examples_trained"] for m in result.metrics)
                                    / sum(m["train_seconds"] for m in result.metrics))
    return {
        "rows": examples,
        "files": len(files),
        "batch_size": args.batch_size,
        "mode": args.mode,
        "local_examples_per_s": local_rate,
        "ps_examples_per_s": ps_rate,
        "ratio_vs_local": ps_rate["1"] / local_rate,
        "ratio_vs_local_2_workers": ps_rate["2"] / local_rate,
    }
