"""``freshrec bench soak``: a long stream of tiny data files, one version each; is anything growing? (issue 21)

    freshrec bench soak --files 2000 --json                 # the real soak (quiet machine, tens of minutes)
    freshrec bench soak --files 30 --warmup 10 --sample-every 10 --restart-repeats 1   # a smoke run

One run, on one embedded local Ray, as ``freshrec stream`` runs it: the driver runs ``run_ps_training``
(one Ray Train worker, ``--shards`` shard actors, a version after every data file, the publish gate on,
compaction to a full version every 10th version followed by ``VersionStore.gc(keep=5)``: gc runs inside
the trainer as configured by default) following a local incoming directory; **one Ray Serve replica**
(``serving.app``, the gRPC proxy on loopback) follows the store, or with ``--no-serve`` the in-process
follower (a ``ScoringService`` in the driver). The bench lands ``--files`` tiny data files (``--rows`` rows,
users and items drawn from a fixed universe so that the tables stop growing early) one at a time; each
file is landed once the previous one is served (closed loop: one version per file).

Measured per data file: **commit time** (the file's rename into the incoming directory -> the commit of
the first version holding it, from its manifest's ``committed_at``) and **freshness** (the rename -> the
first ModelInfo answer of the replica naming a version that holds it). A version the gate held is not
served (its file counts in ``held_files``, not in freshness).

Every ``--sample-every`` files: the RSS (and USS) of the driver, the Ray Train worker, each shard actor and
the replica (found by their PIDs in Ray's actor table: classes ``RayTrainWorker``, ``ShardHost``,
``ServeReplica:freshrec:Scorer``; ``--no-serve``: the follower is in the driver), the store's version count
(gc at work). Reported:

* ``rss_growth_mib_per_1000``: per process, the least-squares slope of RSS over data files from file
  ``--warmup`` (200) on, in MiB per 1,000 versions (target <= 1); a process that was replaced (new PID)
  is fitted on its last PID's samples;
* ``commit_s`` / ``freshness_s``: the median of the last 10% of files over that of the first 10%
  (target <= 1.2);
* ``restart``: restart-to-first-new-file time (``bench.restart.restart_once``: restore, follower pass, the
  new file trained; in process, no Ray start-up) on this run's store and incoming directory after all
  ``--files`` files, over the same on a copy of both taken after the 10th file (target <= 2), alternating,
  ``--restart-repeats`` each;
* with ``--worker-trace`` (instead of the above): the Ray Train worker loop itself, with its shards, run in
  this process (``bench.chaos.inproc``: the real loop, Ray Train's three calls answered in process) over
  ``--files`` landed data files with tracemalloc on, a version after each: the allocation sites of that
  process that grew from the ``--warmup``-th version to the end and the traced growth per 1,000 versions
  (the structures issue 21 bounds live there, out of reach of the driver's tracemalloc);
* ``regions_growth_mib_per_1000``: per process, the same fit for each kind of resident memory
  (``common.memory.regions``: anonymous split into glibc's main heap, its other arenas and other anonymous
  mappings; file-backed; shared memory, where Ray's object store is): which kind of page grows;
  ``env.seen``: the glibc variables (and ``--env``'s) each process started with, from ``/proc/PID/environ``;
* ``--env KEY=VALUE``: a variable in the environment of every Ray process of the run (set while the embedded
  Ray starts: the raylet and every worker inherit it; not the driver), to try an allocator setting
  (``MALLOC_ARENA_MAX=2``, ``MALLOC_TRIM_THRESHOLD_=...``) or the worker's ``FRESHREC_MALLOC_TRIM=1``;
* with ``--worker-probe``: the Ray Train worker writes its own memory every ``--sample-every`` versions
  (``common.memory.MemoryHousekeeping``: glibc's bytes in use and free inside its arenas, the number of
  arenas, Python's object count, Ray's object references, threads), reported as ``worker_probe`` with the
  growth of each from ``--warmup``; ``--worker-tracemalloc FRAMES`` adds tracemalloc inside that worker (the
  sites grown since ``--warmup``; its RSS then includes the traces);
* with ``--tracemalloc``: the driver's allocations that grew most from the first sample after the warm-up
  to the end (file:line, KiB, blocks), to name what grows (the driver's RSS then includes tracemalloc's own
  traces: take its growth figure from a run without it).

The work directory (``/tmp/freshrec-bench-soak-*``) is removed at the end unless ``--work-dir`` names one.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from common import memory

DESCRIPTION = (
    "soak: tiny data files, one version each, a Serve replica following, gc on; RSS per process per "
    "1,000 versions, commit time and freshness last tenth vs first tenth of the files, restart after N vs after 10 files"
)
APP_NAME = "freshrec"  # serving.app.APP_NAME (importing serving.app imports Ray Serve)
BASE_TS = 1_511_600_000
BASELINE_FILES = 10  # the restart baseline: a copy of the store and the incoming files after this many files
STARTUP_S = 600.0  # the first version waits for Ray Train's worker, the first answer for Serve's start-up
MIB = float(2**20)
# Ray actor class -> role (the processes whose memory the soak follows)
ACTOR_ROLES = {"RayTrainWorker": "train_worker", "ShardHost": "shard", f"ServeReplica:{APP_NAME}:Scorer": "replica"}
TARGETS = {"rss_growth_mib_per_1000": 1.0, "last_over_first": 1.2, "restart_ratio": 2.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--files", type=int, default=2000, help="data files landed, one version each (default 2000)")
    p.add_argument("--rows", type=int, default=16, help="rows per data file (default 16)")
    p.add_argument("--shards", type=int, default=2, help="PS shard actors (default 2)")
    p.add_argument("--sample-every", type=int, default=100, help="sample RSS every this many files (default 100)")
    p.add_argument(
        "--warmup", type=int, default=200, help="fit RSS growth from this many files on (default 200, the issue's)"
    )
    p.add_argument("--no-serve", action="store_true", help="follow with an in-process follower, not a Serve replica")
    p.add_argument(
        "--restart-repeats", type=int, default=3, help="restarts timed per state (default 3; 0: no restart phase)"
    )
    p.add_argument("--tracemalloc", action="store_true", help="trace the driver's allocations (names what grows)")
    p.add_argument("--file-timeout", type=float, default=120.0, help="seconds to wait for one file's version")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the run here (default: a temp dir, removed)")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for every process of the run's embedded Ray (the raylet and every worker "
        "inherit it; not the driver): e.g. MALLOC_ARENA_MAX=2, FRESHREC_MALLOC_TRIM=1 (repeatable)",
    )
    p.add_argument(
        "--worker-probe",
        action="store_true",
        help="the Ray Train worker writes its own memory every --sample-every versions (glibc arenas, in use and "
        "free, Python objects, Ray references; common/memory.py): reported as worker_probe",
    )
    p.add_argument(
        "--worker-tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --worker-probe: tracemalloc in the Ray Train worker, its sites grown since --warmup named "
        "(its RSS then includes the traces: take growth figures from a run without it)",
    )
    p.add_argument(
        "--worker-trace",
        action="store_true",
        help="instead: the Ray Train worker loop (and its shards) in this process under tracemalloc, a version per "
        "file: the worker-side sites that grew after the warm-up, and the bounded structures' sizes (no Ray)",
    )


# ---------------------------------------------------------------------------------------------- pure parts
def soak_rows(i: int, rows: int, users: int = 300, items: int = 400) -> str:
    """Data file ``i`` of the soak (Taobao format ``user,item,category,behavior,ts``): ids from a fixed
    universe (the tables stop growing once it is seen), a learnable signal (even items bought more often),
    both classes in every file, times after every earlier file's."""
    if rows < 2:
        raise ValueError(f"a soak data file needs at least 2 rows, got {rows}")
    rng = np.random.default_rng(i)
    user = rng.integers(1, users + 1, rows)
    item = rng.integers(1, items + 1, rows)
    pos = rng.random(rows) < np.where(item % 2 == 0, 0.5, 0.05)
    pos[0], pos[1] = True, False
    behavior = np.where(pos, "buy", "pv")
    ts = BASE_TS + i * 3600 + np.arange(rows)
    return "".join(f"{u},{it},{it % 20 + 1},{b},{t}\n" for u, it, b, t in zip(user, item, behavior, ts))


def growth_mib_per_1000(points: Sequence[tuple[float, float]], after: float) -> float:
    """Least-squares slope of ``(files, rss_bytes)`` points with ``files >= after``, in MiB per 1,000 files;
    NaN with fewer than two distinct x."""
    pts = [(float(x), float(y)) for x, y in points if x >= after]
    if len({x for x, _ in pts}) < 2:
        return float("nan")
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope = float(np.polyfit(x, y, 1)[0])
    return slope * 1000.0 / MIB


def last_over_first(values: Sequence[float], share: float = 0.1) -> dict:
    """The median of the last ``share`` of ``values`` over the median of the first (in order); NaNs dropped
    first. ``{"first": ..., "last": ..., "ratio": ..., "n": per side}``."""
    if not 0 < share <= 0.5:
        raise ValueError(f"share must be in (0, 0.5], got {share}")
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        nan = float("nan")
        return {"first": nan, "last": nan, "ratio": nan, "n": 0}
    k = max(1, round(len(vals) * share))
    first, last = statistics.median(vals[:k]), statistics.median(vals[-k:])
    return {"first": first, "last": last, "ratio": last / first if first > 0 else float("nan"), "n": k}


def roles_of(actors: Mapping[str, Mapping], driver_pid: int) -> dict[str, int]:
    """The processes the soak follows, from Ray's actor table (``ray._private.state.actors()``: actor id ->
    ``{"ActorClassName", "State", "Pid", "StartTime"}``): ``driver``, ``train_worker``, ``shard-0`` ..
    (ordered by start time, then actor id), ``replica`` -> PID. Only live actors with a PID; a role with
    several processes other than shards is numbered too (``replica-1``)."""
    found: dict[str, list[tuple[float, str, int]]] = {}
    for actor_id, info in actors.items():
        role = ACTOR_ROLES.get(str(info.get("ActorClassName", "")))
        pid = int(info.get("Pid") or 0)
        if role is None or info.get("State") != "ALIVE" or pid <= 0:
            continue
        found.setdefault(role, []).append((float(info.get("StartTime") or 0), str(actor_id), pid))
    out = {"driver": int(driver_pid)}
    for role in sorted(found):
        procs = sorted(found[role])
        if role == "shard" or len(procs) > 1:
            out.update({f"{role}-{i}": pid for i, (_, _, pid) in enumerate(procs)})
        else:
            out[role] = procs[0][2]
    return out


def growth_by_process(samples: Sequence[Mapping], after: float, value=None) -> dict[str, float]:
    """Per process key of ``samples`` (each ``{"files": n, "procs": {key: {"pid", "rss"}}}``), the RSS growth
    in MiB per 1,000 files from ``after`` on, over the samples of the key's last PID only. ``value(proc)``
    picks another figure of a process's sample (None: a sample without it is left out)."""
    value = value or (lambda proc: proc["rss"])
    keys = sorted({k for s in samples for k in s["procs"]})
    out = {}
    for key in keys:
        series = [(s["files"], s["procs"][key]) for s in samples if key in s["procs"]]
        last_pid = series[-1][1]["pid"]
        tail: list[tuple[float, float]] = []
        for files, proc in reversed(series):
            if proc["pid"] != last_pid:
                break
            v = value(proc)
            if v is not None:
                tail.append((files, v))
        out[key] = growth_mib_per_1000(list(reversed(tail)), after)
    return out


REGION_FITS = ("anon", "heap", "arenas", "anon_other", "file", "shmem")


def region_growth(samples: Sequence[Mapping], after: float) -> dict[str, dict[str, float]]:
    """Per process, the growth (MiB per 1,000 files from ``after``) of each kind of resident memory
    (:data:`REGION_FITS`, from the samples' ``regions``): which kind of pages grows."""
    out: dict[str, dict[str, float]] = {}
    for kind in REGION_FITS:
        g = growth_by_process(samples, after, value=lambda p, k=kind: p.get("regions", {}).get(k))
        for proc, slope in g.items():
            out.setdefault(proc, {})[kind] = slope
    return out


def verdict(growth: Mapping[str, float], commit: Mapping, fresh: Mapping, restart_ratio: float) -> dict:
    """Each target met (True / False) or not measured (None: NaN, too few files)."""

    def le(x, limit):
        return None if x is None or not math.isfinite(x) else bool(x <= limit)

    g = [v for v in growth.values() if math.isfinite(v)]
    return {
        "rss_growth": le(max(g), TARGETS["rss_growth_mib_per_1000"]) if g else None,
        "commit_time": le(commit.get("ratio"), TARGETS["last_over_first"]),
        "freshness": le(fresh.get("ratio"), TARGETS["last_over_first"]),
        "restart": le(restart_ratio, TARGETS["restart_ratio"]),
    }


# --------------------------------------------------------------------------------------------- the run
def _land(incoming: Path, name: str, text: str) -> float:
    tmp = incoming / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(incoming / name)  # a data file lands whole
    return time.time()


def _name(i: int) -> str:
    return f"part-{i:06d}.csv"


def _memory(pids: Mapping[str, int]) -> dict[str, dict]:
    import psutil

    out = {}
    for key, pid in pids.items():
        try:
            info = psutil.Process(pid).memory_full_info()
        except psutil.Error:
            continue
        out[key] = {"pid": pid, "rss": int(info.rss), "uss": int(getattr(info, "uss", 0))}
        try:  # where the pages are: anonymous (main heap, glibc's other arenas, mmapped), file-backed, shared
            out[key]["regions"] = memory.regions(pid)
        except OSError:
            pass
    return out


def environments(pids: Mapping[str, int], names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per process, the variables of ``names`` in the environment it was started with (``/proc/PID/environ``):
    proof that an ``--env`` setting reached the Ray processes."""
    out = {}
    for key, pid in pids.items():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                pairs = [kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv]
        except OSError:
            continue
        env = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
        out[key] = {n: env[n] for n in names if n in env}
    return out


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> a dict; UserError for an item without ``=`` or with an empty key."""
    from common.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--env {item!r}: give KEY=VALUE (e.g. --env MALLOC_ARENA_MAX=2)")
        out[key.strip()] = value
    return out


class _Follower:
    """What serves the versions: one Ray Serve replica (ModelInfo over gRPC) or the in-process follower."""

    def __init__(self, store_url: str, in_process: bool) -> None:
        from serving.config import ServeConfig

        self.cfg = ServeConfig(store_url=store_url, poll_interval_s=0.1)
        self.in_process = in_process
        self.svc = self.client = None

    def start(self, timeout_s: float = 180.0) -> None:
        if self.in_process:
            from serving.service import ScoringService

            self.svc = ScoringService(self.cfg).start(wait_s=timeout_s)
            return
        from serving.app import start_serving
        from serving.client import ScoringClient

        port = start_serving(self.cfg, replicas=1)
        self.client = ScoringClient(f"127.0.0.1:{port}")
        self.client.wait_ready(timeout_s)

    def version(self) -> int:
        try:
            if self.in_process:
                return int(self.svc.model_info().model_version)
            return int(self.client.model_info().model_version)
        except Exception:  # not ready, a replica restarting: no answer now
            return 0

    def stop(self) -> None:
        if self.svc is not None:
            self.svc.stop()
        if self.client is not None:
            self.client.close()
            from serving.app import stop_serving

            stop_serving()


class _VersionIndex:
    """The first committed version that holds the data file landed last (each manifest read once, in version
    order; nothing kept per file: the bench's own memory must not grow with the files)."""

    def __init__(self, store) -> None:
        self.store, self.seen = store, 0

    def version_of(self, name: str) -> tuple[int, float] | None:
        """(version, committed_at) of the first version holding ``name``, landed after every version read."""
        latest = self.store.latest() or 0
        found = None
        for v in range(self.seen + 1, latest + 1):
            try:
                m = self.store.manifest(v)
            except Exception:  # gc'd or never committed (an aborted number): nothing to read
                continue
            if found is None and name in m.data_files:
                found = (v, m.committed_at)
        self.seen = max(self.seen, latest)
        return found


def _copy_tree(src: Path, dst: Path, attempts: int = 5) -> None:
    """Copy a directory another process may be writing (gc, compaction): retry on a file that vanished."""
    for attempt in range(attempts):
        shutil.rmtree(dst, ignore_errors=True)
        try:
            shutil.copytree(src, dst)  # copy2: mtimes kept (the follower recognises consumed files by them)
            return
        except (shutil.Error, FileNotFoundError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def _restarts(pairs: dict[str, tuple[Path, str]], repeats: int) -> dict:
    """restart_once on each (incoming, store) of ``pairs``, alternating, ``repeats`` times each."""
    from bench.restart import restart_once

    times: dict[str, list[float]] = {k: [] for k in pairs}
    phases: dict[str, list[dict]] = {k: [] for k in pairs}
    keys = list(pairs)
    for r in range(repeats):
        for key in keys if r % 2 == 0 else reversed(keys):
            src, store = pairs[key]
            out = restart_once(src, store)
            times[key].append(out["restart_s"])
            phases[key].append(out)
    return {
        k: {
            "restart_s": statistics.median(v),
            "min_s": min(v),
            "max_s": max(v),
            **{f"{p}_median": statistics.median(o[p] for o in phases[k]) for p in ("restore_s", "follow_s", "train_s")},
        }
        for k, v in times.items()
    }


def run(args: argparse.Namespace) -> dict:
    from common.errors import UserError

    if args.files < BASELINE_FILES + 1:
        raise UserError(f"--files must be > {BASELINE_FILES} (the restart baseline is taken after {BASELINE_FILES})")
    if args.rows < 2 or args.shards < 1 or args.sample_every < 1 or args.restart_repeats < 0 or args.warmup < 0:
        raise UserError("--rows >= 2, --shards >= 1, --sample-every >= 1, --restart-repeats >= 0, --warmup >= 0")
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="freshrec-bench-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if getattr(args, "worker_trace", False):
            try:
                return worker_trace(args, work)
            finally:  # the in-process run's writer lease, released now (at exit it would re-create the dir)
                from versions import fencing

                fencing._release_all()
                fencing._EXITING.clear()
        return _soak(args, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _soak(args: argparse.Namespace, work: Path) -> dict:
    from ray._private import state as ray_state

    from cluster.ray_runtime import ensure_ray
    from paramserver.config import PSConfig
    from trainer import bundle
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import load_spec
    from trainer.run import TrainJob, run_ps_training
    from trainer.runfiles import request_stop
    from versions import PublishConfig, VersionStore

    trace = None
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(1)  # one frame: sites by file:line, the least memory per traced block
        trace = tracemalloc
    incoming, run_dir, store_dir = work / "incoming", work / "run", work / "versions"
    incoming.mkdir(parents=True, exist_ok=True)
    store_url = str(store_dir)
    train = TrainConfig(seed=3)  # bench.restart's trainer: the restart phase restores this run's versions
    ps = PSConfig(num_shards=args.shards, placement="ray")
    # the AUC check needs 500 examples a window: with tiny files it would pool 30 versions before publishing one;
    # the gate still verifies checksums and scores of every version
    publish = PublishConfig(max_auc_drop=None, min_examples=0)
    config = {
        "model": dataclasses.asdict(ModelConfig()),  # the whole model config: serving builds the model from it
        "train": {"seed": train.seed},
        "ps": {"num_shards": args.shards, "placement": "ray"},
    }
    job = TrainJob(
        load_spec("taobao"),
        run_dir,
        train=train,
        ps=ps,
        incoming=str(incoming),
        drain=False,
        idle_timeout_s=max(600.0, 5 * args.file_timeout),
        store_url=store_url,
        publish=publish,
        version_extra=bundle.version_extra("taobao", config),
    )
    ray_env = parse_env(args.env)
    probe_path = work / "worker-probe.jsonl"
    if args.worker_probe:
        ray_env.update({memory.PROBE_ENV: str(probe_path), memory.PROBE_EVERY_ENV: str(args.sample_every)})
        if args.worker_tracemalloc > 0:
            ray_env.update({memory.TRACE_ENV: str(args.worker_tracemalloc), memory.TRACE_FROM_ENV: str(args.warmup)})
    _start_ray(ensure_ray, ray_env)
    events: list[str] = []
    box: dict = {}

    def train_thread() -> None:
        try:
            box["result"], _ = run_ps_training(job, on_event=events.append)
        except BaseException as exc:
            box["error"] = exc

    def check_alive() -> None:
        if "error" in box or ("result" in box):
            raise RuntimeError(f"the training run ended early: {box.get('error')!r}; events: {events[-5:]}")

    # the bench's own reader keeps few manifests (the default cache, 256, would grow the driver for 256 versions)
    store = VersionStore(store_url, manifest_cache=4)
    index = _VersionIndex(store)
    follower = _Follower(store_url, args.no_serve)
    thread = threading.Thread(target=train_thread, name="soak-train", daemon=True)
    t_start = time.perf_counter()
    thread.start()
    # per data file, preallocated (the driver's RSS is measured: the bench must not grow with the files)
    commit_s = np.full(args.files, np.nan)
    fresh_s = np.full(args.files, np.nan)
    outcomes: Counter = Counter()  # served, or why not: a gate code, timeout, startup
    version = 0
    samples: list[dict] = []
    envs: dict = {}  # the allocator / --env variables each process started with
    snap0 = None
    try:
        for i in range(args.files):
            name = _name(i)
            t_land = _land(incoming, name, soak_rows(i, args.rows))
            # the first file waits for the Ray Train worker's start-up (and then Serve's): not counted
            wait_s = args.file_timeout if i else max(args.file_timeout, STARTUP_S)
            deadline = time.monotonic() + wait_s
            while (hit := index.version_of(name)) is None:
                check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no version holds {name} {wait_s:g} s after it landed; events: {events[-5:]}")
                time.sleep(0.02)
            version, committed_at = hit
            row = {"file": i, "version": version, "commit_s": committed_at - t_land, "fresh_s": None, "held": False}
            if i == 0:
                follower.start(STARTUP_S)
                row.update(commit_s=None, held="startup")  # no commit time nor freshness for it
            while row["held"] is False:
                if follower.version() >= version:
                    row["fresh_s"] = time.time() - t_land
                    break
                decision = store.gate_decision(version)
                if decision is not None and not decision.get("publish", True):
                    row["held"] = decision.get("code", "held")
                    break
                check_alive()
                if time.monotonic() > deadline:
                    row["held"] = "timeout"
                    break
                time.sleep(0.02)
            commit_s[i] = np.nan if row["commit_s"] is None else row["commit_s"]
            fresh_s[i] = np.nan if row["fresh_s"] is None else row["fresh_s"]
            outcomes["served" if row["held"] is False else str(row["held"])] += 1
            done = i + 1
            if done == BASELINE_FILES:
                time.sleep(1.0)  # let a compaction and gc after this version finish before the copy
                _copy_tree(incoming, work / "at-10" / "incoming")
                _copy_tree(store_dir, work / "at-10" / "versions")
            if done % args.sample_every == 0 or done == args.files or done == 1:
                pids = roles_of(ray_state.actors(), os.getpid())
                samples.append(
                    {"files": done, "version": version, "procs": _memory(pids), "store_versions": len(store.versions())}
                )
                if done == args.sample_every or (done == args.files and not envs):
                    envs = environments(pids, sorted({*memory.ALLOCATOR_VARS, *ray_env}))
                if trace is not None and snap0 is None and done >= args.warmup:
                    snap0 = _sites(trace)  # per line only: a whole snapshot would stay in the driver's RSS
        request_stop(run_dir)
        thread.join(timeout=300)
        if thread.is_alive():
            raise RuntimeError("the training run did not stop within 300 s of the stop request")
        if "error" in box:
            raise RuntimeError(f"the training run failed: {box['error']!r}; events: {events[-5:]}")
    finally:
        follower.stop()
        if thread.is_alive():
            request_stop(run_dir)
    soak_s = time.perf_counter() - t_start
    top = _grown(trace, snap0) if trace is not None else None
    # restart after all files vs after BASELINE_FILES: one new data file lands in each incoming directory
    restart, lo, hi = {}, float("nan"), float("nan")
    if args.restart_repeats > 0:
        new = soak_rows(args.files + 1, max(args.rows, 200))
        _land(incoming, _name(args.files + 1), new)
        _land(work / "at-10" / "incoming", _name(args.files + 1), new)
        restart = _restarts(
            {
                f"after_{BASELINE_FILES}": (work / "at-10" / "incoming", str(work / "at-10" / "versions")),
                f"after_{args.files}": (incoming, store_url),
            },
            args.restart_repeats,
        )
        lo, hi = restart[f"after_{BASELINE_FILES}"]["restart_s"], restart[f"after_{args.files}"]["restart_s"]
    growth = growth_by_process(samples, args.warmup)
    commit = last_over_first(commit_s.tolist())
    fresh = last_over_first(fresh_s.tolist())
    restart_ratio = hi / lo if lo > 0 else float("nan")
    out = {
        "files": args.files,
        "rows_per_file": args.rows,
        "shards": args.shards,
        "serving": "in_process" if args.no_serve else "ray_serve_replica",
        "versions": version,
        "soak_s": round(soak_s, 1),
        "rss_growth_mib_per_1000": growth,
        "rss_growth_after_files": args.warmup,
        "commit_s": commit,
        "freshness_s": fresh,
        "outcomes": dict(outcomes),
        "held_files": sum(n for k, n in outcomes.items() if k not in ("served", "startup", "timeout")),
        "unserved_files": outcomes.get("timeout", 0),
        "restart": {**restart, "ratio": restart_ratio},
        "targets": TARGETS,
        "met": verdict(growth, commit, fresh, restart_ratio),
        "samples": [
            {
                "files": s["files"],
                "version": s["version"],
                "store_versions": s["store_versions"],
                "rss_mib": {k: round(p["rss"] / MIB, 2) for k, p in s["procs"].items()},
                "uss_mib": {k: round(p["uss"] / MIB, 2) for k, p in s["procs"].items()},
            }
            for s in samples
        ],
        "regions_growth_mib_per_1000": region_growth(samples, args.warmup),
        "regions_mib": [
            {
                "files": s["files"],
                **{k: memory.regions_mib(p["regions"]) for k, p in s["procs"].items() if "regions" in p},
            }
            for s in samples
        ],
        "env": {"set": ray_env, "seen": envs},
        "restarts_of_training": box["result"].restarts,
        "load_avg": os.getloadavg(),
        "work_dir": str(work) if args.work_dir else None,
    }
    if args.worker_probe:
        out["worker_probe"] = summarize_probe(memory.read_probe(probe_path), args.warmup)
    if top is not None:  # tracemalloc's own traces live in the driver: its RSS growth is not the product's then
        out["driver_allocations_grown"] = top
        out["driver_rss_includes_tracemalloc"] = True
    return out


def _start_ray(ensure_ray, env: Mapping[str, str]) -> None:
    """Start the embedded Ray with ``env`` in the raylet's environment (every Ray worker process inherits it;
    glibc's variables must be there when a process starts), then put this driver's environment back."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ensure_ray()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def summarize_probe(lines: Sequence[Mapping], after: float) -> dict:
    """The Ray Train worker's probe lines (:class:`common.memory.MemoryHousekeeping`), per version probed:
    RSS by kind, glibc's bytes in use / free / arena count, Python objects, Ray references; the growth of
    each from ``after`` on (MiB or count per 1,000 versions), and the traced sites grown (last line)."""
    if not lines:
        return {"lines": 0, "note": "no probe line: did the Ray Train worker get FRESHREC_MEMORY_PROBE?"}
    last_pid = lines[-1].get("pid")
    lines = [ln for ln in lines if ln.get("pid") == last_pid]  # a restarted worker: its last process only
    rows = []
    for ln in lines:
        m = ln.get("malloc_mib") or {}
        r = ln.get("regions_mib") or {}
        ray = ln.get("ray") or {}
        py = ln.get("pymalloc_mib") or {}
        rows.append(
            {
                "n": ln["n"],
                "rss": r.get("rss"),
                "anon": r.get("anon"),
                "heap": r.get("heap"),
                "arenas": r.get("arenas"),
                "anon_other": r.get("anon_other"),
                "shmem": r.get("shmem"),
                "malloc_in_use": m.get("in_use"),
                "malloc_free": m.get("free"),
                "malloc_mmapped": m.get("mmapped"),
                "malloc_arenas": m.get("arenas"),
                "threads": r.get("threads"),
                "pymalloc_arena": py.get("arena_bytes"),
                "pymalloc_in_use": py.get("in_use"),
                "python_objects": ln.get("python_objects"),
                "object_refs": ray.get("object_refs"),
                "traced_mib": ln.get("traced_mib"),
            }
        )

    def slope(key: str) -> float:  # per 1,000 versions, in the figure's own unit (MiB, or a count)
        return growth_mib_per_1000(
            [(r["n"], r[key] * MIB) for r in rows if isinstance(r.get(key), (int, float))], after
        )

    growth = {
        k: slope(k)
        for k in ("rss", "anon", "heap", "arenas", "anon_other", "shmem", "malloc_in_use", "malloc_free")
        + ("malloc_mmapped", "pymalloc_arena", "pymalloc_in_use", "traced_mib", "python_objects", "object_refs")
        + ("threads", "malloc_arenas")
    }
    return {
        "lines": len(rows),
        "pid": last_pid,
        "env": lines[-1].get("env"),
        "series": rows,
        "growth_per_1000_after": after,
        "growth_per_1000": growth,  # MiB per 1,000 versions; counts (objects, refs, threads, arenas) per 1,000
        "arena_mib_last": lines[-1].get("malloc_arena_mib"),  # (held, free) per glibc arena
        "traced_grown": lines[-1].get("traced_grown"),
        "trim_ms_mean": lines[-1].get("trim_ms_mean"),  # FRESHREC_MALLOC_TRIM: the cost of one malloc_trim
        "mallopt": lines[-1].get("mallopt"),
    }


def worker_trace(args: argparse.Namespace, work: Path) -> dict:
    """``--worker-trace``: the worker loop in this process under tracemalloc (see the module docstring)."""
    import tracemalloc

    from bench.chaos.inproc import run_stream_in_process

    incoming, run_dir, store_dir = work / "incoming", work / "run", work / "versions"
    incoming.mkdir(parents=True, exist_ok=True)
    for i in range(args.files):  # every file landed first; the drain run takes them in name order
        _land(incoming, _name(i), soak_rows(i, args.rows))
    argv = ["stream", "--incoming", str(incoming), "--run-dir", str(run_dir), "--store", str(store_dir)]
    argv += ["--spec", "taobao", "--seed", "3", "--workers", "1", "--ps-shards", str(args.shards), "--drain"]
    import psutil

    proc = psutil.Process()
    marks: dict[int, float] = {}  # version number reached -> traced bytes (while the run goes)
    rss: dict[int, float] = {}
    sites: list[dict] = []  # the allocation sites at the first mark and at the latest one
    done = threading.Event()

    def versions() -> int:  # the newest committed version's number (gc keeps only the latest few)
        try:
            return int((store_dir / "LATEST").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def watch() -> None:  # at the warm-up and every --sample-every versions after it, while the run goes
        nxt = args.warmup
        while not done.is_set():
            if versions() >= nxt:
                now = _sites(tracemalloc)
                marks[nxt] = sum(b for k, (b, _) in now.items() if not any(o in k for o in _OWN))  # the bench's own out
                rss[nxt] = proc.memory_info().rss  # the process's RSS too (tracemalloc's own traces included)
                sites[1:] = [now] if sites else []
                if not sites:
                    sites.append(now)
                nxt += args.sample_every
            time.sleep(0.05)

    tracemalloc.start(1)
    watcher = threading.Thread(target=watch, name="soak-worker-trace", daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    try:
        run_stream_in_process(argv)
    finally:
        done.set()
        watcher.join(timeout=30)
    n = versions()
    tracemalloc.stop()
    top = _diff(sites[0], sites[-1]) if len(sites) == 2 else []
    points = sorted(marks.items())  # the run's own marks: after it, its shards and buffers are freed
    return {
        "mode": "worker_trace",
        "files": args.files,
        "latest_version_at_end": n,  # version numbers count the compacted fulls too
        "wall_s": round(time.perf_counter() - t0, 1),
        "traced_growth_mib_per_1000": growth_mib_per_1000(points, args.warmup),
        "traced_growth_after_versions": args.warmup,
        "traced_mib": [{"versions": k, "mib": round(b / MIB, 3), "rss_mib": round(rss[k] / MIB, 2)} for k, b in points],
        "rss_growth_mib_per_1000": growth_mib_per_1000(sorted(rss.items()), args.warmup),
        "sites_grown": top,
        "load_avg": os.getloadavg(),
        "note": "traced Python allocations of the worker loop and its in-process shards, the bench's own left out; "
        "rss_mib includes tracemalloc's traces and the bench's site tables",
    }


_OWN = ("/tracemalloc.py", "/bench/soak.py")  # the tracing's own bookkeeping (snapshots, site tables): not the product


def _sites(trace) -> dict[str, tuple[int, int]]:
    """The driver's traced memory per allocation site (file:line -> (bytes, blocks)), the snapshot dropped."""
    return memory.trace_sites(trace)


def _grown(trace, sites0: dict | None, n: int = 12) -> list[dict]:
    """The driver's allocation sites that grew most since ``sites0`` (file:line, KiB, blocks)."""
    if sites0 is None:
        return []
    now = _sites(trace)
    trace.stop()
    return _diff(sites0, now, n)


def _diff(sites0: dict, now: dict, n: int = 12) -> list[dict]:
    """The allocation sites that grew most from ``sites0`` to ``now`` (file:line, KiB, blocks)."""
    return memory.grown_sites(sites0, now, n, _OWN)
