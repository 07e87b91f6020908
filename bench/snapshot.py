"""``freshrec bench snapshot``: delta versions against full versions of the same shard, the training
pause, restore time, and RAM per row held.

One EmbeddingShard holds ``--tables`` tables totalling ``--rows`` rows (64-d fp16 rows, fused
row-wise Adagrad), all admitted. Each round writes a full version (the baseline: prepare +
write + commit), then changes ``--dirty`` of the rows (a pull and a push of those ids, untimed)
and writes a delta on it (the subject), so both see the same background load; the figures are
medians over the rounds with their range. The training pause is ``prepare_cut`` of the delta
(the only part of a version that holds training). Restore reads the last full + delta chain
into a fresh shard (one hash slice at a time). ``peak_rss_over_table``: the peak RSS of the
full cut (prepare + write), the delta cut, the commit and the restore against the table's own
resident bytes (VmHWM, reset per phase through /proc/self/clear_refs). RAM per row is measured (RSS growth while the shard is built and filled)
and computed from the shard's arrays, against the bare content of a row: 64 x 2 B (fp16 row)
+ 4 B (row-wise Adagrad state) = 132 B, 140 B with its int64 id.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

DESCRIPTION = "delta vs full version time, training pause, restore time and RAM per row (>= 10M rows)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in all tables together (default 10M)")
    parser.add_argument("--tables", type=int, default=2, help="tables sharing the rows (default 2)")
    parser.add_argument("--dim", type=int, default=64, help="row dim (default 64)")
    parser.add_argument("--dirty", type=float, default=0.01, help="fraction of rows changed per delta (default 0.01)")
    parser.add_argument("--rounds", type=int, default=3, help="full/delta rounds (default 3)")
    parser.add_argument("--store", default=None, help="version store URL (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--free-before-restore",
        action="store_true",
        help="free the trained shard before restoring (one table copy in memory: the 50M-row run)",
    )


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    """Peak RSS (VmHWM) since the last :func:`_reset_peak`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux: ``5`` into /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Peak:
    """The RSS a phase adds at its peak: ``peak RSS during it - RSS at its start`` (bytes)."""

    def __enter__(self):
        _trim()
        self.ok = _reset_peak()
        self.start = _rss()
        return self

    def __exit__(self, *exc):
        self.extra = (_hwm() - self.start) if self.ok else None
        return False


def _trim() -> None:
    """Give freed heap memory back to the OS, so RSS counts what is held, not what was once used."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _held_bytes(shard) -> dict:
    """Bytes the shard holds, by kind, from its arrays (capacity-sized buffers count in full)."""
    out = {"rows": 0, "optimizer_state": 0, "id_map": 0, "metadata": 0, "pending": 0}
    for t, w in enumerate(shard._weights):
        out["rows"] += w.numel() * w.element_size()
        out["optimizer_state"] += sum(s.numel() * s.element_size() for s in shard._states[t])
    for ts in shard._tables.values():
        m = ts.ids
        out["id_map"] += m.nbytes
        out["metadata"] += (
            ts.count.nbytes
            + ts.last_seen.nbytes
            + ts.last_version.nbytes
            + ts.touched.nbytes
            + ts.pinned.nbytes
            + ts.seen_at.nbytes
        )
        keys, counts, last = ts.pending.items()
        out["pending"] += keys.nbytes + counts.nbytes + last.nbytes
    return out


def _version(shard, store, full: bool, cut_id: str) -> dict:
    with _Peak() as cut_peak:
        t0 = time.perf_counter()
        shard.prepare_cut(cut_id, full)
        t1 = time.perf_counter()
        latest = store.latest()
        w = store.begin("full" if full else "delta", parent=None if full else latest, step=shard.step)
        infos = shard.write_cut(cut_id, store, w.version)
        t2 = time.perf_counter()
    with _Peak() as commit_peak:
        t2b = time.perf_counter()
        w.commit(infos)
        shard.commit_cut(cut_id)
        t3 = time.perf_counter()
    return {
        "total_s": (t2 - t0) + (t3 - t2b),
        "prepare_ms": (t1 - t0) * 1e3,
        "write_s": t2 - t1,
        "commit_ms": (t3 - t2b) * 1e3,
        "bytes": sum(i.bytes for i in infos),
        "version": w.version,
        "parts": len(infos),
        "cut_extra": cut_peak.extra,
        "commit_extra": commit_peak.extra,
    }


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from paramserver import EmbeddingShard, PSConfig, TableConfig
    from versions import VersionStore

    torch.set_num_threads(1)
    per_table = args.rows // args.tables
    tables = tuple(TableConfig(f"t{i}", args.dim) for i in range(args.tables))
    cfg = PSConfig(
        tables=tables,
        capacity_per_shard=per_table,
        weights_dtype="fp16",
        optimizer="rowwise_adagrad",
        learning_rate=0.01,
    )
    rng = np.random.default_rng(args.seed)
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="freshrec-bench-snapshot-")
    store = VersionStore(args.store or os.path.join(tmp.name, "versions"))
    load_before = os.getloadavg()
    try:
        ids = {
            t.name: np.unique(rng.integers(-(2**62), 2**62, size=per_table + per_table // 100 + 10))[:per_table]
            for t in tables
        }
        ids = {t: rng.permutation(v) for t, v in ids.items()}
        EmbeddingShard(PSConfig(tables=tables[:1], capacity_per_shard=16))  # load FBGEMM before measuring
        _trim()
        rss0 = _rss()
        shard = EmbeddingShard(cfg)
        chunk = 1 << 20
        for start in range(0, per_table, chunk):  # admit every row (init rows), 1M ids per pull
            shard.pull({t: v[start : start + chunk] for t, v in ids.items()}, step=0)
        _trim()
        rss_filled = _rss()
        held = _held_bytes(shard)
        n_dirty = max(1, int(per_table * args.dirty))
        grads = np.full((n_dirty, args.dim), 1e-3, np.float32)
        full, delta = [], []
        for r in range(args.rounds):
            full.append(_version(shard, store, True, f"full-{r}"))
            changed = {t: np.sort(rng.choice(v, size=n_dirty, replace=False)) for t, v in ids.items()}
            shard.pull(changed, step=r + 1)
            shard.push({t: (v, grads) for t, v in changed.items()}, step=r + 1)
            delta.append(_version(shard, store, False, f"delta-{r}"))
            store.gc(keep=2, grace_s=0)
        sample = {t: v[:: max(1, per_table // 1000)] for t, v in ids.items()}
        want = {t: shard.read(t, v) for t, v in sample.items()}
        if args.free_before_restore:  # one shard in memory at a time (a 50M-row table on a 24 GiB machine)
            del shard
            _trim()
        with _Peak() as restore_peak:
            t0 = time.perf_counter()
            fresh = EmbeddingShard(cfg)
            t_alloc = time.perf_counter() - t0
            t0 = time.perf_counter()
            fresh.restore_from_store(store, delta[-1]["version"])
            restore_s = time.perf_counter() - t0
        restored_equal = all(np.array_equal(fresh.read(t, v), want[t]) for t, v in sample.items())
        del fresh
    finally:
        if tmp is not None:
            tmp.cleanup()
    ratios = [d["total_s"] / f["total_s"] for f, d in zip(full, delta)]
    table_rss = max(1, rss_filled - rss0)

    def over(extra, base=1.0):
        return None if extra is None else base + extra / table_rss

    rows = per_table * args.tables
    held_total = sum(held.values())
    return {
        "machine": f"{os.cpu_count()} CPUs, torch threads 1",
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
        "tables": args.tables,
        "dim": args.dim,
        "rows_changed_per_delta": n_dirty * args.tables,
        "rounds": args.rounds,
        "delta_over_full": statistics.median(ratios),
        "delta_over_full_range": [min(ratios), max(ratios)],
        "pause_ms": statistics.median(d["prepare_ms"] for d in delta),
        "pause_ms_range": [min(d["prepare_ms"] for d in delta), max(d["prepare_ms"] for d in delta)],
        "full_s": _stats([f["total_s"] for f in full]),
        "delta_s": _stats([d["total_s"] for d in delta]),
        "full_pause_ms": _stats([f["prepare_ms"] for f in full]),
        "full_write_s": _stats([f["write_s"] for f in full]),
        "delta_write_s": _stats([d["write_s"] for d in delta]),
        "full_bytes": full[-1]["bytes"],
        "delta_bytes": delta[-1]["bytes"],
        "restore_s": restore_s,
        "restore_alloc_s": t_alloc,
        "restored_sample_equal": restored_equal,
        "bytes_per_row": held_total / rows,
        "bytes_per_row_by_kind": {k: v / rows for k, v in held.items()},
        "rss_bytes_per_row": (rss_filled - rss0) / rows,
        "physical_bytes_per_row": 2 * args.dim + 4,
        "physical_with_id_bytes_per_row": 2 * args.dim + 4 + 8,
        "table_rss_bytes": table_rss,
        "parts_per_full": full[-1]["parts"],
        "parts_per_delta": delta[-1]["parts"],
        "peak_rss_over_table": {
            "full_cut": max((over(f["cut_extra"]) for f in full), default=None),
            "delta_cut": max((over(d["cut_extra"]) for d in delta), default=None),
            "commit": max((over(x["commit_extra"]) for x in full + delta), default=None),
            "restore": over(restore_peak.extra, 0.0),
        },
        "peak_rss_note": "cut and commit: 1 + (peak RSS during the phase - RSS at its start) / the table's RSS "
        "(the table is resident throughout); restore: (peak - start) / the table's RSS, the "
        "new shard included (the trained shard is freed first with --free-before-restore)",
        "targets": {
            "delta_over_full": "<= 0.05",
            "pause_ms": "<= 50",
            "bytes_per_row": "<= 215",
            "peak_rss_over_table": "<= 1.25",
        },
    }
