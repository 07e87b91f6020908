"""``freshrec bench ps``: parameter-server pull+push rows/s through the client.

For 1, 2 and 4 shards it times the trainer's sync step pattern (``push_pull``: push step s
and pull the rows of step s+1 in one call per shard) on 4 tables x batch 8192 of
Zipf-distributed ids, and states it as a ratio against two baselines measured in the same
run on the same ids: a direct local FBGEMM TBE forward + backward (fused row-wise Adagrad)
and a naive actor parameter server that ships whole tables (Ray's documentation pattern:
get all weights, compute, send a whole dense update).

Baseline and PS alternate in ``--rounds`` rounds of ``--chunk`` steps each (which goes first
alternates too), so both see the same background load; the result gives, per shard count, the
median and the range of the per-round ratios and the load average (``os.getloadavg()``) at the
start and end of the measurement.
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "parameter-server pull+push rows/s vs a local TBE and a naive whole-table actor PS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds baseline <-> PS (default 8)")
    parser.add_argument("--rows", type=int, default=200_000, help="distinct ids per table / table size (default 200000)")
    parser.add_argument("--batch", type=int, default=8192, help="ids per table per step (default 8192)")
    parser.add_argument("--tables", type=int, default=4, help="number of tables (default 4)")
    parser.add_argument("--dim", type=int, default=64, help="row dim (default 64)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids (default 1.1)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to run (default 1,2,4)")
    parser.add_argument("--naive-steps", type=int, default=5, help="timed steps of the naive PS (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--chunk", type=int, default=5, help="timed steps per round and side (default 5)")
    parser.add_argument("--placements", default="ray,in_process",
                        help="shard placements to time: ray (actors) and/or in_process (threads of this process); "
                             "default both")
    parser.add_argument("--depths", default="0",
                        help="sync pipeline depths to time (ps.pipeline_depth: step s's push travels with step "
                             "s+1+d's pull, so the client's work overlaps the shards'); default 0, e.g. 0,1")
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


class _LocalTBE:
    """One local TBE (all tables, fused row-wise Adagrad): the baseline, forward + backward per step."""

    def __init__(self, args, grads) -> None:
        import numpy as np
        import torch

        from paramserver.config import PSConfig, TableConfig
        from paramserver.tbe import build_tbe

        cfg = PSConfig(tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
                       capacity_per_shard=args.rows)
        self.tables = args.tables
        self.tbe = build_tbe(cfg.tables, cfg.capacity_per_shard, cfg.optimizer, cfg.learning_rate, cfg.eps)
        self.offsets = torch.arange(args.tables * args.batch + 1, dtype=torch.int64)
        self.grad = torch.from_numpy(np.concatenate([grads[f"t{i}"] for i in range(args.tables)], axis=1))

    def run(self, batches) -> float:
        """Seconds for forward + backward of every batch."""
        import numpy as np
        import torch

        inputs = [torch.from_numpy(np.concatenate([b[f"t{i}"] for i in range(self.tables)])) for b in batches]
        t0 = time.perf_counter()
        for idx in inputs:
            self.tbe(idx, self.offsets).backward(self.grad)
        return time.perf_counter() - t0


def _ps(args, shards: int, batches, grads, local: _LocalTBE, placement: str = "ray", depth: int = 0) -> dict:
    """Per round: seconds per step of ``args.chunk`` PS steps (``push_pull``: push step s and pull s+1+depth in
    one call per shard, as the trainer steps) and of the local TBE on the same batches; the side that
    goes first alternates. Each PS chunk waits for its last reply inside its timing."""
    import os

    from paramserver import PSConfig, TableConfig, create_parameter_server

    cfg = PSConfig(tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
                   num_shards=shards, capacity_per_shard=int(args.rows * 1.2 / shards) + 1024,
                   mode="sync", num_workers=1, learning_rate=0.01, seed=args.seed, pipeline_depth=depth)
    client = create_parameter_server(cfg, placement=placement)
    state = {"step": 0, "tickets": {}}

    def ps_steps(n: int) -> float:
        t0 = time.perf_counter()
        tickets = state["tickets"]
        for _ in range(n):
            s = state["step"]
            batch = batches[s % len(batches)]
            if not tickets:  # the first steps' rows (depth + 1 of them) are pulled up front
                for k in range(depth + 1):
                    tickets[s + k] = client.pull_many(batches[(s + k) % len(batches)], step=s + k, lease=True,
                                                      stale=k)
            client.wait(tickets.pop(s))  # rows of this step (the model would compute here)
            grads_s = {t: (ids, grads[t]) for t, ids in batch.items()}
            ahead = s + 1 + depth
            tickets[ahead] = client.push_pull(grads_s, batches[ahead % len(batches)], step=s)
            state["step"] = s + 1
        client.wait(tickets[state["step"]])  # the last reply counts in this chunk; the next step's rows are here
        return time.perf_counter() - t0

    rounds = []
    try:
        ps_steps(args.warmup)
        local.run(batches[:args.warmup])
        load_start = os.getloadavg()
        for r in range(args.rounds):
            chunk = [batches[(state["step"] + i) % len(batches)] for i in range(args.chunk)]
            if r % 2 == 0:
                base = local.run(chunk)
                ps = ps_steps(args.chunk)
            else:
                ps = ps_steps(args.chunk)
                base = local.run(chunk)
            rounds.append((base / args.chunk, ps / args.chunk))
        load_end = os.getloadavg()
        stats = client.stats()
    finally:
        client.shutdown()
    return {"rounds": rounds, "load": (load_start, load_end), "rows": sum(s["rows"] for s in stats),
            "shard_cpu_ms_per_step": 1e3 * sum(s["pull_cpu_s"] + s["push_cpu_s"] for s in stats)
            / max(state["step"], 1)}


def summary(values: list[float]) -> dict:
    """Median and range of per-round figures."""
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


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

    from cluster.errors import UserError

    try:
        shard_counts = [int(s) for s in str(args.shards).split(",")]
    except ValueError:
        raise UserError(f"--shards {args.shards!r}: expected shard counts like 1,2,4") from None
    placements = [p for p in str(args.placements).split(",") if p]
    try:
        depths = [int(d) for d in str(args.depths).split(",")]
    except ValueError:
        raise UserError(f"--depths {args.depths!r}: expected pipeline depths like 0,1") from None
    from paramserver.config import MAX_PIPELINE_DEPTH

    if not depths or min(depths) < 0 or max(depths) > MAX_PIPELINE_DEPTH:
        raise UserError(f"--depths takes pipeline depths in [0, {MAX_PIPELINE_DEPTH}]")
    if not placements or not set(placements) <= {"ray", "in_process"} or min(shard_counts) < 1 or args.rounds < 1:
        raise UserError("--placements takes ray and/or in_process; --shards counts and --rounds must be >= 1")
    torch.set_num_threads(1)
    if "ray" in placements:
        ensure_ray(RayConfig(num_cpus=2))
    batches = _batches(args, args.warmup + args.chunk * (args.rounds + 1) + 1)
    rng = np.random.default_rng(args.seed + 1)
    grads = {f"t{i}": rng.standard_normal((args.batch, args.dim)).astype(np.float32) for i in range(args.tables)}
    rows_per_step = args.tables * args.batch

    result: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "tables x batch x dim": f"{args.tables} x {args.batch} x {args.dim}, {args.rows} rows, zipf {args.zipf}",
        "unique ids per table-step": float(np.mean([len(np.unique(b["t0"])) for b in batches])),
        "rounds x steps": f"{args.rounds} x {args.chunk} per side, alternating (baseline first on even rounds)",
        "ratio_vs_local_tbe": {}, "local_tbe_ms_per_step": {}, "ps_ms_per_step": {}, "ps_rows_per_s_median": {},
        "load_average_1_5_15": {}, "shard_cpu_ms_per_step": {}, "naive_ps_ms_per_step": {}, "ratio_vs_naive_ps": {},
    }
    baseline = _LocalTBE(args, grads)
    for n, placement, depth in [(n, p, d) for d in depths for p in placements for n in shard_counts]:
        info = _ps(args, n, batches, grads, baseline, placement, depth)
        key = (str(n) if placement == "ray" else f"{n} in_process") + (f" depth {depth}" if depth else "")
        base = [b for b, _ in info["rounds"]]
        ps = [p for _, p in info["rounds"]]
        result["ratio_vs_local_tbe"][key] = summary([b / p for b, p in info["rounds"]])
        result["local_tbe_ms_per_step"][key] = summary([1e3 * b for b in base])
        result["ps_ms_per_step"][key] = summary([1e3 * p for p in ps])
        result["ps_rows_per_s_median"][key] = rows_per_step / summary(ps)["median"]
        result["load_average_1_5_15"][key] = {"start": [round(x, 2) for x in info["load"][0]],
                                              "end": [round(x, 2) for x in info["load"][1]]}
        result["shard_cpu_ms_per_step"][key] = info["shard_cpu_ms_per_step"]
        if args.naive_steps > 0 and placement == "ray" and depth == 0:
            naive = _naive(args, n, batches, grads)
            result["naive_ps_ms_per_step"][key] = naive * 1e3
            result["ratio_vs_naive_ps"][key] = naive / summary(ps)["median"]
    return result
