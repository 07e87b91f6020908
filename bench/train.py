"""Training throughput: PS mode on Ray Train (1 and 2 workers, 2 PS shards) vs the local trainer.

Each PS run is a variant ``W:PLACEMENT:DEPTH`` (``--variants``): W Ray Train workers, the shards as
Ray actors (``ray``) or in the one worker's process (``in_process``), and the sync pipeline depth
(0: exact sync; d: step k's push and step k+1+d's pull in one call, rows d updates stale). The
local baseline and the PS variants alternate over ``--rounds`` rounds (which side goes first
alternates too): each round gives its own ratios, the result reports their median and range and
the load average (``os.getloadavg()``) around each round, since one run of either side moves with
the machine's background load (examples/s of training time, startup excluded).

Beside the wall-clock ratios, every run's **CPU-seconds per 1,000 examples summed over every process of
the run** (:mod:`bench.cputree`: this process and its descendants, i.e. the driver, the Ray Train workers,
the shard actors, the raylet, the GCS; startup included; and ``steady_*``: from the first data file done
to the last, start-up and shutdown left out): the local baseline is this process alone
(``time.process_time``), a PS run the whole process tree during ``run_ps_training``. ``cpu_ratio_vs_local``
is a run's CPU per example over the local trainer's in the same round; ``cpu_2w_over_1w`` compares 2
workers with 1 (same placement, depth and shards). ``--shards 1,2,4`` repeats every variant per shard count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from trainer.data.fetch import SHARED_TAOBAO

DESCRIPTION = (
    "training examples/s in PS mode (Ray Train, 1 and 2 workers, 2 PS shards, shard placement and sync "
    "pipeline depth as variants) as a ratio against the local reference trainer (one process, FBGEMM TBE, "
    "no PS) on the same model and data in the same run"
)
DEFAULT_VARIANTS = "1:ray:0,1:in_process:0,1:ray:1,1:in_process:1,2:ray:0,2:ray:1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, default=SHARED_TAOBAO, help="behaviour log (default: the shared Taobao log)")
    p.add_argument("--spec", default="taobao")
    p.add_argument("--rows", type=int, default=48_000, help="use the first ROWS rows of the log")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--every", default="5m", help="data file window")
    p.add_argument("--mode", choices=["sync", "async"], default="sync", help="PS consistency mode")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds local <-> PS (default 3)")
    p.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help="PS runs per round as WORKERS:PLACEMENT:DEPTH, comma-separated (placement ray | in_process, "
        f"in_process with 1 worker only; depth = ps.pipeline_depth, sync only); default {DEFAULT_VARIANTS}",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the PS shards' FBGEMM TBEs live (ps.device; default cpu; cuda: see docs/gpu.md)",
    )
    p.add_argument(
        "--shards", default="2", help="PS shard counts, every variant runs with each (default 2; e.g. 1,2,4)"
    )


def parse_variants(text: str, mode: str) -> list[tuple[int, str, int]]:
    """``"1:ray:0,2:ray:1"`` -> [(1, "ray", 0), (2, "ray", 1)]; UserError on anything else."""
    from common.errors import UserError
    from paramserver.config import MAX_PIPELINE_DEPTH

    out = []
    for item in str(text).split(","):
        parts = item.strip().split(":")
        try:
            w, placement, depth = int(parts[0]), parts[1], int(parts[2])
        except (IndexError, ValueError):
            raise UserError(f"--variants {item!r}: expected WORKERS:PLACEMENT:DEPTH, e.g. 1:in_process:0") from None
        if len(parts) != 3 or w < 1 or placement not in ("ray", "in_process") or not 0 <= depth <= MAX_PIPELINE_DEPTH:
            raise UserError(
                f"--variants {item!r}: workers >= 1, placement ray or in_process, depth 0-{MAX_PIPELINE_DEPTH}"
            )
        if placement == "in_process" and w != 1:
            raise UserError(f"--variants {item!r}: in_process hosts the shards in the one worker's process")
        if depth and mode != "sync":
            raise UserError(f"--variants {item!r}: a pipeline depth is for --mode sync")
        out.append((w, placement, depth))
    return out


def run_key(run_: tuple[int, str, int, int]) -> str:
    """(2, "ray", 0, 4) -> "2_workers_ray_depth_0" plus "_4_shards" when not the default 2 shards."""
    w, placement, depth, n = run_
    return f"{w}_workers_{placement}_depth_{depth}" + ("" if n == 2 else f"_{n}_shards")


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

    from cluster.ray_runtime import ensure_ray
    from common.errors import UserError
    from paramserver.config import PSConfig
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import Validator, load_spec, read_data_file
    from trainer.data.split import parse_duration, split_into_files
    from trainer.local import LocalTrainer
    from trainer.run import TrainJob, run_ps_training

    if not args.input.exists():
        raise UserError(f"{args.input} not found: pass --input, or see ../shared/data/README.md")
    from bench.cputree import ProcessTreeCPU, per_thousand
    from bench.ps import check_device

    check_device(getattr(args, "device", "cpu"))
    variants = parse_variants(args.variants, args.mode)
    try:
        shard_counts = [int(x) for x in str(args.shards).split(",")]
    except ValueError:
        raise UserError(f"--shards {args.shards!r}: expected shard counts like 1,2,4") from None
    if not shard_counts or min(shard_counts) < 1:
        raise UserError("--shards takes shard counts >= 1, e.g. 1,2,4")
    runs = [(w, placement, depth, n) for (w, placement, depth) in variants for n in shard_counts]
    if args.rounds < 1:
        raise UserError("--rounds must be >= 1")
    spec = load_spec(args.spec)
    # one pass over the data (its directory is the history): no cold-start passes at small --rows (the default auto)
    mcfg, tcfg = ModelConfig(), TrainConfig(batch_size=args.batch_size, history_epochs=1)
    with tempfile.TemporaryDirectory(prefix="freshrec-bench-train-") as tmp:
        tmp = Path(tmp)
        _head(args.input, args.rows, tmp / "head.csv")
        files = split_into_files(
            [tmp / "head.csv"], Validator(spec), parse_duration(args.every), tmp / "data", progress=False
        ).files
        torch.set_num_threads(1)  # as each Ray Train worker does
        v = Validator(spec)
        batches = [read_data_file(f, v) for f in files]
        ensure_ray()
        tree = ProcessTreeCPU().start()  # after ensure_ray: the local Ray's processes are our descendants
        cpu: dict = {}  # per round: {"local": CPU-s per 1k examples, run: ...}

        def local_rate(r: int) -> tuple[float, int]:
            c0 = time.process_time()
            local = LocalTrainer(spec, mcfg, tcfg)
            seconds = examples = 0
            c_first = None  # CPU after the first file: the steady-state figure leaves start-up out
            for b in batches:
                info = local.train(b)
                seconds += info["seconds"]
                examples += info["examples"]
                if c_first is None:
                    c_first, e_first = time.process_time(), examples
            c_end = time.process_time()
            cpu.setdefault(r, {})["local"] = per_thousand(c_end - c0, examples)
            cpu[r][("steady", "local")] = per_thousand(c_end - c_first, examples - e_first)
            return examples / seconds, examples

        def ps_rate(run_: tuple[int, str, int, int], r: int) -> float:
            w, placement, depth, n = run_
            c0 = tree.snapshot()
            seen: list[tuple[float, int]] = []  # (tree CPU, examples so far) as each data file is done

            def on_file(i, rec) -> None:
                done = (seen[-1][1] if seen else 0) + int(rec.get("examples_trained", 0))
                seen.append((tree.snapshot(), done))

            result, _ = run_ps_training(
                TrainJob(
                    spec,
                    tmp / f"run{w}-{placement}-{depth}-{n}-{r}",
                    model=mcfg,
                    train=tcfg,
                    history=tmp / "data",
                    num_workers=w,
                    versions=False,
                    ps=PSConfig(
                        num_shards=n,
                        mode=args.mode,
                        placement=placement,
                        pipeline_depth=depth,
                        device=getattr(args, "device", "cpu"),
                    ),
                ),
                on_file=on_file,
            )
            examples = sum(m["examples_trained"] for m in result.metrics)
            cpu.setdefault(r, {})[run_] = per_thousand(tree.snapshot() - c0, examples)
            # from the first data file done to the last but one (the last one's record may be read after the
            # workers' shutdown began): start-up and shutdown left out
            end = seen[-2] if len(seen) >= 3 else seen[-1] if seen else None
            if end is not None and end[1] > seen[0][1]:
                cpu[r][("steady", run_)] = per_thousand(end[0] - seen[0][0], end[1] - seen[0][1])
            return examples / sum(m["train_seconds"] for m in result.metrics)

        rounds = []
        try:
            for r in range(args.rounds):
                load_start = os.getloadavg()
                if r % 2 == 0:
                    local, examples = local_rate(r)
                    ps = {v: ps_rate(v, r) for v in runs}
                else:
                    ps = {v: ps_rate(v, r) for v in runs}
                    local, examples = local_rate(r)
                rounds.append({"local": local, "ps": ps, "load_start": load_start, "load_end": os.getloadavg()})
        finally:
            cpu_by_process = tree.by_name()
            tree.stop()
    med = statistics.median
    out = {
        "rows": examples,
        "files": len(files),
        "batch_size": args.batch_size,
        "mode": args.mode,
        "shards": shard_counts,
        "rounds": f"{args.rounds}, alternating (local first on even rounds)",
        "local_examples_per_s": {
            "median": med([r["local"] for r in rounds]),
            "min": min(r["local"] for r in rounds),
            "max": max(r["local"] for r in rounds),
        },
    }
    out["local_cpu_s_per_1k_examples"] = med([cpu[r]["local"] for r in range(len(rounds))])
    out["local_steady_cpu_s_per_1k_examples"] = med([cpu[r][("steady", "local")] for r in range(len(rounds))])
    for v in runs:
        ratios = [r["ps"][v] / r["local"] for r in rounds]
        rates = [r["ps"][v] for r in rounds]
        cpus = [cpu[i][v] for i in range(len(rounds))]
        cpu_ratios = [cpu[i][v] / cpu[i]["local"] for i in range(len(rounds))]
        out[run_key(v)] = {
            "examples_per_s": med(rates),
            "ratio_vs_local": med(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_s_per_1k_examples": med(cpus),
            "cpu_ratio_vs_local": med(cpu_ratios),
            "cpu_ratio_range": [min(cpu_ratios), max(cpu_ratios)],
        }
        steady = [cpu[i].get(("steady", v)) for i in range(len(rounds))]
        if all(x is not None for x in steady):
            s_ratios = [steady[i] / cpu[i][("steady", "local")] for i in range(len(rounds))]
            out[run_key(v)]["steady_cpu_s_per_1k_examples"] = med(steady)
            out[run_key(v)]["steady_cpu_ratio_vs_local"] = med(s_ratios)
            out[run_key(v)]["steady_cpu_ratio_range"] = [min(s_ratios), max(s_ratios)]
    for w, placement, depth, n in runs:
        one = (1, placement, depth, n)
        if w == 2 and one in runs:
            out[run_key((w, placement, depth, n))]["cpu_2w_over_1w"] = med(
                [cpu[i][(w, placement, depth, n)] / cpu[i][one] for i in range(len(rounds))]
            )
            if all(
                ("steady", one) in cpu[i] and ("steady", (w, placement, depth, n)) in cpu[i] for i in range(len(rounds))
            ):
                out[run_key((w, placement, depth, n))]["steady_cpu_2w_over_1w"] = med(
                    [cpu[i][("steady", (w, placement, depth, n))] / cpu[i][("steady", one)] for i in range(len(rounds))]
                )
    out["cpu_s_by_process"] = {k: round(v, 2) for k, v in list(cpu_by_process.items())[:12]}
    out["load_average_1_5_15"] = [
        {"start": [round(x, 2) for x in r["load_start"]], "end": [round(x, 2) for x in r["load_end"]]} for r in rounds
    ]
    return out
