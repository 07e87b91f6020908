"""Model versions to serve, for tests and ``bench serve``: a LocalTrainer that commits a version per data file.

    t = StoreTrainer("/tmp/s/versions")            # the built-in taobao spec
    v = t.add_file(write_taobao_csv("/tmp/s/part-0.csv", rows=2000, seed=0))   # -> version 1
    t.add_file(write_taobao_csv("/tmp/s/part-1.csv", rows=2000, seed=1))       # -> version 2 (a delta)

No Ray: the trainer runs in this process (``trainer.local.LocalTrainer`` + ``VersionKeeper``),
exactly the core and the version writer of ``freshrec stream``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from paramserver.config import PSConfig
from trainer.config import ModelConfig, TrainConfig
from trainer.data import Validator, load_spec, read_data_file
from trainer.local import LocalTrainer
from trainer.versioning import VersionKeeper, version_extra
from versions import SnapshotConfig


def write_taobao_csv(
    path: str | Path,
    rows: int,
    seed: int,
    start_ts: int = 1_511_658_000,
    users: int = 300,
    items: int = 400,
    categories: int = 20,
    new_items: int = 0,
) -> Path:
    """A Taobao-format CSV (user_id,item_id,category_id,behavior,ts) with a learnable signal: even
    items are bought often. ``new_items`` ids start at 10**6 + seed*1000 (items no earlier file had)."""
    rng = np.random.default_rng(seed)
    user = rng.integers(1, users + 1, rows)
    item = rng.integers(1, items + 1, rows)
    if new_items:
        fresh = rng.random(rows) < 0.2
        item[fresh] = 10**6 + seed * 1000 + rng.integers(0, new_items, int(fresh.sum()))
    cat = item % categories + 1
    p = np.where(item % 2 == 0, 0.5, 0.05)
    pos = rng.random(rows) < p
    behavior = np.where(pos, np.where(rng.random(rows) < 0.5, "buy", "cart"), "pv")
    ts = start_ts + np.sort(rng.integers(0, 3600, rows))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    lines = [f"{u},{i},{c},{b},{t}" for u, i, c, b, t in zip(user, item, cat, behavior, ts)]
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(path)  # data files land complete
    return path


class StoreTrainer:
    """Train file by file and commit a version after each (every_data_file), like ``freshrec stream``."""

    def __init__(
        self,
        store_url: str | Path,
        spec: str = "taobao",
        model: ModelConfig | None = None,
        train: TrainConfig | None = None,
        ps: PSConfig | None = None,
        snapshots: SnapshotConfig | None = None,
    ) -> None:
        self.spec = load_spec(spec)
        model, train = model or ModelConfig(), train or TrainConfig()
        ps = ps or PSConfig(num_shards=1)
        config = {"model": _plain(model), "train": _plain(train), "ps": _plain_dict(ps.settings())}
        self.trainer = LocalTrainer(self.spec, model, train, ps)
        self.keeper = VersionKeeper(
            str(store_url), self.trainer.backend, self.trainer, snapshots, extra=version_extra(spec, config)
        )
        self.validator = Validator(self.spec, stream=True)

    def add_file(self, path: str | Path) -> int:
        """Train on one data file and commit a version; returns its number."""
        batch = read_data_file(Path(path), self.validator)
        self.trainer.step_file(batch, Path(path).name, rows_read=self.validator.last_file.rows_in)
        self.keeper.after_file()
        self.keeper.wait()
        return self.keeper.last_version

    def restore(self) -> int | None:
        """Continue from the newest valid version in the store (None when it has none)."""
        return self.keeper.restore()

    def follow(
        self, incoming: str | Path, files: int, idle_timeout_s: float = 120.0, poll_s: float = 0.05
    ) -> list[int]:
        """Train on data files as they land in ``incoming`` (the stream's follower), a version after each;
        stop after ``files`` files or ``idle_timeout_s`` without one. Returns the versions committed."""
        from trainer.data import DataLedger
        from trainer.data.follow import follow_data_files

        out = []
        for ref in follow_data_files(
            None, str(incoming), DataLedger(), drain=False, poll_s=poll_s, settle_s=0.0, idle_timeout_s=idle_timeout_s
        ):
            out.append(self.add_file(ref.path))
            m = self.keeper.store.manifest(out[-1])  # logged: gc (keep 5) may remove the version before a reader
            print(f"committed version {out[-1]} with {ref.name} at {m.committed_at:.6f} kind {m.kind}", flush=True)
            if len(out) >= files:
                break
        return out

    def read(self, path: str | Path):
        """The EventBatch of a data file as training reads it (no training, no ledger)."""
        return read_data_file(Path(path), Validator(self.spec))


def _plain(cfg) -> dict:
    import dataclasses

    return _plain_dict(dataclasses.asdict(cfg))


def _plain_dict(values: dict) -> dict:
    import enum

    return {
        k: v.value if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v for k, v in values.items()
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.servedata --store URL --incoming DIR --files N``: a trainer process for ``bench serve``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.servedata")
    p.add_argument("--store", required=True)
    p.add_argument("--incoming", required=True)
    p.add_argument("--files", type=int, required=True)
    p.add_argument("--idle-timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    t = StoreTrainer(args.store)
    print(f"restored version {t.restore()}", flush=True)
    t.follow(args.incoming, args.files, args.idle_timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
