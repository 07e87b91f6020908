"""Remote tables without Ray: read-only shards restored from a version, the replica's hot-row cache,
and scores through them equal to scores with every table held locally (cold ids and new versions included)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.servedata import write_taobao_csv
from serving.cache import HotRowCache
from serving.config import ServeConfig
from serving.errors import UnsupportedError
from serving.model import load_model, ps_config_of
from serving.service import ScoringService
from serving.shards import RemoteTables, ShardSlice, merge_changes
from tests.support.serving import make_store, row_request
from versions import VersionStore, table_parts


def follow(*services, timeout_s: float = 30.0) -> int:
    """Wait until every service serves the version its follower targets (the background thread may swap first)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for svc in services:
            svc.follower.poll()
        versions = {svc.follower.model.version for svc in services}
        if len(versions) == 1 and versions == {services[0].follower.target()}:
            return versions.pop()
        time.sleep(0.05)
    raise AssertionError(f"not followed: {[svc.follower.model.version for svc in services]}")


class InProcessShards:
    """What serving.app does over Ray Serve handles, as plain calls (and counted)."""

    def __init__(self, store: VersionStore, tables: tuple[str, ...], n: int) -> None:
        ps_cfg = ps_config_of(store, store.latest())
        self.slices = [ShardSlice(store, ps_cfg, tables, i, n) for i in range(n)]
        self.fetched = 0

    def load(self, version, since):
        return merge_changes([s.load(version, since) for s in self.slices])

    def fetch(self, version, table, asked):
        self.fetched += sum(len(ids) for ids in asked.values())
        return {s: self.slices[s].lookup(version, table, ids) for s, ids in asked.items()}


# ------------------------------------------------------------------------------------------------ cache
def test_cache_hits_misses_collisions_and_carry():
    c = HotRowCache(8, dim=3)
    ids = np.array([5, 900, -7, 2**62])
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    got, known, miss = c.get(ids)
    assert miss.tolist() == [0, 1, 2, 3] and not known.any() and (got == 0).all()
    c.put(ids, rows, np.array([True, True, False, True]))
    got, known, miss = c.get(ids)
    hit = np.setdiff1d(np.arange(4), miss)
    np.testing.assert_array_equal(got[hit], rows[hit])  # a colliding id may have replaced another: a miss
    assert known[hit].tolist() == [i != 2 for i in hit]
    nxt = c.carried(np.array([900]))
    assert nxt.get(np.array([900]))[2].tolist() == [0]  # changed by the next version: dropped
    assert c.get(np.array([900]))[2].tolist() in ([], [0])  # the old cache is untouched by the carry
    assert HotRowCache(8, 3).carried(None).size == 0
    with pytest.raises(ValueError, match="power of two"):
        HotRowCache(6, 3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40, unique=True), min_size=1, max_size=6),
    st.sampled_from([1, 4, 64]),
)
def test_cache_answers_only_what_was_put(batches, capacity):
    """Whatever the ids and collisions, a hit returns exactly the row last put for that id."""
    c = HotRowCache(capacity, dim=2)
    truth = {}
    for b in batches:
        ids = np.array(b, np.int64)
        rows = np.stack([ids.astype(np.float64) % 1000, -(ids.astype(np.float64) % 997)], 1).astype(np.float32)
        got, known, miss = c.get(ids)
        hit = np.setdiff1d(np.arange(len(ids)), miss)
        for i in hit:
            np.testing.assert_array_equal(got[i], truth[int(ids[i])])
        c.put(ids, rows, np.ones(len(ids), bool))
        truth.update({int(i): r for i, r in zip(ids, rows)})


# ----------------------------------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def store_with_deltas(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    trainer, paths = make_store(root, files=3)
    return root, trainer, VersionStore(str(root / "versions"))


@pytest.mark.parametrize("n", [1, 3])
def test_shards_hold_exactly_their_ids_and_answer_like_the_whole_table(store_with_deltas, n):
    root, trainer, store = store_with_deltas
    v = store.latest()
    full = store.materialize(v, table_parts("user"), fields=("rows",))
    shards = InProcessShards(store, ("user",), n)
    shards.load(v, None)
    held = np.sort(np.concatenate([s._versions[v]["user"].ids for s in shards.slices]))
    np.testing.assert_array_equal(held, full["ids"])
    local = load_model(store, v).tables["user"]
    ids = np.concatenate([full["ids"][:50], np.array([10**12, -3])])  # known and never-seen ids
    remote = RemoteTables(("user",), n, 64, shards.load, shards.fetch).open(ps_config_of(store, v), v)["user"]
    rows, known = remote.lookup(ids)
    want_rows, want_known = local.lookup(ids)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(known, want_known)


def test_following_deltas_reports_changed_ids_and_keeps_the_cache_warm(store_with_deltas):
    root, trainer, store = store_with_deltas
    v1, v2 = store.versions()[-2:]
    assert store.manifest(v2).kind == "delta"
    shards = InProcessShards(store, ("user",), 2)
    remote = RemoteTables(("user",), 2, 1 << 12, shards.load, shards.fetch)
    ps_cfg = ps_config_of(store, v1)
    t1 = remote.open(ps_cfg, v1)["user"]
    ids = store.materialize(v1, table_parts("user"), fields=("rows",))["ids"][:300]
    t1.lookup(ids)
    before = shards.fetched
    t2 = remote.open(ps_cfg, v2, {"user": t1})["user"]
    changed = np.concatenate(
        [store.read_part(v2, p.name)["ids"] for p in store.manifest(v2).parts if table_parts("user")(p)]
    )
    rows, known = t2.lookup(ids)
    refetched = shards.fetched - before
    assert refetched == len(np.intersect1d(ids, changed))  # only the ids v2 changed were fetched again
    want_rows, want_known = load_model(store, v2).tables["user"].lookup(ids)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(known, want_known)
    assert (
        shards.slices[0].load(v2, since=v1)["user"].tolist()
        == np.unique(changed[shards.slices[0]._keep(changed)]).tolist()
    )
    assert shards.slices[0].load(v2, since=None) is None


def test_scores_through_remote_tables_equal_local_scores_across_a_swap(tmp_path):
    trainer, paths = make_store(tmp_path, files=2)
    store = VersionStore(str(tmp_path / "versions"))
    later = write_taobao_csv(tmp_path / "part-9.csv", 600, 7, start_ts=1_511_700_000, users=600, new_items=40)
    req = row_request(trainer.read(later))
    cfg = ServeConfig(
        store_url=str(tmp_path / "versions"), remote_tables=("user", "category"), table_shards=2, cache_rows=256
    )
    shards = InProcessShards(store, cfg.remote_tables, 2)
    remote_svc = ScoringService(
        cfg, remote=RemoteTables(cfg.remote_tables, 2, cfg.cache_rows, shards.load, shards.fetch)
    ).start()
    local_svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        for _ in range(2):  # the second time from the cache
            a, b = remote_svc.score(req), local_svc.score(req)
            assert a.model_version == b.model_version and a.unknown_ids == b.unknown_ids > 0
            np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
        trainer.add_file(later)  # a new version: both replicas follow it
        assert follow(remote_svc, local_svc) == store.latest()
        a, b = remote_svc.score(req), local_svc.score(req)
        assert a.model_version == b.model_version == store.latest()
        np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
    finally:
        remote_svc.stop()
        local_svc.stop()


def test_remote_tables_need_shards_and_valid_settings(tmp_path):
    cfg = ServeConfig(store_url=str(tmp_path), remote_tables=("user",))
    with pytest.raises(UnsupportedError, match="read-only table shards"):
        ScoringService(cfg)
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="power of two"):
        ServeConfig(store_url="x", remote_tables=("user",), cache_rows=1000)
    with pytest.raises(ConfigError, match="twice"):
        ServeConfig(store_url="x", remote_tables=("user", "user"))


# -------------------------------------------------------------------------------------------- ANN
def _clustered(n: int, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, d)).astype(np.float32) * 3
    rows = centers[rng.integers(0, 40, n)] + rng.standard_normal((n, d)).astype(np.float32)
    return np.sort(rng.choice(10**9, n, replace=False)).astype(np.int64), rows.astype(np.float32)


def test_ann_index_recall_filters_and_deltas():
    import torch

    from serving.ann import AnnItemIndex, AnnOptions
    from serving.retrieval import ItemIndex

    ids, rows = _clustered(20_000)
    cats = (ids % 7).astype(np.int64)
    ann = AnnItemIndex.build(ids, rows, cats, AnnOptions(nprobe=16))
    exact = ItemIndex(ids, torch.from_numpy(rows), cats)
    queries = rows[:30] + 0.05
    recall = np.mean([len(np.intersect1d(ann.top(q, 50)[0], exact.top(q, 50)[0])) / 50 for q in queries])
    assert recall >= 0.9, recall
    got, scores = ann.top(queries[0], 20, exclude=ids[:5000], category=3)
    assert len(got) == 20 and (got % 7 == 3).all() and not np.isin(got, ids[:5000]).any()
    assert (np.diff(scores) <= 1e-6).all()
    got, _ = ann.top(queries[0], 50, exclude=exact.top(queries[0], 10)[0])
    assert not np.isin(got, exact.top(queries[0], 10)[0]).any()
    # the next version: 100 rows moved, 50 items removed, 80 new ones
    new_ids, new_rows = _clustered(80, seed=5)
    rows2 = rows.copy()
    rows2[100:200] *= -1
    keep = np.ones(len(ids), bool)
    keep[1000:1050] = False
    ids3 = np.concatenate([ids[keep], new_ids + 10**9])
    rows3 = np.concatenate([rows2[keep], new_rows])
    order = np.argsort(ids3)
    ids3, rows3 = ids3[order], rows3[order]
    upd = ann.updated(ids3, rows3)
    assert upd.index.ntotal == len(ids3) and ann.index.ntotal == len(ids)  # the old version's index is untouched
    assert np.isin(new_ids[0] + 10**9, upd.top(new_rows[0], 5)[0])
    assert not np.isin(upd.top(rows[1000], 200)[0], ids[1000:1050]).any()
    exact3 = ItemIndex(ids3, torch.from_numpy(rows3))
    moved = [len(np.intersect1d(upd.top(q, 20)[0], exact3.top(q, 20)[0])) / 20 for q in rows2[100:200:5]]
    assert np.mean(moved) >= 0.9  # the moved items are found where they are now
    full = AnnItemIndex.build(ids3, rows3, None, AnnOptions(nprobe=16))
    both = [len(np.intersect1d(upd.top(q, 50)[0], full.top(q, 50)[0])) / 50 for q in queries]
    assert np.mean(both) >= 0.9


def test_recommend_uses_the_ann_index_above_its_threshold(tmp_path):
    from serving.ann import AnnItemIndex
    from serving.wire import pb

    trainer, paths = make_store(tmp_path, files=2)
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"), ann_above=10, ann_nprobe=1000)).start()
    exact = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        assert isinstance(svc.follower.model.index, AnnItemIndex)
        req = pb.RecommendRequest(k=5, num_candidates=50)
        req.context["user_id"].id = 7
        req.exclude_item_ids.extend([1, 2])
        a, b = svc.recommend(req), exact.recommend(req)
        # nprobe >= nlist scans every list: the same candidates, the same ranking as exact retrieval
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
        trainer.add_file(write_taobao_csv(tmp_path / "in" / "part-8.csv", 600, 8, start_ts=1_511_700_000, new_items=50))
        follow(svc, exact)
        assert isinstance(svc.follower.model.index, AnnItemIndex)
        a, b = svc.recommend(req), exact.recommend(req)
        assert a.model_version == b.model_version and [i.item_id for i in a.items] == [i.item_id for i in b.items]
    finally:
        svc.stop()
        exact.stop()


def test_bench_ann_runs_small(capsys):
    import json

    from cluster.cli import main

    assert main(["bench", "ann", "--items", "5000", "--queries", "5", "--rounds", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["items"] == 5000 and 0.5 <= out["recall_at_n"] <= 1.0 and out["ann_ms_per_query"] > 0


def test_a_shard_serves_any_version_still_in_the_store_and_keeps_what_replicas_lease(store_with_deltas):
    """Issue 20 item 3: an older version (a rollback, a lagging replica) is loaded on demand and answered,
    never inserted-then-evicted; a leased version is kept however many newer ones load."""
    root, trainer, store = store_with_deltas
    versions = store.versions()
    assert len(versions) >= 3
    ps_cfg = ps_config_of(store, versions[-1])
    s = ShardSlice(store, ps_cfg, ("user",), 0, 1, keep_versions=2)
    for v in versions[1:]:
        s.load(v)
    oldest = versions[0]
    assert oldest not in s.versions
    ids = store.materialize(oldest, table_parts("user"), fields=("rows",))["ids"][:40]
    want = load_model(store, oldest).tables["user"].lookup(ids)
    for _ in range(2):  # the old version is served (and stays held while it is asked for)
        rows, known = s.lookup(oldest, "user", ids)
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(known, want[1])
    assert oldest in s.versions and len(s.versions) <= 2
    store.renew_lease("replica-lagging", oldest, role="replica")
    for v in versions[1:]:  # newer versions come and go; the leased one stays
        s.load(v)
        assert oldest in s.versions
    store.release_lease("replica-lagging")
    for v in versions[1:]:
        s.load(v)
        s.lookup(v, "user", ids)
    assert oldest not in s.versions and len(s.versions) <= 2
