"""Quality benchmark: incremental training vs a full retrain, replaying a real log in time order.

At each evaluation point t (after a warm-up), both models score shard t, unseen by either:
the incremental model has trained on shards < t one pass each in time order; the full
retrain is a fresh model trained on shards < t, ``--epochs`` shuffled passes. Reported:
mean AUC / log-loss over the points and ``compute_ratio`` = examples the incremental model
trained on (each shard up to the last point once) / examples all the full retrains
processed (see trainer/quality.py and docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainer.data.fetch import SHARED_ML100K as ML100K
from trainer.data.fetch import SHARED_TAOBAO as TAOBAO

DESCRIPTION = ("AUC of incremental training (each data file once, in time order) vs a full retrain from scratch "
               "at each point, on real data; compute_ratio = incremental / full-retrain examples")

# Per data set, tuned for the best full-retrain AUC and used by both sides alike (the sweep is
# in docs/benchmarks.md, "Quality" section). epochs = full-retrain epochs k: a second pass over
# the Taobao log overfits the id embeddings (log-loss 0.34 -> 0.52); MovieLens gains a little.
DEFAULTS = {
    "taobao": dict(batch_size=256, sparse_lr=0.03, dense_lr=0.003, init_scale=0.01, epochs=1),
    "movielens": dict(batch_size=256, sparse_lr=0.1, dense_lr=0.01, init_scale=0.01, epochs=2),
}
DEFAULTS["movielens_genres"] = DEFAULTS["movielens"]
# the same data and protocol with dynamic features (counters, rates, behaviour sequences; docs/features.md)
DEFAULTS["taobao_dynamic"] = DEFAULTS["taobao"]
DEFAULTS["movielens_dynamic"] = DEFAULTS["movielens"]
# preset -> (spec, shared input, how it is cut into data files)
PRESETS = {"taobao": ("taobao", TAOBAO, "every"), "movielens": ("movielens100k", ML100K, "files"),
           "movielens_genres": ("movielens100k_genres", ML100K, "files"),
           "taobao_dynamic": ("taobao_dynamic", TAOBAO, "every"),
           "movielens_dynamic": ("movielens100k_dynamic", ML100K, "files")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", "--preset", choices=tuple(PRESETS), default="taobao",
                   help="a preset: its spec, the shared data file, how it is cut, tuned learning rates")
    p.add_argument("--spec", default=None, help="any feature spec (YAML or built-in name); with --data")
    p.add_argument("--data", nargs="+", default=None, metavar="PATH",
                   help="the log(s) to replay with --spec (default: the preset's shared file)")
    p.add_argument("--input", type=Path, default=None, help=argparse.SUPPRESS)  # older name of --data
    p.add_argument("--points", type=int, default=0, help="evaluation points spread over the log (0: every data file)")
    p.add_argument("--warmup", type=int, default=4, help="data files before the first point")
    p.add_argument("--every", default=None, help="cut into time windows of this length (Taobao preset: 5m)")
    p.add_argument("--files", type=int, default=None,
                   help="cut into this many equal-count data files in time order (MovieLens presets: 20)")
    p.add_argument("--epochs", type=int, default=None, help="full-retrain epochs k (default: per data set)")
    p.add_argument("--interaction", choices=("dcn", "dot"), default="dcn")
    p.add_argument("--batch-size", type=int, default=None, help="default: per data set (see DEFAULTS)")
    p.add_argument("--sparse-lr", type=float, default=None, help="row-wise Adagrad lr; default: per data set")
    p.add_argument("--dense-lr", type=float, default=None, help="dense Adagrad lr; default: per data set")
    p.add_argument("--init-scale", type=float, default=None, help="new rows in +-init_scale; default: per data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise from neighbours)")
    p.add_argument("--plot-dir", type=Path, default=None, help="write quality_<dataset>.png here")
    p.add_argument("--per-point", action="store_true", help="include the per-point table in the result")
    p.add_argument("--strategies", action="store_true",
                   help="also replay periodic (window 4) and fusion (lambda 0.5) and report their mean AUC")


def run(args: argparse.Namespace) -> dict:
    import torch

    from common.config import ConfigError
    from cluster.errors import UserError
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import load_spec
    from trainer.data.split import parse_duration
    from trainer.quality import choose_points, log_files, run_quality

    torch.set_num_threads(args.threads)
    preset_spec, preset_input, preset_cut = PRESETS[args.dataset]
    if args.data and not args.spec:
        raise UserError("--data needs --spec (the feature spec of that data)")
    inputs = args.data or [args.input or preset_input]
    for path in inputs:
        if "://" not in str(path) and not Path(path).exists():
            raise UserError(f"{path} not found: pass --data, or see ../shared/data/README.md")
    if args.every and args.files:
        raise UserError("give --every or --files, not both")
    try:
        spec = load_spec(args.spec or preset_spec)
        every = parse_duration(args.every) if args.every else None
    except (ConfigError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    n_files = args.files
    if every is None and n_files is None:
        every, n_files = (parse_duration("5m"), None) if preset_cut == "every" and not args.spec else (None, 20)
    t0 = time.perf_counter()
    shards, names = log_files(spec, inputs, every_s=every, n_files=n_files)
    points = choose_points([len(s) for s in shards], args.warmup, args.points)
    if not points:
        raise UserError(f"no evaluation point: {len(shards)} data files and --warmup {args.warmup}")
    d = DEFAULTS[args.dataset] if not args.spec else DEFAULTS["taobao"]

    def pick(name):
        value = getattr(args, name)
        return d[name] if value is None else value

    train = TrainConfig(batch_size=pick("batch_size"), sparse_lr=pick("sparse_lr"), dense_lr=pick("dense_lr"),
                        init_scale=pick("init_scale"), seed=args.seed, epochs_full_retrain=pick("epochs"))
    model = ModelConfig(interaction=args.interaction, bottom_mlp=(16,))
    dataset = spec.name if args.spec else args.dataset
    result = run_quality(dataset, spec, shards, names, model, train, points)
    out = {"dataset": dataset, "spec": spec.name, **result.summary(), "wall_s": time.perf_counter() - t0,
           "config": {k: getattr(train, k) for k in ("batch_size", "sparse_lr", "dense_lr", "init_scale", "seed")}
           | {"interaction": args.interaction,
              "files": f"every {args.every or '5m'}" if every else f"{n_files} equal-count"}}
    if spec.dynamic is not None:  # the state after the whole log: tracked ids and bytes per id, per key
        from trainer.features import DynamicFeatures

        dyn = DynamicFeatures(spec)
        for s in shards:
            dyn.process(s)
        out["feature_state"] = dyn.stats()
    if args.strategies:
        from trainer.quality import run_strategy
        from trainer.strategies import FusionPolicy, OnlinePolicy, PeriodicPolicy

        policies = {"online": OnlinePolicy(), "periodic_w4": PeriodicPolicy(window=4),
                    "fusion_0.5": FusionPolicy(0.5), "fusion_0.9": FusionPolicy(0.9)}
        out["strategies"] = {name: run_strategy(spec, shards, model, train, pol, points)
                             for name, pol in policies.items()}
    if args.plot_dir is not None:
        from trainer.report import write_report

        out["plots"] = [str(p) for p in write_report([result], args.plot_dir)]
    if args.per_point:
        out["per_point"] = {
            f"{p.point:02d} {p.file}": {
                "rows": p.examples, "positives": p.positives,
                "auc_inc": round(p.auc_incremental, 4), "auc_full": round(p.auc_full_retrain, 4),
                "logloss_inc": round(p.log_loss_incremental, 4), "logloss_full": round(p.log_loss_full_retrain, 4),
                "inc_examples": p.inc_examples, "full_examples": p.full_examples,
                "inc_s": round(p.inc_seconds, 3), "full_s": round(p.full_seconds, 3),
            } for p in result.points}
    return out
