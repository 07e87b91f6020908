"""Eviction under pressure without Ray: leases keep rows in use resident, aged LFU, TTL in versions and
seconds, the full-table policy, and the shard host's sync gathering and async staleness (driven on
a plain asyncio loop)."""

import asyncio

import numpy as np
import pytest

from paramserver import EmbeddingShard, PSConfig, TableConfig, wire
from paramserver.actor import ShardHost, merge_pulls
from paramserver.errors import BadPushError, TableFullError

T = (TableConfig("t", 4),)


def cfg_of(**kw):
    base = dict(tables=T, capacity_per_shard=8, optimizer="sgd", learning_rate=0.5)
    base.update(kw)
    return PSConfig(**base)


def ones(n):
    return np.ones((n, 4), np.float32)


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def admitted(shard, ids):
    return shard.metadata("t", np.asarray(ids))["admitted"].tolist()


# ------------------------------------------------------------------------ leases
@pytest.mark.parametrize("leased", [False, True])
def test_a_row_pulled_by_rank_0_survives_rank_1s_pull_of_the_same_step(leased):
    """The bug of the issue: without a lease rank 1's pull evicts rank 0's rows of the same step and
    rank 0's gradients for them are silently dropped; with leases they stay until the step is applied."""
    shard = EmbeddingShard(cfg_of(capacity_per_shard=8))
    shard.pull({"t": np.arange(100, 108)}, step=0)  # a full table of old rows, count 1 each
    shard.push({}, step=0)
    mine = np.arange(100, 104)
    shard.pull({"t": mine}, step=1, lease=(0, 1) if leased else None)  # rank 0: count 2 each
    shard.pull({"t": np.arange(200, 206)}, step=1, lease=(1, 1) if leased else None)  # rank 1: 6 new ids
    before = shard.stats()["dropped_grads"]
    shard.push({"t": (mine, ones(4))}, step=1)  # rank 0's gradients for its rows (summed step)
    dropped = shard.stats()["dropped_grads"] - before
    if not leased:
        assert dropped > 0 and not all(admitted(shard, mine))  # the old bug, reproduced
        return
    assert dropped == 0 and all(admitted(shard, mine))
    assert shard.stats()["refused_rows"] == 2  # 8 slots: 4 leased + 4 of rank 1's ids; 2 refused, counted
    assert shard.release_through(1) == 2 and shard.stats()["leased_rows"] == 0
    shard.pull({"t": np.arange(300, 306)}, step=2)  # released: now rank 0's rows may go
    assert shard.stats()["evicted_lfu"] > 4


def test_async_prefetch_of_step_k_plus_1_does_not_evict_step_k_rows():
    shard = EmbeddingShard(cfg_of(capacity_per_shard=6))
    k_ids = np.array([1, 2, 3])
    shard.pull({"t": k_ids}, step=5, lease=(0, 5))
    shard.pull({"t": np.array([7, 8, 9, 10, 11])}, step=6, lease=(0, 6))  # prefetch: wants 5 new rows
    assert all(admitted(shard, k_ids))
    assert shard.push({"t": (k_ids, ones(3))}, step=5) == 0  # nothing dropped
    assert shard.release_through(5, rank=0) == 1 and shard.leases() == [(0, 6)]


def test_a_lease_that_is_never_released_times_out_counted_and_metered():
    from paramserver.telemetry import ShardTelemetry

    clock = Clock()
    shard = EmbeddingShard(cfg_of(capacity_per_shard=4, lease_timeout_s=30), clock=clock)
    shard.pull({"t": np.array([1, 2, 3, 4])}, step=0, lease=(1, 0))
    clock.now += 10
    shard.pull({"t": np.array([5])}, step=1)
    assert shard.stats()["refused_rows"] == 1 and shard.stats()["lease_timeouts"] == 0
    clock.now += 25  # 35 s after the lease: it is released, counted, and its rows are evictable again
    shard.pull({"t": np.array([5])}, step=2)
    stats = shard.stats()
    assert stats["lease_timeouts"] == 1 and stats["leases"] == 0 and admitted(shard, [5]) == [True]
    sent = []
    ShardTelemetry(0, record=lambda name, value, **tags: sent.append((name, value))).counters(shard.stats)
    assert ("freshrec_ps_lease_timeouts_total", 1) in sent and ("freshrec_ps_full_table_refusals_total", 1) in sent


# ------------------------------------------------------------------- full table
def test_full_table_error_policy_raises_before_any_change():
    shard = EmbeddingShard(cfg_of(capacity_per_shard=4, full_table="error"))
    shard.pull({"t": np.array([1, 2, 3])}, step=0, lease=(0, 0))
    state = shard.table_state("t")
    stats = shard.stats()
    with pytest.raises(TableFullError, match="ps.capacity_per_shard") as info:
        shard.pull({"t": np.array([3, 10, 11])}, step=0)  # needs 2 new rows, 1 slot free, 3 leased
    assert (info.value.needed, info.value.available, info.value.capacity) == (2, 1, 4)
    for key, value in shard.table_state("t").items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    assert shard.stats() == stats
    shard.release((0, 0))
    assert shard.pull({"t": np.array([3, 10, 11])}, step=1)["t"].shape == (3, 4)  # evicts 1 and 2
    assert admitted(shard, [1, 2, 3, 10, 11]) == [False, True, True, True, True]  # LFU tie: lower id first


# -------------------------------------------------------------------- aged LFU
def heavy_then_fresh(decay_every):
    """Id 1 was pulled 50 times long ago; ids 2..4 are pulled once per version since. Then a new id needs a
    row: plain LFU evicts a fresh id (count 1-2), aged LFU the old heavy hitter."""
    shard = EmbeddingShard(cfg_of(capacity_per_shard=4, lfu_decay_every=decay_every, lfu_decay=0.5))
    shard.pull({"t": np.full(50, 1)}, step=0)
    for s in range(1, 40):
        shard.pull({"t": np.array([2, 3, 4])}, step=s)
        shard.push({}, step=s)
    shard.pull({"t": np.array([9])}, step=40)
    return shard


def test_aged_lfu_lets_yesterdays_heavy_hitter_go_and_plain_lfu_does_not():
    plain = heavy_then_fresh(None)
    assert admitted(plain, [1, 9]) == [True, True] and not all(admitted(plain, [2, 3, 4]))
    aged = heavy_then_fresh(5)
    assert admitted(aged, [1, 2, 3, 4, 9]) == [False, True, True, True, True]
    # the stored count is aged when the row is seen again: 2..4 keep ~1/(1-decay) of a count per period
    assert aged.metadata("t", np.array([2]))["count"][0] <= 10


def test_aged_lfu_and_ttl_are_deterministic_and_restore_alike():
    def run(seed):
        rng = np.random.default_rng(seed)
        shard = EmbeddingShard(cfg_of(capacity_per_shard=24, lfu_decay_every=3, ttl_versions=6))
        for s in range(30):
            ids = rng.zipf(1.5, 12) % 200
            shard.pull({"t": ids}, step=s)
            u = np.unique(ids)
            shard.push({"t": (u, rng.standard_normal((len(u), 4)).astype(np.float32))}, step=s)
        return shard

    a, b = run(0), run(0)
    for key, value in a.table_state("t").items():
        np.testing.assert_array_equal(value, b.table_state("t")[key], err_msg=key)
    assert a.stats() == b.stats() and a.stats()["evicted_lfu"] > 0 and a.stats()["evicted_ttl"] > 0
    c = EmbeddingShard(a.cfg)
    c.restore({"t": a.table_state("t")}, {"version": a.version, "step": a.step, "next_ttl_sweep": a._next_ttl_sweep})
    rng = np.random.default_rng(9)
    for s in range(30, 40):
        ids = rng.zipf(1.5, 12) % 200
        for sh in (a, c):
            sh.pull({"t": ids}, step=s)
            sh.push({"t": (np.unique(ids), ones(len(np.unique(ids))))}, step=s)
    for key, value in a.table_state("t").items():
        np.testing.assert_array_equal(value, c.table_state("t")[key], err_msg=key)


# ------------------------------------------------------------------------- TTL
def test_ttl_in_versions_ignores_steps_and_ttl_in_seconds_uses_the_clock():
    shard = EmbeddingShard(cfg_of(ttl_versions=2))
    shard.pull({"t": np.array([1])}, step=0)
    shard.pull({"t": np.array([2])}, step=1000)  # steps alone never expire anything
    assert admitted(shard, [1, 2]) == [True, True]
    for s in range(3):
        shard.push({"t": (np.array([2]), ones(1))}, step=1000 + s)
    assert admitted(shard, [1, 2]) == [False, True] and shard.stats()["evicted_ttl"] == 1

    clock = Clock()
    timed = EmbeddingShard(cfg_of(ttl_seconds=80.0), clock=clock)
    timed.pull({"t": np.array([1, 2])}, step=0)
    clock.now += 50
    timed.pull({"t": np.array([2])}, step=1)
    clock.now += 50  # 1: 100 s unseen; 2: 50 s
    timed.pull({"t": np.array([3])}, step=2)
    assert admitted(timed, [1, 2, 3]) == [False, True, True]
    leased = EmbeddingShard(cfg_of(ttl_seconds=10.0), clock=clock)
    leased.pull({"t": np.array([1])}, step=0, lease=(0, 0))
    clock.now += 100
    leased.pull({"t": np.array([2])}, step=1)
    assert admitted(leased, [1]) == [True]  # leased rows do not expire


# ---------------------------------------------------------- shard host (no Ray)
def run_async(coro):
    return asyncio.run(coro)


def pull_msg(ids):
    uniq, counts = np.unique(np.asarray(ids, np.int64), return_counts=True)
    return wire.pack_ids({"t": (uniq, counts)}) if len(uniq) else wire.pack_ids({})


def rows_of(reply, n):
    return reply[0].reshape(n, 4)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_sync_pulls_of_one_step_are_served_as_one_union_whatever_the_arrival_order(order):
    """Two ranks under eviction pressure: the shard's state equals one process pulling the union
    (the local backend), for either arrival order."""
    cfg = cfg_of(capacity_per_shard=6, num_workers=2, mode="sync")
    ids = {0: np.array([1, 2, 2, 3]), 1: np.array([3, 4, 5, 5, 5])}

    async def scenario():
        host = ShardHost(cfg, 0)
        host.shard.pull({"t": np.arange(100, 106)}, step=0)
        await host.push(wire.pack_grads({}), 0, 0, None)
        await host.push(wire.pack_grads({}), 0, 1, None)
        tasks = {r: asyncio.create_task(host.pull(pull_msg(ids[r]), 1, r, True)) for r in order}
        await asyncio.sleep(0)
        return host, {r: await t for r, t in tasks.items()}

    host, replies = run_async(scenario())
    ref = EmbeddingShard(cfg)
    ref.pull({"t": np.arange(100, 106)}, step=0)
    ref.push({}, step=0)
    union = ref.pull({"t": np.concatenate([ids[0], ids[1]])}, step=1)["t"]
    u = np.unique(np.concatenate([ids[0], ids[1]]))
    for r in (0, 1):
        got = rows_of(replies[r], len(np.unique(ids[r])))
        want = union[[int(np.flatnonzero(np.concatenate([ids[0], ids[1]]) == i)[0]) for i in np.unique(ids[r])]]
        np.testing.assert_array_equal(got, want)
    for key, value in ref.table_state("t").items():
        np.testing.assert_array_equal(host.shard.table_state("t")[key], value, err_msg=key)
    assert host.shard.leases() == [(-1, 1)] and len(u) == 5


def test_merge_pulls_sums_counts_in_rank_order():
    a = {"t": (np.array([1, 4]), np.array([2, 1]))}
    b = {"t": (np.array([4, 9]), np.array([3, 1])), "u": (np.array([7]), np.array([1]))}
    out = merge_pulls([a, b])
    assert out["t"][0].tolist() == [1, 4, 9] and out["t"][1].tolist() == [2, 4, 1]
    assert out["u"][0].tolist() == [7]


def test_async_staleness_counts_the_pushing_workers_own_steps_and_drops_are_reported():
    cfg = cfg_of(capacity_per_shard=16, num_workers=2, mode="async", max_staleness=1)
    one = np.array([1])

    async def scenario():
        host = ShardHost(cfg, 0)
        g = wire.pack_grads({"t": (one, ones(1))})
        out = []
        _, read0 = await host.pull(pull_msg(one), 0, 0, True)  # rank 0 reads at its own clock 0
        for s in range(5):  # rank 1 pushes 5 times: rank 0's bound must not tighten
            _, r1 = await host.pull(pull_msg(one), s, 1, True)
            out.append(await host.push(g, s, 1, r1))
        out.append(await host.push(g, 0, 0, read0))  # rank 0: staleness 0 in its own steps
        _, read1 = await host.pull(pull_msg(one), 1, 0, True)
        _, read2 = await host.pull(pull_msg(one), 2, 0, True)  # prefetch: read before push 1 applied
        _, read3 = await host.pull(pull_msg(one), 3, 0, True)
        out.append(await host.push(g, 1, 0, read1))
        out.append(await host.push(g, 2, 0, read2))  # staleness 1: applied
        out.append(await host.push(g, 3, 0, read3))  # staleness 2 > 1: dropped, reported
        with pytest.raises(BadPushError, match="no read version"):
            await host.push(g, 4, 0, None)
        return host, out

    host, out = run_async(scenario())
    assert [o["decision"] for o in out] == ["apply"] * 8 + ["drop"]
    assert [o["staleness"] for o in out[5:]] == [0, 0, 1, 2]
    stats = host.shard.stats()
    assert stats["dropped_stale_pushes"] == 1 and stats["pushes"] == 8 and stats["leases"] == 0
    from trainer.core import dropped_parts

    assert dropped_parts({0: out[-1], 1: out[-2]}) == 1
