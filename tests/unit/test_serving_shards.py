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
from tests.unit.test_serving import make_store, row_request
from versions import VersionStore, table_parts


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
@given(st.lists(st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=40, unique=True), min_size=1,
                max_size=6), st.sampled_from([1, 4, 64]))
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
    changed = np.concatenate([store.read_part(v2, p.name)["ids"] for p in store.manifest(v2).parts
                              if table_parts("user")(p)])
    rows, known = t2.lookup(ids)
    refetched = shards.fetched - before
    assert refetched == len(np.intersect1d(ids, changed))  # only the ids v2 changed were fetched again
    want_rows, want_known = load_model(store, v2).tables["user"].lookup(ids)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(known, want_known)
    assert shards.slices[0].load(v2, since=v1)["user"].tolist() == \
        np.unique(changed[shards.slices[0]._keep(changed)]).tolist()
    assert shards.slices[0].load(v2, since=None) is None


def test_scores_through_remote_tables_equal_local_scores_across_a_swap(tmp_path):
    trainer, paths = make_store(tmp_path, files=2)
    store = VersionStore(str(tmp_path / "versions"))
    later = write_taobao_csv(tmp_path / "part-9.csv", 600, 7, start_ts=1_511_700_000, users=600, new_items=40)
    req = row_request(trainer.read(later))
    cfg = ServeConfig(store_url=str(tmp_path / "versions"), remote_tables=("user", "category"), table_shards=2,
                      cache_rows=256)
    shards = InProcessShards(store, cfg.remote_tables, 2)
    remote_svc = ScoringService(cfg, remote=RemoteTables(cfg.remote_tables, 2, cfg.cache_rows, shards.load,
                                                         shards.fetch)).start()
    local_svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        for _ in range(2):  # the second time from the cache
            a, b = remote_svc.score(req), local_svc.score(req)
            assert a.model_version == b.model_version and a.unknown_ids == b.unknown_ids > 0
            np.testing.assert_array_equal(np.asarray(a.scores), np.asarray(b.scores))
        trainer.add_file(later)  # a new version: both replicas follow it
        assert remote_svc.follower.poll() and local_svc.follower.poll()
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
