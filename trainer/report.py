"""PNG plots of a quality run (matplotlib, Agg backend: no display needed).

``write_report(results, out_dir)`` takes one or more :class:`trainer.quality.QualityResult`
and writes, per data set,
``quality_<dataset>.png`` with two panels:

* progressive AUC per shard over time: incremental (every shard, before training on it)
  and full retrain (at each evaluation point), with the points marked;
* training throughput of the incremental model per shard (examples/s).
"""

from __future__ import annotations

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
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True,
                                       gridspec_kw={"height_ratios": [2, 1]})
        x = np.arange(len(r.incremental_auc_by_shard))
        ax1.plot(x, r.incremental_auc_by_shard, color="tab:blue", alpha=0.35, lw=1,
                 label="incremental, every shard")
        px = [p.point for p in r.points]
        ax1.plot(px, [p.auc_incremental for p in r.points], "o-", color="tab:blue",
                 label=f"incremental at points (mean {s['auc_incremental']:.4f})")
        ax1.plot(px, [p.auc_full_retrain for p in r.points], "s--", color="tab:orange",
                 label=f"full retrain, {r.epochs_full_retrain} epoch(s) (mean {s['auc_full_retrain']:.4f})")
        ax1.set_ylabel("AUC on shard t\n(trained on shards < t)")
        ax1.set_title(f"{r.dataset}: incremental vs full retrain; compute ratio {s['compute_ratio']:.3f} "
                      f"(examples), {s['compute_ratio_seconds']:.3f} (seconds)", fontsize=10)
        ax1.grid(alpha=0.3)
        ax1.legend(fontsize=8, loc="lower right")
        ax2.bar(x, r.incremental_examples_per_s, color="tab:green", alpha=0.7)
        ax2.set_ylabel("incremental\nexamples/s")
        ax2.set_xlabel("shard index t (time order)")
        ax2.grid(alpha=0.3)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        path = out / f"quality_{r.dataset}.png"
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths
