"""``freshrec bench serve-chaos``: serving never lies (issue 20's proof), one run per seed.

For each seed, on the connected local Ray, one Ray Serve application (``servechaos-SEED``: Scorer
replicas and read-only TableShard deployments for the ``user`` table, behind Serve's gRPC proxy)
follows a version store while

* a stream commits a version per data file and publishes most of them (the gate's PUBLISHED pointer;
  the others are held back and must not be served while a newer one is published),
* a bounded loopback load generator (``--clients`` threads, one request in flight each) sends
  Score and Recommend over real gRPC and retries UNAVAILABLE,
* a seeded fault injector, until the stream ends:

  - ``store``: the replicas' and shards' store is ``faultysw://`` (:class:`SwitchedFaultyFileSystem`:
    bench.chaos's ``faulty://`` filesystem, its seeded fault schedule and fault log, plus a switch
    file that sets the failure rate while the run goes on); the rate changes between 0, 5 % and 20 %,
  - ``kill_scorer`` / ``kill_shard``: ``ray.kill`` of a Scorer replica and of a table shard replica
    (Serve starts another),
  - ``storm``: 2-6 quick rollbacks and unpins (the store's PINNED pointer, as
    ``freshrec snapshots rollback`` / ``unpin``),
  - ``gc``: ``VersionStore.gc(keep=2)`` (served versions are leased: gc must keep them).

Then the faults stop (rate 0, unpinned) and the prober measures how long until every answer
(ModelInfo and Score, several in a row, so that both replicas answer) names the newest published
version. A checker recomputes every answer offline with the version the response names, from a
clean store (no faults, no deltas, no cache, no Ray: a pinned :class:`serving.service.ScoringService`
with local tables, the code path ``freshrec evaluate`` scores with) and requires bit-identical
scores, items and retrieval scores.

A seed passes with zero wrong answers, zero errors other than UNAVAILABLE (retried), and the newest
published version served by every replica within ``--newest-within-s`` (2 s) after the faults stop.
A failed seed prints the command that runs it again. Run it on a quiet machine: under load the
time-to-newest includes a killed replica's restart.

    freshrec bench serve-chaos --seeds 5 --json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from bench.chaos.faultyfs import FaultyFileSystem

DESCRIPTION = (
    "serving chaos: Score/Recommend over Ray Serve gRPC while versions commit, with store faults, "
    "replica and shard kills, rollback/unpin storms and gc; every answer checked bit-for-bit offline"
)
PROTOCOL = "faultysw"


class SwitchedFaultyFileSystem(FaultyFileSystem):
    """``faultysw:///abs/path``: bench.chaos's ``faulty://`` (same seeded schedule, same injected
    exceptions, same JSON-lines fault log) whose failure rate is read from the file ``switch`` at each
    call (a float; missing or empty: 0), so that a run can start and stop the faults of every process."""

    protocol = (PROTOCOL,)

    def __init__(self, switch: str | None = None, registered=None, **kw) -> None:
        super().__init__(**kw)
        self.switch = switch

    def _decide(self, method: str, path):
        if self.switch is not None:
            try:
                self.rate = float(Path(self.switch).read_text() or 0.0)
            except (OSError, ValueError):
                self.rate = 0.0
        return super()._decide(method, path)


def register() -> None:
    """Make ``faultysw://`` known to fsspec in this process (:class:`Registered` does in Ray workers)."""
    from fsspec.registry import register_implementation

    register_implementation(PROTOCOL, "bench.servechaos.SwitchedFaultyFileSystem", clobber=True)


class Registered:
    """A storage option whose unpickling registers ``faultysw://``: every process that receives the serving
    config (a Ray Serve replica's init args) knows the protocol before it opens the store, with no
    runtime_env (replicas with a runtime_env of their own waited about 2 minutes to be scheduled)."""

    def __reduce__(self):
        return (_registered, ())


def _registered() -> Registered:
    register()
    return Registered()


@dataclasses.dataclass(frozen=True)
class ChaosSettings:
    seed: int
    files: int = 3  # data files the stream commits under the faults (a version each)
    replicas: int = 2
    table_shards: int = 2
    clients: int = 2
    kill_scorer: int = 1  # ray.kill of a Scorer replica, per run
    kill_shard: int = 1  # ray.kill of a table shard replica, per run
    gc_keep: int = 2
    rates: tuple[float, ...] = (0.0, 0.05, 0.2)
    publish_share: float = 0.75
    min_fault_s: float = 4.0  # the fault phase lasts at least this long
    settle_timeout_s: float = 90.0  # give up waiting for the newest version after this long
    newest_within_s: float = 2.0  # the requirement
    in_a_row: int = 8  # consecutive answers naming the newest version that count as "every replica"

    def command(self) -> str:
        return f"freshrec bench serve-chaos --first-seed {self.seed} --seeds 1 --files {self.files} --json"


# ----------------------------------------------------------------------------------- requests
ROW_COLUMNS = ("user_id", "item_id", "category_id", "ts")


def make_requests(trainer, root: Path, seed: int, n: int = 6):
    """Score requests, Recommend requests, and for each Score request the data-file batch it holds (None
    for the context form). Even Score requests are a small data file's rows (every column per candidate:
    checked with ``freshrec evaluate``'s code path); odd ones give the user and the time in the context
    and candidate items (known and never-seen), checked with a pinned local ScoringService."""
    import numpy as np

    from bench.servedata import write_taobao_csv
    from serving.wire import pb

    path = write_taobao_csv(root / "req.csv", 400, 50 + seed, start_ts=1_511_700_000, users=300, new_items=40)
    table = trainer.read(path).table
    rng = np.random.default_rng(seed)
    users = table.column("user_id").to_numpy()
    score, batches, recommend = [], [], []
    for i in range(n):
        req = pb.ScoreRequest()
        if i % 2 == 0:
            f = write_taobao_csv(root / f"req-{i}.csv", 24, 1000 * (seed + 1) + i, start_ts=1_511_700_000, new_items=5)
            batch = trainer.read(f)
            for c in ROW_COLUMNS:
                req.candidate_columns[c].ids.extend(batch.table.column(c).cast("int64").to_numpy().tolist())
        else:
            batch = None
            rows = rng.choice(table.num_rows, 24, replace=False)
            req.context["user_id"].id = int(users[rows[0]])
            req.context["ts"].id = 1_511_700_000 + int(rng.integers(3600))
            for c in ("item_id", "category_id"):
                req.candidate_columns[c].ids.extend(table.column(c).cast("int64").to_numpy()[rows].tolist())
        score.append(req)
        batches.append(batch)
        rec = pb.RecommendRequest(k=5, num_candidates=30)
        rec.context["user_id"].id = int(rng.choice(users))
        recommend.append(rec)
    return score, batches, recommend


REPLICA_DIED = "The actor died unexpectedly before finishing this task"


def replica_died(code: str, details: str) -> bool:
    """INTERNAL answered by Ray Serve's proxy for a request in flight on a replica that was killed (Ray 2.60
    maps RayActorError to INTERNAL, not UNAVAILABLE: ray/serve/_private/grpc_util.py); the request never
    ran to an answer, so the client retries it like UNAVAILABLE."""
    return code == "INTERNAL" and REPLICA_DIED in details and "ServeReplica:" in details


def retryable(exc) -> bool:
    return exc.code().name == "UNAVAILABLE" or replica_died(exc.code().name, exc.details() or "")


def answer_of(kind: str, resp) -> tuple:
    """The comparable content of an answer (exact floats as float32 bytes)."""
    import numpy as np

    if kind == "Score":
        return (np.asarray(resp.scores, np.float32).tobytes(),)
    return (
        tuple(i.item_id for i in resp.items),
        np.asarray([i.score for i in resp.items], np.float32).tobytes(),
        np.asarray([i.retrieval_score for i in resp.items], np.float32).tobytes(),
    )


class Offline:
    """Each version's answers recomputed from the clean store: a pinned ScoringService with local tables
    (a fresh full load of the version: no deltas, no hot-row cache, no fault, no lease)."""

    def __init__(self, store_url: str, catalogue: str) -> None:
        self.store_url, self.catalogue = store_url, catalogue
        self.services: dict = {}
        self.trainers: dict = {}
        self.lock = threading.Lock()

    def load(self, version: int):
        from serving.config import ServeConfig
        from serving.follower import LeaseSettings
        from serving.service import ScoringService

        with self.lock:
            if version not in self.services:
                svc = ScoringService(
                    ServeConfig(store_url=self.store_url, pin_version=version, catalogue=(self.catalogue,))
                )
                svc.follower.lease = LeaseSettings()  # the checker serves nothing: no lease
                svc.follower.poll()
                if svc.follower.version != version:
                    raise RuntimeError(f"offline: version {version} did not load: {svc.follower.last_error}")
                self.services[version] = svc
            return self.services[version]

    def trainer(self, version: int):
        from trainer.versioning import load_trainer

        with self.lock:
            if version not in self.trainers:
                self.trainers[version] = load_trainer(self.store_url, version)[0]
            return self.trainers[version]

    def preload(self, versions) -> None:
        for v in versions:
            self.load(v)
            self.trainer(v)

    def answer(self, kind: str, version: int, req, batch=None) -> tuple:
        """A data file's rows: ``freshrec evaluate``'s path (the version's trainer scores the batch);
        otherwise the pinned local service answers the same request."""
        import numpy as np

        if batch is not None:
            return (np.asarray(self.trainer(version).score(batch), np.float32).tobytes(),)
        svc = self.load(version)
        return answer_of(kind, svc.score(req) if kind == "Score" else svc.recommend(req))


# ------------------------------------------------------------------------------------ Ray parts
def deploy(cfg, name: str, replicas: int) -> None:
    """serving.app's application (its builder, its deployments) under the name ``name``."""
    from ray import serve

    from serving.app import build_app

    serve.run(build_app(cfg, replicas), name=name, route_prefix=f"/{name}", blocking=False)


def replica_actors(app: str, deployment: str) -> list[str]:
    from ray.util import list_named_actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def running(app: str, deployment: str) -> int:
    from ray import serve

    try:
        d = serve.status().applications[app].deployments[deployment]
        return int(d.replica_states.get("RUNNING", 0))
    except (KeyError, AttributeError):
        return 0


def kill(app: str, deployment: str, rng: random.Random) -> str | None:
    import ray

    names = replica_actors(app, deployment)
    if not names:
        return None
    name = rng.choice(names)
    try:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    except ValueError:  # gone meanwhile
        return None
    return name


# ------------------------------------------------------------------------------------- one seed
def run_seed(s: ChaosSettings, root: Path, grpc_port: int) -> dict:
    """One seeded run (Ray initialised and Serve's gRPC proxy started on ``grpc_port``); the result dict."""
    import grpc
    from ray import serve

    from bench.servedata import StoreTrainer, write_taobao_csv
    from serving.config import ServeConfig
    from serving.wire import pb, pb_grpc
    from versions import VersionStore

    register()
    rng = random.Random(s.seed)
    root.mkdir(parents=True, exist_ok=True)
    store_dir = (root / "versions").absolute()
    trainer = StoreTrainer(store_dir)
    clean = VersionStore(str(store_dir))
    catalogue = root / "catalogue"
    for i in range(2):
        trainer.add_file(write_taobao_csv(catalogue / f"part-{i}.csv", 1500, i, start_ts=1_511_658_000 + 3600 * i))
    clean.publish(clean.latest())
    switch, fault_log = root / "fault-rate", root / "faults.jsonl"
    switch.write_text("0")
    options = {"seed": s.seed, "rate": 0.0, "switch": str(switch), "log": str(fault_log), "registered": Registered()}
    cfg = ServeConfig(
        store_url=f"{PROTOCOL}://{store_dir}",
        storage_options=options,
        poll_interval_s=0.05,
        catalogue=(str(catalogue),),
        remote_tables=("user",),
        table_shards=s.table_shards,
        cache_rows=256,  # small: collisions and evictions
    )
    app = f"servechaos-{s.seed}"
    offline = Offline(str(store_dir), str(catalogue))
    score_reqs, score_batches, rec_reqs = make_requests(trainer, root, s.seed)
    deploy(cfg, app, s.replicas)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = pb_grpc.ScorerStub(channel)
    meta = (("application", app),)
    events: collections.Counter = collections.Counter()
    answers: list[tuple[str, int, int, tuple]] = []  # (kind, request index, version named, answer)
    errors: list[tuple[str, str, float]] = []  # (code, details, when)
    retried = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()
    t_start = time.monotonic()
    try:
        deadline = time.monotonic() + 180
        while True:  # first answer (the replicas' first loads wait on the shards)
            try:
                stub.ModelInfo(pb.ModelInfoRequest(), timeout=5, metadata=meta)
                break
            except grpc.RpcError as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{app} never answered: {exc.code().name}: {exc.details()}") from exc
                time.sleep(0.2)

        def call(kind: str, i: int):
            if kind == "Score":
                return stub.Score(score_reqs[i], timeout=30, metadata=meta)
            return stub.Recommend(rec_reqs[i], timeout=30, metadata=meta)

        def client(k: int) -> None:
            r = random.Random(s.seed * 1000 + k)
            while not stop.is_set():
                kind = r.choice(("Score", "Score", "Recommend"))
                i = r.randrange(len(score_reqs))
                for attempt in range(50):  # UNAVAILABLE is retried (a killed replica, a replica not ready yet)
                    try:
                        resp = call(kind, i)
                    except grpc.RpcError as exc:
                        with lock:
                            errors.append((exc.code().name, exc.details() or "", time.monotonic() - t_start))
                        if retryable(exc) and not stop.is_set():
                            retried[kind] += 1
                            time.sleep(0.05 * min(attempt + 1, 10))
                            continue
                        break
                    with lock:
                        answers.append((kind, i, resp.model_version, answer_of(kind, resp)))
                    break

        # each run does every kind at least once (kills as configured), in a seeded order, among random actions
        must = ["kill_scorer"] * s.kill_scorer + ["kill_shard"] * s.kill_shard + ["storm", "gc"]
        rng.shuffle(must)
        kill_log: list[dict] = []

        def storm(versions) -> None:
            for _ in range(rng.randint(2, 6)):
                if rng.random() < 0.6:
                    clean.pin(rng.choice(versions))
                    events["pin"] += 1
                else:
                    clean.unpin()
                    events["unpin"] += 1
            events["storm"] += 1

        def gc(versions) -> None:
            offline.preload(versions)  # the checker keeps what it must recompute
            removed = clean.gc(keep=s.gc_keep)["removed"]
            events["gc"] += 1
            events["gc_removed"] += len(removed)

        def kill_one(what: str) -> None:
            deployment = "Scorer" if what == "kill_scorer" else f"TableShard{rng.randrange(s.table_shards)}"
            want = s.replicas if deployment == "Scorer" else 1
            before = set(replica_actors(app, deployment))
            name = kill(app, deployment, rng)
            if not name:
                return
            events[what] += 1
            t0 = time.monotonic()
            kill_log.append({"what": what, "replica": name, "at_s": round(t0 - t_start, 2)})
            while time.monotonic() - t0 < 180:  # back: a new replica RUNNING, the full count
                if set(replica_actors(app, deployment)) - before and running(app, deployment) >= want:
                    break
                time.sleep(0.1)
            kill_log[-1]["back_after_s"] = round(time.monotonic() - t0, 2)

        def injector() -> None:
            while not stop.is_set():
                action = rng.random()
                versions = clean.versions()
                if action < 0.3:
                    rate = rng.choice(s.rates)
                    switch.write_text(repr(rate))
                    events[f"rate_{rate:g}"] += 1
                elif action < 0.45:
                    storm(versions)
                elif action < 0.5:
                    gc(versions)
                elif action < 0.7 and must:
                    what = must.pop()
                    storm(versions) if what == "storm" else gc(versions) if what == "gc" else kill_one(what)
                stop.wait(rng.uniform(0.05, 0.3))

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(s.clients)]
        inj = threading.Thread(target=injector, daemon=True)
        for t in [*threads, inj]:
            t.start()
        t_faults = time.monotonic()
        stream_rng = random.Random(s.seed + 1)  # the injector's rng is its own thread's
        for i in range(s.files):  # the stream: a version per data file, most published
            v = trainer.add_file(
                write_taobao_csv(
                    root / "stream" / f"part-{2 + i}.csv", 800, 10 + i, start_ts=1_511_680_000 + 3600 * i, new_items=20
                )
            )
            if stream_rng.random() < s.publish_share or i == s.files - 1:
                clean.publish(v)
                events["published"] += 1
            else:
                events["held_back"] += 1
        while time.monotonic() - t_faults < s.min_fault_s or must:
            time.sleep(0.05)
            if time.monotonic() - t_faults > 400:  # a stuck injector: the result says what was done
                break
        stop.set()
        inj.join(120)
        for t in threads:
            t.join(60)
        # ------------------------------------------------------------------ the faults stop
        switch.write_text("0")
        clean.unpin()
        t_stop = time.monotonic()
        newest = clean.published()
        streak, first_newest, last_seen = 0, None, None
        while time.monotonic() - t_stop < s.settle_timeout_s and streak < s.in_a_row:
            try:
                if streak % 2:
                    resp = stub.Score(score_reqs[0], timeout=10, metadata=meta)
                    with lock:
                        answers.append(("Score", 0, resp.model_version, answer_of("Score", resp)))
                    v = resp.model_version
                else:
                    v = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10, metadata=meta).model_version
            except grpc.RpcError as exc:
                v = f"{exc.code().name}"
            last_seen = v
            if v == newest:
                streak += 1
                first_newest = first_newest or time.monotonic()
            else:
                streak, first_newest = 0, None
                time.sleep(0.02)
        time_to_newest = round(first_newest - t_stop, 3) if streak >= s.in_a_row else None
        # ------------------------------------------------------------------ the checker
        offline.preload(clean.versions())
        wrong = []
        for kind, i, v, got in answers:
            reqs = score_reqs if kind == "Score" else rec_reqs
            try:
                want = offline.answer(kind, v, reqs[i], score_batches[i] if kind == "Score" else None)
            except Exception as exc:  # a version named by an answer that the checker cannot load
                wrong.append({"kind": kind, "request": i, "version": v, "why": f"{type(exc).__name__}: {exc}"})
                continue
            if got != want:
                wrong.append({"kind": kind, "request": i, "version": v, "why": "differs from the offline answer"})
        faults = collections.Counter()
        if fault_log.exists():
            for line in fault_log.read_text().splitlines():
                try:
                    faults[json.loads(line)["kind"]] += 1
                except (ValueError, KeyError):
                    pass
        faults.update(
            {k: n for k, n in events.items() if k in ("kill_scorer", "kill_shard", "storm", "gc", "pin", "unpin")}
        )
        by_code = collections.Counter(
            "INTERNAL_REPLICA_KILLED" if replica_died(code, d) else code for code, d, _ in errors
        )
        killed = events["kill_scorer"] + events["kill_shard"] > 0
        bad = {c: n for c, n in by_code.items() if c not in ("UNAVAILABLE", "INTERNAL_REPLICA_KILLED")}
        passed = (
            not wrong
            and not bad
            and time_to_newest is not None
            and time_to_newest <= s.newest_within_s
            and (killed or not by_code)
        )
        result = {
            "seed": s.seed,
            "passed": passed,
            "answers": len(answers),
            "answers_by_kind": dict(collections.Counter(k for k, *_ in answers)),
            "versions_named": sorted({v for _, _, v, _ in answers}),
            "wrong_answers": len(wrong),
            "wrong_examples": wrong[:5],
            "errors_by_code": dict(by_code),
            "error_examples": [
                f"{c} at {t:.1f} s: {d[:300]}" for c, d, t in errors if c != "UNAVAILABLE" and not replica_died(c, d)
            ][:5],
            "unavailable_examples": [f"at {t:.1f} s: {d[:200]}" for c, d, t in errors if c == "UNAVAILABLE"][:3],
            "retried": dict(retried),
            "faults_by_kind": dict(faults),
            "events": dict(events),
            "kills": kill_log,
            "newest_published": newest,
            "time_to_newest_s": time_to_newest,
            "last_seen_version": last_seen,
            "fault_phase_s": round(t_stop - t_faults, 2),
            "seconds": round(time.monotonic() - t_start, 2),
        }
        if not passed:
            result["reproduce"] = s.command()
        return result
    finally:
        stop.set()
        channel.close()
        try:
            serve.delete(app)
        except Exception:
            pass


# ---------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument(
        "--files", type=int, default=4, help="data files committed under the faults per seed (default 4)"
    )
    parser.add_argument("--replicas", type=int, default=2, help="Scorer replicas (default 2)")
    parser.add_argument("--clients", type=int, default=2, help="load generator threads (default 2)")
    parser.add_argument("--newest-within-s", type=float, default=2.0, help="required time-to-newest (default 2)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work directory and print its path")


def run(args: argparse.Namespace) -> dict:
    import ray

    from serving.app import free_port, start_proxy, worker_env
    from serving.config import ServeConfig

    os.environ["PYTHONPATH"] = worker_env()["env_vars"]["PYTHONPATH"]
    work = Path(tempfile.mkdtemp(prefix="freshrec-bench-serve-chaos-"))
    ray.init(include_dashboard=False, log_to_driver=False, namespace="freshrec-serve-chaos")
    results = []
    try:
        port = free_port()
        start_proxy(port, ServeConfig.limits.max_request_bytes)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            s = ChaosSettings(
                seed=seed,
                files=args.files,
                replicas=args.replicas,
                clients=args.clients,
                newest_within_s=args.newest_within_s,
            )
            try:
                results.append(run_seed(s, work / f"seed-{seed}", port))
            except Exception as exc:  # the run itself failed: a failed seed, with how to run it again
                results.append(
                    {"seed": seed, "passed": False, "error": f"{type(exc).__name__}: {exc}", "reproduce": s.command()}
                )
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ttn = [r["time_to_newest_s"] for r in results if r.get("time_to_newest_s") is not None]
    codes: collections.Counter = collections.Counter()
    faults: collections.Counter = collections.Counter()
    for r in results:
        codes.update(r.get("errors_by_code", {}))
        faults.update(r.get("faults_by_kind", {}))
    return {
        "seeds": len(results),
        "seeds_passed": sum(r["passed"] for r in results),
        "faults_by_kind": dict(faults),
        "wrong_answers": sum(r.get("wrong_answers", 0) for r in results),
        "answers": sum(r.get("answers", 0) for r in results),
        "errors_by_code": dict(codes),
        "max_time_to_newest_s": max(ttn) if len(ttn) == len(results) and ttn else None,
        "failed": [{"seed": r["seed"], "reproduce": r["reproduce"]} for r in results if not r["passed"]],
        "per_seed": results,
    }
