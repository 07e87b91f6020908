"""Version cuts of real FBGEMM shards into a real version store (local files), without Ray:
prepare/commit/abort semantics, delta chains equal to the shard's content under pushes,
evictions and re-admissions, and restore into any number of shards."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramserver import CutError, EmbeddingShard, PSConfig, RestoreError, TableConfig
from paramserver.sharding import group_by_shard
from versions import VersionStore, model_digest, table_parts

TABLES = (TableConfig("user", 8), TableConfig("item", 4))


def cfg_of(**kw):
    base = dict(tables=TABLES, capacity_per_shard=64, learning_rate=0.05, weights_dtype="fp16")
    base.update(kw)
    return PSConfig(**base)


def step(shard, rng, s, universe=200, n=12):
    ids = rng.integers(0, universe, n).astype(np.int64)
    shard.pull({"user": ids, "item": ids[: n // 2]}, step=s)
    u = np.unique(ids)
    shard.push({"user": (u, rng.standard_normal((len(u), 8)).astype(np.float32))}, step=s)


def version(shards, store, full, cut_id="c"):
    """The coordinator's sequence, minus the pause: prepare all, write all, commit the store, commit all."""
    for sh in shards:
        sh.prepare_cut(cut_id, full)
    latest = store.latest()
    w = store.begin("full" if full or latest is None else "delta", parent=latest, step=shards[0].step)
    infos = [i for sh in shards for i in sh.write_cut(cut_id, store, w.version)]
    digest = w.digest(infos)  # from the store, before commit
    assert digest == model_digest(content(shards))
    m = w.commit(infos, model_digest=digest)
    for sh in shards:
        sh.commit_cut(cut_id)
    return m


def content(shards):
    out = {}
    for t in TABLES:
        parts = [sh.table_state(t.name) for sh in shards]
        out[t.name] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out


def assert_same(a: dict, b: dict, what=""):
    assert a.keys() == b.keys(), what
    for k in a:
        order_a, order_b = np.argsort(a["ids"], kind="stable"), np.argsort(b["ids"], kind="stable")
        np.testing.assert_array_equal(np.asarray(a[k])[order_a], np.asarray(b[k])[order_b], err_msg=f"{what} {k}")


def test_prepare_copies_without_clearing_and_commit_clears_only_what_it_covered(tmp_path):
    shard = EmbeddingShard(cfg_of())
    g = np.ones((2, 8), np.float32)
    shard.pull({"user": np.array([1, 2])}, step=0)
    shard.push({"user": (np.array([1, 2]), g)}, step=0)
    info = shard.prepare_cut("c1", full=False)
    assert info["rows"] == {"user": 2, "item": 0} and info["pause_ms"] >= 0
    before = shard._cuts["c1"].tables["user"]["rows"].copy()
    shard.pull({"user": np.array([2, 3])}, step=1)  # after the prepare: 2 changes again, 3 is new
    shard.push({"user": (np.array([2, 3]), g)}, step=1)
    np.testing.assert_array_equal(shard._cuts["c1"].tables["user"]["rows"], before)  # a copy, not a view
    shard.commit_cut("c1")
    shard.prepare_cut("c2", full=False)
    assert shard._cuts["c2"].tables["user"]["ids"].tolist() == [2, 3]  # 1 was saved by c1; 2 changed after
    shard.abort_cut("c2")  # a failed version loses no marks
    shard.prepare_cut("c3", full=False)
    assert shard._cuts["c3"].tables["user"]["ids"].tolist() == [2, 3]
    shard.commit_cut("c3")
    shard.prepare_cut("c4", full=False)
    assert shard._cuts["c4"].tables["user"]["ids"].tolist() == []
    with pytest.raises(CutError, match="no prepared cut"):
        shard.commit_cut("c3")
    assert shard.abort_cut("nope") is False


def test_a_full_cut_holds_every_row_and_its_state_in_the_stored_dtype():
    shard = EmbeddingShard(cfg_of(capacity_per_shard=16))
    shard.lazy_full_cuts = False  # the copying cut (a lazy one copies nothing at prepare: test_ps_sliced.py)
    rng = np.random.default_rng(0)
    for s in range(5):
        step(shard, rng, s, universe=30)
    shard.prepare_cut("f", full=True)
    cut = shard._cuts["f"].tables["user"]
    assert cut["rows"].dtype == np.float16 and cut["opt_state_0"].dtype == np.float32
    assert len(cut["ids"]) == 16 and (np.diff(cut["ids"]) > 0).all() and len(cut["deleted"]) == 0
    state = shard.table_state("user")
    assert_same({k: v for k, v in cut.items() if k != "deleted"}, state)
    np.testing.assert_array_equal(cut["rows"].astype(np.float32), shard.read("user", cut["ids"]))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["train", "train", "train", "delta", "full", "abort", "prepare_then_train"]),
        st.integers(0, 2**31 - 1),
    ),
    min_size=3,
    max_size=14,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, ttl=st.sampled_from([None, 3]), threshold=st.sampled_from([1, 2]))
def test_a_delta_chain_materialises_to_the_shards_content(tmp_path_factory, ops, ttl, threshold):
    """Random pushes with LFU (capacity 24 < universe), TTL and re-admissions; cuts committed, aborted
    or overtaken by training between prepare and commit: the store always equals the shard."""
    store = VersionStore(tmp_path_factory.mktemp("v"))
    shard = EmbeddingShard(cfg_of(capacity_per_shard=24, ttl_versions=ttl, admission_threshold=threshold))
    s = 0
    for op, seed in ops:
        rng = np.random.default_rng(seed)
        if op == "train":
            for _ in range(3):
                step(shard, rng, s, universe=60)
                s += 1
        elif op in ("delta", "full"):
            version([shard], store, full=op == "full" or store.latest() is None)
        elif op == "abort":
            shard.prepare_cut("x", full=False)
            step(shard, rng, s, universe=60)
            s += 1
            shard.abort_cut("x")
        else:  # training goes on between prepare and commit: the version holds the state at the prepare
            shard.prepare_cut("c", full=store.latest() is None)
            at_prepare = content([shard])
            step(shard, rng, s, universe=60)
            s += 1
            latest = store.latest()
            w = store.begin("full" if latest is None else "delta", parent=latest, step=s)
            w.commit(shard.write_cut("c", store, w.version))
            shard.commit_cut("c")
            for t in TABLES:
                assert_same(store.materialize(w.version, table_parts(t.name)), at_prepare[t.name], "at prepare")
    m = version([shard], store, full=store.latest() is None)
    for t in TABLES:
        assert_same(store.materialize(m.version, table_parts(t.name)), shard.table_state(t.name), t.name)
    assert store.digest(m.version) == m.model_digest
    assert m.rows == shard.stats()["rows"]


def test_restore_into_one_or_two_shards_is_bit_identical_and_trains_on_identically(tmp_path):
    store = VersionStore(tmp_path / "v")
    rng = np.random.default_rng(3)
    orig = EmbeddingShard(cfg_of(capacity_per_shard=40, ttl_versions=6))
    for s in range(8):
        step(orig, rng, s, universe=80)
        if s in (2, 5):
            version([orig], store, full=s == 2)
    m = version([orig], store, full=False)
    assert [c.kind for c in store.chain(m.version)] == ["full", "delta", "delta"]
    one = EmbeddingShard(cfg_of(capacity_per_shard=40, ttl_versions=6))
    one.restore_from_store(store, m.version)
    for t in TABLES:
        assert_same(one.table_state(t.name), orig.table_state(t.name), t.name)
    assert (one.version, one.step) == (orig.version, orig.step)
    two = [EmbeddingShard(cfg_of(capacity_per_shard=40, ttl_versions=6, num_shards=2), i) for i in range(2)]
    for sh in two:
        sh.restore_from_store(str(store.url), m.version)
        for t in TABLES:
            ids = sh.table_state(t.name)["ids"]
            assert len(group_by_shard(ids, 2)[1 - sh.index]) == 0  # only its own ids
    assert model_digest(content(two)) == model_digest(content([one])) == m.model_digest
    # training on from the restored shard gives the same tables as training on the original
    # (eviction choices depend only on ids, counts and steps, not on which slot holds a row)
    for s in range(8, 14):
        seed = 100 + s
        step(orig, np.random.default_rng(seed), s, universe=80)
        step(one, np.random.default_rng(seed), s, universe=80)
    assert orig.stats()["evicted"] > 0
    for t in TABLES:
        assert_same(one.table_state(t.name), orig.table_state(t.name), f"after training {t.name}")
    # a version written by two shards restores into one
    m2 = version(two, store, full=False)
    back = EmbeddingShard(cfg_of(capacity_per_shard=80, ttl_versions=6))
    back.restore_from_store(store, m2.version)
    assert model_digest(content([back])) == m2.model_digest


def test_restore_refuses_what_does_not_fit_and_leaves_the_shard_unchanged(tmp_path):
    store = VersionStore(tmp_path / "v")
    src = EmbeddingShard(cfg_of(capacity_per_shard=64))
    src.pull({"user": np.arange(30)}, step=0)
    m = version([src], store, full=True)
    small = EmbeddingShard(cfg_of(capacity_per_shard=16))
    small.pull({"user": np.array([7])}, step=0)
    before = small.table_state("user")
    with pytest.raises(RestoreError, match="capacity_per_shard"):
        small.restore_from_store(store, m.version)
    assert_same(small.table_state("user"), before)
    other = EmbeddingShard(cfg_of(optimizer="adagrad"))
    with pytest.raises(RestoreError, match="optimizer"):
        other.restore_from_store(store, m.version)


def test_restore_from_table_state_gives_an_equal_shard():
    rng = np.random.default_rng(5)
    src = EmbeddingShard(cfg_of(capacity_per_shard=30))
    for s in range(6):
        step(src, rng, s, universe=50)
    dst = EmbeddingShard(cfg_of(capacity_per_shard=30))
    dst.restore({t.name: src.table_state(t.name) for t in TABLES}, {"version": src.version, "step": src.step})
    for t in TABLES:
        assert_same(dst.table_state(t.name), src.table_state(t.name), t.name)
    assert model_digest(content([dst])) == model_digest(content([src]))


def test_the_eviction_log_stays_bounded_without_versions_and_deltas_stay_exact(tmp_path):
    shard = EmbeddingShard(cfg_of(capacity_per_shard=8))
    store = VersionStore(tmp_path / "v")
    version([shard], store, full=True)
    for s in range(200):  # every pull of 3 new ids evicts: 200 log entries without folding
        shard.pull({"user": np.arange(3 * s, 3 * s + 3)}, step=s)
    assert len(shard._tables["user"].evicted) <= 65
    m = version([shard], store, full=False)
    assert_same(store.materialize(m.version, table_parts("user")), shard.table_state("user"))


def test_deltas_continue_on_a_compacted_full_version(tmp_path):
    """full_by: compaction: the shards only ever cut deltas after the first full; compact() writes
    the full from the store, and the next delta builds on it."""
    store = VersionStore(tmp_path / "v")
    rng = np.random.default_rng(9)
    shard = EmbeddingShard(cfg_of(capacity_per_shard=30))
    step(shard, rng, 0, universe=50)
    version([shard], store, full=True)
    for s in (1, 2):
        step(shard, rng, s, universe=50)
        version([shard], store, full=False)
    c = store.compact(store.latest())
    assert c.kind == "full" and store.latest() == c.version and store.digest(c.version) == c.model_digest
    step(shard, rng, 3, universe=50)
    m = version([shard], store, full=False)
    assert [x.version for x in store.chain(m.version)] == [c.version, m.version]
    back = EmbeddingShard(cfg_of(capacity_per_shard=30))
    back.restore_from_store(store, m.version)
    for t in TABLES:
        assert_same(back.table_state(t.name), shard.table_state(t.name), t.name)
    assert (back.version, back.step) == (shard.version, shard.step)
