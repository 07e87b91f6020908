"""Versions through real shard actors: prepare / write / commit through the client, kill the
actors, restore fresh ones (2 shards, and 1) from the version store."""

import numpy as np
import pytest

from paramserver import CutError, PSConfig, TableConfig, create_parameter_server
from versions import VersionStore, model_digest

pytestmark = pytest.mark.integration
TABLES = (TableConfig("user", 8), TableConfig("item", 4))


def train(client, steps, start, rng, universe):
    for s in range(start, start + steps):
        ids = {t.name: rng.choice(universe, size=40) for t in TABLES}
        client.wait(client.pull_many(ids, step=s))
        grads = {t.name: (ids[t.name], rng.standard_normal((40, t.dim)).astype(np.float32)) for t in TABLES}
        client.wait(client.push_many(grads, step=s))
    return start + steps


def write_version(client, store, cut_id, full, step):
    client.prepare_cut(cut_id, full)  # the training pause: only the copy
    latest = store.latest()
    w = store.begin("full" if full else "delta", parent=None if full else latest, step=step)
    parts = client.write_cut(cut_id, store.url, w.version)
    m = w.commit(parts, model_digest=model_digest(client.table_state()))
    client.commit_cut(cut_id)
    return m


def test_versions_survive_killing_every_shard(ray_local, tmp_path):
    store = VersionStore(tmp_path / "versions")
    universe = np.random.default_rng(0).integers(-(2**62), 2**62, size=120)
    cfg = PSConfig(tables=TABLES, num_shards=2, mode="sync", num_workers=1, capacity_per_shard=48, learning_rate=0.05)
    rng = np.random.default_rng(1)
    client = create_parameter_server(cfg)
    try:
        s = train(client, 4, 0, rng, universe)
        m1 = write_version(client, store, "c1", True, s)
        s = train(client, 3, s, rng, universe)  # LFU evictions: capacity 2 x 48 < 120 ids
        m2 = write_version(client, store, "c2", False, s)
        assert [c.version for c in store.chain(m2.version)] == [m1.version, m2.version]
        assert sum(st["evicted"] for st in client.stats()) > 0
        with pytest.raises(CutError, match="no prepared cut"):
            client.commit_cut("c2")
        original = client.table_state()
        stats = client.stats()
    finally:
        client.shutdown()
    assert store.digest(m2.version) == m2.model_digest == model_digest(original)

    fresh = create_parameter_server(cfg)
    try:
        restored = fresh.restore(str(store.url), m2.version)
        assert [r["version"] for r in restored] == [st["version"] for st in stats]
        got = fresh.table_state()
        for t in TABLES:
            for k in original[t.name]:
                np.testing.assert_array_equal(got[t.name][k], original[t.name][k], err_msg=f"{t.name} {k}")
        ids = original["user"]["ids"][:10]
        rows = fresh.wait(fresh.pull("user", ids, step=s))  # sync mode resumes at the restored step
        np.testing.assert_array_equal(rows, original["user"]["rows"][:10])
    finally:
        fresh.shutdown()

    single = create_parameter_server(
        PSConfig(tables=TABLES, num_shards=1, mode="sync", num_workers=1, capacity_per_shard=96, learning_rate=0.05)
    )
    try:
        single.restore(str(store.url), m2.version)
        assert model_digest(single.table_state()) == m2.model_digest
    finally:
        single.shutdown()
