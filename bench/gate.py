"""Gate benchmark: how often the publish gate holds a version when nothing is wrong, and that it
still holds what is wrong.

Replays a log in time order through the local trainer, a model version after every data file
(``freshrec stream`` with ``snapshots.every_data_file``: the same trainer core, version writer and
publish gate, no Ray), then counts the gate's decisions on those versions: every hold there is a
false alarm (the log has no real regression), so ``hold_rate`` is the gate's false-hold rate
(target: at most 1 in 100). Then three faults, each on a further data file:

* ``flipped_labels``: the file's labels inverted (a corrupt upstream join): must be held (auc_drop);
* ``constant_model``: a collapsed model that scores 0.5 for everything (its scored logits zeroed): held
  (constant_scores);
* ``nan_model``: a diverged model whose scores are NaN (its window's scores; the training pushes of that
  file stay finite, as the tables refuse a NaN push before any gate runs): held (nonfinite_scores).

``fixed_drop_rule_held``: how many of the same versions the gate before the significance test
(a fixed AUC drop of 0.05 against the pooled baseline) would have held.

    freshrec bench gate --json                          # the Taobao replay (../shared/data), 5-minute files
    freshrec bench gate --synthetic 40 --rows 1500      # the synthetic log the tests use

Hold counts are quality figures, not timings: they do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import tempfile
import time
from pathlib import Path

DESCRIPTION = (
    "hold rate of the publish gate on a log replay with no regression (one version per data file), "
    "and that flipped labels, a constant and a NaN model are held"
)
FAULTS = ("flipped_labels", "constant_model", "nan_model")
EXPECTED = {"flipped_labels": "auc_drop", "constant_model": "constant_scores", "nan_model": "nonfinite_scores"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.data.fetch import SHARED_TAOBAO

    p.add_argument(
        "--data",
        type=Path,
        default=SHARED_TAOBAO,
        help="a Taobao-format log (user_id,item_id,category_id,behavior,ts); default: the shared 96k sample",
    )
    p.add_argument(
        "--every", default="1m", help="cut the log into data files of this time span (1m: ~115 files of ~840 rows)"
    )
    p.add_argument(
        "--synthetic",
        type=int,
        default=0,
        metavar="FILES",
        help="replay this many synthetic files instead (bench.servedata.write_taobao_csv; used when --data "
        "is missing too)",
    )
    p.add_argument("--rows", type=int, default=1500, help="rows per synthetic file")
    p.add_argument("--max-files", type=int, default=0, help="replay at most this many files (0: all)")
    p.add_argument("--max-auc-drop", type=float, default=None, help="publish.max_auc_drop (default: the config's)")
    p.add_argument("--significance", type=float, default=None, help="publish.significance (default: the config's)")
    p.add_argument("--min-examples", type=int, default=None, help="publish.min_examples (default: the config's)")
    p.add_argument("--baseline-versions", type=int, default=None, help="publish.baseline_versions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-version", action="store_true", help="include every version's decision in the result")


def _publish_config(args):
    from versions import PublishConfig

    over = {
        k: getattr(args, a)
        for k, a in (
            ("max_auc_drop", "max_auc_drop"),
            ("significance", "significance"),
            ("min_examples", "min_examples"),
            ("baseline_versions", "baseline_versions"),
        )
        if getattr(args, a) is not None
    }
    return dataclasses.replace(PublishConfig(), **over)


def _data_files(args, work: Path) -> tuple[list[Path], str]:
    """The data files to replay (parquet, cut by time, as ``freshrec data split`` writes them)."""
    from bench.servedata import write_taobao_csv

    if args.synthetic or not Path(args.data).exists():
        n = args.synthetic or 40
        files = [
            write_taobao_csv(
                work / "in" / f"part-{i:04d}.csv", args.rows, args.seed + i, start_ts=1_511_658_000 + 3600 * i
            )
            for i in range(n)
        ]
        return files, f"synthetic: {n} files x {args.rows} rows (bench.servedata.write_taobao_csv)"
    from trainer.data import Validator, load_spec
    from trainer.data.split import parse_duration, split_into_files

    result = split_into_files(
        [str(args.data)], Validator(load_spec("taobao")), parse_duration(args.every), work / "in", progress=False
    )
    return list(result.files), f"{args.data} cut every {args.every}"


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from bench.quality import DEFAULTS
    from bench.servedata import StoreTrainer
    from common.errors import UserError
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import read_data_file
    from versions import Publisher

    torch.set_num_threads(1)
    cfg = _publish_config(args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files, source = _data_files(args, work)
        if len(files) < len(FAULTS) + 2:
            raise UserError(f"{len(files)} data files: need at least {len(FAULTS) + 2} (a longer log or --synthetic N)")
        replay, fault_files = files[: -len(FAULTS)], files[-len(FAULTS) :]
        if args.max_files:
            replay = replay[: args.max_files]
        d = DEFAULTS["taobao"]
        train = TrainConfig(
            batch_size=d["batch_size"],
            sparse_lr=d["sparse_lr"],
            dense_lr=d["dense_lr"],
            init_scale=d["init_scale"],
            seed=args.seed,
        )
        t = StoreTrainer(work / "versions", model=ModelConfig(bottom_mlp=(16,)), train=train)
        t.keeper.publisher = Publisher(t.keeper.store, cfg)  # the gate under test, with this run's config
        rows: list[dict] = []
        windows: dict[int, dict] = {}  # version -> its extra["metrics"] (gc removes old versions)
        for path in replay:
            v = t.add_file(path)
            rows.append(_row(t, v, path))
            windows[v] = dict(t.keeper.store.manifest(v).extra.get("metrics", {}))
        good = [r for r in rows if r["version"] is not None]
        held = [r for r in good if r["decision"] == "hold"]
        faults = {}
        core = t.trainer
        for name, path in zip(FAULTS, fault_files):
            batch = read_data_file(path, t.validator)
            if name == "flipped_labels":
                batch = dataclasses.replace(batch, label=(1.0 - batch.label).astype(np.float32))
            # a collapsed (constant) or diverged (NaN) model, as the window the gate judges sees it: the scored
            # logits are replaced; training pushes stay finite (the tables refuse a NaN push before any gate)
            fill = {"constant_model": 0.0, "nan_model": float("nan")}.get(name)
            hook = None
            if fill is not None:
                hook = core.base_model.register_forward_hook(
                    lambda m, i, out, fill=fill: torch.full_like(out, fill) if not torch.is_grad_enabled() else None
                )
            try:
                core.step_file(batch, path.name, rows_read=t.validator.last_file.rows_in)
            finally:
                if hook is not None:
                    hook.remove()
            t.keeper.after_file()
            t.keeper.wait()
            r = _row(t, t.keeper.last_version, path)
            faults[name] = {
                "held": r["decision"] == "hold",
                "code": r["code"],
                "expected": EXPECTED[name],
                "reason": r["reason"],
            }
        examples = np.array([r["examples"] for r in good], np.float64)
        before = _fixed_drop_holds(windows, [r["version"] for r in good])
        out = {
            "data": source,
            "versions": len(good),
            "held": len(held),
            "hold_rate": len(held) / len(good) if good else float("nan"),
            "target_hold_rate": 0.01,
            "held_by_code": dict(collections.Counter(r["code"] for r in held)),
            "fixed_drop_rule_held": before,
            "held_versions": [{k: r[k] for k in ("version", "file", "code", "reason")} for r in held],
            "faults_held": sum(f["held"] and f["code"] == f["expected"] for f in faults.values()),
            "faults": faults,
            "window_examples": {
                "p10": float(np.percentile(examples, 10)),
                "p50": float(np.median(examples)),
                "p90": float(np.percentile(examples, 90)),
            }
            if len(examples)
            else {},
            "progressive_auc_p50": float(np.nanmedian([r["auc"] if r["auc"] is not None else np.nan for r in good]))
            if good
            else float("nan"),
            "gate_counts": dict(t.keeper.publisher.counts),
            "config": dataclasses.asdict(cfg) | {"seed": args.seed},
            "wall_s": time.perf_counter() - t0,
        }
        if args.per_version:
            out["per_version"] = rows
    return out


def _row(t, version, path) -> dict:
    d = t.keeper.decisions.get(version)
    m = t.keeper.store.manifest(version).extra.get("metrics", {}) if version is not None else {}
    return {
        "version": version,
        "file": Path(path).name,
        "decision": None if d is None else ("publish" if d.publish else "hold"),
        "code": getattr(d, "code", None),
        "reason": getattr(d, "reason", None),
        "examples": m.get("examples_validated", 0),
        "auc": m.get("progressive_auc"),
        "p_value": getattr(d, "p_value", None),
    }


class _Windows:
    """The store calls a Publisher makes, in memory, over the window metrics of given manifests."""

    def __init__(self, extras: dict[int, dict]) -> None:
        self.extras, self.pointer = extras, None

    def manifest(self, v):
        return type("M", (), {"extra": self.extras[v]})()

    def verify_chain(self, v, memo=None):
        return []

    def published(self):
        return self.pointer

    def publish(self, v):
        self.pointer = v

    def write_gate_decision(self, v, d):
        pass


def _fixed_drop_holds(metrics: dict[int, dict], versions: list[int]) -> int:
    """How many of ``versions`` the gate before the significance test held: a fixed drop of 0.05 in
    the example-weighted progressive AUC against the pooled last 5 published windows (the same
    manifests, their histograms left out; every window compared, as with ``publish.min_examples`` 0)."""
    from versions import PublishConfig, Publisher

    extras = {}
    for v in versions:
        m = {k: x for k, x in metrics[v].items() if k != "score_histogram"}
        extras[v] = {"metrics": m}
    windows = _Windows(extras)
    pub = Publisher(windows, PublishConfig(max_auc_drop=0.05, min_examples=0, verify_checksums=False))
    held = 0
    for v in versions:
        d = pub(v)
        held += d.code == "auc_drop"
        if d.code == "small_window":  # one class: waved through by the old gate
            windows.publish(v)
            pub.carried = []
    return held
