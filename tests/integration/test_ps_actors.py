"""The parameter server through real shard actors on one shared local Ray (module scope)."""

import numpy as np
import pytest

from paramserver import (
    BadPushError,
    PSConfig,
    ShardUnavailableError,
    TableConfig,
    UnknownTableError,
    create_parameter_server,
    init_rows,
    wire,
)
from paramserver import actor as ps_actor
from paramserver.tbe import sum_duplicates
from tests.support.reference import LocalTables

pytestmark = pytest.mark.integration
TABLES = (TableConfig("user", 8), TableConfig("item", 4))


def make_steps(seed, num_steps, num_workers, universe):
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(num_steps):
        per_worker = []
        for _ in range(num_workers):
            ids = {t.name: rng.choice(universe, size=30) for t in TABLES}
            per_worker.append(
                {t.name: (ids[t.name], rng.standard_normal((30, t.dim)).astype(np.float32)) for t in TABLES}
            )
        steps.append(per_worker)
    return steps


def reference(cfg, steps, universe):
    ref = LocalTables(cfg, {t.name: universe for t in TABLES})
    for per_worker in steps:
        ids, grads = {}, {}
        for t in TABLES:
            cat_ids, cat_g = zip(*[sum_duplicates(*w[t.name]) for w in per_worker])  # rank order
            ids[t.name], grads[t.name] = sum_duplicates(np.concatenate(cat_ids), np.concatenate(cat_g))
        ref.forward_backward(ids, grads)
    return ref


def test_sync_actors_are_bit_identical_to_one_local_tbe(ray_local):
    universe = np.random.default_rng(0).integers(-(2**62), 2**62, size=80)
    steps = make_steps(1, 5, 2, universe)
    for n in (1, 2, 4):
        cfg = PSConfig(
            tables=TABLES, num_shards=n, num_workers=2, mode="sync", learning_rate=0.05, capacity_per_shard=128
        )
        c0 = create_parameter_server(cfg)
        c1 = ray_local.get(ray_local.put(c0.for_rank(1)))  # clients pickle (actor handles inside)
        try:
            clients = (c0, c1)
            pulls = [c.pull_many({t: w[t][0] for t in w}, step=0) for c, w in zip(clients, steps[0])]
            for s, per_worker in enumerate(steps):
                rows = [c.wait(p) for c, p in zip(clients, pulls)]
                for t in TABLES:
                    assert rows[0][t.name].shape == (30, t.dim)
                if s + 1 < len(steps):  # prefetch the next step before pushing this one
                    pulls = [c.pull_many({t: w[t][0] for t in w}, step=s + 1) for c, w in zip(clients, steps[s + 1])]
                for c, w in reversed(list(zip(clients, per_worker))):
                    c.push_many(w, step=s)
            final = c0.wait(c0.pull_many({t.name: universe for t in TABLES}, step=len(steps)))
            ref = reference(cfg, steps, universe)
            seen = {
                t.name: np.isin(universe, np.concatenate([w[t.name][0] for ws in steps for w in ws])) for t in TABLES
            }
            for t in TABLES:
                m = seen[t.name]
                np.testing.assert_array_equal(final[t.name][m], ref.read(t.name, universe[m]), err_msg=f"{n} shards")
                np.testing.assert_array_equal(final[t.name][~m], init_rows(t, universe[~m]))
            stats = c0.stats()
            assert len(stats) == n and all(s["version"] == len(steps) for s in stats)
        finally:
            c0.shutdown()


def test_sync_push_pull_rounds_equal_separate_push_and_pull(ray_local):
    """push_pull (one call per shard per step) gives the rows and tables of push_many + pull_many."""
    universe = np.random.default_rng(2).integers(-(2**62), 2**62, size=80)
    steps = make_steps(3, 5, 2, universe)
    cfg = PSConfig(tables=TABLES, num_shards=2, num_workers=2, mode="sync", learning_rate=0.05, capacity_per_shard=128)
    c0 = create_parameter_server(cfg)
    c1 = c0.for_rank(1)
    try:
        assert c0.orphan_guarded() == [True, True]  # each shard actor exits once its raylet is gone (common.orphans)
        clients = (c0, c1)
        tickets = [c.pull_many({t: w[t][0] for t in w}, step=0) for c, w in zip(clients, steps[0])]
        for s, per_worker in enumerate(steps):
            rows = [c.wait(tk) for c, tk in zip(clients, tickets)]
            assert all(rows[r][t.name].shape == (30, t.dim) for r in range(2) for t in TABLES)
            if s + 1 < len(steps):
                tickets = [
                    c.push_pull(w, {t: nw[t][0] for t in nw}, step=s)
                    for c, w, nw in zip(clients, per_worker, steps[s + 1])
                ]
            else:
                for c, w in zip(clients, per_worker):
                    c.wait(c.push_many(w, step=s))
        final = c0.wait(c0.pull_many({t.name: universe for t in TABLES}, step=len(steps)))
        ref = reference(cfg, steps, universe)
        for t in TABLES:
            seen = np.isin(universe, np.concatenate([w[t.name][0] for ws in steps for w in ws]))
            np.testing.assert_array_equal(final[t.name][seen], ref.read(t.name, universe[seen]))
    finally:
        c0.shutdown()


def test_async_two_concurrent_clients_and_bounded_staleness(ray_local):
    cfg = PSConfig(
        tables=TABLES,
        num_shards=2,
        mode="async",
        num_workers=2,
        optimizer="sgd",
        learning_rate=0.1,
        max_staleness=1000,
        capacity_per_shard=64,
    )
    client = create_parameter_server(cfg)
    try:
        ids = np.arange(10)
        start = client.wait(client.pull("user", ids))

        @ray_local.remote(num_cpus=0)
        def worker(c, steps):
            for s in range(steps):
                c.wait(c.pull_many({"user": np.arange(10)}, step=s))
                c.wait(c.push_many({"user": (np.arange(10), np.ones((10, 8), np.float32))}, step=s))
            return True

        assert ray_local.get([worker.remote(client.for_rank(r), 20) for r in range(2)]) == [True, True]
        end = client.wait(client.pull("user", ids))
        np.testing.assert_allclose(end, start - 0.1 * 40, rtol=1e-5)
        assert sum(s["pushes"] for s in client.stats()) == 2 * 2 * 20
    finally:
        client.shutdown()

    strict = create_parameter_server(PSConfig(tables=TABLES, mode="async", num_workers=2, max_staleness=0))
    try:
        a, b = strict, strict.for_rank(1)
        one = np.array([1])
        a.wait(a.pull_many({"user": one}, step=0, lease=True))
        b.wait(b.pull_many({"user": one}, step=0, lease=True))
        g = np.ones((1, 8), np.float32)
        assert b.wait(b.push_many({"user": (one, g)}, step=0))[0]["decision"] == "apply"
        # b's push does not make a's read stale: staleness counts a's own pushes only
        assert a.wait(a.push_many({"user": (one, g)}, step=0))[0]["decision"] == "apply"
        a.wait(a.pull_many({"user": one}, step=1, lease=True))
        a.wait(a.pull_many({"user": one}, step=2, lease=True))  # prefetched before a's push of step 1
        assert a.wait(a.push_many({"user": (one, g)}, step=1))[0]["decision"] == "apply"
        reply = a.wait(a.push_many({"user": (one, g)}, step=2))[0]
        assert reply["decision"] == "drop" and reply["staleness"] == 1
        with pytest.raises(BadPushError, match="did not read"):
            a.push_many({"user": (one, g)}, step=3)  # no pull of step 3: refused before sending
        stats = strict.stats()[0]
        assert stats["stale_pushes"] == 1 and stats["dropped_stale_pushes"] == 1 and stats["pushes"] == 3
        assert stats["leases"] == 0
    finally:
        strict.shutdown()


def test_bad_calls_are_rejected_by_the_shard_and_a_dead_shard_is_named(ray_local):
    cfg = PSConfig(tables=TABLES, num_shards=2, mode="async")
    client = create_parameter_server(cfg)
    ids = np.array([3, 4, 5])
    before = client.wait(client.pull("user", ids))
    with pytest.raises(BadPushError, match="NaN"):
        client.push("user", ids, np.full((3, 8), np.nan, np.float32))  # refused before sending
    actor = client._actors[0]
    bad = {
        "item": (np.array([1]), np.ones((1, 4), np.float32)),
        "user": (np.array([3]), np.full((1, 8), np.inf, np.float32)),
    }
    with pytest.raises(BadPushError, match="NaN or inf"):  # the shard validates too, before any change
        ps_actor.get(actor.push.remote(wire.pack_grads(bad), None, 0, None), 0)
    with pytest.raises(UnknownTableError):
        ps_actor.get(actor.pull.remote(wire.pack_ids({"nope": (np.array([1]), np.array([1]))}), None), 0)
    np.testing.assert_array_equal(client.wait(client.pull("user", ids)), before)
    assert sum(s["pushes"] for s in client.stats()) == 0
    client.shutdown()
    with pytest.raises(ShardUnavailableError, match="shard"):
        client.wait(client.pull("user", ids))


def test_a_sync_pull_waits_for_every_worker_and_can_time_out(ray_local):
    client = create_parameter_server(PSConfig(tables=TABLES, mode="sync", num_workers=2))
    try:
        one = np.array([1])
        client.wait(client.pull("user", one, step=0))
        client.wait(client.push("user", one, np.ones((1, 8), np.float32), step=0))  # rank 1 never pushes
        with pytest.raises(ShardUnavailableError, match="every worker"):
            client.wait(client.pull("user", one, step=1), timeout_s=0.5)
        client.for_rank(1).push_many({}, step=0)
        assert client.wait(client.pull("user", one, step=1), timeout_s=30).shape == (1, 8)
    finally:
        client.shutdown()


def test_a_shard_that_cannot_start_reports_the_reason(ray_local):
    from cluster.config import ConfigError

    with pytest.raises(ConfigError, match="needs CUDA"):  # no GPU here: Adam on "auto" resolves to CPU
        create_parameter_server(PSConfig(tables=TABLES, optimizer="adam", device="auto"))
