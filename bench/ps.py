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
start and end of the measurement, and the CPU each side used: ``cpu_s_per_1k_rows`` sums the
CPU-seconds of every process of the run during the PS chunks (:mod:`bench.cputree`: this process, the
shard actors, the raylet, the GCS) per 1,000 rows pulled and pushed; the local TBE's is this process's
own (``time.process_time``); ``cpu_ratio_vs_local_tbe`` is their ratio round by round.

``--scale`` (the table-size run): for each of ``--rows`` (e.g. ``1000000,10000000,50000000``) the
shards' tables are first pre-filled, through ordinary pulls (the admission path), to that many
rows in all (split evenly over the tables; ids disjoint from the step's ids), then the same sync
steps run on ids drawn from an unbounded Zipf (hot ids held, a tail of new ids admitted every
step). It reports PS ms per step per table size and each size's ratio to the smallest (target:
within 1.3x), shard CPU per step, new ids per step and the process's peak RSS. Sizes run one after
the other (each table size is built, timed, then dropped); weights default to fp16 there.
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "parameter-server pull+push rows/s vs a local TBE and a naive whole-table actor PS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds baseline <-> PS (default 8)")
    parser.add_argument(
        "--rows",
        default="200000",
        help="distinct ids per table / table size (default 200000); with --scale, the table sizes "
        "(rows in all, pre-filled) to time, e.g. 1000000,10000000,50000000",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the table-size run: pre-fill the tables to each --rows value and report ms per step "
        "per size (admission and id map cost must not grow with the table)",
    )
    parser.add_argument(
        "--weights-dtype",
        default=None,
        choices=["fp32", "fp16"],
        help="stored row dtype (default fp32; fp16 with --scale)",
    )
    parser.add_argument("--batch", type=int, default=8192, help="ids per table per step (default 8192)")
    parser.add_argument("--tables", type=int, default=4, help="number of tables (default 4)")
    parser.add_argument("--dim", type=int, default=64, help="row dim (default 64)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids (default 1.1)")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to run (default 1,2,4)")
    parser.add_argument("--naive-steps", type=int, default=5, help="timed steps of the naive PS (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--chunk", type=int, default=5, help="timed steps per round and side (default 5)")
    parser.add_argument(
        "--placements",
        default="ray,in_process",
        help="shard placements to time: ray (actors) and/or in_process (threads of this process); default both",
    )
    parser.add_argument(
        "--depths",
        default="0",
        help="sync pipeline depths to time (ps.pipeline_depth: step s's push travels with step "
        "s+1+d's pull, so the client's work overlaps the shards'); default 0, e.g. 0,1",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the shards' and the local baseline's FBGEMM TBEs live (ps.device; default cpu; cuda: "
        "see docs/gpu.md)",
    )


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

        cfg = PSConfig(
            tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)), capacity_per_shard=args.rows
        )
        self.tables = args.tables
        self.device = torch.device(getattr(args, "device", "cpu"))
        self.tbe = build_tbe(
            cfg.tables, cfg.capacity_per_shard, cfg.optimizer, cfg.learning_rate, cfg.eps, device=self.device
        )
        self.offsets = torch.arange(args.tables * args.batch + 1, dtype=torch.int64, device=self.device)
        grad = torch.from_numpy(np.concatenate([grads[f"t{i}"] for i in range(args.tables)], axis=1))
        self.grad = grad.to(self.device)

    def run(self, batches) -> float:
        """Seconds for forward + backward of every batch."""
        import numpy as np
        import torch

        inputs = [
            torch.from_numpy(np.concatenate([b[f"t{i}"] for i in range(self.tables)])).to(self.device) for b in batches
        ]
        t0 = time.perf_counter()
        for idx in inputs:
            self.tbe(idx, self.offsets).backward(self.grad)
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the kernels are asynchronous: the time includes their end
        return time.perf_counter() - t0


def _ps(args, shards: int, batches, grads, local: _LocalTBE, placement: str = "ray", depth: int = 0, tree=None) -> dict:
    """Per round: seconds per step of ``args.chunk`` PS steps (``push_pull``: push step s and pull s+1+depth in
    one call per shard, as the trainer steps) and of the local TBE on the same batches; the side that
    goes first alternates. Each PS chunk waits for its last reply inside its timing."""
    import os

    from paramserver import PSConfig, TableConfig, create_parameter_server

    cfg = PSConfig(
        tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
        num_shards=shards,
        capacity_per_shard=int(args.rows * 1.2 / shards) + 1024,
        mode="sync",
        num_workers=1,
        learning_rate=0.01,
        seed=args.seed,
        pipeline_depth=depth,
        weights_dtype=args.weights_dtype or "fp32",
        device=getattr(args, "device", "cpu"),
    )
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
                    tickets[s + k] = client.pull_many(batches[(s + k) % len(batches)], step=s + k, lease=True, stale=k)
            client.wait(tickets.pop(s))  # rows of this step (the model would compute here)
            grads_s = {t: (ids, grads[t]) for t, ids in batch.items()}
            ahead = s + 1 + depth
            tickets[ahead] = client.push_pull(grads_s, batches[ahead % len(batches)], step=s)
            state["step"] = s + 1
        client.wait(tickets[state["step"]])  # the last reply counts in this chunk; the next step's rows are here
        return time.perf_counter() - t0

    def cpu_of(fn, whole_tree: bool):
        """(fn's result, CPU-seconds it used: every process of the tree, or this process only)."""
        c0 = tree.snapshot() if whole_tree else time.process_time()
        out = fn()
        return out, (tree.snapshot() if whole_tree else time.process_time()) - c0

    rounds, cpus = [], []
    try:
        ps_steps(args.warmup)
        local.run(batches[: args.warmup])
        load_start = os.getloadavg()
        for r in range(args.rounds):
            chunk = [batches[(state["step"] + i) % len(batches)] for i in range(args.chunk)]
            if r % 2 == 0:
                base, base_cpu = cpu_of(lambda c=chunk: local.run(c), False)
                ps, ps_cpu = cpu_of(lambda: ps_steps(args.chunk), tree is not None)
            else:
                ps, ps_cpu = cpu_of(lambda: ps_steps(args.chunk), tree is not None)
                base, base_cpu = cpu_of(lambda c=chunk: local.run(c), False)
            rounds.append((base / args.chunk, ps / args.chunk))
            cpus.append((base_cpu, ps_cpu))
        load_end = os.getloadavg()
        stats = client.stats()
    finally:
        client.shutdown()
    return {
        "rounds": rounds,
        "cpu": cpus,  # per round: (local TBE CPU-s, PS CPU-s) for args.chunk steps each
        "load": (load_start, load_end),
        "rows": sum(s["rows"] for s in stats),
        "shard_cpu_ms_per_step": 1e3 * sum(s["pull_cpu_s"] + s["push_cpu_s"] for s in stats) / max(state["step"], 1),
    }


def check_device(device: str) -> None:
    """UserError, before any work, when ``--device cuda`` is asked where torch sees no CUDA device."""
    import torch

    from common.errors import UserError

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda: torch sees no CUDA device here (a CPU build of torch/fbgemm, or no GPU); "
            "install the CUDA builds as docs/gpu.md says, or leave --device at cpu"
        )


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
    actors = [
        cls.options(num_cpus=0).remote(args.tables, int(bounds[i + 1] - bounds[i]), args.dim) for i in range(shards)
    ]
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
        ray.get(
            [a.apply.remote({t: u[bounds[i] : bounds[i + 1]] for t, u in update.items()}) for i, a in enumerate(actors)]
        )

    try:
        for batch in batches[: args.warmup]:
            step(batch)
        t0 = time.perf_counter()
        for batch in batches[args.warmup : n]:
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
    from common.errors import UserError

    try:
        shard_counts = [int(s) for s in str(args.shards).split(",")]
    except ValueError:
        raise UserError(f"--shards {args.shards!r}: expected shard counts like 1,2,4") from None
    try:
        row_counts = [int(r) for r in str(args.rows).split(",")]
    except ValueError:
        raise UserError(f"--rows {args.rows!r}: expected a row count like 200000 (or several with --scale)") from None
    if not row_counts or min(row_counts) < 1 or (len(row_counts) > 1 and not args.scale):
        raise UserError("--rows takes one positive row count (several, like 1000000,10000000, with --scale)")
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
    check_device(getattr(args, "device", "cpu"))
    torch.set_num_threads(1)
    if "ray" in placements:
        ensure_ray(RayConfig(num_cpus=2))
    if args.scale:
        return _scale(args, row_counts, shard_counts, placements, depths)
    args.rows = row_counts[0]
    batches = _batches(args, args.warmup + args.chunk * (args.rounds + 1) + 1)
    rng = np.random.default_rng(args.seed + 1)
    grads = {f"t{i}": rng.standard_normal((args.batch, args.dim)).astype(np.float32) for i in range(args.tables)}
    rows_per_step = args.tables * args.batch

    result: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "tables x batch x dim": f"{args.tables} x {args.batch} x {args.dim}, {args.rows} rows, zipf {args.zipf}",
        "unique ids per table-step": float(np.mean([len(np.unique(b["t0"])) for b in batches])),
        "rounds x steps": f"{args.rounds} x {args.chunk} per side, alternating (baseline first on even rounds)",
        "ratio_vs_local_tbe": {},
        "local_tbe_ms_per_step": {},
        "ps_ms_per_step": {},
        "ps_rows_per_s_median": {},
        "load_average_1_5_15": {},
        "shard_cpu_ms_per_step": {},
        "naive_ps_ms_per_step": {},
        "ratio_vs_naive_ps": {},
    }
    result["cpu_s_per_1k_rows"] = {}
    result["local_tbe_cpu_s_per_1k_rows"] = {}
    result["cpu_ratio_vs_local_tbe"] = {}
    from bench.cputree import ProcessTreeCPU, per_thousand

    tree = ProcessTreeCPU().start()
    baseline = _LocalTBE(args, grads)
    try:
        runs = [(n, p, d) for d in depths for p in placements for n in shard_counts]
        _ps_runs(args, runs, batches, grads, baseline, tree, result, rows_per_step, per_thousand)
    finally:
        result["cpu_s_by_process"] = {k: round(v, 2) for k, v in list(tree.by_name().items())[:12]}
        tree.stop()
    return result


def _ps_runs(args, runs, batches, grads, baseline, tree, result, rows_per_step, per_thousand) -> None:
    for n, placement, depth in runs:
        info = _ps(args, n, batches, grads, baseline, placement, depth, tree)
        key = (str(n) if placement == "ray" else f"{n} in_process") + (f" depth {depth}" if depth else "")
        base = [b for b, _ in info["rounds"]]
        ps = [p for _, p in info["rounds"]]
        result["ratio_vs_local_tbe"][key] = summary([b / p for b, p in info["rounds"]])
        result["local_tbe_ms_per_step"][key] = summary([1e3 * b for b in base])
        result["ps_ms_per_step"][key] = summary([1e3 * p for p in ps])
        result["ps_rows_per_s_median"][key] = rows_per_step / summary(ps)["median"]
        result["load_average_1_5_15"][key] = {
            "start": [round(x, 2) for x in info["load"][0]],
            "end": [round(x, 2) for x in info["load"][1]],
        }
        result["shard_cpu_ms_per_step"][key] = info["shard_cpu_ms_per_step"]
        rows = rows_per_step * args.chunk
        result["cpu_s_per_1k_rows"][key] = summary([per_thousand(p, rows) for _, p in info["cpu"]])
        result["local_tbe_cpu_s_per_1k_rows"][key] = summary([per_thousand(b, rows) for b, _ in info["cpu"]])
        result["cpu_ratio_vs_local_tbe"][key] = summary([p / b for b, p in info["cpu"] if b > 0] or [float("nan")])
        if args.naive_steps > 0 and placement == "ray" and depth == 0:
            naive = _naive(args, n, batches, grads)
            result["naive_ps_ms_per_step"][key] = naive * 1e3
            result["ratio_vs_naive_ps"][key] = naive / summary(ps)["median"]


def _scale_batches(args, steps: int):
    """Steps of Zipf ids over an unbounded id space (ranks >= 0, so new ids keep coming in the tail)."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    return [
        {f"t{i}": (rng.zipf(args.zipf, size=args.batch) - 1).astype(np.int64) for i in range(args.tables)}
        for _ in range(steps)
    ]


def _prefill(client, tables: int, per_table: int, chunk: int = 1 << 17) -> float:
    """Admit ``per_table`` ids (negative: disjoint from the steps' ids) into every table through pulls;
    returns the seconds it took."""
    import numpy as np

    t0 = time.perf_counter()
    for a in range(0, per_table, chunk):
        ids = -1 - np.arange(a, min(per_table, a + chunk), dtype=np.int64)
        client.wait(client.pull_many({f"t{i}": ids for i in range(tables)}))
    return time.perf_counter() - t0


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _scale(args, row_counts, shard_counts, placements, depths) -> dict:
    """The table-size run (module docstring): ms per step with the tables pre-filled to each size."""
    import gc
    import os
    import statistics

    import numpy as np

    from paramserver import PSConfig, TableConfig, create_parameter_server

    steps = args.warmup + args.chunk * args.rounds + 1
    batches = _scale_batches(args, steps + max(depths) + 1)
    rng = np.random.default_rng(args.seed + 1)
    grads = {f"t{i}": rng.standard_normal((args.batch, args.dim)).astype(np.float32) for i in range(args.tables)}
    seen, new_per_step = [set() for _ in range(args.tables)], []
    for b in batches[:steps]:
        fresh = 0
        for i in range(args.tables):
            u = np.unique(b[f"t{i}"]).tolist()
            fresh += len(set(u) - seen[i])
            seen[i].update(u)
        new_per_step.append(fresh)
    dtype = args.weights_dtype or "fp16"
    result: dict = {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "tables x batch x dim": f"{args.tables} x {args.batch} x {args.dim}, {dtype} rows, zipf {args.zipf} over "
        "an unbounded id space",
        "new ids per step (all tables, median of the timed steps)": statistics.median(new_per_step[args.warmup :]),
        "steps": f"{args.warmup} warm-up + {args.rounds} x {args.chunk} timed",
        "ps_ms_per_step": {},
        "ratio_to_smallest": {},
        "shard_cpu_ms_per_step": {},
        "prefill_s": {},
        "rows_held": {},
        "load_average_1_5_15": {},
        "peak_rss_gib_so_far": {},
    }
    for n, placement, depth in [(n, p, d) for d in depths for p in placements for n in shard_counts]:
        first = None
        for rows in row_counts:
            per_table = max(1, rows // args.tables)
            cap = int(per_table * 1.05 / n) + 2 * steps * args.batch + 1024
            cfg = PSConfig(
                tables=tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables)),
                num_shards=n,
                capacity_per_shard=cap,
                mode="sync",
                num_workers=1,
                learning_rate=0.01,
                seed=args.seed,
                pipeline_depth=depth,
                weights_dtype=dtype,
                device=getattr(args, "device", "cpu"),
            )
            client = create_parameter_server(cfg, placement=placement)
            try:
                fill_s = _prefill(client, args.tables, per_table)
                before = client.stats()
                cpu0 = sum(s["pull_cpu_s"] + s["push_cpu_s"] for s in before)
                per_step, load_start = _time_steps(client, args, batches, grads, depth)
                load_end = os.getloadavg()
                after = client.stats()
            finally:
                client.shutdown()
                del client  # free this size's tables before the next size is built
                gc.collect()
            key = f"{rows} rows, {n} shards {placement}" + (f" depth {depth}" if depth else "")
            ms = [1e3 * x for x in per_step]
            result["ps_ms_per_step"][key] = summary(ms)
            first = first or summary(ms)["median"]
            result["ratio_to_smallest"][key] = summary(ms)["median"] / first
            result["shard_cpu_ms_per_step"][key] = (
                1e3 * (sum(s["pull_cpu_s"] + s["push_cpu_s"] for s in after) - cpu0) / max(1, steps)
            )
            result["prefill_s"][key] = fill_s
            result["rows_held"][key] = sum(s["rows"] for s in after)
            result["load_average_1_5_15"][key] = {
                "start": [round(x, 2) for x in load_start],
                "end": [round(x, 2) for x in load_end],
            }
            result["peak_rss_gib_so_far"][key] = _peak_rss_bytes() / 2**30
    return result


def _time_steps(client, args, batches, grads, depth: int):
    """Seconds per step of each timed chunk of sync steps (``push_pull`` as the trainer steps)."""
    import os

    tickets = {k: client.pull_many(batches[k], step=k, lease=True, stale=k) for k in range(depth + 1)}

    def steps(first: int, n: int) -> float:
        t0 = time.perf_counter()
        for s in range(first, first + n):
            client.wait(tickets.pop(s))
            grads_s = {t: (ids, grads[t]) for t, ids in batches[s].items()}
            ahead = s + 1 + depth
            tickets[ahead] = client.push_pull(grads_s, batches[ahead], step=s)
        client.wait(tickets[first + n])
        return time.perf_counter() - t0

    steps(0, args.warmup)
    load_start = os.getloadavg()
    out, at = [], args.warmup
    for _ in range(args.rounds):
        out.append(steps(at, args.chunk) / args.chunk)
        at += args.chunk
    return out, load_start
