"""``freshrec bench chaos``: the randomized fault harness (FoundationDB-simulation / Jepsen style).

    freshrec bench chaos --seeds 20 --json
    freshrec bench chaos --seeds 1 --first-seed 7 --workers 2 --shards 2 --store s3 --json

Per seed: a dirty stream cut from a real log (:mod:`bench.chaos.streams`), a fault-free reference
``freshrec stream`` over it and a faulted one (:mod:`bench.chaos.harness`), and the invariants
(:mod:`bench.chaos.checker`). Reports seeds passed, faults injected by kind, and for each failing
seed the invariants it broke and a one-line command that reruns it. See docs/chaos.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DESCRIPTION = (
    "randomized fault harness: dirty streams, SIGKILLs, store errors, concurrent gc; invariants "
    "against a fault-free reference run, per seed"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bench.chaos.harness import FAULT_KINDS

    p.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0): seeds N..N+seeds-1")
    p.add_argument("--workers", type=int, choices=[1, 2], default=1)
    p.add_argument("--shards", type=int, choices=[1, 2], default=2)
    p.add_argument("--store", choices=["local", "s3"], default="local", help="s3: moto's server on 127.0.0.1")
    p.add_argument(
        "--anomalies",
        default="-slow_write",
        help="comma list of data anomalies, 'all', 'none', or '-name' to leave one out "
        "(duplicates, late_file, future_ts, dead_rows, in_progress, replaced, slow_write; "
        "default: all but slow_write)",
    )
    p.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma list of fault kinds or 'none' (default: {','.join(FAULT_KINDS)})",
    )
    p.add_argument("--files", type=int, default=6, help="data files per stream (default 6)")
    p.add_argument("--rows-per-file", type=int, default=120)
    p.add_argument("--waves", type=int, default=3, help="deliveries of files (default 3)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep every run's files here (default: a temp dir)")
    p.add_argument(
        "--store-error-rate",
        type=float,
        default=0.01,
        help="store_errors: the share of store calls that fail (default 0.01; writes also get ENOSPC "
        "at half this rate)",
    )
    p.add_argument("--wave-timeout", type=float, default=240.0, help="seconds a wave may take to be consumed")
    p.add_argument(
        "--reference",
        choices=["auto", "inprocess", "stream"],
        default="auto",
        help="the fault-free reference run: a freshrec stream process, or the same worker loop in this process "
        "without Ray (inprocess: one worker, shards in its process, local store); auto: inprocess where it fits",
    )
    p.add_argument(
        "--final-drain",
        choices=["stream", "inprocess"],
        default="stream",
        help="the faulted run's final `stream --drain` (must not change the model): a freshrec stream process "
        "(default) or the worker loop in this process over the same faulty store (one worker, local store)",
    )


def config_from_args(args: argparse.Namespace):
    from bench.chaos.harness import ChaosConfig
    from bench.chaos.streams import Anomalies

    faults = (
        () if args.faults.strip() in ("", "none") else tuple(f.strip() for f in args.faults.split(",") if f.strip())
    )
    return ChaosConfig(
        workers=args.workers,
        shards=args.shards,
        store=args.store,
        anomalies=Anomalies.parse(args.anomalies),
        faults=faults,
        files=args.files,
        rows_per_file=args.rows_per_file,
        waves=args.waves,
        wave_timeout_s=args.wave_timeout,
        store_error_rate=args.store_error_rate,
        enospc_rate=args.store_error_rate / 2,
        reference=args.reference,
        final_drain=args.final_drain,
    )


def run(args: argparse.Namespace) -> dict:
    from bench.chaos.harness import MotoServer, run_seed
    from common.errors import UserError

    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="freshrec-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.monotonic()

    def log(text: str) -> None:
        print(f"[chaos {time.monotonic() - t0:6.0f}s] {text}", file=sys.stderr, flush=True)

    s3_ctx = MotoServer() if cfg.store == "s3" else None
    s3 = s3_ctx.__enter__() if s3_ctx else None
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = run_seed(seed, cfg, work, s3=s3, log=log)
            log(
                f"seed {seed}: {'pass' if r.passed else 'FAIL ' + ', '.join(sorted({v.invariant for v in r.violations}))}"
                f" ({r.seconds:.0f} s)"
            )
            results.append(r)
    finally:
        if s3_ctx:
            s3_ctx.__exit__(None, None, None)
    faults: dict[str, int] = {}
    broken: dict[str, list[int]] = {}
    for r in results:
        for kind, n in r.faults.items():
            faults[kind] = faults.get(kind, 0) + n
        for inv in sorted({v.invariant for v in r.violations}):
            broken.setdefault(inv, []).append(r.seed)
    return {
        "seeds": len(results),
        "passed": sum(r.passed for r in results),
        "config": {
            "workers": cfg.workers,
            "shards": cfg.shards,
            "store": cfg.store,
            "anomalies": cfg.anomalies.names(),
            "faults": list(cfg.faults),
            "files": cfg.files,
            "rows_per_file": cfg.rows_per_file,
            "waves": cfg.waves,
            "reference": cfg.reference,
            "final_drain": cfg.final_drain,
        },
        "faults_injected": dict(sorted(faults.items())),
        "broken_invariants": broken,
        "failures": [r.as_dict() for r in results if not r.passed],
        "passes": [r.seed for r in results if r.passed],
        "work_dir": str(work),
        "seconds": round(time.monotonic() - t0, 1),
    }
