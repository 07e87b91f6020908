"""``freshrec train`` (cold start), ``freshrec stream`` (incremental), ``freshrec report`` (plots)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.errors import UserError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="feature spec: a YAML file or a built-in name (taobao, movielens100k)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/latest"), help="metrics, ledger, dead letters, dense params")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (gloo DDP on CPU)")
    p.add_argument("--ps-shards", type=int, default=2, help="parameter-server shard actors")
    p.add_argument("--mode", choices=["sync", "async"], default="sync", help="PS consistency (sync: deterministic)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategy", choices=["online", "periodic", "fusion"], default="online",
                   help="online: each shard once; periodic: the last --window shards every --period shards; "
                        "fusion: online, then dense theta = lambda*new + (1-lambda)*prev")
    p.add_argument("--window", type=int, default=4, help="periodic: shards per update")
    p.add_argument("--period", type=int, default=1, help="periodic: update every N shards")
    p.add_argument("--fusion-lambda", type=float, default=0.5, help="fusion: weight of the new dense params")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local Ray)")


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="cold start: train on a directory of history shards (PS mode, Ray Train)",
                       description="Train on every shard of --shards in name (time) order, scoring each shard before "
                                   "training on it (progressive validation). Prints one line per shard.")
    t.add_argument("--shards", type=Path, required=True, help="directory of shards (freshrec data split)")
    _common(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("stream", help="incremental: follow a directory of incoming shards, each consumed once, in order",
                       description="Optionally cold-start on --history, then follow --incoming: a new shard is picked up "
                                   "within a second of landing, trained on once, and recorded in the run's ledger. "
                                   "Runs until stopped, or until the directory is drained with --drain.")
    s.add_argument("--incoming", type=Path, required=True)
    s.add_argument("--history", type=Path, default=None)
    s.add_argument("--drain", action="store_true", help="stop once every shard present has been consumed")
    s.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a new shard")
    _common(s)
    s.set_defaults(func=_stream)

    r = sub.add_parser("report", help="write PNG plots (AUC over time, throughput) of a run",
                       description="Reads RUN_DIR/metrics.jsonl and writes auc.png and throughput.png.")
    r.add_argument("--run-dir", type=Path, default=Path("runs/latest"))
    r.add_argument("--out", type=Path, default=None, help="output directory (default: the run directory)")
    r.set_defaults(func=_report)


def _configs(args):
    from cluster.config import ConfigError
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import load_spec

    try:
        train = TrainConfig(batch_size=args.batch_size, seed=args.seed, strategy=args.strategy, window=args.window,
                            period=args.period, fusion_lambda=args.fusion_lambda)
        return load_spec(args.spec), ModelConfig(), train
    except ConfigError as exc:
        raise UserError(str(exc)) from exc


def run_and_summarise(args, history: Path | None, incoming: Path | None, drain: bool, idle_timeout=None) -> int:
    from cluster.config import RayConfig
    from cluster.ray_runtime import ensure_ray
    from trainer.ps_trainer import run_ps_training
    from trainer.report import table_header, table_row

    for d in (history, incoming):
        if d is not None and not d.is_dir():
            raise UserError(f"{d} is not a directory of shards (make one with: freshrec data split ... --out {d})")
    spec, mcfg, tcfg = _configs(args)
    ensure_ray(RayConfig(address=args.address))
    print(f"parameter server: {args.ps_shards} shard actors ({args.mode}); Ray Train: {args.workers} worker(s)")
    print(table_header(), flush=True)
    result, _ = run_ps_training(spec, mcfg, tcfg, args.run_dir, history=history, incoming=incoming, drain=drain,
                                num_workers=args.workers, num_shards=args.ps_shards, mode=args.mode,
                                idle_timeout_s=idle_timeout, on_shard=lambda i, m: print(table_row(i, m), flush=True))
    if not result.metrics:
        print(f"no shards found in {history or ''} {incoming or ''}")
        return 1
    last = result.metrics[-1]
    print(f"{result.shards} shards, {result.steps} steps in {result.seconds:.1f} s; cumulative progressive AUC "
          f"{last['cumulative_auc']:.4f}; run directory {result.run_dir}")
    return 0


def _train(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.shards, None, drain=True)


def _stream(args: argparse.Namespace) -> int:
    return run_and_summarise(args, args.history, args.incoming, drain=args.drain, idle_timeout=args.idle_timeout)


def _report(args: argparse.Namespace) -> int:
    from trainer.report import load_metrics, plot_run

    try:
        metrics = load_metrics(args.run_dir)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    for path in plot_run(metrics, args.out or args.run_dir):
        print(path)
    return 0
