"""One chaos seed: a dirty stream, a fault-free reference run and a faulted run of ``freshrec stream``, checked.

    result = run_seed(7, ChaosConfig(workers=1, shards=2, store="local"), Path("/tmp/chaos"))
    result.passed, result.violations, result.faults

The faulted run is real ``freshrec stream`` processes (the CLI, its embedded Ray, Ray Train workers,
shard actors); the reference is one too, or, where the faulted run has one worker with its shards in
the worker's process and a local store (``ChaosConfig.reference`` auto), the same worker loop in
the harness's own process without Ray (:mod:`bench.chaos.inproc`: one code path, one
``model_digest``, a Ray start and a Ray Train start saved). Both go over the same
:class:`~bench.chaos.streams.StreamPlan`, delivered wave by wave:
the next wave lands once the newest committed version has taken every data file of the waves
so far (or after ``wave_timeout_s``). The reference ends with a stop request (``RUN_DIR/STOP``,
what Ctrl-C does); the faulted run ends the same way and is then run once more with ``--drain``
(restarted until it exits 0, at most ``max_restarts`` process starts in all), which must not
change its model.

Faults (:class:`FaultPlan`, drawn from the seed), each at a random point of the faulted run
(when the store has reached a drawn version, plus a drawn delay):

* ``kill_driver``  the machine dies: SIGKILL of the ``freshrec stream`` process group and of every process
                   below it (Ray starts each worker in a process group of its own)
* ``kill_driver_group``  SIGKILL of the CLI's process group only: Ray's workers outlive it for a while
* ``kill_worker``  SIGKILL of one Ray Train worker process (``ray::RayTrainWorker``)
* ``kill_shard``   SIGKILL of one parameter-server shard actor process (``ray::ShardHost``;
                   the run then places its shards as Ray actors)
* ``store_errors`` the store is ``faulty://``: a seeded share of its calls raise
                   ConnectionResetError / OSError(EIO), writes OSError(ENOSPC)
* ``gc``           ``VersionStore.gc(keep=2, grace_s=0)`` and ``compact(latest)`` in a loop
                   beside the writer

The process table is read with psutil (children of the driver, by proctitle); the stream's
embedded Ray is the driver's own, so nothing else on the machine is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.chaos import checker, faultyfs, streams

FAULT_KINDS = ("kill_driver", "kill_driver_group", "kill_worker", "kill_shard", "store_errors", "gc")
KILLS = ("kill_driver", "kill_driver_group", "kill_worker", "kill_shard")
REFERENCES = ("auto", "inprocess", "stream")
PROCTITLE = {"kill_worker": ("RayTrainWorker", "TrainWorker"), "kill_shard": ("ShardHost",)}
ORPHAN_TITLES = PROCTITLE["kill_worker"] + PROCTITLE["kill_shard"]  # Ray actor processes that guard themselves
ORPHAN_GRACE_S = 30.0  # the guard exits within about half a second; a loaded machine gets the rest


@dataclasses.dataclass(frozen=True)
class ChaosConfig:
    workers: int = 1
    shards: int = 2
    store: str = "local"  # local | s3
    anomalies: streams.Anomalies = streams.Anomalies()
    faults: tuple[str, ...] = FAULT_KINDS
    files: int = 6
    rows_per_file: int = 120
    waves: int = 3
    batch_size: int = 64
    store_error_rate: float = 0.01
    enospc_rate: float = 0.005
    wave_timeout_s: float = 240.0
    max_restarts: int = 5  # process starts of the faulted run beyond the first
    s3_endpoint: str | None = None  # moto's server (the harness starts one for store=s3 when None)
    # the fault-free reference: "stream" (a freshrec stream process), "inprocess" (the same worker loop in this
    # process, no Ray: bench.chaos.inproc), "auto" (inprocess wherever the faulted run has one worker with its
    # shards in the worker's process and a local store, else stream)
    reference: str = "auto"
    # the faulted run's final `stream --drain` (drain_idempotent): "stream" (a freshrec stream process) or
    # "inprocess" (the worker loop in this process, over the same faulty store; one worker, shards in-process,
    # local store): a Ray start and a Ray Train start less; the process starts before it stay real
    final_drain: str = "stream"

    def __post_init__(self) -> None:
        if self.workers not in (1, 2) or self.shards not in (1, 2):
            raise ValueError(f"workers and shards must be 1 or 2, got {self.workers} and {self.shards}")
        if self.store not in ("local", "s3"):
            raise ValueError(f"store must be local or s3, got {self.store!r}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if self.final_drain not in ("stream", "inprocess"):
            raise ValueError(f"final_drain must be stream or inprocess, got {self.final_drain!r}")
        if self.final_drain == "inprocess" and (self.workers != 1 or self.store != "local"):
            raise ValueError("final_drain=inprocess needs one worker and a local store: use final_drain=stream")
        bad = set(self.faults) - set(FAULT_KINDS)
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)}: choose from {', '.join(FAULT_KINDS)}")


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    at_version: int  # once the store's newest version is at least this
    delay_s: float


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    kills: tuple[Fault, ...]
    store_errors: bool
    gc: bool

    @property
    def shard_actors(self) -> bool:
        return any(f.kind == "kill_shard" for f in self.kills)


def make_fault_plan(seed: int, cfg: ChaosConfig, files: int) -> FaultPlan:
    rng = np.random.default_rng([seed, 1])
    kills = []
    for kind in KILLS:
        if kind in cfg.faults and rng.random() < 0.7:
            kills.append(Fault(kind, int(rng.integers(1, max(2, files))), float(rng.uniform(0.0, 1.5))))
    kinds = [k for k in KILLS if k in cfg.faults]
    if not kills and kinds:  # at least one process fault per seed when any is allowed
        kind = kinds[int(rng.integers(0, len(kinds)))]
        kills.append(Fault(kind, int(rng.integers(1, max(2, files))), float(rng.uniform(0.0, 1.5))))
    kills.sort(key=lambda f: (f.at_version, f.delay_s))
    alone = len(cfg.faults) == 1  # a kind asked for alone is always injected; with others, on half the seeds
    return FaultPlan(
        tuple(kills),
        "store_errors" in cfg.faults and (rng.random() < 0.5 or alone),
        "gc" in cfg.faults and (rng.random() < 0.5 or alone),
    )


@dataclasses.dataclass
class RunLog:
    starts: int = 0
    exits: list = dataclasses.field(default_factory=list)  # return codes of the process starts
    faults: list = dataclasses.field(default_factory=list)  # (kind, detail)
    waves_timed_out: list = dataclasses.field(default_factory=list)
    final_rc: int | None = None
    digest_before_drain: str | None = None
    seconds: float = 0.0
    in_process: bool = False  # the run went in the harness's process (bench.chaos.inproc), not as freshrec stream


@dataclasses.dataclass
class SeedResult:
    seed: int
    passed: bool
    violations: list
    faults: dict
    reproduce: str
    seconds: float
    plan: list
    notes: list

    def as_dict(self) -> dict:
        return {
            "seed": self.seed,
            "passed": self.passed,
            "violations": [v.line() for v in self.violations],
            "broken": sorted({v.invariant for v in self.violations}),
            "faults": self.faults,
            "reproduce": self.reproduce,
            "seconds": round(self.seconds, 1),
            "plan": self.plan,
            "notes": self.notes,
        }


def process_start(pid: int) -> int | None:
    """The start time (clock ticks since boot) of a live process, None when it is gone or a zombie: with its
    pid it names one process (a Ray worker's title changes as it runs methods, so the title cannot)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below ``root``, from /proc (Ray's workers show their proctitle,
    e.g. ``ray::RayTrainWorker.run``)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for child, pp in parent.items():
            if pp == p:
                todo.append(child)
                try:
                    title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                out.append((child, title.strip()))
    return out


# ----------------------------------------------------------------------------- one stream run
class StreamRun:
    """A ``freshrec stream`` over a plan's waves in ``root`` (incoming/, run/, the store), faulted or not."""

    def __init__(
        self,
        plan: streams.StreamPlan,
        cfg: ChaosConfig,
        root: Path,
        faults: FaultPlan | None,
        seed: int,
        s3: dict | None = None,
        shard_actors: bool = False,
        in_process: bool = False,
    ) -> None:
        self.plan, self.cfg, self.root, self.fault_plan, self.seed = plan, cfg, root, faults, seed
        self.shard_actors = shard_actors or cfg.workers > 1
        if in_process and (faults is not None or self.shard_actors or cfg.store != "local"):
            raise ValueError("an in-process run is a fault-free one-worker run on a local store, shards in-process")
        self.in_process = in_process  # the run in this process (bench.chaos.inproc), not a freshrec stream process
        # the faulted run's final drain in this process (ChaosConfig.final_drain), where its shards live in the
        # worker's process (a seed that draws kill_shard places them as Ray actors: its drain stays a process)
        self.drain_in_process = faults is not None and cfg.final_drain == "inprocess" and not self.shard_actors
        self._reaped: set[int] = set()  # id() of each process (or in-process run) whose exit is recorded
        self._started: list = []
        self.incoming, self.run_dir = root / "incoming", root / "run"
        self.log = RunLog(in_process=in_process)
        self.proc: subprocess.Popen | None = None
        self.fault_log = root / "faults.jsonl"
        root.mkdir(parents=True, exist_ok=True)
        (root / "spec.yaml").write_text(plan.spec_yaml())
        self._site = root / "site"
        self._site.mkdir(exist_ok=True)
        (self._site / "sitecustomize.py").write_text("from bench.chaos.faultyfs import register\nregister()\n")
        store_faults = bool(faults and faults.store_errors)
        fs_cfg = {
            "seed": seed,
            "rate": cfg.store_error_rate if store_faults else 0.0,
            "enospc": cfg.enospc_rate if store_faults else 0.0,
            "log": str(self.fault_log),
        }
        if cfg.store == "s3":
            fs_cfg.update(target="s3", options={"endpoint_url": s3["endpoint"], "key": "test", "secret": "test"})
            self.store_url = f"faulty://{s3['bucket']}/{root.name}/versions"
        elif store_faults:
            self.store_url = f"faulty://{(root / 'store').absolute()}"
        else:
            self.store_url = str((root / "store").absolute())
        self.fs_cfg = fs_cfg
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            faultyfs.ENV: json.dumps(fs_cfg),
            "PYTHONPATH": os.pathsep.join(
                [str(self._site.absolute())] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            ),
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._stop_gc = threading.Event()
        self._seen: dict[int, str] = {}
        self._orphan_watch: list[tuple[float, dict]] = []  # (when, {pid: (start time, title)}) per kill_driver_group
        self.orphans_left: list[str] = []
        self._seen_at = 0.0

    # the store, read from this process without faults
    def store(self):
        from versions import VersionStore

        faultyfs.register()
        if self.store_url.startswith("faulty://"):
            clean = {k: v for k, v in self.fs_cfg.items() if k not in ("rate", "enospc", "log")}
            if clean.get("target") == "s3":  # the observer reads the truth: no listings cache at all (the
                # store drops its listings before each poll, VersionStore.forget_listings; this is belt and braces)
                clean["options"] = {**clean["options"], "use_listings_cache": False}
            return VersionStore(self.store_url, {**clean, "rate": 0.0, "enospc": 0.0, "log": ""})
        return VersionStore(self.store_url)

    def command(self, drain: bool = False) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "cluster.cli",
            "stream",
            "--incoming",
            str(self.incoming.absolute()),
            "--run-dir",
            str(self.run_dir.absolute()),
            "--store",
            self.store_url,
            "--spec",
            str((self.root / "spec.yaml").absolute()),
            "--batch-size",
            str(self.cfg.batch_size),
            "--seed",
            "7",
            "--workers",
            str(self.cfg.workers),
            "--ps-shards",
            str(self.cfg.shards),
        ]
        if self.shard_actors:  # the reference and the faulted run place shards alike
            cmd += ["--set", "ps.placement=ray"]
        cmd += ["--drain"] if drain else ["--idle-timeout", "900"]
        return cmd

    def _start(self, drain: bool = False) -> None:
        self.log.starts += 1
        if self.in_process or (drain and self.drain_in_process):
            from bench.chaos.inproc import InProcessStream

            options = None
            if self.store_url.startswith("faulty://"):  # a process of the run reads this from its environment
                faultyfs.register()
                options = dict(self.fs_cfg)
            self.proc = InProcessStream(
                self.command(drain)[3:], self.root / f"stream-{self.log.starts:02d}.log", options
            )
            return
        with open(self.root / f"stream-{self.log.starts:02d}.log", "w") as out:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.command(drain),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )

    def _kill_group(self) -> None:
        if self.proc is not None and self.proc.pid is None:  # in process: ask it to stop at its next file boundary
            if self.proc is not None and self.proc.poll() is None:
                (self.run_dir / "STOP").write_text("stop requested by the chaos harness\n")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(120)
            return
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(60)

    def _latest(self):
        try:
            store = self.store()
            v = store.latest()
            return v, (store.manifest(v) if v is not None else None)
        except Exception:
            return None, None

    def _consumed(self, upto_wave: int) -> bool:
        """The newest version's ledger holds every data file landed so far, by name and the bytes now there."""
        import hashlib

        _, m = self._latest()
        if m is None:
            return False
        entries = {(e["file"], e.get("sha256")) for e in self._ledger_entries(m) if e.get("complete")}
        last_op = {}  # name -> its last operation so far (a replaced file is refused: not waited for)
        for wave in self.plan.waves[: upto_wave + 1]:
            for op in wave:
                if op.kind != "partial":
                    last_op[op.name] = op
        for op in last_op.values():
            if op.kind in ("write", "finish", "slow"):
                path = self.incoming / op.name
                if not path.exists():
                    return False
                sha = hashlib.sha256(path.read_bytes()).hexdigest()
                if (op.name, sha) not in entries and not any(n == op.name for n, _ in entries if op.kind == "slow"):
                    return False
        return True

    def _ledger_entries(self, manifest) -> list[dict]:
        """The whole ledger of a version (the manifest references it: read through the bundle), else (a
        manifest carrying it whole) its entries, else RUN_DIR/ledger.json."""
        if manifest is not None and "part" in (manifest.ledger or {}):
            try:
                from trainer import bundle

                return bundle.read_ledger(self.store(), manifest.version).to_dict()["entries"]
            except Exception:  # a store error or a version gc'd meanwhile: the run directory's copy below
                pass
        entries = (manifest.ledger or {}).get("entries") if manifest is not None else None
        if entries:
            return list(entries)
        try:
            return list(json.loads((self.run_dir / "ledger.json").read_text()).get("entries", []))
        except (OSError, ValueError, AttributeError):
            return []

    # faults --------------------------------------------------------------------------
    def _kill_process(self, fault: Fault) -> str:
        if fault.kind == "kill_driver":  # the machine dies: the CLI and every process of its Ray at once
            tree = descendants(self.proc.pid)
            self._kill_group()
            for pid, _ in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return f"driver and its {len(tree)} descendants"
        if fault.kind == "kill_driver_group":  # only the CLI's process group: Ray's workers have their own
            self._remember()
            actors = {
                pid: (process_start(pid), title)
                for pid, title in descendants(self.proc.pid)
                if any(w in title for w in ORPHAN_TITLES) and "IDLE" not in title
            }
            self._kill_group()
            self._orphan_watch.append((time.monotonic(), actors))
            return f"driver process group ({len(actors)} Ray actor process(es) of the run left without their raylet)"
        want = PROCTITLE[fault.kind]
        found = [
            (pid, title)
            for pid, title in descendants(self.proc.pid)
            if any(w in title for w in want) and "IDLE" not in title
        ]
        if not found:
            return ""
        pid, title = found[self.seed % len(found)]
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return ""
        return f"pid {pid} ({title[:60]})"

    def _check_orphans(self, final: bool = False) -> None:
        """The Ray actor processes (Train workers, shard actors) a ``kill_driver_group`` left without their raylet
        must have exited within ``ORPHAN_GRACE_S`` (their orphan guard, common/orphans.py); those still alive then
        go to ``orphans_left``. ``final``: the run is over, wait out the grace of a recent kill first."""
        for entry in list(self._orphan_watch):
            killed_at, actors = entry
            waited = time.monotonic() - killed_at
            if waited < ORPHAN_GRACE_S:
                if not final:
                    continue
                time.sleep(ORPHAN_GRACE_S - waited)
            self._orphan_watch.remove(entry)
            for pid, (started, title) in actors.items():
                if started is not None and process_start(pid) == started:
                    self.orphans_left.append(f"pid {pid} ({title[:60]}) alive {ORPHAN_GRACE_S:.0f} s after the kill")

    def _remember(self) -> None:
        """Note the run's processes, so that orphans (Ray workers outliving a killed driver) are ended at teardown."""
        if self.proc is not None and self.proc.pid is not None and self.proc.poll() is None:
            self._seen.update(descendants(self.proc.pid))

    def _end_orphans(self) -> None:
        for pid, title in list(self._seen.items()):
            try:
                now = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if now == title:  # the same process (not a reused pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _gc_loop(self) -> None:
        store, n = self.store(), 0
        while not self._stop_gc.wait(0.7):
            n += 1
            try:
                store.gc(keep=2, grace_s=0.0)
                self.log.faults.append(("gc", "gc(keep=2, grace_s=0)"))
                if n % 3 == 0:
                    latest = store.latest()
                    if latest is not None:
                        store.compact(latest)
                        self.log.faults.append(("compact", f"compact({latest})"))
            except Exception as exc:
                self.log.faults.append(("gc_error", f"{type(exc).__name__}: {exc}"[:200]))

    # the run -------------------------------------------------------------------------
    def run(self, drain_after: bool) -> RunLog:
        t0 = time.monotonic()
        pending = list(self.fault_plan.kills) if self.fault_plan else []
        gc_thread = None
        if self.fault_plan is not None and self.fault_plan.gc:
            gc_thread = threading.Thread(target=self._gc_loop, daemon=True, name="chaos-gc")
            gc_thread.start()
        writers = streams.deliver(self.plan, 0, self.incoming)
        self._start()
        max_starts = 1 + (self.cfg.max_restarts if self.fault_plan is not None else 0)  # a reference never restarts
        try:
            for wave in range(len(self.plan.waves)):
                if wave > 0:
                    writers += streams.deliver(self.plan, wave, self.incoming)
                deadline = time.monotonic() + self.cfg.wave_timeout_s
                armed_at, looking_since = None, None
                last = wave == len(self.plan.waves) - 1
                while True:
                    consumed = self._consumed(wave)
                    v, _ = self._latest() if pending else (None, None)
                    # a fault is due once the store reaches its version; after the last wave, every fault left
                    due = bool(pending) and ((last and consumed) or (v is not None and v >= pending[0].at_version))
                    if consumed and not due:
                        break
                    if time.monotonic() > deadline:
                        self.log.waves_timed_out.append(wave)
                        break
                    if time.monotonic() - self._seen_at > 3:
                        self._remember()
                        self._check_orphans()
                        self._seen_at = time.monotonic()
                    if self.proc.poll() is not None:
                        self._reap()
                        if self.log.starts >= max_starts:
                            self.log.waves_timed_out.append(wave)
                            break
                        self._start()
                    if due:
                        armed_at = armed_at or time.monotonic()
                        if time.monotonic() - armed_at >= pending[0].delay_s:
                            what = self._kill_process(pending[0])
                            looking_since = looking_since or time.monotonic()
                            if what or time.monotonic() - looking_since > 90:  # its process may be starting
                                fault = pending.pop(0)
                                self.log.faults.append((fault.kind, what or "no such process (not injected)"))
                                armed_at, looking_since = None, None
                    time.sleep(0.2)
                for t in writers:
                    t.join()
                writers = []
                if self.log.waves_timed_out and self.log.starts >= max_starts:
                    break
            if any(op.kind == "replace" for wave in self.plan.waves for op in wave):
                time.sleep(1.0)  # a replaced file (not in any ledger by its new bytes) gets its chance
            self._stop_process()
            if drain_after:
                v, m = self._latest()
                self.log.digest_before_drain = m.model_digest if m is not None else None
                while self.log.starts < max_starts + 1:
                    self._start(drain=True)
                    rc = self._wait(self.cfg.wave_timeout_s)
                    self._reap()
                    if rc == 0:
                        break
                self.log.final_rc = self.log.exits[-1] if self.log.exits else None
            else:
                self.log.final_rc = self.log.exits[-1] if self.log.exits else None
        finally:
            self._stop_gc.set()
            if gc_thread is not None:
                gc_thread.join(60)
            self._kill_group()
            self._check_orphans(final=True)
            self._end_orphans()
        self.log.seconds = time.monotonic() - t0
        return self.log

    def _wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self._remember()
        self._kill_group()
        return -9

    def _reap(self) -> None:
        """Record the current process's exit status, once."""
        if self.proc is not None and id(self.proc) not in self._reaped and self.proc.poll() is not None:
            self._reaped.add(id(self.proc))
            self._started.append(self.proc)  # kept: an id stays unique while its object lives
            self.log.exits.append(self.proc.returncode)

    def _stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.run_dir / "STOP").write_text("stop requested by the chaos harness\n")
            self._wait(120)
        self._reap()

    # observation -----------------------------------------------------------------------
    def observe(self) -> checker.Observation:
        obs = checker.Observation()
        store = self.store()
        try:
            obs.versions = store.versions()
            obs.latest = store.latest()
        except Exception as exc:
            obs.verify_problems[-1] = [f"store unreadable: {exc}"]
            return obs
        m = store.manifest(obs.latest) if obs.latest is not None else None
        if m is not None:
            obs.model_digest, obs.data_files = m.model_digest, tuple(m.data_files)
        for v in obs.versions:
            try:
                problems = store.verify(v)
            except Exception as exc:
                problems = [f"{type(exc).__name__}: {exc}"[:300]]
            if problems:
                obs.verify_problems[v] = problems
        if m is not None:
            try:
                digest = store.digest(m.version)
                if digest != m.model_digest:
                    obs.verify_problems.setdefault(m.version, []).append(
                        f"recomputed digest {digest[:12]} != manifest {m.model_digest[:12]}"
                    )
            except Exception as exc:
                obs.verify_problems.setdefault(m.version, []).append(f"digest: {exc}"[:300])
        metrics = checker.read_jsonl(self.run_dir / "metrics.jsonl")
        dead = checker.read_jsonl(self.run_dir / "dead-letter.jsonl")
        entries = self._ledger_entries(m)
        obs.files = checker.observe_files(metrics, dead, entries)
        obs.order = [r["file"] for r in metrics]
        try:
            for path in store.fs.find(store.root):
                if checker.is_temp_name(path.rsplit("/", 1)[-1]):
                    obs.temp_files.append(path)
        except Exception as exc:
            obs.temp_files.append(f"(store not listable: {type(exc).__name__}: {exc})")
        for path in self.run_dir.glob("*"):
            if path.is_file() and checker.is_temp_name(path.name):
                obs.temp_files.append(str(path))
        return obs


# ----------------------------------------------------------------------------- one seed
def reference_in_process(cfg: ChaosConfig, faults: FaultPlan) -> bool:
    """Whether the seed's reference runs in this process (:mod:`bench.chaos.inproc`): asked for, or ``auto`` where
    the faulted run has one worker with its shards in the worker's process and a local store (then the two run
    one code path, and the in-process run saves a Ray start and a Ray Train start)."""
    fits = cfg.workers == 1 and not faults.shard_actors and cfg.store == "local"
    if cfg.reference == "inprocess" and not fits:
        raise ValueError(
            "reference=inprocess needs one worker, shards in the worker's process (no kill_shard) and a local "
            "store: use reference=stream (or auto) for this configuration"
        )
    return cfg.reference == "inprocess" or (cfg.reference == "auto" and fits)


def reproduce_command(seed: int, cfg: ChaosConfig) -> str:
    parts = [
        "freshrec",
        "bench",
        "chaos",
        "--seeds",
        "1",
        "--first-seed",
        str(seed),
        "--workers",
        str(cfg.workers),
        "--shards",
        str(cfg.shards),
        "--store",
        cfg.store,
        "--anomalies",
        ",".join(cfg.anomalies.names()) or "none",
        "--faults",
        ",".join(cfg.faults) or "none",
        "--files",
        str(cfg.files),
        "--rows-per-file",
        str(cfg.rows_per_file),
        "--waves",
        str(cfg.waves),
        "--store-error-rate",
        str(cfg.store_error_rate),
        "--reference",
        cfg.reference,
        "--final-drain",
        cfg.final_drain,
        "--json",
    ]
    return " ".join(shlex.quote(p) for p in parts)


def fresh_seed_dir(work: Path, seed: int, log=None) -> Path:
    """``work/seed-N``, emptied: a seed run again in the same work directory (a kept failing seed, re-run to check
    a fix) must not observe the last run's incoming files, run directories and stores as its own (found when
    seeds 51 and 52 were re-run in their kept directories: the reference saw its old versions, took each wave as
    consumed at once and landed all three within 0.1 s)."""
    import shutil

    root = work / f"seed-{seed}"
    if root.exists():
        (log or (lambda text: None))(f"seed {seed}: removing the previous run's {root}")
        shutil.rmtree(root)
    return root


def run_seed(seed: int, cfg: ChaosConfig, work: Path, s3: dict | None = None, log=None) -> SeedResult:
    """The reference and the faulted run of one seed, checked; ``work`` keeps both runs' files."""
    log = log or (lambda text: None)
    t0 = time.monotonic()
    fresh_seed_dir(work, seed, log)
    plan = streams.make_plan(seed, cfg.anomalies, cfg.files, cfg.rows_per_file, cfg.waves)
    expect = streams.expected(plan)
    faults = make_fault_plan(seed, cfg, cfg.files)
    if cfg.store == "s3":
        s3 = _bucket(s3, seed)
    in_process = reference_in_process(cfg, faults)
    log(f"seed {seed}: reference run ({'in this process' if in_process else 'freshrec stream'})")
    ref = StreamRun(
        plan, cfg, work / f"seed-{seed}" / "reference", None, seed, s3, faults.shard_actors, in_process=in_process
    )
    ref_log = ref.run(drain_after=False)
    ref_obs = ref.observe()
    violations: list[checker.Violation] = []
    if (
        ref_log.waves_timed_out
        or (ref_log.exits and ref_log.exits[-1] not in (0, 130))
        or any(rc not in (0, 130) for rc in ref_log.exits)
    ):
        violations.append(
            checker.Violation(
                "liveness",
                "reference",
                "every wave consumed, exit 0/130",
                f"waves timed out {ref_log.waves_timed_out}, exits {ref_log.exits}",
            )
        )
    violations += checker.check_contract(expect, ref_obs.files, "reference")
    violations += [dataclasses.replace(v, note="reference " + v.note) for v in checker.check_store(ref_obs)]
    if not cfg.faults:  # no faults asked for: the reference alone, against the data contract
        return _result(seed, cfg, work, plan, expect, violations, ref_log, ref_obs, None, None, t0)
    log(
        f"seed {seed}: faulted run ({[f.kind for f in faults.kills]}, store errors {faults.store_errors}, gc {faults.gc})"
    )
    run = StreamRun(plan, cfg, work / f"seed-{seed}" / "faulted", faults, seed, s3, faults.shard_actors)
    run_log = run.run(drain_after=True)
    run_obs = run.observe()
    if run_log.waves_timed_out or run_log.final_rc != 0:
        violations.append(
            checker.Violation(
                "liveness",
                "faulted",
                "every wave consumed, stream --drain exits 0",
                f"waves timed out {run_log.waves_timed_out}, exits {run_log.exits}",
            )
        )
    # with a wave not consumed in time the model before the drain is not the whole stream's: only liveness broke
    if run_log.final_rc == 0 and not run_log.waves_timed_out and run_log.digest_before_drain != run_obs.model_digest:
        violations.append(
            checker.Violation(
                "drain_idempotent",
                "",
                run_log.digest_before_drain,
                run_obs.model_digest,
                "a stream --drain with nothing new changed the model",
            )
        )
    if run.orphans_left:
        violations.append(
            checker.Violation(
                "orphans",
                "",
                f"every Ray actor process of a killed driver process group gone within {ORPHAN_GRACE_S:.0f} s",
                run.orphans_left,
            )
        )
    violations += checker.compare(ref_obs, run_obs, plan.timing_dependent)
    final_sizes = {
        name: len([ln for ln in data.decode().splitlines() if ln]) for name, data in streams.final_files(plan).items()
    }
    violations += checker.check_exactly_once(expect, run_obs.files, final_sizes)
    violations += checker.check_balance(run_obs.files, run_obs.order)
    violations += checker.check_store(run_obs)
    return _result(seed, cfg, work, plan, expect, violations, ref_log, ref_obs, run, run_obs, t0)


def _result(seed, cfg, work, plan, expect, violations, ref_log, ref_obs, run, run_obs, t0) -> SeedResult:
    counts: dict[str, int] = {}
    notes = []
    run_log = run.log if run is not None else None
    if run is not None:
        for kind, what in run_log.faults:
            if "not injected" not in what:
                counts[kind] = counts.get(kind, 0) + 1
        for rec in checker.read_jsonl(run.fault_log):
            counts[rec["kind"]] = counts.get(rec["kind"], 0) + 1
    if plan.timing_dependent:
        notes.append("a slowly written file makes the input timing-dependent: digest not compared")
    if run is not None and run.drain_in_process:
        notes.append("the faulted run's final stream --drain ran in this process (final_drain=inprocess)")
    notes.append(
        f"reference ({'in process' if ref_log.in_process else 'freshrec stream'}): {ref_log.starts} start(s), "
        f"exits {ref_log.exits}, {ref_log.seconds:.0f} s"
        + (
            f"; faulted: {run_log.starts} start(s), exits {run_log.exits}, {run_log.seconds:.0f} s"
            if run_log
            else "; no faulted run (no fault kinds)"
        )
    )
    (work / f"seed-{seed}" / "observations.json").write_text(
        json.dumps(
            {
                "expected": [e.as_dict() for e in expect],
                "reference": ref_obs.as_dict(),
                "faulted": run_obs.as_dict() if run_obs else None,
                "fault_log": run_log.faults if run_log else [],
            },
            indent=1,
            default=str,
        )
    )
    return SeedResult(
        seed,
        not violations,
        violations,
        counts,
        reproduce_command(seed, cfg),
        time.monotonic() - t0,
        plan.describe(),
        notes,
    )


def _bucket(s3: dict, seed: int) -> dict:
    import uuid

    import boto3

    bucket = f"chaos-{seed}-{uuid.uuid4().hex[:6]}"
    boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)
    return {**s3, "bucket": bucket}


class MotoServer:
    """moto's S3 server on 127.0.0.1 (a free port), for ``store=s3``."""

    def __enter__(self) -> dict:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        return {"endpoint": f"http://{host}:{port}"}

    def __exit__(self, *exc) -> None:
        self.server.stop()
