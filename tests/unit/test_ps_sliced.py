"""Sliced cuts and streamed restores: a table's cut is written as hash-sliced parts of bounded
size, and a restore merges and loads one slice at a time. The restored shards must equal
those the whole-table path gives (same shard count and re-sharded), through a chain with
evictions, deletions and re-admissions; the memory a restore and a cut write hold beside
the table is measured with tracemalloc (numpy's allocations; the torch rows are the table)."""

import threading
import tracemalloc

import numpy as np
import pytest

from paramserver import EmbeddingShard, PSConfig, RestoreError, TableConfig, cuts
from versions import VersionStore

TABLES = (TableConfig("user", 8), TableConfig("item", 4))


def cfg_of(**kw):
    base = dict(tables=TABLES, capacity_per_shard=400, learning_rate=0.05, weights_dtype="fp16")
    base.update(kw)
    return PSConfig(**base)


def run_version(shard, store, full, cut_id, part_bytes):
    shard.prepare_cut(cut_id, full)
    latest = store.latest()
    w = store.begin("full" if full or latest is None else "delta", parent=latest, step=shard.step)
    infos = cuts.write(shard, cut_id, store, w.version, part_bytes=part_bytes)
    w.commit(infos)
    shard.commit_cut(cut_id)
    return w.version, infos


def whole_table_restore(cfg, index, store, version):
    """The path before slicing: materialise every table, then restore."""
    shard = EmbeddingShard(cfg, index)
    cuts.restore(shard, cuts.read_content(store, version, cfg, index))
    return shard


def states(shard):
    return {t.name: shard.table_state(t.name) for t in TABLES}


def assert_same(a, b):
    for t in a:
        assert a[t].keys() == b[t].keys()
        for k in a[t]:
            np.testing.assert_array_equal(a[t][k], b[t][k], err_msg=f"{t} {k}")


def test_sliced_chain_restores_like_the_whole_table_path_into_one_and_three_shards(tmp_path):
    rng = np.random.default_rng(5)
    cfg = cfg_of(admission_threshold=2, ttl_versions=6)
    shard = EmbeddingShard(cfg)
    store = VersionStore(str(tmp_path / "v"))
    slice_counts = []
    for s in range(24):
        ids = rng.integers(0, 900, 40).astype(np.int64)
        shard.pull({"user": ids, "item": ids[:20]}, step=s)
        u = np.unique(ids)
        shard.push({"user": (u, rng.standard_normal((len(u), 8)).astype(np.float32))}, step=s)
        if s % 4 == 3:  # a full, then deltas; parts of 900 bytes: fulls in many slices, deltas in fewer
            v, infos = run_version(shard, store, full=(s == 3 or s == 15), cut_id=f"c{s}", part_bytes=900)
            slice_counts.append(max(p.meta.get("slice_bits", 0) for p in infos if p.meta.get("role") == "table"))
    assert max(slice_counts) >= 2 and len(set(slice_counts)) > 1  # several granularities in one chain
    deleted = [
        len(store.read_part(m.version, p.name)["deleted"])
        for m in store.chain(v)
        for p in m.parts
        if p.meta.get("role") == "table" and m.kind == "delta"
    ]
    assert sum(deleted) > 0  # the chain carries evictions
    want = want_at_v = states(shard)
    restored = EmbeddingShard(cfg)
    restored.restore_from_store(store, v)
    assert_same(states(restored), want)
    assert_same(states(restored), states(whole_table_restore(cfg, 0, store, v)))
    assert restored.stats()["version"] == shard.stats()["version"]
    # the restored shard trains on exactly like the original (slots differ, nothing observable does)
    for s in range(24, 27):
        ids = rng.integers(0, 900, 40).astype(np.int64)
        for sh in (shard, restored):
            sh.pull({"user": ids, "item": ids[:20]}, step=s)
            u = np.unique(ids)
            sh.push({"user": (u, np.full((len(u), 8), 0.01, np.float32))}, step=s)
    assert_same(states(restored), states(shard))
    three = cfg_of(admission_threshold=2, ttl_versions=6, num_shards=3)
    parts = []
    for i in range(3):
        sh = EmbeddingShard(three, i)
        sh.restore_from_store(store, v)
        parts.append(states(sh))
    assert_same(parts[1], states(whole_table_restore(three, 1, store, v)))
    for t in want:  # the three shards together hold exactly the version, each id once
        union = {k: np.concatenate([p[t][k] for p in parts]) for k in want[t]}
        order = np.argsort(union["ids"])
        for k in want[t]:
            np.testing.assert_array_equal(union[k][order], want_at_v[t][k], err_msg=f"{t} {k}")


def test_a_restore_that_does_not_fit_changes_nothing(tmp_path):
    cfg = cfg_of()
    shard = EmbeddingShard(cfg)
    shard.pull({"user": np.arange(300), "item": np.arange(10)}, step=1)
    store = VersionStore(str(tmp_path / "v"))
    v, _ = run_version(shard, store, True, "c", part_bytes=500)
    small = EmbeddingShard(cfg_of(capacity_per_shard=100))
    small.pull({"user": np.array([7])}, step=1)
    with pytest.raises(RestoreError, match="capacity_per_shard"):
        small.restore_from_store(store, v)
    assert small.stats()["rows"] == 1  # checked before any change
    other_dim = EmbeddingShard(PSConfig(tables=(TableConfig("user", 12),), capacity_per_shard=400))
    with pytest.raises(RestoreError, match="dim"):
        other_dim.restore_from_store(store, v)


def _table_bytes(shard):
    out = sum(w.numel() * w.element_size() for w in shard._weights)
    out += sum(s.numel() * s.element_size() for st in shard._states for s in st)
    for ts in shard._tables.values():
        out += ts.ids.nbytes + sum(
            a.nbytes for a in (ts.count, ts.last_seen, ts.last_version, ts.touched, ts.pinned, ts.seen_at)
        )
    return out


def test_restore_and_cut_write_hold_little_beside_the_table(tmp_path, monkeypatch):
    rows, dim = 60_000, 64
    cfg = PSConfig(tables=(TableConfig("t", dim),), capacity_per_shard=rows, weights_dtype="fp32")
    shard = EmbeddingShard(cfg)
    shard.pull({"t": np.arange(rows, dtype=np.int64) * 7919}, step=1)
    table = _table_bytes(shard)
    store = VersionStore(str(tmp_path / "v"))
    w = store.begin("full", step=1)
    monkeypatch.setattr(cuts, "PART_BYTES", 1 << 20)
    tracemalloc.start()
    shard.prepare_cut("c", True)  # copy-on-write: no copy of the table
    infos = cuts.write(shard, "c", store, w.version, part_bytes=1 << 20)
    _, write_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    w.commit(infos)
    shard.commit_cut("c")
    assert len(infos) >= 16
    assert write_peak < 0.25 * table, (write_peak, table)  # the slice grouping and one slice, not a second copy
    fresh = EmbeddingShard(cfg)
    tracemalloc.start()
    fresh.restore_from_store(store, w.version)
    _, sliced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    whole_table_restore(cfg, 0, store, w.version)
    _, whole_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(
        fresh.read("t", np.arange(0, rows * 7919, 7919 * 97)), shard.read("t", np.arange(0, rows * 7919, 7919 * 97))
    )
    assert whole_peak > 1.0 * table  # the measurement sees the whole-table path's copies ...
    assert sliced_peak < 0.25 * table, (sliced_peak, table)  # ... and the sliced path stays within 1.25x


def _train(shard, rng, steps, s0, universe=700):
    for s in range(s0, s0 + steps):
        ids = rng.integers(0, universe, 60).astype(np.int64)
        shard.pull({"user": ids, "item": ids[:30]}, step=s)
        u = np.unique(ids)
        shard.push({"user": (u, rng.standard_normal((len(u), 8)).astype(np.float32))}, step=s)


@pytest.mark.parametrize("concurrent", [False, True])
def test_a_copy_on_write_full_cut_holds_the_table_as_it_was_at_the_prepare(tmp_path, monkeypatch, concurrent):
    """Training (pulls, pushes, LFU and TTL evictions, re-admissions into freed slots) goes on
    after the prepare, before or while the slices are written: the version is the prepare's state."""
    rng = np.random.default_rng(11)
    shard = EmbeddingShard(cfg_of(capacity_per_shard=300, ttl_versions=5))
    _train(shard, rng, 30, 0)
    store = VersionStore(str(tmp_path / "v"))
    monkeypatch.setattr(cuts, "PART_BYTES", 400)  # a lazy cut picks its slices at the prepare
    shard.prepare_cut("f", True)
    assert shard._lazy is not None
    at_prepare = states(shard)
    w = store.begin("full", step=shard.step)
    if concurrent:
        out = {}
        writer = threading.Thread(
            target=lambda: out.setdefault("infos", cuts.write(shard, "f", store, w.version, part_bytes=400))
        )
        writer.start()
        _train(shard, rng, 20, 30)
        writer.join()
        infos = out["infos"]
    else:
        _train(shard, rng, 20, 30)
        assert shard.stats()["evicted"] > 0
        infos = cuts.write(shard, "f", store, w.version, part_bytes=400)
    assert len(infos) > 4
    with pytest.raises(Exception, match="written once"):
        cuts.write(shard, "f", store, w.version, part_bytes=400)
    w.commit(infos)
    shard.commit_cut("f")
    assert shard._lazy is None
    restored = EmbeddingShard(cfg_of(capacity_per_shard=300, ttl_versions=5))
    restored.restore_from_store(store, w.version)
    got = states(restored)
    for t in at_prepare:
        for k in ("ids", "rows", "opt_state_0", "count", "last_seen", "last_version"):
            np.testing.assert_array_equal(got[t][k], at_prepare[t][k], err_msg=f"{t} {k}")
    # the changes after the prepare are pending for the next delta
    shard.prepare_cut("d", False)
    assert sum(shard._cuts["d"].tables[t]["ids"].size for t in at_prepare) > 0
