"""Serving never lies (issue 20, "The proof", the short seeded version that runs in `make test`).

While a trainer commits a version per data file, client threads send Score requests to a replica
(`ScoringService`, its follower thread, a remote table read through in-process read-only shards and
the replica's hot-row cache), and a seeded fault injector:

* makes the replica's and the shards' store fail transiently (a fault-injecting fsspec filesystem,
  ``flaky://``: ``ConnectionResetError`` on a seeded fraction of its reads and writes),
* rolls back and unpins (the store's PINNED pointer, as ``freshrec snapshots rollback`` / ``unpin``).

A checker then recomputes every answer offline with the version the response names (a fresh, full
load of that version from a clean store: no deltas, no cache, no fault) and requires bit-identical
scores; after the faults stop the replica must serve the newest committed version. No Ray: the
Ray-level faults of the issue's full chaos run (replica and shard kills, gc) are not covered here.
"""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from fsspec import register_implementation
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from bench.servedata import write_taobao_csv
from serving.config import ServeConfig
from serving.errors import ServingError
from serving.follower import RetryPolicy
from serving.model import load_model, ps_config_of
from serving.service import ScoringService, candidate_columns, context_values
from serving.shards import RemoteTables, ShardSlice, merge_changes
from serving.telemetry import ReplicaTelemetry
from serving.wire import pb
from tests.unit.test_serving import make_store
from versions import VersionStore

FAULTS: dict[str, "Faults"] = {}  # storage_options {"faults": key} -> the injector's state


class Faults:
    def __init__(self, seed: int) -> None:
        self.rate = 0.0
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected = 0

    def maybe(self, what: str) -> None:
        with self.lock:
            hit = self.rate > 0 and self.rng.random() < self.rate
            self.injected += hit
        if hit:
            raise ConnectionResetError(f"injected fault: {what}")


class FaultyFileSystem(AbstractFileSystem):
    """The local file system with seeded transient failures (``flaky:///abs/path``)."""

    protocol = "flaky"
    cachable = False

    def __init__(self, faults: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.faults = FAULTS[faults]
        self.inner = LocalFileSystem(auto_mkdir=True)

    def ls(self, path, detail=True, **kwargs):
        self.faults.maybe(f"ls {path}")
        return self.inner.ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        self.faults.maybe(f"info {path}")
        return self.inner.info(path, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        self.faults.maybe(f"open {path}")
        return self.inner._open(path, mode=mode, **kwargs)

    def rm_file(self, path):
        self.faults.maybe(f"rm {path}")
        return self.inner.rm_file(path)

    def mkdir(self, path, create_parents=True, **kwargs):
        return self.inner.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path, exist_ok=False):
        return self.inner.makedirs(path, exist_ok=exist_ok)

    def mv(self, path1, path2, **kwargs):
        self.faults.maybe(f"mv {path1}")
        return self.inner.mv(path1, path2, **kwargs)


register_implementation("flaky", FaultyFileSystem, clobber=True)  # not faulty:// (bench.chaos.faultyfs owns that name)


class Shards:
    """serving.app's shard calls, in process (the shards read the faulty store too)."""

    def __init__(self, store: VersionStore, n: int) -> None:
        ps_cfg = ps_config_of(VersionStore(store.url.replace("flaky://", ""), None), 1)
        self.slices = [ShardSlice(store, ps_cfg, ("user",), i, n) for i in range(n)]

    def load(self, version, since):
        return merge_changes([s.load(version, since) for s in self.slices])

    def fetch(self, version, table, asked):
        return {s: self.slices[s].lookup(version, table, ids) for s, ids in asked.items()}


def requests(trainer, root, seed: int, n: int = 6) -> list[pb.ScoreRequest]:
    """Score requests over known and never-seen users and items (cold rows), column form."""
    path = write_taobao_csv(root / "req.csv", 400, 50 + seed, start_ts=1_511_700_000, users=300, new_items=40)
    table = trainer.read(path).table
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = rng.choice(table.num_rows, 24, replace=False)
        req = pb.ScoreRequest()
        user = int(table.column("user_id").to_numpy()[rows[0]])
        req.context["user_id"].id = user
        for c in ("item_id", "category_id"):
            req.candidate_columns[c].ids.extend(table.column(c).cast("int64").to_numpy()[rows].tolist())
        req.context["ts"].id = 1_511_700_000 + int(rng.integers(3600))
        out.append(req)
    return out


def offline(clean: VersionStore, version: int, req: pb.ScoreRequest, cache: dict) -> np.ndarray:
    if version not in cache:
        cache[version] = load_model(clean, version)  # a fresh full load: no deltas, no cache, no fault
    model = cache[version]
    columns, n = candidate_columns(req, 1000)
    batch, _ = model.features.batch(context_values(req.context, "context"), columns, n)
    return model.score(batch)[0]


@pytest.mark.parametrize("seed", [0])
def test_every_answer_is_the_named_versions_exact_score_through_faults_and_rollbacks(tmp_path, seed):
    rng = random.Random(seed)
    trainer, _ = make_store(tmp_path, files=2)
    clean = VersionStore(str(tmp_path / "versions"))
    FAULTS[f"chaos-{seed}"] = faults = Faults(seed)
    options = {"faults": f"chaos-{seed}"}
    url = f"flaky://{tmp_path / 'versions'}"
    shards = Shards(VersionStore(url, options), 2)
    remote = RemoteTables(("user",), 2, 256, shards.load, shards.fetch)  # small cache: collisions, evictions
    cfg = ServeConfig(
        store_url=url, storage_options=options, poll_interval_s=0.02, remote_tables=("user",), cache_rows=256
    )
    failures: list[str] = []
    telemetry = ReplicaTelemetry(
        "chaos",
        record=lambda name, value, **tags: (
            failures.append(tags["kind"]) if name == "freshrec_serving_load_failures_total" else None
        ),
    )
    svc = ScoringService(cfg, remote=remote, telemetry=telemetry)
    svc.follower.retry = RetryPolicy(base_s=0.02, max_s=0.2, floor_s=0.01)  # a refusal would last 300 s
    svc.start(wait_s=30)
    reqs = requests(trainer, tmp_path, seed)
    answers: list[tuple[int, int, np.ndarray]] = []  # (request index, version named, scores)
    errors: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        r = random.Random(seed * 100 + k)
        while not stop.is_set():
            i = r.randrange(len(reqs))
            try:
                resp = svc.score(reqs[i])
            except ServingError as exc:  # only UNAVAILABLE would be acceptable, and only before a first load
                errors.append(f"{exc.code}: {exc.message}")
                continue
            except Exception as exc:
                errors.append(f"INTERNAL: {type(exc).__name__}: {exc}")
                continue
            answers.append((i, resp.model_version, np.asarray(resp.scores, np.float32)))

    def injector() -> None:
        while not stop.is_set():
            faults.rate = rng.choice([0.0, 0.05, 0.2])
            versions = clean.versions()
            action = rng.random()
            if action < 0.3:
                clean.pin(rng.choice(versions))  # a rollback
            elif action < 0.6:
                clean.unpin()
            time.sleep(rng.uniform(0.05, 0.3))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(2)]
    threads.append(threading.Thread(target=injector, daemon=True))
    try:
        for t in threads:
            t.start()
        for i in range(3):  # the stream goes on: a version per data file
            trainer.add_file(
                write_taobao_csv(
                    tmp_path / "in" / f"part-{2 + i}.csv", 800, 10 + i, start_ts=1_511_680_000 + 3600 * i, new_items=20
                )
            )
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    faults.rate = 0.0
    clean.unpin()
    newest = clean.published() or clean.latest()
    deadline = time.monotonic() + 30  # loading under a loaded 2-core machine: not a latency assertion
    while time.monotonic() < deadline and svc.follower.version != newest:
        time.sleep(0.02)
    try:
        assert svc.follower.version == newest, (svc.follower.version, newest, svc.follower.last_error)
        final = svc.score(reqs[0])
        answers.append((0, final.model_version, np.asarray(final.scores, np.float32)))
    finally:
        svc.stop()
    assert not errors, errors[:3]
    assert faults.injected > 0 and len(answers) > 20
    assert "corrupt" not in failures and not svc.follower.refused  # transient faults never refuse a version
    assert len({v for _, v, _ in answers}) >= 2  # swaps happened while answering
    cache: dict = {}
    wrong = [(i, v) for i, v, scores in answers if not np.array_equal(scores, offline(clean, v, reqs[i], cache))]
    assert not wrong, f"{len(wrong)} of {len(answers)} answers differ from their version's offline score: {wrong[:5]}"
