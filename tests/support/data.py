"""Where the real (shared, never committed) data lives, and synthetic data files and logs of known shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
TAOBAO_CSV = SHARED_DATA / "taobao_userbehavior" / "UserBehavior_timeordered_96k.csv"
ML100K_DIR = SHARED_DATA / "ml-100k"


def require(path: Path) -> Path:
    """``path``, or a skip that says where the real data is described when it is absent."""
    if not path.exists():
        pytest.skip(f"real data not found at {path}: see ../shared/data/README.md (it is never committed here)")
    return path


def synthetic_log(path: Path, rows: int = 4000, seed: int = 0) -> Path:
    """A Taobao-format log (user,item,category,behavior,ts) with a learnable signal."""
    rng = np.random.default_rng(seed)
    head = rng.random(rows) < 0.5  # half the events from a few heavy ids, half from a long tail (as the real log)
    users = np.where(head, rng.integers(1, 200, rows), rng.integers(1, 3000, rows))
    items = np.where(head, rng.integers(1, 300, rows), rng.integers(1, 5000, rows))
    buy = rng.random(rows) < np.where(items % 7 == 0, 0.6, 0.05)
    ts = 1511658000 + np.sort(rng.integers(0, 600, rows))
    path.write_text(
        "".join(f"{u},{i},{i % 40},{'buy' if b else 'pv'},{t}\n" for u, i, b, t in zip(users, items, buy, ts))
    )
    return path


def taobao_head(path: Path, rows: int) -> Path:
    """The first ``rows`` rows of the real Taobao log at ``path`` (a synthetic log of the same format when the
    shared data is absent: the code paths are tested either way)."""
    if TAOBAO_CSV.exists():
        with open(TAOBAO_CSV) as src:
            path.write_text("".join(next(src) for _ in range(rows)))
    else:
        synthetic_log(path, rows=rows)
    return path


def taobao_data_files(root: Path, rows: int = 5000, window_s: int = 60) -> list:
    """:func:`taobao_head` split into ``window_s``-second data files under ``root/data``."""
    from trainer.data import Validator, load_spec
    from trainer.data.split import split_into_files

    head = taobao_head(root / "head.csv", rows)
    return list(split_into_files([head], Validator(load_spec("taobao")), window_s, root / "data", progress=False).files)


def small_csv(path: Path, rows: int, seed: int) -> Path:
    """A small Taobao-format CSV (200 users, 300 items, 15-minute windows by seed) with a learnable signal."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 200, rows), rng.integers(1, 300, rows)
    buy = rng.random(rows) < np.where(items % 5 == 0, 0.7, 0.05)
    ts = 1511658000 + seed * 900 + np.sort(rng.integers(0, 900, rows))
    path.write_text(
        "".join(f"{u},{i},{i % 30},{'buy' if b else 'pv'},{t}\n" for u, i, b, t in zip(users, items, buy, ts))
    )
    return path


def flipped(src: Path, dst: Path) -> Path:
    """The same events with every label flipped (buy/cart <-> pv): a corrupted data file."""
    out = []
    for line in src.read_text().splitlines():
        u, i, c, b, t = line.split(",")
        out.append(",".join((u, i, c, "pv" if b in ("buy", "cart") else "buy", t)))
    dst.write_text("\n".join(out) + "\n")
    return dst


def synthetic_file(spec, n: int, seed: int, start_ts: int = 1_511_658_000, n_users: int = 300, n_items: int = 200):
    """An in-memory data file (``EventBatch``) with a known signal: P(click) depends on the item (a fixed
    "good" half: 0.6, the rest: 0.1) and on the first dense feature (+0.2 when > 0). Every sparse table of
    ``spec`` gets ids; tables other than user/item get item // 10. (Was ``trainer.quality.synthetic_shard``.)"""
    import pyarrow as pa

    from trainer.data import EventBatch

    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    item = rng.integers(0, n_items, n)
    dense = rng.normal(size=(n, len(spec.dense))).astype(np.float32)
    good = (item * 2654435761 % 97) % 2 == 0
    p = np.where(good, 0.6, 0.1) + (0.2 * (dense[:, 0] > 0) if len(spec.dense) else 0.0)
    label = (rng.random(n) < p).astype(np.float32)
    sparse = {}
    for f in spec.sparse:
        sparse[f.name] = {"user": user, "item": item}.get(f.name, item // 10).astype(np.int64)
    ts = start_ts + np.sort(rng.integers(0, 300, n)).astype(np.int64)
    eid = (np.int64(seed) << 32) + np.arange(n, dtype=np.int64)
    lengths = {f.name: np.ones(n, np.int64) for f in spec.sparse if f.multi_valued}  # one id per row
    return EventBatch(
        source=f"synthetic-{seed}",
        event_id=eid,
        ts=ts,
        label=label,
        sparse=sparse,
        dense=dense,
        rows=np.arange(1, n + 1, dtype=np.int64),
        table=pa.table({"event_id": eid}),
        lengths=lengths,
    )
