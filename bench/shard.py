"""``freshrec bench shard``: one parameter-server shard's push and pull, new data path vs old, no Ray.

Push: the shard's ``apply_push`` of the same prepared pushes (4 tables x the distinct ids of
a Zipf batch, as ``bench ps`` sends them) on two shards built alike: one calls FBGEMM's fused
backward + optimizer kernel directly (``direct_update``, the default), the other runs the TBE
forward then backward (the path before). Their weights must stay bit-identical; the result
says whether they did.

Pull: the pull reply for the same ids as ``pull_flat`` (rows gathered into the one flat
reply buffer) vs the per-table arrays then ``wire.pack_rows`` (a second copy of every row:
the path before).

Both sides alternate in ``--rounds`` rounds of ``--chunk`` calls (which goes first alternates);
the result is the median and range of the per-round ratios old/new (> 1: the new path is
faster) and the load average (``os.getloadavg()``) at the start and end.

``--idmap`` (the id map alone): with ``--held`` ids already held (e.g. ``500000,5000000,15000000``),
the time of ``IdMap.insert`` of ``--batch`` new ids and of ``remove_slots`` of them again, for the
hash-indexed map and for the sorted-array map it replaced (kept here as the baseline, which copies
itself on every call), alternating in ``--rounds`` rounds of ``--chunk`` calls; and each size's
insert time over the smallest size's (target: flat).
"""

from __future__ import annotations

import argparse
import time

DESCRIPTION = "one PS shard's push (direct fused backward vs forward+backward) and pull reply (one copy vs two)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=8, help="alternating rounds old <-> new (default 8)")
    parser.add_argument("--chunk", type=int, default=5, help="calls per round and side (default 5)")
    parser.add_argument("--rows", type=int, default=200_000, help="id universe per table (default 200000)")
    parser.add_argument("--batch", type=int, default=8192, help="ids per table per step before dedup (default 8192)")
    parser.add_argument("--tables", type=int, default=4, help="number of tables (default 4)")
    parser.add_argument("--dim", type=int, default=64, help="row dim (default 64)")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the ids (default 1.1)")
    parser.add_argument("--optimizer", default="rowwise_adagrad", choices=["rowwise_adagrad", "adagrad", "sgd"])
    parser.add_argument("--weights-dtype", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--idmap",
        action="store_true",
        help="time the id map alone: insert/remove of --batch new ids with --held ids held, hash map "
        "vs the previous sorted map",
    )
    parser.add_argument(
        "--held",
        default="500000,5000000,15000000",
        help="with --idmap: ids held before timing (default 500000,5000000,15000000)",
    )


def _check(args) -> None:
    from common.errors import UserError

    for name in ("rounds", "chunk", "rows", "batch", "tables"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.dim < 4 or args.dim % 4:
        raise UserError(f"--dim must be a positive multiple of 4 (FBGEMM), got {args.dim}")


class SortedIdMap:
    """The previous ``IdMap``: keys sorted with a parallel slot array, one ``np.insert`` per new batch."""

    def __init__(self, capacity: int, held) -> None:  # held: int64 ids
        import numpy as np

        order = np.argsort(held)
        self._keys = held[order]
        self._slots = order.astype(np.int64)
        self.slot_key = np.zeros(capacity, np.int64)
        self.slot_key[: len(held)] = held
        self._free = np.arange(capacity - 1, len(held) - 1, -1, dtype=np.int64)
        self._free = np.concatenate([self._free, np.zeros(len(held), np.int64)])
        self._n_free = capacity - len(held)

    def insert(self, ids):
        import numpy as np

        n = len(ids)
        slots = self._free[self._n_free - n : self._n_free][::-1].copy()
        self._n_free -= n
        order = np.argsort(ids, kind="stable")
        at = np.searchsorted(self._keys, ids[order])
        self._keys = np.insert(self._keys, at, ids[order])
        self._slots = np.insert(self._slots, at, slots[order])
        self.slot_key[slots] = ids
        return slots

    def remove_slots(self, slots):
        import numpy as np

        ids = self.slot_key[slots].copy()
        keep = np.ones(len(self._keys), dtype=bool)
        keep[np.searchsorted(self._keys, ids)] = False
        self._keys, self._slots = self._keys[keep], self._slots[keep]
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        return ids


def _idmap(args) -> dict:
    """``--idmap`` (module docstring)."""
    import os
    import statistics

    import numpy as np

    from common.errors import UserError
    from paramserver.idmap import IdMap

    try:
        sizes = [int(x) for x in str(args.held).split(",")]
    except ValueError:
        raise UserError(f"--held {args.held!r}: expected id counts like 500000,5000000") from None
    if not sizes or min(sizes) < 0:
        raise UserError("--held takes id counts >= 0")
    rng = np.random.default_rng(args.seed)

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    out = {
        "machine": f"{os.cpu_count()} CPUs",
        "new ids per call": args.batch,
        "rounds x calls": f"{args.rounds} x {args.chunk} per side, alternating (sorted first on even rounds)",
        "insert_ms_hash": {},
        "insert_ms_sorted": {},
        "remove_ms_hash": {},
        "remove_ms_sorted": {},
        "insert_ratio_sorted_over_hash": {},
        "hash_insert_over_smallest": {},
        "hash_map_bytes_per_slot": {},
        "load_average_1_5_15": {},
    }
    first = None
    for held in sizes:
        cap = held + args.batch + 1
        ids = np.unique(rng.integers(-(2**63), 2**63 - 1, size=held + held // 100 + 16, dtype=np.int64))
        ids = ids[rng.permutation(len(ids))][:held]
        new_map = IdMap(cap)
        for a in range(0, held, 1 << 20):
            new_map.insert(ids[a : a + (1 << 20)])
        old_map = SortedIdMap(cap, ids)
        fresh = [
            rng.integers(-(2**63), 2**63 - 1, size=args.batch, dtype=np.int64) for _ in range(args.chunk)
        ]  # collisions with held ids: odds ~ held * batch / 2**64

        def one_side(m, fresh=fresh):
            ins = rem = 0.0
            for f in fresh:
                t0 = time.perf_counter()
                slots = m.insert(f)
                t1 = time.perf_counter()
                m.remove_slots(slots)
                ins, rem = ins + t1 - t0, rem + time.perf_counter() - t1
            return ins / len(fresh), rem / len(fresh)

        one_side(new_map), one_side(old_map)  # warm-up
        load_start = os.getloadavg()
        rounds = []
        for r in range(args.rounds):
            if r % 2 == 0:
                o = one_side(old_map)
                n = one_side(new_map)
            else:
                n = one_side(new_map)
                o = one_side(old_map)
            rounds.append((o, n))
        key = f"{held} held"
        out["insert_ms_hash"][key] = summary([1e3 * n[0] for _, n in rounds])
        out["insert_ms_sorted"][key] = summary([1e3 * o[0] for o, _ in rounds])
        out["remove_ms_hash"][key] = summary([1e3 * n[1] for _, n in rounds])
        out["remove_ms_sorted"][key] = summary([1e3 * o[1] for o, _ in rounds])
        out["insert_ratio_sorted_over_hash"][key] = summary([o[0] / n[0] for o, n in rounds])
        med = out["insert_ms_hash"][key]["median"]
        first = first or med
        out["hash_insert_over_smallest"][key] = med / first
        out["hash_map_bytes_per_slot"][key] = new_map.nbytes / cap
        out["load_average_1_5_15"][key] = {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        }
        del new_map, old_map
    return out


def run(args: argparse.Namespace) -> dict:
    import os
    import statistics

    import numpy as np
    import torch

    from paramserver import EmbeddingShard, PSConfig, TableConfig, wire

    _check(args)
    if args.idmap:
        return _idmap(args)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(args.rows)
    names = tuple(f"t{i}" for i in range(args.tables))
    cfg = PSConfig(
        tables=tuple(TableConfig(n, args.dim) for n in names),
        capacity_per_shard=args.rows,
        optimizer=args.optimizer,
        weights_dtype=args.weights_dtype,
        learning_rate=0.01,
        seed=args.seed,
    )
    new, old = EmbeddingShard(cfg), EmbeddingShard(cfg, direct_update=False)
    steps = args.chunk * 2
    pulls, pushes = [], []
    for _ in range(steps):
        batch = {}
        for n in names:
            ids, counts = np.unique(perm[(rng.zipf(args.zipf, args.batch) - 1) % args.rows], return_counts=True)
            batch[n] = (ids.astype(np.int64), counts.astype(np.int64))
        pulls.append(batch)
        grads = {
            n: (ids, rng.standard_normal((len(ids), args.dim)).astype(np.float32)) for n, (ids, _) in batch.items()
        }
        pushes.append(new.prepare_push(grads))
    for shard in (new, old):  # admit every row first, so both push and pull hit resident rows
        for batch in pulls:
            shard.pull(batch)

    def push_new(i):
        new.apply_push(pushes[i % steps])

    def push_old(i):
        old.apply_push(pushes[i % steps])

    def pull_new(i):
        new.pull_flat(pulls[i % steps])

    def pull_old(i):
        wire.pack_rows(names, new.pull(pulls[i % steps]))  # per-table rows, then the concatenation

    def timed(fn, start):
        t0 = time.perf_counter()
        for i in range(start, start + args.chunk):
            fn(i)
        return (time.perf_counter() - t0) / args.chunk

    def alternate(old_fn, new_fn):
        rounds = []
        old_fn(0), new_fn(0)  # warm-up
        for r in range(args.rounds):
            if r % 2 == 0:
                o = timed(old_fn, r * args.chunk)
                n = timed(new_fn, r * args.chunk)
            else:
                n = timed(new_fn, r * args.chunk)
                o = timed(old_fn, r * args.chunk)
            rounds.append((o, n))
        return rounds

    def summary(values):
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    load_start = os.getloadavg()
    push_rounds = alternate(push_old, push_new)
    load_mid = os.getloadavg()
    pull_rounds = alternate(pull_old, pull_new)
    load_end = os.getloadavg()
    same = all(
        np.array_equal(new.table_state(n)["rows"], old.table_state(n)["rows"])
        and all(
            np.array_equal(new.table_state(n)[k], old.table_state(n)[k])
            for k in new.table_state(n)
            if k.startswith("opt_state")
        )
        for n in names
    )
    rows = float(np.mean([sum(len(v[0]) for v in b.values()) for b in pulls]))
    return {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "tables x batch x dim": f"{args.tables} x {args.batch} x {args.dim}, {args.rows} rows, zipf {args.zipf}, "
        f"{args.optimizer}, {args.weights_dtype}",
        "distinct rows per call (all tables)": rows,
        "rounds x calls": f"{args.rounds} x {args.chunk} per side, alternating (old first on even rounds)",
        "direct_update": new.direct_update,
        "push_ratio_old_over_new": summary([o / n for o, n in push_rounds]),
        "push_ms_old": summary([1e3 * o for o, _ in push_rounds]),
        "push_ms_new": summary([1e3 * n for _, n in push_rounds]),
        "pull_ratio_old_over_new": summary([o / n for o, n in pull_rounds]),
        "pull_ms_old": summary([1e3 * o for o, _ in pull_rounds]),
        "pull_ms_new": summary([1e3 * n for _, n in pull_rounds]),
        "bit_identical_after_pushes": bool(same),
        "load_average_1_5_15": {
            "start": [round(x, 2) for x in load_start],
            "after_push": [round(x, 2) for x in load_mid],
            "end": [round(x, 2) for x in load_end],
        },
    }
