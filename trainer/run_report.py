"""Plots of a training run (``metrics.jsonl`` of a run directory): progressive AUC and throughput."""

from __future__ import annotations

import json
from pathlib import Path


def load_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a freshrec run directory (freshrec train/stream --run-dir)?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table_header() -> str:
    return f"{'#':>4}  {'shard':<32} {'rows':>8} {'auc':>7} {'cum-auc':>8} {'logloss':>8} {'train ex/s':>10}"


def table_row(i: int, m: dict) -> str:
    """One shard's progressive metrics (scored before training on it)."""
    return (f"{i:>4}  {m['shard']:<32} {m['examples']:>8,} {m['auc']:>7.4f} {m['cumulative_auc']:>8.4f} "
            f"{m['log_loss']:>8.4f} {m['examples_per_s']:>10,.0f}")


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
    ax.plot(x, [m["auc"] for m in metrics], marker="o", label="shard AUC (scored before training)")
    ax.plot(x, [m["cumulative_auc"] for m in metrics], label="cumulative AUC")
    ax.set_xlabel("shard (time order)")
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
    ax.set_xlabel("shard (time order)")
    ax.set_ylabel("training examples / s")
    ax.set_title("Throughput per shard")
    ax.grid(alpha=0.3, axis="y")
    tput_png = out / "throughput.png"
    fig.tight_layout()
    fig.savefig(tput_png, dpi=90)
    plt.close(fig)
    return [auc_png, tput_png]
