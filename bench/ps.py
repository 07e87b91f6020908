"""``freshrec bench ps``: parameter-server pull+push rows/s through the client.

For 1, 2 and 4 shards it times the trainer's step pattern (pull_many with the next
batch prefetched, push_many of the current one, sync mode) on 4 tables x batch 8192 of
Zipf-distributed ids, and states it as a ratio against two baselines measured in the same
run on the same ids: a direct local FBGEMM TBE forward + backward (fused row-wise Adagrad)
and a naive actor parameter server that ships whole tables (Ray's documentation pattern:
get all weights, compute, send a whole dense update).
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "parameter-server pull+push rows/s vs a local TBE and a naive whole-table actor PS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration (default 40)")
    parser.add_argument("--rows", type=int, default=200_000, help="distinct ids per table / table size (default 200000)")
    parser.add_argument("--batch", type=int, default=8192, help="ids per table per step (default 8192)")
    parser.add_argument("--tables", type=int, default=4, help="number of tables (default 4)")
    parser.add_argument("--dim", type=int, default=64, help="row dim (default 64)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids (default 1.1)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to run (default 1,2,4)")
    parser.add_argument("--naive-steps", type=int, default=5, help="timed steps of the naive PS (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--seed", type=int, default=0)


def _batches(args, steps: int):
    import numpy as np

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(args.rows)  # hot ids are not the small ones
    out = []
    for _ in range(steps):
        ranks = (rng.zipf(args.zipf, size=(args.tables, args.batch)) - 1) % args.rows
        out.append({f"t{i}": perm[ranks[i]].astype(np.int64) for i in range(args.tables)})
    return out


def _local_tbe(args, batches, grads) -> float:
    """Seconds per step of one local TBE forward + backward over all tables."""
    import numpy as np
    import torch

    from paramserver.config import PSConfig, TableConfig
    from paramserver.shard import _build_tbe

    cfg = PSConfig(tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
                   capacity_per_shard=args.rows)
    tbe = _build_tbe(cfg, torch.device("cpu"))
    offsets = torch.arange(args.tables * args.batch + 1, dtype=torch.int64)
    grad = torch.from_numpy(np.concatenate([grads[f"t{i}"] for i in range(args.tables)], axis=1))
    inputs = [torch.from_numpy(np.concatenate([b[f"t{i}"] for i in range(args.tables)])) for b in batches]
    for idx in inputs[:args.warmup]:
        tbe(idx, offsets).backward(grad)
    t0 = time.perf_counter()
    for idx in inputs[args.warmup:]:
        tbe(idx, offsets).backward(grad)
    return (time.perf_counter() - t0) / (len(inputs) - args.warmup)


def _ps(args, shards: int, batches, grads) -> tuple[float, dict]:
    """Seconds per step of pull_many + push_many through the client, next pull prefetched."""
    from paramserver import PSConfig, TableConfig, create_parameter_server

    cfg = PSConfig(tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
                   num_shards=shards, capacity_per_shard=int(args.rows * 1.2 / shards) + 1024,
                   mode="sync", num_workers=1, learning_rate=0.01, seed=args.seed)
    client = create_parameter_server(cfg)
    try:
        ticket = client.pull_many(batches[0], step=0)
        pushes = []
        t0 = 0.0
        for s, batch in enumerate(batches):
            if s == args.warmup:
                for p in pushes:
                    client.wait(p)
                t0 = time.perf_counter()
            client.wait(ticket)  # rows of this step (the model would compute here)
            if s + 1 < len(batches):
                ticket = client.pull_many(batches[s + 1], step=s + 1)  # prefetch
            pushes.append(client.push_many({t: (ids, grads[t]) for t, ids in batch.items()}, step=s))
        for p in pushes:
            client.wait(p)
        per_step = (time.perf_counter() - t0) / (len(batches) - args.warmup)
        stats = client.stats()
    finally:
        client.shutdown()
    return per_step, {"rows": sum(s["rows"] for s in stats), "dropped_grads": sum(s["dropped_grads"] for s in stats)}


class _NaiveShard:
    """Whole-table actor PS: ``get`` returns every table, ``apply`` adds a whole dense update."""

    def __init__(self, tables: int, rows: int, dim: int) -> None:
        import numpy as np

        self.w = {f"t{i}": np.zeros((rows, dim), np.float32) for i in range(tables)}

    def get(self):
        return self.w

    def apply(self, update):
        for t, u in update.items():
            self.w[t] += u
        return True


def _naive(args, shards: int, batches, grads) -> float:
    """Seconds per step of the naive PS: row ranges over ``shards`` actors, whole tables shipped."""
    import numpy as np
    import ray

    bounds = np.linspace(0, args.rows, shards + 1).astype(np.int64)
    cls = ray.remote(_NaiveShard)
    actors = [cls.options(num_cpus=0).remote(args.tables, int(bounds[i + 1] - bounds[i]), args.dim)
              for i in range(shards)]
    ray.get([a.get.remote() for a in actors])
    n = args.warmup + args.naive_steps

    def step(batch):
        parts = ray.get([a.get.remote() for a in actors])
        tables = {t: np.concatenate([p[t] for p in parts]) for t in batch}
        update = {}
        for t, ids in batch.items():
            _ = tables[t][ids]  # the lookup the model needs
            dense = np.zeros_like(tables[t])
            np.add.at(dense, ids, -0.01 * grads[t])
            update[t] = dense
        ray.get([a.apply.remote({t: u[bounds[i]:bounds[i + 1]] for t, u in update.items()})
                 for i, a in enumerate(actors)])

    try:
        for batch in batches[:args.warmup]:
            step(batch)
        t0 = time.perf_counter()
        for batch in batches[args.warmup:n]:
            step(batch)
        return (time.perf_counter() - t0) / (n - args.warmup)
    finally:
        for a in actors:
            ray.kill(a)


def run(args: argparse.Namespace) -> dict:
    import os

    import numpy as np
    import torch

    from cluster.config import RayConfig
    from cluster.ray_runtime import ensure_ray

    torch.set_num_threads(1)
    ensure_ray(RayConfig(num_cpus=2))
    shard_counts = [int(s) for s in str(args.shards).split(",")]
    steps = args.warmup + args.steps
    batches = _batches(args, steps)
    rng = np.random.default_rng(args.seed + 1)
    grads = {f"t{i}": rng.standard_normal((args.batch, args.dim)).astype(np.float32) for i in range(args.tables)}
    rows_per_step = args.tables * args.batch

    result: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "tables x batch x dim": f"{args.tables} x {args.batch} x {args.dim}, {args.rows} rows, zipf {args.zipf}",
        "unique ids per table-step": float(np.mean([len(np.unique(b["t0"])) for b in batches])),
        "local_tbe_rows_per_s": {}, "ps_rows_per_s": {}, "naive_ps_rows_per_s": {},
        "ratio_vs_local_tbe": {}, "ratio_vs_naive_ps": {},
        "local_tbe_ms_per_step": {}, "ps_ms_per_step": {}, "naive_ps_ms_per_step": {},
    }
    for n in shard_counts:  # the baselines are re-measured next to each PS run: this machine is noisy
        local = _local_tbe(args, batches, grads)
        per_step, _ = _ps(args, n, batches, grads)
        naive = _naive(args, n, batches, grads)
        key = str(n)
        result["local_tbe_rows_per_s"][key] = rows_per_step / local
        result["local_tbe_ms_per_step"][key] = local * 1e3
        result["naive_ps_ms_per_step"][key] = naive * 1e3
        result["ps_rows_per_s"][key] = rows_per_step / per_step
        result["naive_ps_rows_per_s"][key] = rows_per_step / naive
        result["ps_ms_per_step"][key] = per_step * 1e3
        result["ratio_vs_local_tbe"][key] = local / per_step
        result["ratio_vs_naive_ps"][key] = naive / per_step
    return result
