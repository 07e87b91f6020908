"""``freshrec evaluate``: score held-out data files with a committed model version."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score held-out data files with a trained model version (AUC, log-loss)",
                       description="Loads the newest valid version of the run's store (or --version) exactly as "
                                   "training left it, scores every row of --data without training on it, and prints "
                                   "AUC and log-loss per file and overall.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", type=Path, help="a run directory (its store is RUN_DIR/versions)")
    where.add_argument("--store", metavar="URL", help="a version store URL")
    p.add_argument("--data", nargs="+", required=True, metavar="PATH", help="held-out data files or directories")
    p.add_argument("--version", type=int, default=None, help="a committed version (default: the newest valid one)")
    p.add_argument("--spec", default=None, help="override the spec stored with the version (e.g. side table paths)")
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
    v = Validator(trainer.spec)
    rows, labels, scores = [], [], []
    for f in files:
        batch = read_data_file(f, v)
        s = trainer.score(batch)
        labels.append(batch.label)
        scores.append(s)
        rows.append({"file": Path(str(f)).name, "examples": len(batch), "auc": auc(batch.label, s),
                     "log_loss": log_loss(batch.label, s)})
    y, s = np.concatenate(labels), np.concatenate(scores)
    total = {"version": manifest.version, "examples": int(len(y)), "auc": auc(y, s), "log_loss": log_loss(y, s),
             "files": rows}
    if args.json:
        print(json.dumps(total))
        return 0
    print(f"model version {manifest.version} (step {manifest.step}, {bundle.ledger_totals(manifest)[0]} data files "
          "trained)")
    for r in rows:
        print(f"  {r['file']:<34} {r['examples']:>8,}  auc {r['auc']:.4f}  log-loss {r['log_loss']:.4f}")
    print(f"overall: {total['examples']:,} examples, AUC {total['auc']:.4f}, log-loss {total['log_loss']:.4f}")
    return 0
