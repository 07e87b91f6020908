"""``freshrec bench serve``: Score/Recommend latency over gRPC, version swaps under load, and freshness.

In one run, on loopback, at a fixed offered load (open loop, :mod:`bench.loadgen`):

* Score with ``--candidates`` items and Recommend (``--k``) through Ray Serve's gRPC proxy,
  against (rounds alternating, the order reversed every other round) a **no-op Ray Serve
  application** on the same proxy (same contract, the same request and reply sizes: its replica
  returns a fixed reply, so it measures the floor of proxy + handle hop + load generator), the same
  model hosted by a plain grpcio server (``python -m serving.grpc_server``, another process), the
  model's bare in-process forward (the training core's score on a prepared batch) and the
  in-process service (validation + features + forward). Freshrec's p99 is reported per round as a
  ratio to the no-op app's (``score_p99_over_noop``);
* ``--curve``: a capacity curve, p50/p99 of freshrec, the no-op app and grpcio at offered loads
  25, 50, 100, 200, 400 QPS (JSON ``curve``, a PNG at ``--plot``), and ``max_qps_within_1_5x_noop``;
* the CPU a request costs, per process: around every load phase psutil reads the user + system CPU of the
  freshrec replica, the no-op replica and the proxy (their pids from Ray's actor table), the grpcio host
  and the load generator; JSON ``cpu_ms_per_request`` {method: {app: {process: median ms per request sent}},
  ``replica_over_noop`` and ``replica_minus_noop_ms`` per round}: CPU-seconds are far less sensitive than
  latency to other work on the machine, and on 2 cores what a request costs decides the capacity;
* ``--cpu-ab N``: in process only, what each cut of the replica's CPU per request bought: its old code put back
  in alternating blocks (:func:`bench.profiling.cpu_ab`), JSON ``cpu_ab``; the run stops there; ``--cpu-ab-cuts``
  names the cuts to measure (e.g. ``fifth_session``: the training core's score path);
* ``--profile DIR``: where the time goes per request: py-spy samples the replica and the proxy under
  load (collapsed stacks in DIR and their top functions in the JSON), a cProfile inside the replica under
  a Score and a Recommend phase (``profile_replica_cprofile``: the top functions in ms per request), a
  cProfile of the in-process service, and the load generator's own CPU in every phase (``loadgen_cpu_share``);
* ``--swaps`` version swaps under that load: failed requests, p99 during swaps over steady p99;
* freshness over ``--fresh-files`` data files: from a file's rename into the incoming directory
  to the first Score answer by a version that includes it (a trainer process follows the
  directory and commits a version per file, like ``freshrec stream``; a prober scores every 10 ms,
  its answered rate is ``freshness_probe_qps``) while ``--fresh-load`` Score requests per second (default
  100) are offered beside it. ``--fresh-warmup`` files (default 3) land first and are not counted: they carry
  the trainer's start-up and its first version, a full one. Each file's first version and commit time come
  from the trainer's log (gc removes most versions before the phase ends).

The model: the Taobao log when present (the first 60% of rows trained as history, the rest cut
into small data files), otherwise a synthetic log of the same format.

The work directory (``/tmp/freshrec-bench-serve-*``: the version store, the data files, the trainer
processes' logs) is removed at the end, also on an error, Ctrl-C or SIGTERM, together with the
processes the run started; ``--keep-work`` keeps it and prints its path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.loadgen import median_of

APP_NAME = "freshrec"  # serving.app.APP_NAME (not imported here: importing serving.app imports Ray Serve)

DESCRIPTION = "Score/Recommend p50/p99 over Ray Serve gRPC vs grpcio and the bare forward; swaps; freshness"
REPO = Path(__file__).resolve().parents[1]
CURVE_QPS = (25, 50, 100, 200, 400)
NOOP_APP = "noop"
TAOBAO = REPO.parent / "shared" / "data" / "taobao_userbehavior" / "UserBehavior_timeordered_96k.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--qps", type=float, default=100.0, help="offered load, requests/s (default 100)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per load phase (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds grpcio <-> Ray Serve (default 2)")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per Score (default 100)")
    parser.add_argument("--k", type=int, default=20, help="k of Recommend (default 20)")
    parser.add_argument("--swaps", type=int, default=10, help="versions committed under load (default 10)")
    parser.add_argument("--fresh-files", type=int, default=50, help="data files for freshness (default 50)")
    parser.add_argument(
        "--fresh-load",
        type=float,
        default=100.0,
        help="Score requests per second offered while the measured freshness files land, beside the prober "
        "(default 100; 0: the prober alone)",
    )
    parser.add_argument(
        "--fresh-warmup",
        type=int,
        default=3,
        help="data files landed before the measured ones and not counted: the trainer's start-up and its first "
        "(full) version (default 3)",
    )
    parser.add_argument(
        "--curve",
        nargs="?",
        const=",".join(str(q) for q in CURVE_QPS),
        default="",
        metavar="QPS,...",
        help="measure a capacity curve at these offered loads (bare --curve: 25,50,100,200,400)",
    )
    parser.add_argument("--curve-seconds", type=float, default=5.0, help="seconds per curve point (default 5)")
    parser.add_argument(
        "--plot", default="bench-serve-curve.png", help="the capacity curve's PNG (default bench-serve-curve.png)"
    )
    parser.add_argument(
        "--profile",
        default="",
        metavar="DIR",
        help="profile one Score phase: py-spy samples of the replica and the proxy and a cProfile of the "
        "in-process service go to DIR, their top functions to the JSON",
    )
    parser.add_argument(
        "--ingress",
        choices=("proxy", "throughput"),
        default="proxy",
        help="proxy: Ray Serve's gRPC proxy (default); throughput: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
        "(direct ingress, user code on the replica's loop)",
    )
    parser.add_argument(
        "--max-ongoing",
        type=int,
        default=None,
        help="serve.max_ongoing_requests of the Scorer replica and the no-op app (default: ServeConfig's, 64)",
    )
    parser.add_argument(
        "--score-batch",
        type=int,
        default=None,
        metavar="N",
        help="serve.score_batch_size: Score requests scored together by @serve.batch, up to N (default: "
        "ServeConfig's, 1: off)",
    )
    parser.add_argument(
        "--score-batch-wait",
        type=float,
        default=None,
        metavar="S",
        help="serve.score_batch_wait_s: how long a batch waits for company (default: ServeConfig's, 0.002)",
    )
    parser.add_argument(
        "--replica-perf",
        action="store_true",
        help="where the time goes per request: the Scorer replica records per-stage spans (serve.request_spans), "
        "the arrival lag from the client's send, its loop's lag and its threads' CPU; every phase reports the CPU "
        "share of the proxy, the replicas and the load generator (JSON replica_perf)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="serve.access_log: Ray Serve's log line per request in the proxy and the replicas, freshrec's and "
        "the no-op app's alike (default off, as ServeConfig)",
    )
    parser.add_argument(
        "--user-code-thread",
        action="store_true",
        help="serve.user_code_thread=true: the replicas (freshrec's and the no-op app's) run the request methods "
        "on an event loop of their own thread, Ray Serve's default (default: on Ray Serve's own loop, as ServeConfig)",
    )
    parser.add_argument(
        "--cpu-ab",
        type=int,
        default=0,
        metavar="N",
        help="in process only (no Ray): the CPU per Score and Recommend request with each of the replica's CPU cuts "
        "turned back to its old code, N alternating pairs of blocks (JSON cpu_ab), then stop",
    )
    parser.add_argument(
        "--cpu-ab-cuts",
        default="",
        metavar="NAMES",
        help="with --cpu-ab: a comma list of the cuts to measure (bench.profiling.cpu_cuts; default every one), e.g. "
        "core_score_no_kjt,wide_column_no_autograd_fn,fifth_session",
    )
    parser.add_argument("--data", default=str(TAOBAO), help="a Taobao-format CSV (default: the shared Taobao log)")
    parser.add_argument(
        "--recall-users",
        type=int,
        default=100,
        help="users for retrieval recall@k against the full model over the whole catalogue (default 100)",
    )
    parser.add_argument(
        "--skip", default="", help="comma list of phases to skip: grpcio,noop,recommend,recall,swaps,freshness"
    )
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (version store, data files, trainer logs) and print its path; "
        "by default it is removed at the end, also on an error or Ctrl-C",
    )


# ----------------------------------------------------------------------- work dir
@contextlib.contextmanager
def work_dir(keep: bool = False, prefix: str = "freshrec-bench-serve-"):
    """A fresh temporary directory and a list for the child processes started for it: on the way out
    (normal end, error, Ctrl-C, or SIGTERM, turned into SystemExit(143) meanwhile) the children still
    running are killed and the directory is removed, unless ``keep`` (then its path goes to stderr)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    children: list[subprocess.Popen] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield work, children
    finally:
        try:
            for proc in children:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if keep:
                print(f"bench serve: the work directory is kept at {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------- data
def _prepare(args, work: Path) -> dict:
    from bench.servedata import write_taobao_csv

    later_n = 2 * args.swaps + args.fresh_warmup + args.fresh_files + 1
    data = Path(args.data)
    if data.exists():
        lines = data.read_text().splitlines()
        cut = int(len(lines) * 0.6)
        (work / "history").mkdir(parents=True)
        (work / "history" / "part-0000.csv").write_text("\n".join(lines[:cut]) + "\n")
        chunks = np.array_split(np.arange(cut, len(lines)), later_n)
        later = ["\n".join(lines[c[0] : c[-1] + 1]) + "\n" for c in chunks]
        source = f"taobao {data.name}: {cut} history rows, {later_n} files of ~{len(chunks[0])} rows"
    else:
        write_taobao_csv(work / "history" / "part-0000.csv", 30000, 0, users=2000, items=5000)
        later = []
        for i in range(later_n):
            p = write_taobao_csv(
                work / f"gen-{i}.csv",
                800,
                i + 1,
                start_ts=1_511_700_000 + 600 * i,
                users=2000,
                items=5000,
                new_items=100,
            )
            later.append(p.read_text())
        source = "synthetic taobao-format log (the Taobao file is absent)"
    return {"history": work / "history" / "part-0000.csv", "later": later, "source": source}


def _land(incoming: Path, name: str, text: str) -> float:
    """Write a data file under a temporary name and rename it: the moment it lands."""
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming / f".{name}.tmp"
    tmp.write_text(text)
    t = time.time()
    os.rename(tmp, incoming / name)
    return t


def _requests(model, n_req: int, candidates: int, seed: int = 0):
    """Score requests: a known user, ``candidates`` catalogue items, the log's time."""
    from serving.wire import pb

    rng = np.random.default_rng(seed)
    users = model.tables[model.roles.user_feature].ids
    items = model.index.ids if model.index is not None else model.tables[model.roles.item_feature].ids
    out = []
    for _ in range(n_req):
        r = pb.ScoreRequest()
        r.context["user_id"].id = int(rng.choice(users))
        r.context["ts"].id = 1_511_700_000
        r.candidate_columns["item_id"].ids.extend(rng.choice(items, candidates, replace=False).tolist())
        out.append(r)
    return out


def _recommend_requests(model, n_req: int, k: int, seed: int = 1):
    from serving.wire import pb

    rng = np.random.default_rng(seed)
    users = model.tables[model.roles.user_feature].ids
    out = []
    for _ in range(n_req):
        r = pb.RecommendRequest(k=k)
        r.context["user_id"].id = int(rng.choice(users))
        r.context["ts"].id = 1_511_700_000
        out.append(r)
    return out


# ------------------------------------------------------------------------ in-process
def _timed(fn, reps: int) -> dict:
    for _ in range(min(20, reps)):
        fn(0)
    lat = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "qps": 1e3 / float(np.mean(lat)),
    }


# ----------------------------------------------------------------------- servers
def _start_grpcio(store: str, catalogue: str, work: Path) -> tuple[subprocess.Popen, str]:
    """The plain grpcio host, started by the product's launcher (:func:`serving.grpc_server.spawn_grpc_server`:
    its port file is written atomically, so it is never read empty)."""
    from serving.grpc_server import spawn_grpc_server

    return spawn_grpc_server(store, (catalogue,), work, threads=4, poll_interval_s=0.1, env=_env())


class NoopScorer:
    """The no-op replica: freshrec.v1.Scorer answering every call with a fixed reply (bytes of a real
    freshrec answer, so the reply has the same size); what it measures is the floor of Ray Serve's
    proxy, the handle hop and the load generator."""

    def __init__(self, score_reply: bytes, recommend_reply: bytes) -> None:
        from serving.wire import pb

        self.score_reply = pb.ScoreResponse.FromString(score_reply)
        self.recommend_reply = pb.RecommendResponse.FromString(recommend_reply)

    async def Score(self, request, grpc_context):
        return self.score_reply

    async def Recommend(self, request, grpc_context):
        return self.recommend_reply

    async def ModelInfo(self, request, grpc_context):
        from serving.wire import pb

        return pb.ModelInfoResponse(model_version=self.score_reply.model_version)


def _start_noop(score_reply: bytes, recommend_reply: bytes, cfg) -> None:
    """Deploy the no-op application beside freshrec's, with the Scorer deployment's options (``cfg``: its
    ServeConfig: max_ongoing_requests, access_log, user_code_thread)."""
    from ray import serve

    from serving.app import replica_actor_options

    max_ongoing_requests, access_log = cfg.max_ongoing_requests, cfg.access_log
    dep = serve.deployment(
        name="Noop",
        ray_actor_options=replica_actor_options(cfg),
        max_ongoing_requests=max_ongoing_requests,
        logging_config={"enable_access_log": access_log},
    )(NoopScorer)
    serve.run(dep.bind(score_reply, recommend_reply), name=NOOP_APP, route_prefix="/" + NOOP_APP, blocking=False)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _load(target: str, reqs, method: str, qps: float, seconds: float, app: str | None, sent_at: bool = False):
    """One open-loop phase; ``app``: the Ray Serve application (metadata), None for the grpcio host;
    ``sent_at``: every request carries its send time (serving.service.SENT_AT_KEY)."""
    from bench.loadgen import run_load
    from serving.service import SENT_AT_KEY

    md = (("application", app),) if app else ()

    def call(stub, i, timeout, metadata):
        return getattr(stub, method)(reqs[i % len(reqs)], timeout=timeout, metadata=metadata)

    return run_load(call, target, qps, seconds, metadata=md, sent_at_key=SENT_AT_KEY if sent_at else None)


class ReplicaPerf:
    """Around each load phase, the CPU of the proxy, the freshrec replica, the no-op replica (psutil on the pids
    of Ray's actor table) and the grpcio host: ``cpu_ms_per_request`` (each process's CPU milliseconds per
    request sent in the phase, the load generator's included: far less sensitive to other work on the machine
    than latency) and ``cpu_share``; with ``spans`` (``--replica-perf``), for freshrec's phases also the
    replica's own report (per-stage spans, arrival lag, loop lag, threads' CPU: ``ScorerDeployment.perf_report``).
    """

    def __init__(self, spans: bool = False, grpcio_pid: int | None = None) -> None:
        from ray import serve

        from bench.profiling import actor_pids

        self.pids = actor_pids()
        if grpcio_pid is not None:
            self.pids["grpcio"] = grpcio_pid
        self.spans = spans
        self.handle = serve.get_deployment_handle("Scorer", app_name=APP_NAME)

    def report(self) -> dict:
        return self.handle.perf_report.remote(True).result(timeout_s=60)

    def phase(self, name: str, run) -> dict:
        """``run()`` -> LoadResult; its summary with ``cpu_ms_per_request``, ``cpu_share`` (and ``replica`` for
        freshrec with spans)."""
        from bench.profiling import cpu_ms_per_request, cpu_seconds, cpu_shares

        spans = self.spans and name == "freshrec"
        if spans:
            self.report()  # forget what came before this phase
        before, t0 = cpu_seconds(self.pids), time.perf_counter()
        res = run()
        after, wall = cpu_seconds(self.pids), time.perf_counter() - t0
        s = res.summary()
        s["cpu_share"] = cpu_shares(before, after, wall)
        s["cpu_ms_per_request"] = cpu_ms_per_request(before, after, res.sent)
        if res.sent:
            s["cpu_ms_per_request"]["loadgen"] = round(res.cpu_s * 1e3 / res.sent, 4)
        if spans:
            s["replica"] = self.report()
        return s


# --------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> dict:
    with work_dir(args.keep_work) as (work, children):
        result = _run(args, work, children)
    if args.keep_work:
        result["work_dir"] = str(work)
    return result


def _run(args: argparse.Namespace, work: Path, children: list) -> dict:
    import ray

    from bench.servedata import StoreTrainer
    from cluster.config import RayConfig
    from cluster.ray_runtime import ensure_ray
    from serving.app import start_serving, worker_env
    from serving.client import ScoringClient
    from serving.config import ServeConfig
    from serving.service import ScoringService
    from versions import VersionStore

    skip = set(filter(None, args.skip.split(",")))
    if getattr(args, "cpu_ab", 0):  # a misspelt cut refused before the history is trained
        from bench.profiling import cpu_ab_names

        cpu_ab_names(getattr(args, "cpu_ab_cuts", ""))
    result: dict = {"loadavg_start": list(os.getloadavg()), "ingress": args.ingress}
    data = _prepare(args, work)
    result["data"] = data["source"]
    store_url = str(work / "versions")
    t0 = time.perf_counter()
    history = StoreTrainer(store_url)
    history.add_file(data["history"])
    # give the store's writer lease up: the trainer processes of the swaps and freshness phases write next
    # (held, it fenced them out: every version they tried failed with WriterFencedError)
    history.keeper.store.release_writer()
    history = None
    result["train_history_s"] = time.perf_counter() - t0
    store = VersionStore(store_url)
    catalogue = str(data["history"])

    # in-process baselines: the bare forward, and the service (validation + features + forward)
    svc = ScoringService(ServeConfig(store_url=store_url, catalogue=(catalogue,))).start()
    model = svc.follower.model
    reqs = _requests(model, 64, args.candidates)
    rec_reqs = _recommend_requests(model, 64, args.k)
    batches = [
        model.features.batch(
            {"user_id": r.context["user_id"].id, "ts": r.context["ts"].id},
            {"item_id": __import__("pyarrow").array(list(r.candidate_columns["item_id"].ids))},
            args.candidates,
        )[0]
        for r in reqs
    ]
    result["score_bare_forward"] = _timed(lambda i: model.score(batches[i % 64]), 400)
    result["score_in_process"] = _timed(lambda i: svc.score(reqs[i % 64]), 400)
    result["recommend_in_process"] = _timed(lambda i: svc.recommend(rec_reqs[i % 64]), 200)
    # the no-op app's fixed replies: real answers, so the messages have freshrec's sizes
    replies = (svc.score(reqs[0]).SerializeToString(), svc.recommend(rec_reqs[0]).SerializeToString())
    if args.profile:
        from bench.profiling import cprofile_calls

        Path(args.profile).mkdir(parents=True, exist_ok=True)
        result["profile_in_process_score"] = cprofile_calls(
            lambda i: svc.score(reqs[i % 64]), 400, Path(args.profile) / "in_process_score.pstats"
        )
    result["catalogue_items"] = len(model.index) if model.index is not None else 0
    if getattr(args, "cpu_ab", 0):
        from bench.profiling import cpu_ab, cpu_ab_names

        result["cpu_ab"] = cpu_ab(
            {"Score": (svc.score, reqs), "Recommend": (svc.recommend, rec_reqs)},
            alternations=args.cpu_ab,
            names=cpu_ab_names(getattr(args, "cpu_ab_cuts", "")),
        )
        svc.stop()
        return result
    if "recall" not in skip and model.index is not None:
        result["recall"] = _recall(model, args.k, args.recall_users)
    svc.stop()
    svc = model = None  # the in-process copy is freed before Ray starts

    if args.ingress == "throughput":
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    os.environ["PYTHONPATH"] = worker_env()["env_vars"]["PYTHONPATH"]
    ensure_ray(RayConfig(num_cpus=2))
    grpcio_proc = None
    try:
        cfg = serve_config(args, store_url, catalogue)
        result["serve_options"] = {
            k: getattr(cfg, k)
            for k in (
                "max_ongoing_requests",
                "score_batch_size",
                "score_batch_wait_s",
                "request_spans",
                "access_log",
                "user_code_thread",
            )
        }
        port = start_serving(cfg)
        target = f"127.0.0.1:{port}"
        ScoringClient(target).wait_ready(120)
        if "grpcio" not in skip:
            grpcio_proc, grpcio_target = _start_grpcio(store_url, catalogue, work)
            children.append(grpcio_proc)
            ScoringClient(grpcio_target, None).wait_ready(120)
        apps = {"freshrec": (target, APP_NAME)}
        if "noop" not in skip:
            _start_noop(*replies, cfg)
            ScoringClient(target, NOOP_APP).wait_ready(120)
            apps["noop"] = (target, NOOP_APP)
        if grpcio_proc is not None:
            apps["grpcio"] = (grpcio_target, None)
        methods = [("Score", reqs)] + ([("Recommend", rec_reqs)] if "recommend" not in skip else [])
        perf = ReplicaPerf(bool(getattr(args, "replica_perf", False)), grpcio_proc.pid if grpcio_proc else None)
        result["cpu_pids"] = dict(perf.pids)
        rounds = _rounds(apps, methods, args.qps, args.seconds, args.rounds, perf)
        result.update(_round_summary(rounds))
        if perf.spans:
            result["replica_perf"] = _perf_by_method(rounds)
        result["cpu_ms_per_request"] = cpu_per_request(rounds)
        if args.curve:
            loads = [float(q) for q in args.curve.split(",") if q.strip()]
            curve = _curve(apps, reqs, loads, args.curve_seconds, perf)
            result["curve"] = curve
            result["max_qps_within_1_5x_noop"] = max_qps_within(curve, "freshrec", "noop", 1.5)
            if args.plot:
                result["curve_png"] = plot_curve(curve, args.plot, args.candidates)
        if args.profile:
            from bench.profiling import profile_serve_phase

            result["profile_serve"] = profile_serve_phase(
                Path(args.profile) / "score", lambda: _load(target, reqs, "Score", args.qps, args.seconds, APP_NAME)
            )
            if "recommend" not in skip:
                result["profile_serve_recommend"] = profile_serve_phase(
                    Path(args.profile) / "recommend",
                    lambda: _load(target, rec_reqs, "Recommend", args.qps, args.seconds, APP_NAME),
                )
            # cProfile inside the replica (a separate phase per method: py-spy is not sampling meanwhile)
            from bench.profiling import replica_cprofile

            result["profile_replica_cprofile"] = {
                method: replica_cprofile(
                    perf.handle, lambda rs=rs, m=method: _load(target, rs, m, args.qps, args.seconds, APP_NAME)
                )
                for method, rs in methods
            }
        if grpcio_proc is not None:
            grpcio_proc.kill()
            grpcio_proc = None
        result.update(
            {
                "p50_ms": result["score_serve"]["p50_ms"],
                "p99_ms": result["score_serve"]["p99_ms"],
                "qps": result["score_serve"]["qps"],
            }
        )
        later = list(data["later"])
        if "swaps" not in skip:
            from serving.app import pin

            # control: the same load and the same trainer work, the replica pinned (no swap); pinning is a
            # user_config update: the same replica goes on serving
            pinned = ScoringClient(target).model_info().model_version
            pin(cfg, pinned)
            control = _swaps(
                args, store_url, work, target, reqs, later[: args.swaps], result["p99_ms"], "control", children
            )
            result["swap_control_pinned"] = control
            pin(cfg, None)
            ScoringClient(target).wait_ready(60, min_version=pinned + 1)
            time.sleep(2.0)
            swaps = _swaps(
                args,
                store_url,
                work,
                target,
                reqs,
                later[args.swaps : 2 * args.swaps],
                result["p99_ms"],
                "swap",
                children,
            )
            result.update({f"swap_{k}": v for k, v in swaps.items()})
            result["swap_p99_over_pinned_control"] = swaps["p99_ms"] / control["p99_ms"]
        later = later[2 * args.swaps :]
        if "freshness" not in skip:
            result.update(
                _freshness(
                    args,
                    store,
                    store_url,
                    work,
                    target,
                    reqs[0],
                    later[: args.fresh_warmup + args.fresh_files],
                    children,
                )
            )
    finally:
        if grpcio_proc is not None:
            grpcio_proc.kill()
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    result["loadavg_end"] = list(os.getloadavg())
    return result


def serve_config(args: argparse.Namespace, store_url: str, catalogue: str):
    """The replica's ServeConfig: the bench's store and catalogue, a 0.1 s poll, and the concurrency options
    given (``--max-ongoing``, ``--score-batch``, ``--score-batch-wait``; ServeConfig's defaults otherwise)."""
    from serving.config import ServeConfig

    given = {
        "max_ongoing_requests": getattr(args, "max_ongoing", None),
        "score_batch_size": getattr(args, "score_batch", None),
        "score_batch_wait_s": getattr(args, "score_batch_wait", None),
    }
    return ServeConfig(
        store_url=store_url,
        poll_interval_s=0.1,
        catalogue=(catalogue,),
        request_spans=bool(getattr(args, "replica_perf", False)),
        access_log=bool(getattr(args, "access_log", False)),
        user_code_thread=bool(getattr(args, "user_code_thread", False)),
        **{k: v for k, v in given.items() if v is not None},
    )


def _phase(perf: "ReplicaPerf | None", name: str, tgt: str, reqs, method: str, qps: float, seconds: float, app):
    """One load phase's summary (with ``perf``: the CPU per request and shares; with ``--replica-perf`` also the
    replica's report)."""
    if perf is None:
        return _load(tgt, reqs, method, qps, seconds, app).summary()
    return perf.phase(name, lambda: _load(tgt, reqs, method, qps, seconds, app, sent_at=perf.spans))


def cpu_per_request(rounds: dict) -> dict:
    """``{method: {app: {process: median CPU ms per request over rounds}}}`` from the phases'
    ``cpu_ms_per_request``, with per round ``replica_over_noop`` (freshrec's replica over the no-op replica, each
    in its own phase), ``replica_minus_noop_ms`` (the CPU a request costs in freshrec's replica beyond the
    no-op replica's) and ``replica_idle_ms`` (freshrec's replica during the no-op app's phase, per request of that
    phase: its background work, the follower's polls, which the first two include)."""
    out: dict = {}
    for method, per_app in rounds.items():
        m: dict = {}
        for app, summaries in per_app.items():
            per = [s.get("cpu_ms_per_request") or {} for s in summaries]
            procs = sorted({k for p in per for k in p})
            m[app] = {k: round(float(np.median([p[k] for p in per if k in p])), 4) for k in procs}
        ours = [(s.get("cpu_ms_per_request") or {}).get("replica") for s in per_app.get("freshrec", [])]
        floor = [(s.get("cpu_ms_per_request") or {}).get("noop_replica") for s in per_app.get("noop", [])]
        pairs = [(a, b) for a, b in zip(ours, floor) if a is not None and b is not None]
        if pairs:
            m["replica_over_noop"] = [round(a / b, 3) if b > 0 else float("inf") for a, b in pairs]
            m["replica_minus_noop_ms"] = [round(a - b, 4) for a, b in pairs]
        # freshrec's replica while the no-op app takes the load: its background (the follower's polls), per request
        idle = [(s.get("cpu_ms_per_request") or {}).get("replica") for s in per_app.get("noop", [])]
        if any(v is not None for v in idle):
            m["replica_idle_ms"] = idle
        out[method] = m
    return out


def _rounds(apps: dict, methods: list, qps: float, seconds: float, n_rounds: int, perf=None) -> dict:
    """``n_rounds`` rounds; in each, every app takes one phase per method, the order of the apps reversed
    every other round (no app always runs first, or always after a given other). -> {method: {app: [summaries]}}."""
    out: dict = {m: {a: [] for a in apps} for m, _ in methods}
    for r in range(n_rounds):
        order = list(apps) if r % 2 == 0 else list(reversed(apps))
        for method, reqs in methods:
            for name in order:
                tgt, app = apps[name]
                out[method][name].append(_phase(perf, name, tgt, reqs, method, qps, seconds, app))
    return out


def _perf_by_method(rounds: dict) -> dict:
    """``--replica-perf``'s figures per method, app and round: the CPU shares, the load generator's, the
    replica's report (freshrec), and p50/p99 beside them."""
    keep = ("p50_ms", "p99_ms", "loadgen_cpu_share", "cpu_share", "replica")
    return {
        m: {a: [{k: s[k] for k in keep if k in s} for s in ss] for a, ss in per_app.items()}
        for m, per_app in rounds.items()
    }


_KEYS = {("Score", "freshrec"): "score_serve", ("Score", "grpcio"): "score_grpcio", ("Score", "noop"): "score_noop"}
_KEYS.update(
    {("Recommend", a): f"recommend_{k}" for a, k in (("freshrec", "serve"), ("grpcio", "grpcio"), ("noop", "noop"))}
)


def _round_summary(rounds: dict) -> dict:
    """Medians over rounds per method and app, and freshrec's p99 over the no-op app's, round by round."""
    out: dict = {}
    for method, per_app in rounds.items():
        for app, summaries in per_app.items():
            out[_KEYS[(method, app)]] = median_of(summaries)
        if "noop" in per_app:
            m = method.lower()
            ratios = round_ratios(per_app["freshrec"], per_app["noop"], "p99_ms")
            out[f"{m}_p99_over_noop"] = ratios
            out[f"{m}_p99_over_noop_max"] = max(ratios)
            out[f"{m}_p50_over_noop"] = round_ratios(per_app["freshrec"], per_app["noop"], "p50_ms")
            out[f"{m}_loadgen_cpu_share"] = max(s["loadgen_cpu_share"] for a in per_app.values() for s in a)
    if "score_noop" in out:
        out["noop_p99_ms"] = out["score_noop"]["p99_ms"]
    return out


def round_ratios(ours: list[dict], floor: list[dict], key: str) -> list[float]:
    """Per round: our ``key`` over the floor's in the same round."""
    return [a[key] / b[key] if b[key] > 0 else float("inf") for a, b in zip(ours, floor, strict=True)]


def _curve(apps: dict, reqs, loads: list[float], seconds: float, perf=None) -> dict:
    """p50/p99 per app at each offered load (Score), apps alternating at every load."""
    curve: dict = {"qps": loads, **{a: [] for a in apps}}
    keep = ("p50_ms", "p99_ms", "qps", "errors", "loadgen_cpu_share", "cpu_share", "cpu_ms_per_request", "replica")
    for j, q in enumerate(loads):
        order = list(apps) if j % 2 == 0 else list(reversed(apps))
        for name in order:
            tgt, app = apps[name]
            s = _phase(perf, name, tgt, reqs, "Score", q, seconds, app)
            curve[name].append({k: s[k] for k in keep if k in s})
    return {k: curve[k] for k in ["qps", *apps]}


def max_qps_within(curve: dict, ours: str, floor: str, factor: float) -> float | None:
    """The highest offered load up to which (at that load and every lower one) ``ours``' p99 stays within
    ``factor`` x ``floor``'s p99, with no failed request; None when it fails at the lowest load."""
    best = None
    points = sorted(zip(curve["qps"], curve[ours], curve[floor]), key=lambda t: t[0])
    for q, a, b in points:
        if a["errors"] or b["errors"] or not a["p99_ms"] <= factor * b["p99_ms"]:
            break
        best = q
    return best


def plot_curve(curve: dict, path: str, candidates: int) -> str:
    """The capacity curve as a PNG: p50 (dashed) and p99 (solid) against the offered load, one colour per app."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for app in [k for k in curve if k != "qps"]:
        (line,) = ax.plot(curve["qps"], [p["p99_ms"] for p in curve[app]], marker="o", label=f"{app} p99")
        ax.plot(curve["qps"], [p["p50_ms"] for p in curve[app]], ls="--", color=line.get_color(), label=f"{app} p50")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(curve["qps"], [f"{q:g}" for q in curve["qps"]])
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"Score ({candidates} candidates) over gRPC: freshrec, the no-op Serve app, grpcio", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(Path(path).resolve())


def _recall(model, k: int, users: int, seed: int = 2) -> dict:
    """Retrieval recall@k: the share of the full model's top k over the WHOLE catalogue that the inner-product
    retrieval of n candidates finds (and that Recommend, which ranks those n, returns), averaged over users."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    ids = model.index.ids
    picked = rng.choice(model.tables[model.roles.user_feature].ids, users, replace=False)
    sizes = (k, 100, 200, 1000, 5000)
    found = {n: [] for n in sizes}
    t0 = time.perf_counter()
    for u in picked.tolist():
        batch, _ = model.features.batch({"user_id": u, "ts": 1_511_700_000}, {"item_id": pa.array(ids)}, len(ids))
        scores, _ = model.score(batch)
        truth = set(ids[np.argpartition(-scores, k)[:k]].tolist())
        for n in sizes:
            got, _ = model.index.top(model.user_vector(u), n)
            found[n].append(len(truth & set(got.tolist())) / k)
    out = {f"recall_at_{k}_retrieve_{n}": float(np.mean(v)) for n, v in found.items()}
    out["random_baseline_retrieve_200"] = min(1.0, 200 / len(ids))
    out["users"] = users
    out["catalogue_items"] = len(ids)
    out["seconds"] = time.perf_counter() - t0
    return out


def _trainer(store_url: str, incoming: Path, files: int, work: Path, name: str) -> subprocess.Popen:
    with open(work / f"{name}.log", "w") as log:  # the child holds its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.servedata",
                "--store",
                store_url,
                "--incoming",
                str(incoming),
                "--files",
                str(files),
                "--idle-timeout",
                "60",
            ],
            cwd=REPO,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_line(work: Path, name: str, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = work / f"{name}.log"
        if p.exists() and text in p.read_text():
            return
        time.sleep(0.1)
    raise RuntimeError(f"the trainer process did not print {text!r}: see {work / f'{name}.log'}")


def _swaps(
    args, store_url: str, work: Path, target: str, reqs, files: list[str], steady_p99: float, name: str, children: list
) -> dict:
    """Land ``files`` one by one while Score runs at the offered load: every file becomes a version."""
    incoming = work / f"incoming-{name}"
    incoming.mkdir()
    proc = _trainer(store_url, incoming, len(files), work, name)
    children.append(proc)
    _wait_line(work, name, "restored version")
    interval = 0.8
    seconds = len(files) * interval + 3.0
    box = {}
    load = threading.Thread(
        target=lambda: box.setdefault("res", _load(target, reqs, "Score", args.qps, seconds, APP_NAME))
    )
    load.start()
    time.sleep(1.0)
    for i, text in enumerate(files):
        _land(incoming, f"part-a-{name}-{i:04d}.csv", text)
        time.sleep(interval)
    load.join()
    proc.wait(timeout=60)
    res = box["res"]
    s = res.summary()
    seen = sorted({v for _, v in res.versions})
    return {
        "failed_requests": s["errors"],
        "error_codes": s["error_codes"],
        "requests": s["sent"],
        "p50_ms": s["p50_ms"],
        "p99_ms": s["p99_ms"],
        "p99_over_steady": s["p99_ms"] / steady_p99,
        "versions_seen": len(seen),
        "versions": [seen[0], seen[-1]] if seen else [],
    }


def _freshness(args, store, store_url: str, work: Path, target: str, req, files: list[str], children: list) -> dict:
    """Land files one at a time; a prober scores every 10 ms; freshness = first answer by a version with the file."""
    import grpc

    from serving.wire import pb_grpc

    incoming = work / "incoming-fresh"
    incoming.mkdir()
    proc = _trainer(store_url, incoming, len(files), work, "fresh")
    children.append(proc)
    _wait_line(work, "fresh", "restored version")
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def probe() -> None:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.ScorerStub(ch)
            while not stop.is_set():
                try:
                    r = stub.Score(req, timeout=2, metadata=(("application", APP_NAME),))
                    answers.append((time.time(), r.model_version))
                except grpc.RpcError:
                    pass
                time.sleep(0.01)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    landed = {}
    warmup = min(getattr(args, "fresh_warmup", 0), max(len(files) - 1, 0))
    fresh_qps = float(getattr(args, "fresh_load", 0) or 0)
    t_measure, load, load_window, box = None, None, None, {}
    for i, text in enumerate(files):
        name = f"part-b-fresh-{i:04d}.csv"
        before = answers[-1][1] if answers else 0
        if i == warmup:
            t_measure = time.time()
            if fresh_qps > 0:  # the offered Score load beside the prober, over the measured files
                load_s = (len(files) - warmup) * 1.0 + 5.0
                load = threading.Thread(
                    target=lambda s=load_s: box.setdefault(
                        "res", _load(target, [req], "Score", fresh_qps, s, APP_NAME)
                    ),
                    daemon=True,
                )
                load.start()
                load_window = (t_measure, t_measure + load_s)
        t_land = _land(incoming, name, text)
        if i >= warmup:  # the warm-up files carry the trainer's start-up and first (full) version: not counted
            landed[name] = t_land
        deadline = time.time() + (10 if i >= warmup else 120)
        while time.time() < deadline and (not answers or answers[-1][1] <= before):
            time.sleep(0.01)
        time.sleep(0.2)
    t_landed = time.time()
    # the prober goes on until the trainer has committed every file and the newest version is answered (a
    # slow machine may still be training the last files): a file served after the loop still counts
    try:
        proc.wait(timeout=120)
    finally:
        newest = store.published()  # what the replica follows (a version the gate held is never served)
        if newest is None:
            newest = max((m.version for m in store.list()), default=0)
        deadline = time.time() + 60
        while time.time() < deadline and (not answers or answers[-1][1] < newest):
            time.sleep(0.05)
        stop.set()
        th.join()
    # file -> the version that first included it, from the trainer's log: gc (keep 5) removes most of those
    # versions before the run ends, and the first SURVIVING version naming a file is a later compacted full one
    # (it lists the whole ledger): reading the store here timed most files to a much later commit
    first_with = commits_of((work / "fresh.log").read_text())
    out = freshness_summary(landed, answers, first_with, store)
    if t_measure is not None:  # the offered load while the measured files landed: the prober's own rate
        probes = sum(1 for t, _ in answers if t_measure <= t <= t_landed)
        out["freshness_probe_qps"] = round(probes / max(t_landed - t_measure, 1e-9), 1)
    out["freshness_warmup_files"] = warmup
    if load is not None:
        load.join()
        ls = box["res"].summary()
        out["freshness_load_offered_qps"] = fresh_qps
        out["freshness_load"] = {k: ls[k] for k in ("qps", "p50_ms", "p99_ms", "errors")}
        out["freshness_files_under_load"] = sum(1 for t in landed.values() if load_window[0] <= t <= load_window[1])
    return out


def commits_of(log: str) -> dict[str, tuple[int, float, str]]:
    """{data file: (version, committed_at, kind)} from ``bench.servedata``'s lines
    ``committed version V with NAME at T kind K``.

    >>> commits_of("restored version 3\\ncommitted version 4 with a.csv at 17.5 kind delta\\n")
    {'a.csv': (4, 17.5, 'delta')}
    """
    out = {}
    for line in log.splitlines():
        p = line.split()
        if len(p) == 9 and p[:2] == ["committed", "version"] and p[3] == "with" and p[5] == "at" and p[7] == "kind":
            out.setdefault(p[4], (int(p[2]), float(p[6]), p[8]))
    return out


def freshness_summary(landed: dict, answers: list, first_with: dict, store) -> dict:
    """Freshness per file (landing -> first answer by a version that includes it), split where it goes:
    land -> commit (the trainer: pick-up, train, write), commit -> published (the gate's decision),
    published -> served (the replica's poll and load, the prober's period). The five slowest files name
    their parts and the version's kind (a full cut loads slower than a delta) and gate code."""
    rows = []
    for name, t_land in landed.items():
        first = first_with.get(name)
        if first is None:
            continue
        if isinstance(first, tuple):  # (version, committed_at, kind) from the trainer's log
            v, committed_at, kind = first
        else:  # a version number: its manifest from the store
            v = first
            m = store.manifest(v)
            committed_at, kind = m.committed_at, m.kind
        t = next((t for t, ver in answers if ver >= v and t >= t_land), None)
        if t is None:
            continue
        try:
            decision = store.gate_decision(v) or {}
        except Exception:  # removed by gc since
            decision = {}
        # the version that first served the file: the first published one >= v (v itself unless held)
        decided = float(decision.get("decided_at", committed_at))
        rows.append(
            {
                "file": name,
                "fresh_s": t - t_land,
                "land_to_commit_s": committed_at - t_land,
                "commit_to_gate_s": decided - committed_at,
                "gate_to_served_s": t - decided,
                "version": v,
                "kind": kind,
                "gate": decision.get("code", "none"),
            }
        )
    if not rows:
        return {"freshness_p50_s": float("nan"), "freshness_p99_s": float("nan"), "freshness_files": 0}

    def pct(key: str, q: float) -> float:
        return float(np.percentile([r[key] for r in rows], q))

    out = {
        "freshness_p50_s": pct("fresh_s", 50),
        "freshness_p99_s": pct("fresh_s", 99),
        "freshness_max_s": max(r["fresh_s"] for r in rows),
        "freshness_files": len(rows),
        "freshness_held_files": sum(r["gate"] not in ("ok", "none") for r in rows),
    }
    for part in ("land_to_commit_s", "commit_to_gate_s", "gate_to_served_s"):
        out[f"{part[:-2]}_p50_s"] = pct(part, 50)
        out[f"{part[:-2]}_p99_s"] = pct(part, 99)
    out["commit_to_served_p50_s"] = float(np.percentile([r["fresh_s"] - r["land_to_commit_s"] for r in rows], 50))
    out["freshness_slowest"] = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
        for r in sorted(rows, key=lambda r: -r["fresh_s"])[:5]
    ]
    return out
