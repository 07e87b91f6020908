"""``freshrec evaluate``: score held-out data files with a committed model version."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score held-out data files with a trained model version (AUC, log-loss)",
        description="Loads the newest valid version of the run's store (or --version) exactly as "
        "training left it, scores every row of --data without training on it, and prints "
        "AUC and log-loss per file and overall.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path, help="a run directory (its store is RUN_DIR/versions)")
    where.add_argument("--store", metavar="URL", help="a version store URL")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="held-out data files or directories")
    p.add_argument("--version", type=int, default=None, help="a committed version (default: the newest valid one)")
    p.add_argument("--spec", default=None, help="override the spec stored with the version (e.g. side table paths)")
    p.add_argument(
        "--baseline",
        choices=("lr",),
        default=None,
        help="also train an FTRL-Proximal logistic regression (trainer/ftrl.py) on the rows the version "
        "trained on (its data files, found in --train-data, in the order trained) and score --data "
        "with it: auc_lr and logloss_lr beside the model's",
    )
    p.add_argument(
        "--train-data",
        nargs="+",
        default=None,
        metavar="PATH",
        help="with --baseline: the data files or directories the version was trained on",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from common.config import ConfigError
    from trainer import bundle
    from trainer.data import Validator, expand_inputs, load_spec, read_data_file
    from trainer.metrics import auc, log_loss
    from trainer.versioning import load_trainer
    from versions import StoreError

    store = args.store or str(args.run_dir / "versions")
    try:
        files = expand_inputs(args.data)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    if not files:
        raise UserError(f"no data files in {args.data}")
    try:
        spec = load_spec(args.spec) if args.spec else None
        trainer, manifest = load_trainer(store, args.version, spec)
    except (ConfigError, StoreError, ValueError) as exc:
        raise UserError(f"cannot load a model version from {store}: {exc}") from exc
    baseline = _train_baseline(args, trainer.spec, manifest, store) if args.baseline else None
    v = Validator(trainer.spec)
    rows, labels, scores, lr_scores = [], [], [], []
    for f in files:
        batch = read_data_file(f, v)
        s = trainer.score(batch)
        labels.append(batch.label)
        scores.append(s)
        rows.append(
            {
                "file": Path(str(f)).name,
                "examples": len(batch),
                "auc": auc(batch.label, s),
                "log_loss": log_loss(batch.label, s),
            }
        )
        if baseline is not None:
            lr, dyn = baseline
            b = dyn.lookup(batch) if dyn is not None else batch  # dynamic features from the trained rows only
            lr_scores.append(lr.score(b))
            rows[-1] |= {"auc_lr": auc(batch.label, lr_scores[-1]), "logloss_lr": log_loss(batch.label, lr_scores[-1])}
    y, s = np.concatenate(labels), np.concatenate(scores)
    total = {
        "version": manifest.version,
        "examples": int(len(y)),
        "auc": auc(y, s),
        "log_loss": log_loss(y, s),
        "files": rows,
    }
    if baseline is not None:
        s_lr = np.concatenate(lr_scores)
        total |= {"auc_lr": auc(y, s_lr), "logloss_lr": log_loss(y, s_lr), "lr_examples": baseline[0].examples_trained}
    if args.json:
        print(json.dumps(total))
        return 0
    print(
        f"model version {manifest.version} (step {manifest.step}, {bundle.ledger_totals(manifest)[0]} data files "
        "trained)"
    )
    for r in rows:
        lr_part = f"  | LR auc {r['auc_lr']:.4f}  log-loss {r['logloss_lr']:.4f}" if baseline is not None else ""
        print(f"  {r['file']:<34} {r['examples']:>8,}  auc {r['auc']:.4f}  log-loss {r['log_loss']:.4f}{lr_part}")
    print(f"overall: {total['examples']:,} examples, AUC {total['auc']:.4f}, log-loss {total['log_loss']:.4f}")
    if baseline is not None:
        print(
            f"FTRL-LR baseline (trained on the same {total['lr_examples']:,} rows): AUC {total['auc_lr']:.4f}, "
            f"log-loss {total['logloss_lr']:.4f}"
        )
    return 0


def _train_baseline(args: argparse.Namespace, spec, manifest, store_url: str):
    """(an FTRL-LR trained one pass on the version's data files in the order they were trained, the
    dynamic-feature state after them or None): the files are those of the version's whole data ledger
    (a delta version's manifest names only the files since its parent), looked up by name in --train-data."""
    from trainer import bundle
    from trainer.data import Validator, expand_inputs, read_data_file
    from trainer.ftrl import FTRLConfig, FTRLProximal
    from versions import VersionStore

    if not args.train_data:
        raise UserError(
            "--baseline lr trains the LR on the rows the model trained on: pass --train-data with the "
            "data files (or their directory) the version was trained on"
        )
    try:
        found = {Path(str(p)).name: p for p in expand_inputs(args.train_data)}
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    ledger = bundle.read_ledger(VersionStore(store_url), manifest.version)
    names = [e.file for e in ledger.entries if e.status == "ok" and e.rows > 0] or sorted(manifest.data_files)
    missing = [n for n in names if n not in found]
    if missing:
        raise UserError(
            f"version {manifest.version} was trained on {len(names)} data files; {len(missing)} are not "
            f"in --train-data (e.g. {missing[:3]}): pass the directory training read"
        )
    if not names:
        raise UserError(f"version {manifest.version} records no data files: nothing to train the baseline on")
    dyn = None
    if getattr(spec, "dynamic", None) is not None:
        from trainer.features import DynamicFeatures

        dyn = DynamicFeatures(spec)
    lr = FTRLProximal(spec, FTRLConfig())
    v = Validator(spec)
    for name in names:
        batch = read_data_file(found[name], v)
        lr.train(dyn.process(batch) if dyn is not None else batch)
    return lr, dyn
