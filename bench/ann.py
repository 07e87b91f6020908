"""``freshrec bench ann``: Recommend's retrieval above a million items, FAISS IVF against exact search.

Same run, same items, same queries: the exact inner-product top-n (:class:`serving.retrieval.ItemIndex`,
the baseline) and the ANN index (:class:`serving.ann.AnnItemIndex`), rounds alternating. Reports the
per-query latency of both (median and range over rounds), recall@n of the ANN candidates against
the exact ones, the index build time and the time to follow a version that changes ``--changed`` of
the items (copy + re-assign, :meth:`AnnItemIndex.updated`) against a rebuild.

Items: ``--items`` rows of ``--dim`` floats drawn around 1,000 random centres (embedding tables are
clustered; uniform noise is the worst case for any IVF index and is reported with ``--noise``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

DESCRIPTION = "Recommend retrieval: FAISS IVF vs exact inner product (latency, recall@n, build, delta update)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, default=1_000_000, help="items in the index (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dim (default 16)")
    parser.add_argument("--n", type=int, default=200, help="candidates retrieved per query (default 200)")
    parser.add_argument("--queries", type=int, default=200, help="queries per round (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    from serving.ann import AnnOptions  # the one definition of the default (serve.ann_nprobe takes it too)

    parser.add_argument(
        "--nprobe",
        type=int,
        default=AnnOptions.nprobe,
        help=f"inverted lists scanned per query (default {AnnOptions.nprobe})",
    )
    parser.add_argument("--changed", type=float, default=0.01, help="share of items a delta changes (default 0.01)")
    parser.add_argument("--noise", action="store_true", help="unclustered Gaussian items (the hard case)")


def _items(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if args.noise:
        rows = rng.standard_normal((args.items, args.dim)).astype(np.float32)
    else:
        centres = rng.standard_normal((1000, args.dim)).astype(np.float32) * 2
        rows = centres[rng.integers(0, 1000, args.items)] + rng.standard_normal((args.items, args.dim)).astype(
            np.float32
        )
    ids = np.sort(rng.choice(np.int64(4) * args.items, args.items, replace=False)).astype(np.int64)
    users = rows[rng.integers(0, args.items, args.queries)] + 0.3 * rng.standard_normal(
        (args.queries, args.dim)
    ).astype(np.float32)
    return ids, rows, users


def run(args: argparse.Namespace) -> dict:
    import torch

    from serving.ann import AnnItemIndex, AnnOptions
    from serving.retrieval import ItemIndex

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    ids, rows, users = _items(args)
    exact = ItemIndex(ids, torch.from_numpy(rows))
    t = time.perf_counter()
    ann = AnnItemIndex.build(ids, rows, None, AnnOptions(nprobe=args.nprobe))
    build_s = time.perf_counter() - t
    exact_ms, ann_ms = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        want = [exact.top(u, args.n)[0] for u in users]
        exact_ms.append((time.perf_counter() - t) / len(users) * 1e3)
        t = time.perf_counter()
        got = [ann.top(u, args.n)[0] for u in users]
        ann_ms.append((time.perf_counter() - t) / len(users) * 1e3)
    recall = float(np.mean([len(np.intersect1d(g, w)) / args.n for g, w in zip(got, want)]))
    rng = np.random.default_rng(1)
    moved = rng.choice(len(ids), int(args.changed * len(ids)), replace=False)
    rows2 = rows.copy()
    rows2[moved] += rng.standard_normal((len(moved), args.dim)).astype(np.float32)
    t = time.perf_counter()
    upd = ann.updated(ids, rows2)
    update_s = time.perf_counter() - t
    exact2 = ItemIndex(ids, torch.from_numpy(rows2))
    recall_upd = float(
        np.mean([len(np.intersect1d(upd.top(u, args.n)[0], exact2.top(u, args.n)[0])) / args.n for u in users[:50]])
    )
    med_e, med_a = statistics.median(exact_ms), statistics.median(ann_ms)
    return {
        "items": args.items,
        "dim": args.dim,
        "n": args.n,
        "nlist": int(ann.index.nlist),
        "nprobe": args.nprobe,
        "items_kind": "gaussian noise" if args.noise else "clustered (1000 centres)",
        "exact_ms_per_query": round(med_e, 3),
        "exact_ms_range": [round(min(exact_ms), 3), round(max(exact_ms), 3)],
        "ann_ms_per_query": round(med_a, 3),
        "ann_ms_range": [round(min(ann_ms), 3), round(max(ann_ms), 3)],
        "ann_speedup": round(med_e / med_a, 2),
        "recall_at_n": round(recall, 4),
        "build_s": round(build_s, 2),
        "update_s": round(update_s, 3),
        "changed_items": int(len(moved)),
        "update_over_build": round(update_s / build_s, 4),
        "recall_at_n_after_update": round(recall_upd, 4),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }
