"""Quality benchmark: incremental training vs a full retrain, replaying a real log in time order.

At each evaluation point t (after a warm-up), both models score data file t, unseen by either:
the incremental model has trained on files < t one pass each in time order; the full
retrain is a fresh model trained on files < t, ``--epochs`` shuffled passes. Reported:
mean AUC / log-loss over the points and ``compute_ratio`` = examples the incremental model
trained on (each file up to the last point once) / examples all the full retrains
processed (see trainer/quality.py and docs/benchmarks.md). Beside them, an FTRL-Proximal logistic
regression (trainer/ftrl.py) follows the same files in the same order and is scored at the same
points before it trains on the file: ``auc_lr`` / ``logloss_lr`` (``--no-lr`` skips it).

``--newcomer TRAIN,TEST,WINDOWS[,FILE_ROWS]`` runs issue 24's newcomer case instead (a fresh model and a fresh
FTRL-LR trained on TRAIN rows, scored on the TEST rows after them) on WINDOWS disjoint windows of the log, and
reports the paired AUC difference model - LR with its standard error (``trainer.quality.newcomer_windows``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

from trainer.data.fetch import SHARED_DATA
from trainer.data.fetch import SHARED_ML100K as ML100K
from trainer.data.fetch import SHARED_TAOBAO as TAOBAO

DESCRIPTION = (
    "AUC of incremental training (each data file once, in time order) vs a full retrain from scratch "
    "at each point, and vs an FTRL-Proximal logistic regression fed the same files in the same order, "
    "on real data; compute_ratio = incremental / full-retrain examples"
)

# DeepCTR's public example files (github shenweichen/DeepCTR, examples/), kept beside the checkout like the
# other shared data (../shared/data/deepctr_samples/SOURCE.md says how they were made): 200 Criteo rows in the
# Kaggle layout of the built-in `criteo` spec, 100 Avazu rows (one hour) for the built-in `avazu` spec.
# FRESHREC_DEEPCTR_SAMPLES names another folder (a checkout whose ../shared is elsewhere, e.g. a git worktree).
SAMPLES = Path(os.environ.get("FRESHREC_DEEPCTR_SAMPLES") or SHARED_DATA / "deepctr_samples")
CRITEO_SAMPLE = SAMPLES / "criteo_sample.tsv"
AVAZU_SAMPLE = SAMPLES / "avazu_sample.txt"

# Per data set, tuned for the best full-retrain AUC and used by both sides alike (the sweep is
# in docs/benchmarks.md, "Quality" section). epochs = full-retrain epochs k: a second pass over
# the Taobao log overfits the id embeddings (log-loss 0.34 -> 0.52); MovieLens gains a little.
# lr_*: the FTRL-Proximal baseline's alpha and l1 (beta 1, l2 1), tuned on the same logs (docs/benchmarks.md).
DEFAULTS = {
    "taobao": dict(batch_size=256, sparse_lr=0.03, dense_lr=0.003, init_scale=0.01, epochs=1, lr_alpha=0.05, lr_l1=0.1),
    "movielens": dict(
        batch_size=256, sparse_lr=0.1, dense_lr=0.01, init_scale=0.01, epochs=2, lr_alpha=0.05, lr_l1=0.1
    ),
}
DEFAULTS["movielens_genres"] = DEFAULTS["movielens"]
# the same data and protocol with dynamic features (counters, rates, behaviour sequences; docs/features.md)
DEFAULTS["taobao_dynamic"] = DEFAULTS["taobao"]
DEFAULTS["movielens_dynamic"] = DEFAULTS["movielens"]
DEFAULTS["criteo"] = DEFAULTS["avazu"] = DEFAULTS["taobao"]  # a newcomer's log: the documented defaults
# preset -> (spec, shared input, how it is cut into data files)
PRESETS = {
    "taobao": ("taobao", TAOBAO, "every"),
    "movielens": ("movielens100k", ML100K, "files"),
    "movielens_genres": ("movielens100k_genres", ML100K, "files"),
    "taobao_dynamic": ("taobao_dynamic", TAOBAO, "every"),
    "movielens_dynamic": ("movielens100k_dynamic", ML100K, "files"),
    "criteo": ("criteo", CRITEO_SAMPLE, "files"),
    "avazu": ("avazu", AVAZU_SAMPLE, "files"),
}
# presets on small samples: (equal-count data files, warm-up files, smallest file that is a point)
SMALL = {"criteo": (5, 1, 1), "avazu": (5, 1, 1)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        "--preset",
        choices=(*PRESETS, "all"),
        default="taobao",
        help="a preset: its spec, the shared data file, how it is cut, tuned learning rates; all: "
        + ", ".join(ALL)
        + " in turn (a preset whose shared file is absent is skipped with a line saying how to get it)",
    )
    p.add_argument("--spec", default=None, help="any feature spec (YAML or built-in name); with --data")
    p.add_argument(
        "--data",
        nargs="+",
        default=None,
        metavar="PATH",
        help="the log(s) to replay (default: the preset's shared file); without --spec, the preset's spec, "
        "cut and tuned defaults apply to them",
    )
    p.add_argument("--input", type=Path, default=None, help=argparse.SUPPRESS)  # older name of --data
    p.add_argument("--points", type=int, default=0, help="evaluation points spread over the log (0: every data file)")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="data files before the first point (default 4; 1 on the criteo/avazu samples)",
    )
    p.add_argument("--every", default=None, help="cut into time windows of this length (Taobao preset: 5m)")
    p.add_argument(
        "--files",
        type=int,
        default=None,
        help="cut into this many equal-count data files in time order (MovieLens presets: 20)",
    )
    p.add_argument("--epochs", type=int, default=None, help="full-retrain epochs k (default: per data set)")
    p.add_argument("--interaction", choices=("dcn", "dot"), default="dcn")
    p.add_argument("--batch-size", type=int, default=None, help="default: per data set (see DEFAULTS)")
    p.add_argument("--sparse-lr", type=float, default=None, help="row-wise Adagrad lr; default: per data set")
    p.add_argument("--dense-lr", type=float, default=None, help="dense Adagrad lr; default: per data set")
    p.add_argument("--init-scale", type=float, default=None, help="new rows in +-init_scale; default: per data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run seeds --seed .. --seed+N-1 and report the per-seed AUCs and the spread of model - LR",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: less noise from neighbours)")
    p.add_argument("--plot-dir", type=Path, default=None, help="write quality_<dataset>.png here")
    p.add_argument(
        "--per-point",
        action="store_true",
        help="include the per-point table in the result (--newcomer: the per-window AUCs)",
    )
    p.add_argument(
        "--strategies",
        action="store_true",
        help="also replay periodic (window 4) and fusion (lambda 0.5) and report their mean AUC",
    )
    p.add_argument(
        "--wide",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the model's first-order part (model.wide; default: the model's default)",
    )
    p.add_argument(
        "--wide-anchor",
        choices=("row", "count"),
        default=None,
        help="model.wide_anchor (default: the model's, count; row: issue 24's second pass)",
    )
    p.add_argument(
        "--wide-bias",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="model.wide_bias, the wide part's intercept (default: the model's, on)",
    )
    p.add_argument(
        "--embedding-dim",
        type=int,
        default=None,
        help="every sparse feature's embedding dim (a multiple of 4; default: the spec's)",
    )
    p.add_argument(
        "--history-files",
        type=int,
        default=0,
        help="the first this many data files are the cold start's history (<= --warmup)",
    )
    p.add_argument(
        "--history-epochs",
        type=_history_epochs,
        default=None,
        help="train.history_epochs: passes over the history files, an integer >= 1 or auto (from the history's "
        "size: train.history_steps, train.history_max_epochs); default: the TrainConfig default, auto",
    )
    p.add_argument(
        "--full-retrain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-full-retrain: skip the full retrains (a sweep of the online model against the LR)",
    )
    p.add_argument(
        "--lr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the FTRL-Proximal logistic-regression baseline (auc_lr, logloss_lr)",
    )
    p.add_argument("--lr-alpha", type=float, default=None, help="FTRL alpha; default: per data set")
    p.add_argument("--lr-beta", type=float, default=1.0, help="FTRL beta")
    p.add_argument("--lr-l1", type=float, default=None, help="FTRL l1; default: per data set")
    p.add_argument("--lr-l2", type=float, default=1.0, help="FTRL l2")
    p.add_argument("--lr-batch-size", type=int, default=16, help="rows per vectorised FTRL step")
    p.add_argument("--lr-bits", type=int, default=22, help="2**bits hashed coordinates for the ids")
    p.add_argument(
        "--newcomer",
        default=None,
        metavar="TRAIN,TEST,WINDOWS[,FILE_ROWS]",
        help="instead of the replay: issue 24's newcomer case (a fresh model and a fresh FTRL-LR trained on TRAIN "
        "rows, scored on the TEST rows after them) on WINDOWS disjoint windows of the log; reports the paired "
        "AUC difference model - LR, its standard error, wins/ties/losses (trainer.quality.newcomer_windows)",
    )


def _history_epochs(text: str) -> int | str:
    """``--history-epochs``: an integer or ``auto``.

    >>> _history_epochs("3"), _history_epochs("auto")
    (3, 'auto')
    """
    from trainer.config import HISTORY_AUTO

    if text.strip().lower() == HISTORY_AUTO:
        return HISTORY_AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or {HISTORY_AUTO}, got {text!r}") from None


# what `--dataset all` replays: every preset on a distinct log (the _genres/_dynamic variants re-read the same ones)
ALL = ("taobao", "movielens", "criteo", "avazu")
# how a missing shared log is obtained (``../shared/data/README.md``; the samples: bench/deepctr_samples.py)
HOW = {
    "criteo": "python -m bench.deepctr_samples --src <DeepCTR checkout>/examples --out " + str(CRITEO_SAMPLE.parent),
    "avazu": "python -m bench.deepctr_samples --src <DeepCTR checkout>/examples --out " + str(AVAZU_SAMPLE.parent),
}


def missing_input(args: argparse.Namespace) -> str | None:
    """Why a preset cannot run (its shared log is absent and no --data names one), or None."""
    if args.data or args.input:
        return None
    path = PRESETS[args.dataset][1]
    if path.exists():
        return None
    how = HOW.get(args.dataset, "see ../shared/data/README.md")
    return f"skipped: {path} not found ({how}; or pass --data)"


def run(args: argparse.Namespace) -> dict:
    """One preset (or ``--dataset all``: each in turn, a preset whose shared log is absent reported as
    skipped, with a line on stderr), over ``--seeds`` seeds: with more than one, the result is the first
    seed's plus ``seeds``, the per-seed AUCs of the model and the LR and the spread of their difference."""
    import sys

    from common.errors import UserError

    if args.dataset == "all":
        if args.data or args.input or args.spec:
            raise UserError("--dataset all replays the presets' shared logs: drop --data/--spec, or name one --dataset")
        out = {}
        for name in ALL:
            out[name] = run(argparse.Namespace(**{**vars(args), "dataset": name}))
        return out
    why = missing_input(args)
    if why is not None:
        print(f"bench quality --dataset {args.dataset}: {why}", file=sys.stderr)
        return {"dataset": args.dataset, "skipped": why}
    if args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {args.seeds}")
    results = [_run_one(argparse.Namespace(**{**vars(args), "seed": args.seed + k})) for k in range(args.seeds)]
    out = results[0]
    if args.seeds > 1:
        import numpy as np

        inc = [r["auc_incremental"] for r in results]
        lr = [r["auc_lr"] for r in results]
        d = np.asarray(inc) - np.asarray(lr)
        out["seeds"] = {
            "seeds": [args.seed + k for k in range(args.seeds)],
            "auc_incremental": inc,
            "auc_full_retrain": [r["auc_full_retrain"] for r in results],
            "auc_lr": lr,
            "auc_incremental_minus_lr": {"mean": float(d.mean()), "min": float(d.min()), "max": float(d.max())},
            "auc_gap_max": float(max(r["auc_gap"] for r in results)),
        }
    return out


def _run_one(args: argparse.Namespace) -> dict:
    import torch

    from common.config import ConfigError
    from common.errors import UserError
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import load_spec
    from trainer.data.split import parse_duration
    from trainer.ftrl import FTRLConfig
    from trainer.quality import choose_points, log_files, run_quality

    torch.set_num_threads(args.threads)
    preset_spec, preset_input, preset_cut = PRESETS[args.dataset]
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
    small_files, small_warmup, min_rows = SMALL.get(args.dataset, (20, 4, 1000)) if not args.spec else (20, 4, 1000)
    warmup = small_warmup if args.warmup is None else args.warmup
    n_files = args.files
    if every is None and n_files is None:
        by_time = preset_cut == "every" and not args.spec
        every, n_files = (parse_duration("5m"), None) if by_time else (None, small_files)
    if not 0 <= args.history_files <= warmup:
        raise UserError(
            f"--history-files must be in [0, --warmup={warmup}]: a history file is trained on more "
            "than once, so no point may score it"
        )
    if args.embedding_dim is not None:
        if args.embedding_dim < 4 or args.embedding_dim % 4:
            raise UserError(f"--embedding-dim must be a positive multiple of 4 (FBGEMM), got {args.embedding_dim}")
        spec = _with_dims(spec, args.embedding_dim)
    t0 = time.perf_counter()
    files, names = log_files(spec, inputs, every_s=every, n_files=n_files)
    points = choose_points([len(f) for f in files], warmup, args.points, min_rows=min_rows)
    if not points:
        raise UserError(f"no evaluation point: {len(files)} data files and --warmup {warmup}")
    d = DEFAULTS[args.dataset] if not args.spec else DEFAULTS["taobao"]

    def pick(name):
        value = getattr(args, name)
        return d[name] if value is None else value

    extra = {} if args.history_epochs is None else {"history_epochs": args.history_epochs}
    try:
        train = TrainConfig(
            batch_size=pick("batch_size"),
            sparse_lr=pick("sparse_lr"),
            dense_lr=pick("dense_lr"),
            init_scale=pick("init_scale"),
            seed=args.seed,
            epochs_full_retrain=pick("epochs"),
            **extra,
        )
        bottom = (args.embedding_dim or 16) if args.interaction == "dot" else 16  # dot: == the embedding dim
        wide = {"wide": args.wide, "wide_anchor": args.wide_anchor, "wide_bias": args.wide_bias}
        model = ModelConfig(
            interaction=args.interaction, bottom_mlp=(bottom,), **{k: v for k, v in wide.items() if v is not None}
        )
        lr = (
            FTRLConfig(
                alpha=pick("lr_alpha"),
                beta=args.lr_beta,
                l1=pick("lr_l1"),
                l2=args.lr_l2,
                batch_size=args.lr_batch_size,
                bits=args.lr_bits,
                seed=args.seed,
            )
            if args.lr
            else None
        )
    except (ConfigError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    dataset = spec.name if args.spec else args.dataset
    if args.newcomer:
        return _newcomer(args, dataset, spec, files, model, train, lr)
    result = run_quality(
        dataset,
        spec,
        files,
        names,
        model,
        train,
        points,
        lr=lr,
        history=args.history_files,
        full_retrain=args.full_retrain,
    )
    out = {
        "dataset": dataset,
        "spec": spec.name,
        **result.summary(),
        "wall_s": time.perf_counter() - t0,
        "config": {
            k: getattr(train, k)
            for k in ("batch_size", "sparse_lr", "dense_lr", "init_scale", "seed", "history_epochs")
        }
        | {
            "interaction": args.interaction,
            "wide": model.wide,
            "wide_anchor": model.wide_anchor,
            "wide_bias": model.wide_bias,
            "history_files": args.history_files,
            "history_passes": train.history_passes([len(f) for f in files[: args.history_files]])
            if args.history_files
            else 1,
            "embedding_dims": sorted({f.dim for f in spec.model_sparse}),
            "files": f"every {args.every or '5m'}" if every else f"{n_files} equal-count",
        }
        | ({"lr": dataclasses.asdict(lr)} if lr is not None else {}),
    }
    if spec.dynamic is not None:  # the state after the whole log: tracked ids and bytes per id, per key
        from trainer.features import DynamicFeatures

        dyn = DynamicFeatures(spec)
        for f in files:
            dyn.process(f)
        out["feature_state"] = dyn.stats()
    if args.strategies:
        from trainer.quality import run_strategy
        from trainer.strategies import FusionPolicy, OnlinePolicy, PeriodicPolicy

        policies = {
            "online": OnlinePolicy(),
            "periodic_w4": PeriodicPolicy(window=4),
            "fusion_0.5": FusionPolicy(0.5),
            "fusion_0.9": FusionPolicy(0.9),
        }
        out["strategies"] = {
            name: run_strategy(spec, files, model, train, pol, points) for name, pol in policies.items()
        }
    if args.plot_dir is not None:
        from trainer.plots import write_report

        out["plots"] = [str(p) for p in write_report([result], args.plot_dir)]
    if args.per_point:
        out["per_point"] = {
            f"{p.point:02d} {p.file}": {
                "rows": p.examples,
                "positives": p.positives,
                "auc_inc": round(p.auc_incremental, 4),
                "auc_full": round(p.auc_full_retrain, 4),
                "logloss_inc": round(p.log_loss_incremental, 4),
                "logloss_full": round(p.log_loss_full_retrain, 4),
                "auc_lr": round(p.auc_lr, 4),
                "logloss_lr": round(p.log_loss_lr, 4),
                "inc_examples": p.inc_examples,
                "full_examples": p.full_examples,
                "inc_s": round(p.inc_seconds, 3),
                "full_s": round(p.full_seconds, 3),
            }
            for p in result.points
        }
    return out


def _newcomer(args: argparse.Namespace, dataset: str, spec, files, model, train, lr) -> dict:
    """``--newcomer TRAIN,TEST,WINDOWS[,FILE_ROWS]``: the newcomer case on disjoint windows of the whole log."""
    from common.errors import UserError
    from trainer.data import EventBatch
    from trainer.quality import newcomer_windows

    try:
        parts = [int(x) for x in args.newcomer.split(",")]
        if len(parts) not in (3, 4) or min(parts) < 1:
            raise ValueError
    except ValueError:
        raise UserError(
            f"--newcomer must be TRAIN,TEST,WINDOWS[,FILE_ROWS] (positive integers), got {args.newcomer!r}: "
            "e.g. 80,20,100,40 for 80 trained rows in files of 40 and 20 held-out rows, on 100 windows"
        ) from None
    if args.history_files or args.seeds > 1:
        raise UserError("--newcomer trains each window as its own history: drop --history-files and --seeds")
    try:
        res = newcomer_windows(
            spec,
            EventBatch.concat(files),
            parts[0],
            parts[1],
            parts[2],
            model,
            train,
            lr,
            parts[3] if len(parts) == 4 else None,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    step = parts[3] if len(parts) == 4 else parts[0]
    rows = [min(step, parts[0] - lo) for lo in range(0, parts[0], step)]
    out = {
        "dataset": dataset,
        "newcomer": True,
        "seed": args.seed,
        "history_epochs": train.history_epochs,
        "history_passes": train.history_passes(rows),  # what auto resolved to for TRAIN rows in these files
        **res.summary(),
    }
    if args.per_point:  # per window: for a paired comparison of two settings on the same windows
        out["per_window"] = {
            str(s): {"auc_model": m, "auc_lr": b} for s, m, b in zip(res.starts, res.auc_model, res.auc_lr)
        }
    return out


def _with_dims(spec, dim: int):
    """``spec`` with every sparse feature's embedding dim set to ``dim`` (the defaults re-check)."""
    return dataclasses.replace(spec, sparse=tuple(dataclasses.replace(f, dim=dim) for f in spec.sparse))
