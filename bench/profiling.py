"""Where the time goes per request: relative profiles of the serving path (``bench serve --profile DIR``).

* The replica and the proxy of the running Ray Serve application are sampled by py-spy while a Score
  phase runs (``--nonblocking``: the processes are not paused; ``--gil``: only the thread holding the GIL,
  so a thread parked in a C call is not counted as busy; collapsed stacks in DIR), and
  :func:`summarize_collapsed` turns each into shares of the samples: the top functions by own time and by
  inclusive time, and the replica's samples per stage of a request (:data:`STAGES`).
* The in-process service (validation, conversions, features, forward, response) runs under cProfile
  (:func:`cprofile_calls`): the top functions by cumulative time, as shares of the total.

Every number is a share of samples or of time, never an absolute figure: they compare where the time
goes, also on a loaded machine. py-spy is found beside this Python, on PATH, or through its installed
distribution's files; without it the sampling part says so and the rest goes on.
"""

from __future__ import annotations

import cProfile
import importlib.metadata
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# a replica sample is counted in the first stage (in this order) whose pattern one of its frames contains
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("forward", ("ServableModel.score", "TrainerCore.score", "torch/", "fbgemm")),
    ("features", ("serving/features.py",)),
    ("request_conversion", ("candidate_columns", "context_values", "feature_value", "_check_size")),
    ("telemetry", ("serving/telemetry.py", "prometheus", "ray/util/metrics")),
    ("handler_rest", ("ScoringService._score", "ScoringService._recommend", "ScoringService._timed")),
    ("ray_serve", ("ray/serve/",)),
    ("grpc_protobuf", ("grpc/", "google/protobuf")),
    ("ray_core", ("ray/",)),
    ("asyncio", ("asyncio/",)),
)


def py_spy_binary() -> str | None:
    """The py-spy executable: beside this interpreter, on PATH, or among the files of the py-spy distribution."""
    near = Path(sys.executable).parent / "py-spy"
    if near.exists():
        return str(near)
    found = shutil.which("py-spy")
    if found:
        return found
    try:
        dist = importlib.metadata.distribution("py-spy")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name == "py-spy":
            p = Path(dist.locate_file(f)).resolve()
            if p.exists():
                return str(p)
    return None


def _frame_key(frame: str) -> str:
    """``score (serving/model.py:123)`` -> ``serving/model.py:score`` (the line dropped, an absolute path
    shortened to its package path; py-spy already writes them relative to sys.path)."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if not path.startswith("/"):
        return f"{path}:{name}"
    std = re.search(r"/lib/python3\.\d+/", path)
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif std:
        path = path[std.end() :]
    else:
        parts = Path(path).parts
        path = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{path}:{name}"


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """Collapsed stacks (``frame;frame;... COUNT`` per line, py-spy's ``--format raw``) -> [(frame keys, count)]."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        # py-spy puts the thread (and process) as the first frames: "thread (0x..)" / "process 12:..."
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        out.append(([_frame_key(f) for f in frames], int(count)))
    return out


def stage_of(frames: list[str]) -> str:
    """The stage of one sample: the first of :data:`STAGES` (in their order) that one of its frames matches."""
    for stage, patterns in STAGES:
        if any(p in f for f in frames for p in patterns):
            return stage
    return "other"


def summarize_collapsed(text: str, top: int = 12) -> dict:
    """Shares of the samples: the top functions by own (innermost) time and by inclusive time, and per stage."""
    stacks = parse_collapsed(text)
    total = sum(c for _, c in stacks)
    if not total:
        return {"samples": 0}
    own, incl, stages = Counter(), Counter(), Counter()
    for frames, c in stacks:
        if frames:
            own[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
        stages[stage_of(frames)] += c

    def shares(counter: Counter) -> list[list]:
        return [[k, round(v / total, 4)] for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "own": shares(own),
        "inclusive": shares(incl),
        "stages": {k: round(v / total, 4) for k, v in stages.most_common()},
    }


def cprofile_calls(fn, reps: int, out: Path | None = None, top: int = 15) -> dict:
    """Run ``fn(i)`` ``reps`` times under cProfile: the top functions by cumulative time as shares of the total."""
    for i in range(min(20, reps)):
        fn(i)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(reps):
        fn(i)
    prof.disable()
    if out is not None:
        prof.dump_stats(str(out))
    st = pstats.Stats(prof)
    total = st.total_tt or 1e-12
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _) in st.stats.items():
        rows.append((ct, tt, nc, f"{_frame_key(f'{name} ({file}:{line})')}"))
    rows.sort(reverse=True)
    return {
        "calls": reps,
        "cumulative": [[k, round(ct / total, 4), round(nc / reps, 2)] for ct, _, nc, k in rows[:top]],
        "own": [
            [k, round(tt / total, 4), round(nc / reps, 2)] for tt, _, nc, k in sorted(rows, key=lambda r: -r[1])[:top]
        ],
        "note": "shares of the profiled time; the third value is calls per request",
    }


def summarize_pstats(stats: dict, requests: int, top: int = 20) -> dict:
    """A raw ``pstats`` table ({(file, line, function): (primitive calls, calls, own s, cumulative s, ...)}, what
    ``ScorerDeployment.cprofile("stop")`` returns) per request: the top functions by cumulative time and by own
    time, each as [function, ms per request, calls per request]. cProfile's own cost inflates Python-heavy
    functions: compare the rows with each other, not with an unprofiled run."""
    n = max(int(requests), 1)
    rows = [(v[3], v[2], v[1], _frame_key(f"{name} ({file}:{line})")) for (file, line, name), v in stats.items()]

    def table(key: int) -> list[list]:
        picked = sorted(rows, key=lambda r: -r[key])[:top]
        return [[r[3], round(r[key] * 1e3 / n, 4), round(r[2] / n, 2)] for r in picked]

    return {
        "requests": n,
        "cumulative_ms_per_request": table(0),
        "own_ms_per_request": table(1),
        "note": "cProfile in the replica: [function, ms per request, calls per request]; cProfile inflates them",
    }


def handled_requests(stats: dict) -> int:
    """Score and Recommend calls that the replica's :class:`serving.service.ScoringService` answered, from a raw
    pstats table (0 when it holds none)."""
    return sum(
        v[1]
        for (file, _line, name), v in stats.items()
        if file.endswith("serving/service.py") and name in ("score", "recommend")
    )


def replica_cprofile(handle, run_phase, top: int = 20) -> dict:
    """A cProfile of the Scorer replica (``handle``: its DeploymentHandle) while ``run_phase()`` (a load phase
    returning a LoadResult) runs: :func:`summarize_pstats` per request answered, and the phase's summary."""
    handle.cprofile.remote("start").result(timeout_s=60)
    try:
        phase = run_phase().summary()
    finally:
        stats = handle.cprofile.remote("stop").result(timeout_s=60)
    out = summarize_pstats(stats, handled_requests(stats) or phase["sent"], top)
    out["phase"] = phase
    return out


def serve_pids(root_pid: int | None = None) -> dict[str, int]:
    """The pids of the freshrec Scorer replica and of the proxy actor among this process's descendants (a
    local Ray started by the run; Ray titles its actor processes ``ray::ServeReplica:APP:DEPLOYMENT`` and
    ``ray::ProxyActor``). No Ray API: the state API needs the dashboard, and finds other runs' clusters."""
    import psutil

    pids: dict[str, int] = {}
    for p in psutil.Process(root_pid or os.getpid()).children(recursive=True):
        try:
            title = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "ServeReplica:freshrec:Scorer" in title and "replica" not in pids:
            pids["replica"] = p.pid
        elif "ServeReplica:noop:Noop" in title and "noop_replica" not in pids:
            pids["noop_replica"] = p.pid
        elif "ray::ProxyActor" in title and "proxy" not in pids:
            pids["proxy"] = p.pid
    return pids


ACTOR_ROLES = {
    "ServeReplica:freshrec:Scorer": "replica",
    "ServeReplica:noop:Noop": "noop_replica",
    "ProxyActor": "proxy",
}


def actor_pids() -> dict[str, int]:
    """The pids of the freshrec Scorer replica, the no-op replica and the proxy from Ray's actor table (the GCS's
    ``ActorClassName`` and ``Pid`` of the ALIVE actors: ``ray._private.state.actors``, no dashboard needed); a role
    the table does not give (an older Ray, no connection) comes from the process titles (:func:`serve_pids`)."""
    out: dict[str, int] = {}
    try:
        from ray._private import state

        table = state.actors(actor_state_name="ALIVE")
    except Exception:  # not connected, or the private API moved: the process titles below
        table = {}
    for info in table.values():
        role = ACTOR_ROLES.get(info.get("ActorClassName", ""))
        pid = info.get("Pid") or 0
        if role is not None and role not in out and pid > 0:
            out[role] = int(pid)
    if len(out) < len(ACTOR_ROLES):
        for role, pid in serve_pids().items():
            out.setdefault(role, pid)
    return out


def cpu_ms_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """Each process's CPU milliseconds (user + system) over a phase per request sent in it."""
    if requests <= 0:
        return {}
    return {k: round((after[k] - before[k]) * 1e3 / requests, 4) for k in after if k in before}


def profile_serve_phase(out_dir: Path, run_phase, rate: int = 250) -> dict:
    """Sample the replica and the proxy with py-spy while ``run_phase()`` (a load phase returning a
    LoadResult) runs; the summaries of the samples and the phase's own summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = py_spy_binary()
    pids = serve_pids()
    result: dict = {"pids": pids}
    procs: dict[str, tuple[subprocess.Popen, Path]] = {}
    if spy is None:
        result["py_spy"] = "not found (pip install py-spy): no samples of the replica and the proxy"
    else:
        for role, pid in pids.items():
            path = out_dir / f"{role}.collapsed"
            # --gil: only the thread holding the GIL is sampled (Python work, not threads parked in C calls)
            cmd = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking", "--gil"]
            cmd += ["--output", str(path)]
            procs[role] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
    try:
        result["phase"] = run_phase().summary()
    finally:
        for role, (proc, path) in procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if path.exists():
                result[role] = summarize_collapsed(path.read_text())
                result[role]["file"] = str(path)
            else:
                result[role] = {"error": (err or b"").decode(errors="replace")[-500:] or f"exit {proc.returncode}"}
    result["note"] = "shares of py-spy samples (own = innermost frame); stages: the replica's request stages"
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":
        result["note"] += "; throughput ingress: user code runs on the replica's loop"
    return result


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system, every thread) so far of each named process; a process gone is left out."""
    import psutil

    out = {}
    for role, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[role] = t.user + t.system
    return out


def cpu_shares(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Each process's CPU over a phase as a share of one core (1.0: one core busy the whole phase)."""
    return {k: round((after[k] - before[k]) / wall_s, 4) for k in after if k in before and wall_s > 0}


# ------------------------------------------------------------------ the CPU cuts, A/B in process
def _old_rows(one, n: int):
    """serving.features._rows before: ``take`` of row 0, n times."""
    import numpy as np
    import pyarrow as pa

    return one.take(pa.array(np.zeros(n, np.int64)))


def _old_lookup(self, ids, at=None):
    """serving.tables.FrozenTable.lookup before: torch's index_select."""
    import numpy as np
    import torch

    from paramserver import init_rows

    pos, known = self.positions(ids) if at is None else at
    rows = (
        self.rows.index_select(0, torch.from_numpy(pos)).numpy()
        if len(self.ids)
        else np.zeros((len(pos), self.cfg.dim), np.float32)
    )
    if not known.all():
        miss = ~known
        if self.admit:
            cold = init_rows(self.cfg, np.asarray(ids, np.int64)[miss], self.seed)
            rows[miss] = cold.astype(np.float16).astype(np.float32) if self.fp16 else cold
        else:
            rows[miss] = 0.0
    return rows, known


def _old_pull_many(self, ids, step=None):
    """serving.tables.FrozenTables.pull_many before: every table searches its positions."""
    import numpy as np

    out, unknown = {}, 0
    for name, table_ids in ids.items():
        out[name], known = self.tables[name].lookup(table_ids)
        unknown += int(len(known) - np.count_nonzero(known))
    self.unknown = unknown
    return out


def _old_score(self, batch):
    """serving.model.ServableModel.score before: no inference_mode (the core's no_grad only)."""
    with self._lock:
        return self.core.score(batch), self.tables.unknown


def _old_core_score(self, batch):
    """trainer.core.TrainerCore.score before the fifth session: every chunk through ``batch_to_kjt`` on a row slice,
    ``table_ids``, ``stage`` and the model's forward (the collection's ``_values_by_key`` again, ``_pool`` per
    table, a KeyedTensor and its ``to_dict``). Kept verbatim: the reference of tests/unit/test_serve_cpu_score.py."""
    import numpy as np
    import torch

    from trainer.core import SCORE_BATCH, logits_of
    from trainer.sparse import batch_to_kjt

    batch = self._candidates(batch)
    step = None if self.async_mode else self.step
    dense = self._dense(batch)
    n = len(batch)
    out = np.empty(n, np.float32)
    model = self.base_model
    if model.training:
        model.eval()
    with torch.no_grad():
        for lo in range(0, n, SCORE_BATCH):
            rows = slice(lo, min(lo + SCORE_BATCH, n))
            kjt = batch_to_kjt(batch, self.features, rows)
            ids = self.ebc.table_ids(kjt)
            self.ebc.stage(ids, self.backend.wait(self.backend.pull_many(ids, step=step)), requires_grad=False)
            out[rows] = torch.sigmoid(logits_of(model, dense[rows].to(self.device), kjt)).cpu().numpy()
    return out


def _old_forward_pooled(self, emb, dense):
    """trainer.model.DLRM.forward_pooled before the fifth session: the wide columns through ``_WideWeight.apply``
    (an autograd.Function) also when scoring. Verbatim."""
    import torch

    from trainer.model import _WideWeight

    b = self.bottom(dense)
    es = [emb[t] for t in self.tables]
    if self.cfg.interaction == "dcn":
        x = self.cross(torch.cat([*es, b], dim=1))
    else:
        z = torch.stack([b, *es], dim=1)
        gram = torch.bmm(z, z.transpose(1, 2))
        x = torch.cat([b, gram[:, self._tri[0], self._tri[1]]], dim=1)
    logit = self.head(self.top(x)).squeeze(1)
    if self.wide_dense is not None:
        beta = self.cfg.wide_beta
        wide = torch.stack([_WideWeight.apply(emb[k], beta) for k in self.wide_keys], dim=1).sum(dim=1)
        logit = logit + wide + self.cfg.wide_dense_gain * self.wide_dense(dense).squeeze(1)
    return logit


def cpu_cuts() -> dict[str, list[tuple[object, str, object]]]:
    """Each cut of the replica's CPU per request (issue 22, fourth and fifth sessions) as (owner, attribute, the code
    it replaced): :func:`cpu_ab` puts the old code back to measure what the cut bought. Recommend's reply built in
    place is not among them (it is inside ``ScoringService._recommend``). ``fifth_session``: the fifth session's two
    cuts together (the training core's score path); ``all``: every cut."""
    import serving.features as features
    import serving.model as model
    import serving.tables as tables
    from trainer.core import TrainerCore
    from trainer.model import DLRM

    cuts = {
        "int_ids_skip_parser": [(features, "_passes_through", lambda *a: False)],
        "pa_repeat": [(features, "_rows", _old_rows)],
        "numpy_take": [(tables.FrozenTable, "lookup", _old_lookup)],
        "shared_positions": [(tables.FrozenTables, "pull_many", _old_pull_many)],
        "inference_mode": [(model.ServableModel, "score", _old_score)],
        # fifth session: the training core scores freshrec's DLRM without a KJT (trainer.core._PooledPlan)
        "core_score_no_kjt": [(TrainerCore, "score", _old_core_score)],
        # fifth session: a scoring forward takes the wide rows' column 0 without the autograd.Function
        "wide_column_no_autograd_fn": [(DLRM, "forward_pooled", _old_forward_pooled)],
    }
    cuts["fifth_session"] = cuts["core_score_no_kjt"] + cuts["wide_column_no_autograd_fn"]
    cuts["all"] = [c for k, v in cuts.items() if k != "fifth_session" for c in v]
    return cuts


def cpu_ab_names(text: str) -> list[str] | None:
    """``--cpu-ab-cuts``: a comma list of :func:`cpu_cuts`' names (None: every cut); an unknown name is refused
    with the list of the known ones."""
    from common.errors import UserError

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        return None
    known = list(cpu_cuts())
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"--cpu-ab-cuts: unknown cut(s) {bad}; the cuts are {known}")
    return names


def cpu_ab(methods: dict, alternations: int = 10, block: int = 150, names=None) -> dict:
    """In process (no Ray): per cut and method, ``alternations`` pairs of blocks of ``block`` requests, the cut's
    old code (``before``) and the current code (``after``) in alternating order; CPU (``time.process_time``) per
    request. ``methods``: {name: (fn(request), requests)}. Returns per cut and method the median of after/before
    over the pairs, its range, and the median ms per request of each side. The answers of both sides are the same
    bits (tests/unit/test_serve_cpu_paths.py); only their cost differs."""
    import statistics
    import time

    cuts = cpu_cuts()

    def timed(fn, reqs) -> float:
        t0 = time.process_time()
        for i in range(block):
            fn(reqs[i % len(reqs)])
        return (time.process_time() - t0) * 1e3 / block

    def with_old(name, fn, reqs) -> float:
        saved = [(o, a, getattr(o, a)) for o, a, _ in cuts[name]]
        for o, a, old in cuts[name]:
            setattr(o, a, old)
        try:
            return timed(fn, reqs)
        finally:
            for o, a, cur in saved:
                setattr(o, a, cur)

    out: dict = {}
    for name in names or list(cuts):
        out[name] = {}
        for method, (fn, reqs) in methods.items():
            before, after = [], []
            for k in range(alternations):
                if k % 2 == 0:
                    before.append(with_old(name, fn, reqs))
                    after.append(timed(fn, reqs))
                else:
                    after.append(timed(fn, reqs))
                    before.append(with_old(name, fn, reqs))
            ratios = [a / b for a, b in zip(after, before)]
            out[name][method] = {
                "after_over_before": round(statistics.median(ratios), 3),
                "range": [round(min(ratios), 3), round(max(ratios), 3)],
                "before_ms": round(statistics.median(before), 4),
                "after_ms": round(statistics.median(after), 4),
            }
    out["note"] = f"CPU ms per request in process, {alternations} alternating pairs of {block} requests"
    return out
