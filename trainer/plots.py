"""Reports: PNG plots (matplotlib, Agg backend: no display needed) and text tables.

Training runs (``freshrec train|stream``, a run directory's ``metrics.jsonl``):
``load_metrics``, ``table_header`` / ``table_row`` / ``auc_table`` for the progressive AUC
table, and ``plot_run`` writing ``auc.png`` and ``throughput.png``.

Quality runs: ``write_report(results, out_dir)`` takes one or more
:class:`trainer.quality.QualityResult` and writes, per data set,
``quality_<dataset>.png`` with two panels:

* progressive AUC per data file over time: incremental (every data file, before training on it)
  and full retrain (at each evaluation point), with the points marked;
* training throughput of the incremental model per data file (examples/s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_report(results, out_dir: str | Path, dpi: int = 90) -> list[Path]:
    """Write one PNG per result under ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not isinstance(results, Sequence):
        results = [results]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        s = r.summary()
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
        x = np.arange(len(r.incremental_auc_by_file))
        ax1.plot(x, r.incremental_auc_by_file, color="tab:blue", alpha=0.35, lw=1, label="incremental, every data file")
        px = [p.point for p in r.points]
        ax1.plot(
            px,
            [p.auc_incremental for p in r.points],
            "o-",
            color="tab:blue",
            label=f"incremental at points (mean {s['auc_incremental']:.4f})",
        )
        ax1.plot(
            px,
            [p.auc_full_retrain for p in r.points],
            "s--",
            color="tab:orange",
            label=f"full retrain, {r.epochs_full_retrain} epoch(s) (mean {s['auc_full_retrain']:.4f})",
        )
        ax1.set_ylabel("AUC on data file t\n(trained on files < t)")
        ax1.set_title(
            f"{r.dataset}: incremental vs full retrain; compute ratio {s['compute_ratio']:.3f} "
            f"(examples), {s['compute_ratio_seconds']:.3f} (seconds)",
            fontsize=10,
        )
        ax1.grid(alpha=0.3)
        ax1.legend(fontsize=8, loc="lower right")
        ax2.bar(x, r.incremental_examples_per_s, color="tab:green", alpha=0.7)
        ax2.set_ylabel("incremental\nexamples/s")
        ax2.set_xlabel("data file t (time order)")
        ax2.grid(alpha=0.3)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        path = out / f"quality_{r.dataset}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


def load_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: is {run_dir} a freshrec run directory (freshrec train/stream --run-dir)?"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table_header() -> str:
    return f"{'#':>4}  {'data file':<32} {'rows':>8} {'auc':>7} {'cum-auc':>8} {'logloss':>8} {'train ex/s':>10}"


def table_row(i: int, m: dict) -> str:
    """One data file's progressive metrics (scored before training on it), then its warnings if any."""
    warn = "".join(f"  warning: {w}" for w in m.get("warnings") or [])
    return (
        f"{i:>4}  {m['file']:<32} {m['examples']:>8,} {m['auc']:>7.4f} {m['cumulative_auc']:>8.4f} "
        f"{m['log_loss']:>8.4f} {m['examples_per_s']:>10,.0f}{warn}"
    )


def auc_table(metrics: list[dict]) -> str:
    return "\n".join([table_header()] + [table_row(i, m) for i, m in enumerate(metrics, 1)])


def plot_run(metrics: list[dict], out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x = list(range(1, len(metrics) + 1))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [m["auc"] for m in metrics], marker="o", label="data file AUC (scored before training)")
    ax.plot(x, [m["cumulative_auc"] for m in metrics], label="cumulative AUC")
    ax.set_xlabel("data file (time order)")
    ax.set_ylabel("AUC")
    ax.set_title("Progressive validation")
    ax.grid(alpha=0.3)
    ax.legend()
    auc_png = out / "auc.png"
    fig.tight_layout()
    fig.savefig(auc_png, dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x, [m["examples_per_s"] for m in metrics])
    ax.set_xlabel("data file (time order)")
    ax.set_ylabel("training examples / s")
    ax.set_title("Throughput per data file")
    ax.grid(alpha=0.3, axis="y")
    tput_png = out / "throughput.png"
    fig.tight_layout()
    fig.savefig(tput_png, dpi=90)
    plt.close(fig)
    return [auc_png, tput_png]
