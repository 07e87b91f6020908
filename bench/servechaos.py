"""``freshrec bench serve-chaos``: serving never lies (issue 20's proof), one run per seed.

For each seed, on the connected local Ray, two Ray Serve applications behind Serve's gRPC proxy follow
two version stores:

* ``servechaos-SEED`` (:func:`serving.app.build_app`): Scorer replicas and read-only TableShard
  deployments for the ``user`` table, following the recommendation store,
* ``servechaos-search-SEED`` (:func:`search.app.build_search_app`, as ``freshrec search-serve`` deploys
  it beside the Scorer's application): Search replicas following a search ranker store (a small
  synthetic catalogue in the WANDS layout, :func:`write_search_data`),

while

* a stream commits a version per data file to the recommendation store (``freshrec stream``'s trainer and
  version writer) and a batch of search judgments to the ranker store (:func:`search.replay.replay`, the
  code path of ``freshrec search-train``), both compacting every ``full_every``-th version into a full
  one (so old chains become collectable). Each trainer's publish gate is a seeded stand-in
  (:class:`SeededGate`) that publishes most versions and holds the others back: served versions must
  have been PUBLISHED or PINNED at some time, never a held-back LATEST,
* a bounded loopback load generator (``--clients`` threads, one request in flight each) sends
  Score, Recommend and Search over real gRPC and retries UNAVAILABLE,
* a seeded fault injector, until the stream ends:

  - ``store``: every replica's and shard's store is ``faultysw://`` (:class:`SwitchedFaultyFileSystem`:
    bench.chaos's ``faulty://`` filesystem, its seeded fault schedule and fault log, plus a switch
    file that sets the failure rate while the run goes on); the rate changes between 0, 5 % and 20 %,
  - ``kill_scorer`` / ``kill_shard`` / ``kill_search``: ``ray.kill`` of a Scorer replica, of a table
    shard replica, of a Search replica (Serve starts another),
  - ``storm``: 2-6 quick rollbacks and unpins of each store (its PINNED pointer, as
    ``freshrec snapshots rollback`` / ``unpin``),
  - ``gc``: ``VersionStore.gc(keep=2)`` of both stores while the replicas serve. Before each gc the
    versions every unexpired serving lease names, PINNED, PUBLISHED and LATEST are read: gc removing
    one of them is a failure; how many versions gc removed is counted (it must bite).

After the stream, one more gc, then a rollback: both stores are pinned to an earlier published version
and the prober waits until the Scorer and Search answers name it (PINNED reaches every application).
Then the faults stop (rate 0, unpinned) and the prober measures how long until every answer names the
newest published version: ModelInfo/Score and Search in turn, until ``in_a_row`` answers in a row of
each application name it (with 2 replicas picked at random per request, a lagging replica escapes 8 in
a row with probability 1/256). A checker recomputes every answer offline with the version the response
names, from a copy of the stores that gc does not touch (hard links taken before each gc; no faults,
no deltas, no cache, no Ray): a data file's rows with ``freshrec evaluate``'s path, other Score and
Recommend requests with a pinned local :class:`serving.service.ScoringService`, Search with
:func:`search.service.load_ranker`'s trainer through :func:`search.service.search_answer` over a
freshly indexed catalogue; it requires bit-identical answers (Search: the serialized response).

A seed passes with zero wrong answers, zero errors other than UNAVAILABLE (retried), no served version
that was never published nor pinned, no leased/pinned/published version removed by gc, the rollback
reached, and the newest published version served by every replica within ``--newest-within-s`` (2 s)
after the faults stop. A failed seed prints the command that runs it again. Run it on a quiet machine:
under load the time-to-newest is not the serving system's alone.

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
    "serving chaos: Score/Recommend/Search over Ray Serve gRPC while versions commit, with store faults, "
    "replica and shard kills, rollback/unpin storms and gc; every answer checked bit-for-bit offline"
)
PROTOCOL = "faultysw"
SEARCH_BATCH = 4  # judged queries per search ranker version


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
    files: int = 3  # data files the stream commits under the faults (a version each, plus compactions)
    replicas: int = 2
    table_shards: int = 2
    search_replicas: int = 2
    clients: int = 2
    kill_scorer: int = 1  # ray.kill of a Scorer replica, per run
    kill_shard: int = 1  # ray.kill of a table shard replica, per run
    kill_search: int = 1  # ray.kill of a Search replica, per run
    gc_keep: int = 2
    full_every: int = 3  # both stores: every 2nd delta is compacted into a full version (old chains collectable)
    rates: tuple[float, ...] = (0.0, 0.05, 0.2)
    publish_share: float = 0.75
    min_fault_s: float = 4.0  # the fault phase lasts at least this long
    settle_timeout_s: float = 90.0  # give up waiting for the rollback / the newest version after this long
    newest_within_s: float = 2.0  # the requirement
    in_a_row: int = 8  # consecutive answers naming the version that count as "every replica"

    def command(self) -> str:
        return (
            f"freshrec bench serve-chaos --first-seed {self.seed} --seeds 1 --files {self.files} "
            f"--search-replicas {self.search_replicas} --kill-search {self.kill_search} --json"
        )


# ----------------------------------------------------------------------------------- requests
ROW_COLUMNS = ("user_id", "item_id", "category_id", "ts")
STREAM_TS = 1_511_680_000  # the first stream file's first second (07:06:40 UTC): its files are hours 7, 8, ...


def make_requests(trainer, root: Path, seed: int, n: int = 6):
    """Score requests, Recommend requests, and for each Score request the data-file batch it holds (None
    for the context form). Even Score requests are a small data file's rows (every column per candidate:
    checked with ``freshrec evaluate``'s code path); odd ones give the user and the time in the context
    and candidate items (known and never-seen), checked with a pinned local ScoringService. Every request
    gives the time column (a request without it is scored at its arrival time: not reproducible later)."""
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
        # the request's time, as every Score request gives it: without it a replica scores at its arrival time
        # (the hour of day is a feature), which the checker, later, cannot reproduce. Hours the stream trains.
        rec.context["ts"].id = STREAM_TS + 1800 * i
        recommend.append(rec)
    return score, batches, recommend


# ------------------------------------------------------------------------------------- search
SEARCH_NOUNS = {
    "bed": ("Beds", "Furniture / Bedroom Furniture / Beds"),
    "table": ("Coffee Tables", "Furniture / Living Room Furniture / Tables"),
    "chair": ("Dining Chairs", "Furniture / Kitchen & Dining Furniture / Chairs"),
    "rug": ("Area Rugs", "Rugs / Area Rugs"),
    "lamp": ("Table Lamps", "Lighting / Lamps / Table Lamps"),
    "sofa": ("Sofas", "Furniture / Living Room Furniture / Sofas"),
}
SEARCH_ADJS = ("king", "oak", "round", "blue", "tufted", "metal", "velvet", "outdoor")


def write_search_data(root: Path, seed: int, products: int = 150) -> Path:
    """A small catalogue and graded judgments in the WANDS layout (``search.data.read_wands``): products
    '<adj> <adj> <noun> model <id>'; a query for every '<adj> <noun>' (48), judged Exact when the product has
    both words, Partial for the noun only, Irrelevant for the adjective only."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    nouns = sorted(SEARCH_NOUNS)
    prods, rows = [], []
    for pid in range(1, products + 1):
        noun, adjs = rng.choice(nouns), rng.sample(SEARCH_ADJS, 2)
        prods.append((pid, set(adjs), noun))
        cls, cat = SEARCH_NOUNS[noun]
        rows.append(f"{pid}\t{adjs[0]} {adjs[1]} {noun} model {pid}\t{cls}\t{cat}")
    queries, labels = [], []
    for qid, (noun, adj) in enumerate(((n, a) for n in nouns for a in SEARCH_ADJS), start=1):
        queries.append(f"{qid}\t{adj} {noun}\t{SEARCH_NOUNS[noun][0]}")
        for pid, adjs, n in prods:
            if n == noun:
                labels.append(f"{qid}\t{pid}\t{'Exact' if adj in adjs else 'Partial'}")
            elif adj in adjs:
                labels.append(f"{qid}\t{pid}\tIrrelevant")
    files = {
        "eval40_products.tsv": "product_id\tproduct_name\tproduct_class\tcategory_hierarchy\n" + "\n".join(rows),
        "eval40_queries.tsv": "query_id\tquery\tquery_class\n" + "\n".join(queries),
        "eval40_labels.tsv": "query_id\tproduct_id\tlabel\n" + "\n".join(labels),
    }
    for name, text in files.items():
        (root / name).write_text(text + "\n")
    return root


def make_search_requests(data: Path, seed: int, n: int = 6):
    """Search requests over the judged queries: some with a token no version has a row for (the
    cold-start row, never admitted), some filtered by product class, server-default and explicit depths."""
    from search.data import read_wands
    from search.wire import pb

    _, judgments = read_wands(data)
    texts = [judgments.queries[q] for q in judgments.query_ids.tolist()]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = rng.choice(texts)
        req = pb.SearchRequest(query=text, k=(5, 10)[i % 2], num_candidates=(0, 30)[i % 4 // 2])
        if i % 3 == 1:
            req.query = f"{text} zq{rng.getrandbits(40):x}"
        elif i % 3 == 2:
            req.filters.product_class.append(SEARCH_NOUNS[text.split()[-1]][0])
        out.append(req)
    return out


class SearchStream:
    """Search ranker versions from judgments that arrive ``SEARCH_BATCH`` queries at a time: each :meth:`add`
    replays the judgments of the queries so far into the store (:func:`search.replay.replay` resumes from
    the newest version and trains only the new queries), as ``freshrec search-train`` would."""

    def __init__(self, data: Path, store_dir: Path, seed: int, snapshots, publisher) -> None:
        import numpy as np

        from search.data import read_wands
        from search.ranker import RankerConfig, SearchCorpus

        catalogue, self.judgments = read_wands(data)
        self.corpus = SearchCorpus(catalogue)
        self.cfg = RankerConfig(epochs=1)
        self.order = np.random.default_rng(seed).permutation(self.judgments.query_ids)
        self.store, self.seed, self.snapshots, self.publisher = str(store_dir), seed, snapshots, publisher
        self.trained = 0

    def add(self, queries: int = SEARCH_BATCH) -> int | None:
        """Train ``queries`` more queries; the newest version (None when every query was trained already)."""
        from search.replay import replay

        if self.trained >= len(self.order):
            return None
        self.trained = min(len(self.order), self.trained + queries)
        r = replay(
            self.corpus,
            self.judgments.of(self.order[: self.trained]),
            self.cfg,
            self.store,
            batch_queries=SEARCH_BATCH,
            seed=self.seed,
            snapshots=self.snapshots,
            publisher=self.publisher,
        )
        return r.versions[-1] if r.versions else None


class SeededGate:
    """The publish gate of a store's trainer (``VersionKeeper.publisher``), replaced by a seeded stand-in:
    it publishes a ``share`` of the versions and holds the others back (as an AUC drop would); a compacted
    version gets its source's decision, like the real gate. The real gate publishes nearly every version
    of these synthetic streams (a search ranker's only on checksums), so without it nothing would be held
    back. ``published`` receives every version before PUBLISHED moves to it."""

    def __init__(self, store_dir: Path, share: float, rng: random.Random, published: set, events, name: str) -> None:
        from versions import VersionStore

        self.store, self.share, self.rng = VersionStore(str(store_dir)), share, rng
        self.published, self.events, self.name = published, events, name
        self.decided: dict[int, bool] = {}

    def __call__(self, version: int):
        from versions.publish import PublishDecision

        source = (self.store.manifest(version).extra or {}).get("compacted_from")
        ok = self.decided[source] if source in self.decided else self.rng.random() < self.share
        self.decided[version] = ok
        self.events[f"{self.name}_{'published' if ok else 'held_back'}"] += 1
        if not ok:
            return PublishDecision(False, "auc_drop", "held back by the chaos run's seeded gate")
        self.published.add(version)
        self.store.publish(version)
        return PublishDecision(True, "ok", "published by the chaos run's seeded gate")


# ----------------------------------------------------------------------------------- checking
def mirror(src: Path, dst: Path) -> None:
    """Hard-link the store's files into the checker's copy (committed version files never change; gc may
    delete them later, the copy keeps them). Leases and temporary files are left out; pointers are stale
    (the checker loads versions by number)."""
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if rel.parts[:1] == ("leases",):
            continue
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            target = dst / rel / f
            if f.startswith(".") or ".tmp" in f or target.exists():
                continue
            try:
                os.link(Path(dirpath) / f, target)
            except FileNotFoundError:
                pass  # removed meanwhile (an aborted version's part)
            except OSError:
                shutil.copy2(Path(dirpath) / f, target)


REPLICA_DIED = "The actor died unexpectedly before finishing this task"


def replica_died(code: str, details: str) -> bool:
    """INTERNAL answered by Ray Serve's proxy for a request in flight on a replica that was killed (Ray 2.60
    maps RayActorError to INTERNAL, not UNAVAILABLE: ray/serve/_private/grpc_util.py); the request never
    ran to an answer, so the client retries it like UNAVAILABLE."""
    return code == "INTERNAL" and REPLICA_DIED in details and "ServeReplica:" in details


def retryable(exc) -> bool:
    return exc.code().name == "UNAVAILABLE" or replica_died(exc.code().name, exc.details() or "")


def answer_of(kind: str, resp) -> tuple:
    """The comparable content of an answer (exact floats as float32 bytes; Search: the serialized response)."""
    import numpy as np

    if kind == "Score":
        return (np.asarray(resp.scores, np.float32).tobytes(),)
    if kind == "Search":
        return (resp.SerializeToString(deterministic=True),)
    return (
        tuple(i.item_id for i in resp.items),
        np.asarray([i.score for i in resp.items], np.float32).tobytes(),
        np.asarray([i.retrieval_score for i in resp.items], np.float32).tobytes(),
    )


def describe(kind: str, answer: tuple) -> dict:
    """A wrong answer's content, readable (for the result's ``wrong_examples``)."""
    import numpy as np

    if kind == "Score":
        return {"scores": np.frombuffer(answer[0], np.float32).tolist()[:8]}
    if kind == "Search":
        from search.wire import pb

        r = pb.SearchResponse.FromString(answer[0])
        return {"hits": [(h.product_id, h.score) for h in r.hits][:8], "candidates": r.candidates}
    return {
        "items": list(answer[0])[:8],
        "scores": np.frombuffer(answer[1], np.float32).tolist()[:8],
        "retrieval": np.frombuffer(answer[2], np.float32).tolist()[:8],
    }


class Offline:
    """Each version's answers recomputed from the checker's copy of the store: a pinned ScoringService with
    local tables (a fresh full load of the version: no deltas, no hot-row cache, no fault, no lease)."""

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

    def answer(self, kind: str, version: int, req, batch=None) -> tuple:
        """A data file's rows: ``freshrec evaluate``'s path (the version's trainer scores the batch);
        otherwise the pinned local service answers the same request."""
        import numpy as np

        if batch is not None:
            return (np.asarray(self.trainer(version).score(batch), np.float32).tobytes(),)
        svc = self.load(version)
        return answer_of(kind, svc.score(req) if kind == "Score" else svc.recommend(req))


class OfflineSearch:
    """Search answers recomputed offline: the version's ranker rebuilt from the store's parts
    (:func:`search.service.load_ranker`: ``load_trainer``, a fresh training core, no frozen tables, no
    deltas) over a freshly indexed catalogue, answered by :func:`search.service.search_answer`."""

    def __init__(self, store_url: str, catalogue: str) -> None:
        self.store_url, self.catalogue = store_url, catalogue
        self.rankers: dict = {}
        self.corpora: dict = {}

    def answer(self, version: int, req) -> tuple:
        from search.data import read_catalogue
        from search.ranker import SearchCorpus
        from search.service import load_ranker, search_answer

        if version not in self.rankers:
            self.rankers[version] = load_ranker(self.store_url, version)
        r = self.rankers[version]
        key = json.dumps(r.spec.to_dict(), sort_keys=True)
        if key not in self.corpora:
            self.corpora[key] = SearchCorpus(read_catalogue(self.catalogue, r.spec), r.spec)
        resp = search_answer(r.trainer, r.version, r.spec, r.num_candidates, self.corpora[key], req)
        return answer_of("Search", resp)


# ------------------------------------------------------------------------------------ Ray parts
def deploy_both(cfg, name: str, replicas: int, search_cfg, search_name: str, search_replicas: int) -> None:
    """serving.app's application and search.app's (on the same proxy, picked by the ``application``
    metadata), deployed together: their replicas start side by side."""
    from ray import serve

    from search.app import build_search_app
    from serving.app import build_app

    serve.run_many(
        [
            serve.RunTarget(build_app(cfg, replicas), name=name, route_prefix=f"/{name}"),
            serve.RunTarget(
                build_search_app(search_cfg, search_replicas), name=search_name, route_prefix=f"/{search_name}"
            ),
        ]
    )


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
    from search.service import SearchServeConfig
    from search.wire import pb_grpc as spb_grpc
    from serving.config import ServeConfig
    from serving.wire import pb, pb_grpc
    from versions import SnapshotConfig, VersionStore

    register()
    t_setup = time.monotonic()
    rng = random.Random(s.seed)
    root.mkdir(parents=True, exist_ok=True)
    events: collections.Counter = collections.Counter()
    published = {"Scorer": set(), "Search": set()}  # every version PUBLISHED at some time (before it moved)
    pinned = {"Scorer": set(), "Search": set()}  # every version PINNED at some time (before it moved)
    commit_lock = threading.Lock()  # commits vs. (checker copy + gc): the copy sees no version half written
    # the trainers' own retention is off (keep 1000): only the injector's gc removes versions
    snapshots = SnapshotConfig(every_data_file=True, full_every=s.full_every, keep=1000)
    store_dir = (root / "versions").absolute()
    search_dir = (root / "search-versions").absolute()
    trainer = StoreTrainer(store_dir, snapshots=snapshots)
    gates = {
        name: SeededGate(d, s.publish_share, random.Random(s.seed * 7 + k), published[name], events, name.lower())
        for k, (name, d) in enumerate((("Scorer", store_dir), ("Search", search_dir)))
    }
    trainer.keeper.publisher = gates["Scorer"]
    clean = VersionStore(str(store_dir))
    catalogue = root / "catalogue"
    for i in range(2):
        trainer.add_file(write_taobao_csv(catalogue / f"part-{i}.csv", 1500, i, start_ts=1_511_658_000 + 3600 * i))
    search_data = write_search_data(root / "search-data", s.seed)
    search_clean = VersionStore(str(search_dir))
    search_stream = SearchStream(search_data, search_dir, s.seed, snapshots, gates["Search"])
    search_stream.add(2 * SEARCH_BATCH)
    stores = {"Scorer": clean, "Search": search_clean}
    for name, store in stores.items():  # serving starts on the newest version
        published[name].add(store.latest())
        store.publish(store.latest())
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
    products = str(search_data / "eval40_products.tsv")
    search_cfg = SearchServeConfig(
        store_url=f"{PROTOCOL}://{search_dir}",
        catalogue=products,
        poll_interval_s=0.05,
        storage_options=options,
        scorers=2,
    )
    app, search_app = f"servechaos-{s.seed}", f"servechaos-search-{s.seed}"
    copies = {"Scorer": (store_dir, root / "checker" / "versions"), "Search": (search_dir, root / "checker" / "search")}

    def sync_copies() -> None:
        for src, dst in copies.values():
            mirror(src, dst)

    with commit_lock:
        sync_copies()
    offline = Offline(str(copies["Scorer"][1]), str(catalogue))
    offline_search = OfflineSearch(str(copies["Search"][1]), products)
    score_reqs, score_batches, rec_reqs = make_requests(trainer, root, s.seed)
    search_reqs = make_search_requests(search_data, s.seed)
    reqs = {"Score": score_reqs, "Recommend": rec_reqs, "Search": search_reqs}
    t_deploy = time.monotonic()
    deploy_both(cfg, app, s.replicas, search_cfg, search_app, s.search_replicas)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub, search_stub = pb_grpc.ScorerStub(channel), spb_grpc.SearchStub(channel)
    meta, search_meta = (("application", app),), (("application", search_app),)
    answers: list[tuple[str, int, int, tuple]] = []  # (kind, request index, version named, answer)
    errors: list[tuple[str, str, float]] = []  # (code, details, when)
    retried = collections.Counter()
    gc_protected_removed: list[dict] = []
    lock = threading.Lock()
    stop_injector, stop_clients = threading.Event(), threading.Event()
    t_start = time.monotonic()
    try:

        def call(kind: str, i: int):
            if kind == "Score":
                return stub.Score(score_reqs[i], timeout=30, metadata=meta)
            if kind == "Search":
                return search_stub.Search(search_reqs[i], timeout=30, metadata=search_meta)
            return stub.Recommend(rec_reqs[i], timeout=30, metadata=meta)

        deadline = time.monotonic() + 180
        for first in (
            lambda: stub.ModelInfo(pb.ModelInfoRequest(), timeout=5, metadata=meta),
            lambda: call("Search", 0),
        ):
            while True:  # a first answer of each application (the Scorers' first loads wait on the shards)
                try:
                    first()
                    break
                except grpc.RpcError as exc:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{app}/{search_app} never answered: {exc.code().name}: {exc.details()}"
                        ) from exc
                    time.sleep(0.2)

        def record(kind: str, i: int, resp) -> None:
            with lock:
                answers.append(
                    (kind, i, int(resp.model_version), answer_of(kind, resp), round(time.monotonic() - t_start, 2))
                )

        def client(k: int) -> None:
            r = random.Random(s.seed * 1000 + k)
            while not stop_clients.is_set():
                kind = r.choice(("Score", "Score", "Recommend", "Search", "Search"))
                i = r.randrange(len(reqs[kind]))
                for attempt in range(50):  # UNAVAILABLE is retried (a killed replica, a replica not ready yet)
                    try:
                        resp = call(kind, i)
                    except grpc.RpcError as exc:
                        with lock:
                            errors.append((exc.code().name, exc.details() or "", time.monotonic() - t_start))
                        if retryable(exc) and not stop_clients.is_set():
                            retried[kind] += 1
                            time.sleep(0.05 * min(attempt + 1, 10))
                            continue
                        break
                    record(kind, i, resp)
                    break

        # each run does every kind at least once (kills as configured), in a seeded order, among random actions
        must = (
            ["kill_scorer"] * s.kill_scorer
            + ["kill_shard"] * s.kill_shard
            + ["kill_search"] * (s.kill_search if s.search_replicas else 0)
            + ["storm", "gc"]
        )
        rng.shuffle(must)
        kill_log: list[dict] = []
        comebacks: list[threading.Thread] = []  # each kill's wait for Serve's replacement

        def storm() -> None:
            for _ in range(rng.randint(2, 6)):
                for name, store in stores.items():
                    tag = "" if name == "Scorer" else "search_"
                    if rng.random() < 0.6:
                        v = rng.choice(store.versions())
                        pinned[name].add(v)  # before the pointer moves: a replica may load it at once
                        store.pin(v)
                        events[f"{tag}pin"] += 1
                    else:
                        store.unpin()
                        events[f"{tag}unpin"] += 1
            events["storm"] += 1

        def gc() -> None:
            with commit_lock:  # no commit in flight: the checker's copy takes every committed version first
                sync_copies()
                for name, store in stores.items():

                    def protected() -> set:
                        held = {lease.version for lease in store.leases()}  # noqa: B023 (called at once)
                        return held | ({store.pinned(), store.published(), store.latest()} - {None})  # noqa: B023

                    before = protected()
                    removed = store.gc(keep=s.gc_keep)["removed"]
                    # protected before AND after gc: a lease that moved off a version meanwhile released it
                    held = before & protected()
                    events[f"gc_removed_{name.lower()}"] += len(removed)
                    bad = sorted(set(removed) & held)
                    if bad:
                        gc_protected_removed.append({"store": name, "removed": bad, "protected": sorted(held)})
            events["gc"] += 1

        def kill_one(what: str) -> None:
            if what == "kill_search":
                where, deployment, want = search_app, "Search", s.search_replicas
            elif what == "kill_scorer":
                where, deployment, want = app, "Scorer", s.replicas
            else:
                where, deployment, want = app, f"TableShard{rng.randrange(s.table_shards)}", 1
            before = set(replica_actors(where, deployment))
            name = kill(where, deployment, rng)
            if not name:
                return
            events[what] += 1
            t0 = time.monotonic()
            entry = {"what": what, "replica": name, "at_s": round(t0 - t_start, 2)}
            kill_log.append(entry)

            def back() -> None:  # a new replica RUNNING, the full count (the faults go on meanwhile)
                while time.monotonic() - t0 < 180:
                    if set(replica_actors(where, deployment)) - before and running(where, deployment) >= want:
                        break
                    time.sleep(0.1)
                entry["back_after_s"] = round(time.monotonic() - t0, 2)

            comebacks.append(threading.Thread(target=back, daemon=True))
            comebacks[-1].start()

        def injector() -> None:
            while not stop_injector.is_set():
                action = rng.random()
                if action < 0.3:
                    rate = rng.choice(s.rates)
                    switch.write_text(repr(rate))
                    events[f"rate_{rate:g}"] += 1
                elif action < 0.45:
                    storm()
                elif action < 0.5:
                    gc()
                elif action < 0.7 and must:
                    what = must.pop()
                    storm() if what == "storm" else gc() if what == "gc" else kill_one(what)
                stop_injector.wait(rng.uniform(0.05, 0.3))

        t_ready = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(s.clients)]
        inj = threading.Thread(target=injector, daemon=True)
        for t in [*threads, inj]:
            t.start()
        t_faults = time.monotonic()
        for i in range(s.files):  # the stream: a version per data file and per batch of judged queries
            with commit_lock:
                trainer.add_file(
                    write_taobao_csv(
                        root / "stream" / f"part-{2 + i}.csv",
                        800,
                        10 + i,
                        start_ts=STREAM_TS + 3600 * i,
                        new_items=20,
                    )
                )
                search_stream.add()
        with commit_lock:  # the newest versions are published (the ones the replicas must reach at the end)
            for name, store in stores.items():
                published[name].add(store.latest())
                store.publish(store.latest())
        # the fault phase ends when every fault kind happened and every killed replica is back
        while time.monotonic() - t_faults < s.min_fault_s or must or any(t.is_alive() for t in list(comebacks)):
            time.sleep(0.05)
            if time.monotonic() - t_faults > 400:  # a stuck injector: the result says what was done
                break
        stop_injector.set()
        inj.join(120)

        def probe(name: str, flip: int):
            """One answer of application ``name`` through the proxy: its version (or the error code)."""
            try:
                if name == "Search":
                    resp = search_stub.Search(search_reqs[0], timeout=10, metadata=search_meta)
                    record("Search", 0, resp)
                elif flip % 2:
                    resp = stub.Score(score_reqs[0], timeout=10, metadata=meta)
                    record("Score", 0, resp)
                else:
                    resp = stub.ModelInfo(pb.ModelInfoRequest(), timeout=10, metadata=meta)
                return int(resp.model_version)
            except grpc.RpcError as exc:
                return exc.code().name

        def reach(want: dict[str, int], t0: float) -> tuple[dict, dict]:
            """Seconds from ``t0`` until ``in_a_row`` answers in a row of each application name its version in
            ``want`` (None: not within settle_timeout_s), and the last version each answered."""
            streak = dict.fromkeys(want, 0)
            first: dict = dict.fromkeys(want)
            last: dict = dict.fromkeys(want)
            while time.monotonic() - t0 < s.settle_timeout_s and any(n < s.in_a_row for n in streak.values()):
                for name, v in want.items():
                    if streak[name] >= s.in_a_row:
                        continue
                    got = last[name] = probe(name, streak[name])
                    if got == v:
                        streak[name] += 1
                        first[name] = first[name] or time.monotonic()
                    else:
                        streak[name], first[name] = 0, None
                        time.sleep(0.02)
            took = {n: round(first[n] - t0, 3) if streak[n] >= s.in_a_row else None for n in want}
            return took, last

        # ------------------------------------------------------------- rollback: PINNED reaches every app
        rollback = {}
        with commit_lock:  # to the newest earlier published version still in the store (else the oldest)
            for name, store in stores.items():
                present, newest = set(store.versions()), store.published()
                earlier = sorted(v for v in published[name] if v in present and v < newest)
                rollback[name] = earlier[-1] if earlier else min(present)
                pinned[name].add(rollback[name])
                store.pin(rollback[name])
        t_pin = time.monotonic()
        gc()  # every version committed, replicas moving to the pin: gc(keep) removes what nothing serves
        time_to_rollback, last_rollback = reach(rollback, t_pin)
        time_to_rollback_end = time.monotonic()
        stop_clients.set()
        for t in threads:
            t.join(60)
        # ------------------------------------------------------------------ the faults stop
        switch.write_text("0")
        for store in stores.values():
            store.unpin()
        t_stop = time.monotonic()
        newest = {name: store.published() for name, store in stores.items()}
        time_to_newest_by_app, last_seen = reach(newest, t_stop)
        reached = all(v is not None for v in time_to_newest_by_app.values())
        time_to_newest = max(time_to_newest_by_app.values()) if reached else None
        # ------------------------------------------------------------------ the checker
        t_check = time.monotonic()
        with commit_lock:
            sync_copies()
        wrong, unpublished = [], []
        for kind, i, v, got, at_s in answers:
            app_of = "Search" if kind == "Search" else "Scorer"
            if v not in published[app_of] | pinned[app_of]:
                unpublished.append({"kind": kind, "request": i, "version": v})
            try:
                if kind == "Search":
                    want = offline_search.answer(v, search_reqs[i])
                else:
                    want = offline.answer(kind, v, reqs[kind][i], score_batches[i] if kind == "Score" else None)
            except Exception as exc:  # a version named by an answer that the checker cannot load
                wrong.append({"kind": kind, "request": i, "version": v, "why": f"{type(exc).__name__}: {exc}"})
                continue
            if got != want:
                wrong.append(
                    {
                        "kind": kind,
                        "request": i,
                        "version": v,
                        "why": "differs from the offline answer",
                        "at_s": at_s,
                        "served": describe(kind, got),
                        "offline": describe(kind, want),
                    }
                )
        if os.environ.get("FRESHREC_CHAOS_DUMP"):  # every wrong answer, for a diagnosis (the result keeps five)
            Path(os.environ["FRESHREC_CHAOS_DUMP"]).write_text(json.dumps(wrong, indent=1, default=str))
        faults = collections.Counter()
        if fault_log.exists():
            for line in fault_log.read_text().splitlines():
                try:
                    faults[json.loads(line)["kind"]] += 1
                except (ValueError, KeyError):
                    pass
        fault_kinds = ("kill_scorer", "kill_shard", "kill_search", "storm", "gc", "pin", "unpin")
        faults.update({k: n for k, n in events.items() if k in fault_kinds or k in ("search_pin", "search_unpin")})
        by_code = collections.Counter(
            "INTERNAL_REPLICA_KILLED" if replica_died(code, d) else code for code, d, _ in errors
        )
        killed = events["kill_scorer"] + events["kill_shard"] + events["kill_search"] > 0
        bad = {c: n for c, n in by_code.items() if c not in ("UNAVAILABLE", "INTERNAL_REPLICA_KILLED")}
        passed = (
            not wrong
            and not bad
            and not unpublished
            and not gc_protected_removed
            and all(v is not None for v in time_to_rollback.values())
            and time_to_newest is not None
            and time_to_newest <= s.newest_within_s
            and (killed or not by_code)
        )
        result = {
            "seed": s.seed,
            "passed": passed,
            "answers": len(answers),
            "answers_by_kind": dict(collections.Counter(k for k, *_ in answers)),
            "versions_named": {
                name: sorted({v for k, _, v, *_ in answers if (k == "Search") == (name == "Search")}) for name in stores
            },
            "wrong_answers": len(wrong),
            "wrong_by_kind": dict(collections.Counter(w.get("kind", "?") for w in wrong)),
            "wrong_examples": wrong[:5],
            "served_unpublished": len(unpublished),  # a version never PUBLISHED nor PINNED (a held-back LATEST)
            "served_unpublished_examples": unpublished[:5],
            "errors_by_code": dict(by_code),
            "error_examples": [
                f"{c} at {t:.1f} s: {d[:150]} ... {d[-500:]}"
                for c, d, t in errors
                if c != "UNAVAILABLE" and not replica_died(c, d)
            ][:5],
            "unavailable_examples": [f"at {t:.1f} s: {d[:200]}" for c, d, t in errors if c == "UNAVAILABLE"][:3],
            "retried": dict(retried),
            "faults_by_kind": dict(faults),
            "events": dict(events),
            "kills": kill_log,
            "gc_removed": {name: events[f"gc_removed_{name.lower()}"] for name in stores},
            "gc_removed_protected": gc_protected_removed,  # must be empty
            "held_back": {name: sorted(v for v, ok in gate.decided.items() if not ok) for name, gate in gates.items()},
            "rollback_to": rollback,
            "time_to_rollback_s": time_to_rollback,
            "last_seen_in_rollback": last_rollback,
            "newest_published": newest,
            "time_to_newest_s": time_to_newest,
            "time_to_newest_by_app_s": time_to_newest_by_app,
            "last_seen_version": last_seen,
            "fault_phase_s": round(t_pin - t_faults, 2),
            "seconds": round(time.monotonic() - t_start, 2),
            "phases_s": {  # where a seed's time goes
                "stores_and_requests": round(t_deploy - t_setup, 2),
                "deploy": round(t_start - t_deploy, 2),
                "first_answers": round(t_ready - t_start, 2),
                "faults": round(t_pin - t_ready, 2),
                "rollback": round(time_to_rollback_end - t_pin, 2),
                "newest": round(t_check - t_stop, 2),
                "check": round(time.monotonic() - t_check, 2),
            },
        }
        if not passed:
            result["reproduce"] = s.command()
        return result
    finally:
        stop_injector.set()
        stop_clients.set()
        channel.close()
        for name in (app, search_app):
            try:
                serve.delete(name)
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
    parser.add_argument("--search-replicas", type=int, default=2, help="Search replicas (default 2)")
    parser.add_argument("--kill-search", type=int, default=1, help="kills of a Search replica per seed (default 1)")
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
                search_replicas=args.search_replicas,
                kill_search=args.kill_search,
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
    answers: collections.Counter = collections.Counter()
    removed: collections.Counter = collections.Counter()
    for r in results:
        codes.update(r.get("errors_by_code", {}))
        faults.update(r.get("faults_by_kind", {}))
        answers.update(r.get("answers_by_kind", {}))
        removed.update(r.get("gc_removed", {}))
    return {
        "seeds": len(results),
        "seeds_passed": sum(r["passed"] for r in results),
        "faults_by_kind": dict(faults),
        "wrong_answers": sum(r.get("wrong_answers", 0) for r in results),
        "answers": sum(r.get("answers", 0) for r in results),
        "answers_by_kind": dict(answers),
        "served_unpublished": sum(r.get("served_unpublished", 0) for r in results),
        "errors_by_code": dict(codes),
        "gc_removed": dict(removed),
        "gc_removed_protected": sum(len(r.get("gc_removed_protected", [])) for r in results),
        "max_time_to_newest_s": max(ttn) if len(ttn) == len(results) and ttn else None,
        "time_to_newest_s": [r.get("time_to_newest_s") for r in results],
        "failed": [{"seed": r["seed"], "reproduce": r["reproduce"]} for r in results if not r["passed"]],
        "per_seed": results,
    }
