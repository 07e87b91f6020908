"""``freshrec bench restart``: restart-to-first-new-file time after N consumed data files (issue 19: within 2x
of the time after 10 when N is 1,000).

    freshrec bench restart --files 10,1000 --repeats 5 --json
    freshrec bench restart --files 10,100 --repeats 1            # a smoke run

Per N: a directory of N small consumed data files (``--rows`` rows each) and a store holding one version
whose ledger records all of them (built cheaply: the files are followed and recorded, not trained; the
version is a real one, cut by ``VersionKeeper`` with the data layer's state); then one new data file lands
and the restart is timed, in process, as a stream does it: a new training core and ``VersionKeeper.restore``
(shards, core, ledger, data-layer state), the follower's pass over the directory up to the new file (consumed
files are recognised by name, size and mtime, not re-read), and the new file validated and trained (the
same ``consume`` the Ray Train worker runs); then the CPU per poll of a live follower over the directory, every
file consumed, at the default ``poll_s`` (``poll_cpu_ms`` per poll, ``poll_cpu_share`` of a core: what a waiting
stream pays). Reported per N: the median (and min/max) of ``--repeats``
restarts and of each phase (``restore_s``, ``follow_s``, ``train_s``), and ``ratio`` = the largest N's median
over the smallest's. Not included: the embedded Ray's start and the Ray Train worker's (constant in N, 25 s
or more: ``freshrec stream`` end to end is dominated by them), and training the history (its dedup window is
bounded by count and horizon, not by N).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

DESCRIPTION = "restart-to-first-new-file time after N consumed data files (in process, no Ray)"
BASE_TS = 1_511_600_000
POLL_SECONDS = 3.0  # a live follower timed after each restart, at the default poll_s (poll_cpu_ms, poll_cpu_share)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--files", default="10,1000", help="comma list of consumed-file counts N (default 10,1000)")
    p.add_argument("--rows", type=int, default=5, help="rows per consumed data file (default 5)")
    p.add_argument("--new-rows", type=int, default=200, help="rows of the new data file (default 200)")
    p.add_argument("--repeats", type=int, default=5, help="restarts timed per N (default 5)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the run directories here (default: a temp dir)")


def _counts(text: str) -> list[int]:
    from common.errors import UserError

    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--files must be a comma list of integers, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise UserError(f"--files needs counts >= 1, got {text!r}")
    return counts


def _rows(first_ts: int, n: int, salt: int) -> str:
    behaviors = ("pv", "cart", "fav", "buy")
    return "".join(
        f"{1 + (salt * 7 + i) % 97},{1 + (salt * 13 + i * 5) % 991},{1 + i % 9},{behaviors[(salt + i) % 4]},{first_ts + i}\n"
        for i in range(n)
    )


def _keeper(store_url: str):
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import DeadLetterWriter, Validator, load_spec
    from trainer.data.state import DataState
    from trainer.local import LocalTrainer
    from trainer.versioning import VersionKeeper

    spec = load_spec("taobao")
    t = LocalTrainer(spec, ModelConfig(), TrainConfig(seed=3))
    dead = DeadLetterWriter(None)
    v = Validator(spec, dead, stream=True)
    keeper = VersionKeeper(store_url, t.backend, t, data=DataState(v, lambda t=t: t.ledger))
    return t, v, dead, keeper


def build(root: Path, n: int, rows: int) -> tuple[Path, str]:
    """``root/incoming`` with ``n`` consumed data files and ``root/store`` with one version recording them."""
    from trainer.data import DataLedger
    from trainer.data.follow import follow_data_files

    src = root / "incoming"
    src.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (src / f"part-{i:06d}.csv").write_text(_rows(BASE_TS + i * 60, rows, i))
    ledger = DataLedger()
    for ref in follow_data_files(None, src, ledger, drain=True, settle_s=0.0):
        ledger.record(ref, rows, complete=True)
    store = str(root / "store")
    t, _, _, keeper = _keeper(store)
    t.ledger = ledger
    keeper.after_file(force=True)
    keeper.wait()
    keeper.store.release_writer()
    return src, store


def restart_once(src: Path, store: str) -> dict:
    """One timed restart: restore, follow to the first new file, train it."""
    from trainer.data.follow import follow_data_files
    from trainer.worker import consume

    t0 = time.perf_counter()
    t, v, dead, keeper = _keeper(store)
    keeper.restore()
    t1 = time.perf_counter()
    ref = next(iter(follow_data_files(None, src, t.ledger, drain=True, settle_s=0.0)), None)
    t2 = time.perf_counter()
    if ref is None:
        raise RuntimeError(f"the restarted follower found no new data file in {src}")
    taken = consume(ref, t, v, dead, 1.0)
    t3 = time.perf_counter()
    if taken is None or t.last_trained < 1:
        raise RuntimeError(f"the new data file {ref.name} was not trained")
    keeper.store.release_writer()
    return {
        "restart_s": t3 - t0,
        "restore_s": t1 - t0,
        "follow_s": t2 - t1,
        "train_s": t3 - t2,
        **dict(zip(("poll_cpu_ms", "poll_cpu_share"), poll_cpu(src, t.ledger), strict=True)),
    }


def poll_cpu(src: Path, ledger, seconds: float | None = None) -> tuple[float, float]:
    """``(CPU ms per poll, share of a core)`` of a live follower over ``src`` at the default ``poll_s`` once every
    file in it is consumed, for ``seconds``: what a long-running stream pays while it waits (full polls spaced by
    their own CPU cost, quick ones between: trainer/data/follow.py)."""
    from trainer.data.follow import follow_data_files

    seconds = POLL_SECONDS if seconds is None else seconds
    n, end = [0], time.monotonic() + seconds

    def stop() -> bool:
        n[0] += 1
        return time.monotonic() >= end

    c0, w0 = time.process_time(), time.monotonic()
    for ref in follow_data_files(None, src, ledger, drain=False, settle_s=0.0, stop=stop):
        raise RuntimeError(f"the follower found {ref.name} after every file was consumed")
    cpu = time.process_time() - c0
    return cpu / n[0] * 1e3, cpu / (time.monotonic() - w0)


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict:
    from common.errors import UserError

    counts = _counts(args.files)
    if args.repeats < 1 or args.rows < 1 or args.new_rows < 1:
        raise UserError("--repeats, --rows and --new-rows must be >= 1")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="freshrec-restart-"))
    out: dict = {}
    for n in counts:
        root = work / f"n-{n}"
        t_build = time.perf_counter()
        src, store = build(root, n, args.rows)
        build_s = time.perf_counter() - t_build
        (src / f"part-{n:06d}.csv").write_text(_rows(BASE_TS + n * 60 + 3600, args.new_rows, n))
        runs = [restart_once(src, store) for _ in range(args.repeats)]
        out[str(n)] = {
            **{
                k: _stats([r[k] for r in runs])
                for k in ("restart_s", "restore_s", "follow_s", "train_s", "poll_cpu_ms", "poll_cpu_share")
            },
            "build_s": round(build_s, 2),
        }
    lo, hi = out[str(counts[0])]["restart_s"]["median"], out[str(counts[-1])]["restart_s"]["median"]
    plo, phi = out[str(counts[0])]["poll_cpu_ms"]["median"], out[str(counts[-1])]["poll_cpu_ms"]["median"]
    return {
        "consumed_files": out,
        "poll_ratio": phi / plo if plo > 0 else float("nan"),
        "ratio": hi / lo if lo > 0 else float("nan"),
        "ratio_of": f"{counts[-1]} over {counts[0]} consumed files (restart_s medians; issue 19's target: <= 2)",
        "repeats": args.repeats,
        "work_dir": str(work),
    }
