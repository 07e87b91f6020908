"""EmbeddingShard without Ray: optimizer formulas, equivalence with one local TBE, admission,
eviction, bad calls, and sync step assembly."""

import numpy as np
import pytest

from paramserver import BadPullError, BadPushError, EmbeddingShard, PSConfig, TableConfig, UnknownTableError, init_rows
from paramserver.consistency import SyncAggregator
from paramserver.policies import StaleDecision, StalenessPolicy
from paramserver.sharding import group_by_shard
from paramserver.tbe import sum_duplicates
from tests.support.reference import LocalTables

TABLES = (TableConfig("user", 8), TableConfig("item", 4))


def cfg_of(**kw):
    base = dict(tables=TABLES, capacity_per_shard=64, learning_rate=0.05, eps=1e-6)
    base.update(kw)
    return PSConfig(**base)


def grads(rng, n, dim):
    return rng.standard_normal((n, dim)).astype(np.float32)


# ------------------------------------------------------------------ ps-lite invariant
@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
def test_n_known_pushes_then_pull_equals_the_optimizer_formula(optimizer):
    cfg = cfg_of(optimizer=optimizer)
    shard = EmbeddingShard(cfg)
    rng = np.random.default_rng(0)
    ids = np.array([11, -4, 2**50])
    shard.pull({"user": ids})
    w = init_rows(TABLES[0], ids).astype(np.float64)
    state = np.zeros((3, 8)) if optimizer == "adagrad" else np.zeros((3, 1))
    for _ in range(5):
        g = grads(rng, 3, 8)
        shard.push({"user": (ids, g)})
        g = g.astype(np.float64)
        if optimizer == "sgd":
            w -= cfg.learning_rate * g
        elif optimizer == "adagrad":  # FBGEMM EXACT_ADAGRAD: per element
            state += g * g
            w -= cfg.learning_rate * g / (np.sqrt(state) + cfg.eps)
        else:  # EXACT_ROWWISE_ADAGRAD: state += mean(g^2) over the row
            state += (g * g).mean(axis=1, keepdims=True)
            w -= cfg.learning_rate * g / (np.sqrt(state) + cfg.eps)
    got = shard.pull({"user": ids})["user"]
    np.testing.assert_allclose(got, w, rtol=2e-5, atol=2e-6)


def test_fp16_rows_store_half_precision_and_update():
    cfg = cfg_of(weights_dtype="fp16", optimizer="sgd")
    shard = EmbeddingShard(cfg)
    ids = np.array([1, 2])
    before = shard.pull({"user": ids})["user"]
    np.testing.assert_array_equal(before, init_rows(TABLES[0], ids).astype(np.float16).astype(np.float32))
    shard.push({"user": (ids, np.ones((2, 8), np.float32))})
    np.testing.assert_allclose(shard.read("user", ids), before - cfg.learning_rate, atol=1e-3)


def test_duplicate_ids_are_summed_and_pulls_come_back_aligned():
    shard = EmbeddingShard(cfg_of(optimizer="sgd"))
    ids = np.array([7, 3, 7])
    rows = shard.pull({"user": ids})["user"]
    assert (rows[0] == rows[2]).all() and rows.shape == (3, 8)
    g = np.array([[1.0] * 8, [2.0] * 8, [4.0] * 8], np.float32)
    shard.push({"user": (ids, g)})
    np.testing.assert_allclose(shard.read("user", np.array([7]))[0], rows[0] - 0.05 * 5, rtol=1e-6)
    uniq, summed = sum_duplicates(ids, g)
    assert uniq.tolist() == [3, 7] and summed[:, 0].tolist() == [2.0, 5.0]


# ---------------------------------------------------------------------- equivalence
def run_through_shards(cfg, steps, num_shards, num_workers):
    """Route every worker's (deduplicated, summed) push to plain shards, sync step assembly."""
    shards = [EmbeddingShard(cfg, i) for i in range(num_shards)]
    aggs = [SyncAggregator(num_workers) for _ in range(num_shards)]
    for step, per_worker in enumerate(steps):
        for s, shard in enumerate(shards):
            pulls = {}
            for ids_by_table in [{t: w[t][0] for t in w} for w in per_worker]:
                for t, ids in ids_by_table.items():
                    pos = group_by_shard(ids, num_shards)[s]
                    pulls.setdefault(t, []).append(ids[pos])
            shard.pull({t: np.concatenate(v) for t, v in pulls.items()}, step)
        for rank in reversed(range(num_workers)):  # arrival order must not matter
            for s, shard in enumerate(shards):
                batch = {}
                for t, (ids, g) in per_worker[rank].items():
                    uniq, summed = sum_duplicates(ids, g)
                    pos = group_by_shard(uniq, num_shards)[s]
                    batch[t] = (uniq[pos], summed[pos])
                for done_step, merged in aggs[s].add(rank, step, shard.prepare_push(batch), shard.version):
                    shard.apply_push(merged, done_step)
    return shards


def random_steps(rng, num_steps, num_workers, universe):
    steps = []
    for _ in range(num_steps):
        per_worker = []
        for _ in range(num_workers):
            w = {}
            for t in TABLES:
                ids = rng.choice(universe, size=int(rng.integers(1, 40)))
                w[t.name] = (ids, grads(rng, len(ids), t.dim))
            per_worker.append(w)
        steps.append(per_worker)
    return steps


@pytest.mark.parametrize("weights_dtype", ["fp32", "fp16"])
def test_one_two_four_shards_are_bit_identical_to_one_local_tbe(weights_dtype):
    rng = np.random.default_rng(1)
    universe = rng.integers(-(2**62), 2**62, size=50)
    cfg = cfg_of(weights_dtype=weights_dtype, num_workers=2, mode="sync")
    steps = random_steps(rng, 6, 2, universe)

    ref = LocalTables(cfg, {t.name: universe for t in TABLES})
    for per_worker in steps:  # per worker: duplicates summed; then ranks summed in rank order
        ids, gr = {}, {}
        for t in TABLES:
            total = {}
            for w in per_worker:
                uniq, summed = sum_duplicates(*w[t.name])
                for i, key in enumerate(uniq.tolist()):
                    total[key] = total[key] + summed[i] if key in total else np.zeros(t.dim, np.float32) + summed[i]
            ids[t.name] = np.array(sorted(total), np.int64)
            gr[t.name] = np.stack([total[k] for k in sorted(total)]).astype(np.float32)
        ref.forward_backward(ids, gr)

    for n in (1, 2, 4):
        shards = run_through_shards(cfg, steps, n, 2)
        for t in TABLES:
            got = np.zeros((len(universe), t.dim), np.float32)
            for s, pos in enumerate(group_by_shard(universe, n)):
                got[pos] = shards[s].read(t.name, universe[pos])
            seen = np.isin(universe, np.concatenate([w[t.name][0] for ws in steps for w in ws]))
            assert seen.sum() > 10
            np.testing.assert_array_equal(got[seen], ref.read(t.name, universe[seen]), err_msg=f"{n} shards, {t.name}")
            assert (got[~seen] == 0).all()  # never pulled: no row


# ------------------------------------------------------------- admission / eviction
def test_admission_after_k_pulls_drops_and_counts_grads_before():
    shard = EmbeddingShard(cfg_of(admission_threshold=3, optimizer="sgd"))
    ids = np.array([5, 5, 9])  # 5 seen twice, 9 once
    assert (shard.pull({"user": ids})["user"] == 0).all()
    shard.push({"user": (np.array([5, 9]), np.ones((2, 8), np.float32))})
    assert shard.stats()["dropped_grads"] == 2 and shard.stats()["rows"] == 0
    rows = shard.pull({"user": np.array([5, 9])}, step=1)["user"]  # 5 reaches 3, 9 has 2
    np.testing.assert_array_equal(rows[0], init_rows(TABLES[0], np.array([5]))[0])
    assert (rows[1] == 0).all()
    assert shard.stats()["admitted"] == 1
    assert shard.metadata("user", np.array([5, 9]))["count"].tolist() == [3, 0]


def test_ttl_evicts_rows_not_seen_and_readmission_reinitialises():
    shard = EmbeddingShard(cfg_of(ttl_versions=2, optimizer="rowwise_adagrad"))
    shard.pull({"user": np.array([1, 2])}, step=0)
    shard.push({"user": (np.array([1, 2]), np.ones((2, 8), np.float32))}, step=0)  # version 1
    shard.prepare_cut("c0", full=True)
    shard.commit_cut("c0")
    for step in (1, 2, 3):  # versions 2, 3, 4: row 1 last seen at version 1 expires at version 4
        shard.pull({"user": np.array([2])}, step=step)
        shard.push({}, step=step)
    assert shard.metadata("user", np.array([1, 2]))["admitted"].tolist() == [False, True]
    assert shard.stats()["evicted_ttl"] == 1
    shard.prepare_cut("c1", full=False)
    cut = shard._cuts["c1"].tables["user"]
    assert cut["deleted"].tolist() == [1] and cut["ids"].tolist() == [2]  # 2 was pulled: its count changed
    # re-admitted: fresh initial row and fresh optimizer state (a first push moves it by lr)
    row = shard.pull({"user": np.array([1])}, step=4)["user"][0]
    np.testing.assert_array_equal(row, init_rows(TABLES[0], np.array([1]))[0])
    shard.push({"user": (np.array([1]), np.ones((1, 8), np.float32))}, step=4)
    np.testing.assert_allclose(shard.read("user", np.array([1]))[0], row - 0.05, rtol=1e-5)


def test_lfu_makes_room_when_full_and_never_evicts_the_current_batch():
    shard = EmbeddingShard(cfg_of(capacity_per_shard=4))
    shard.pull({"user": np.array([1, 1, 1, 2, 2, 3, 4, 4, 4, 4])}, step=0)  # counts 3, 2, 1, 4
    shard.pull({"user": np.array([3, 10, 11])}, step=1)  # 3 protected: evict 2 (count 2) then 1 (3)
    admitted = shard.metadata("user", np.array([1, 2, 3, 4, 10, 11]))["admitted"]
    assert admitted.tolist() == [False, False, True, True, True, True]
    assert shard.stats()["evicted_lfu"] == 2 and shard.stats()["rows_per_table"]["user"] == 4
    # a batch larger than the table: the most frequent ids get the rows, the rest read zeros
    rows = shard.pull({"user": np.array([20, 21, 21, 22, 23, 24, 24, 24])}, step=2)["user"]
    assert shard.stats()["rows_per_table"]["user"] == 4
    assert (rows[4] == 0).all()  # 23: seen once, loses the tie to 20 and 22 (lower ids first)
    assert not (rows[[0, 1, 3, 5]] == 0).any()


# ------------------------------------------------------------------------ bad calls
def snapshot(shard):
    return {t.name: shard.table_rows(t.name) for t in TABLES}, shard.stats()


@pytest.mark.parametrize(
    "batch, error, match",
    [
        ({"user": (np.array([1]), np.full((1, 8), np.nan, np.float32))}, BadPushError, "NaN or inf"),
        ({"user": (np.array([1]), np.full((1, 8), np.inf, np.float32))}, BadPushError, "NaN or inf"),
        ({"user": (np.array([1]), np.ones((1, 8), np.float64))}, BadPushError, "float32"),
        ({"user": (np.array([1.0]), np.ones((1, 8), np.float32))}, BadPushError, "signed integer"),
        ({"user": (np.array([1, 2]), np.ones((1, 8), np.float32))}, BadPushError, "shape"),
        ({"user": (np.array([1]), np.ones((1, 4), np.float32))}, BadPushError, "dim=8"),
        ({"nope": (np.array([1]), np.ones((1, 8), np.float32))}, UnknownTableError, "nope"),
        ({"user": np.array([1])}, BadPushError, "pair"),
    ],
)
def test_bad_pushes_are_rejected_with_every_table_untouched(batch, error, match):
    shard = EmbeddingShard(cfg_of())
    shard.pull({"user": np.array([1, 2]), "item": np.array([1])})
    # a good table first in the same push: it must not be applied either
    full = {"item": (np.array([1]), np.ones((1, 4), np.float32)), **batch}
    before = snapshot(shard)
    with pytest.raises(error, match=match):
        shard.push(full, step=3)
    after = snapshot(shard)
    for t in before[0]:
        np.testing.assert_array_equal(before[0][t][1], after[0][t][1])
    assert before[1] == after[1]


def test_bad_pulls_are_rejected():
    shard = EmbeddingShard(cfg_of())
    with pytest.raises(BadPullError, match="signed integer"):
        shard.pull({"user": np.array([[1, 2]])})
    with pytest.raises(UnknownTableError):
        shard.pull({"x": np.array([1])})
    assert shard.stats()["pulls"] == 0


# ---------------------------------------------------------------- consistency parts
def test_sync_aggregator_waits_for_every_rank_and_rejects_replays():
    shard = EmbeddingShard(cfg_of())
    agg = SyncAggregator(2)
    p = shard.prepare_push({})
    assert agg.add(0, 1, p, next_step=0) == []  # step 1 before step 0: held
    assert agg.add(1, 0, p, next_step=0) == []
    assert [s for s, _ in agg.add(0, 0, p, next_step=0)] == [0]
    assert [s for s, _ in agg.add(1, 1, p, next_step=1)] == [1]
    with pytest.raises(BadPushError, match="already applied"):
        agg.add(0, 0, p, next_step=2)
    agg.add(0, 2, p, next_step=2)
    with pytest.raises(BadPushError, match="already pushed"):
        agg.add(0, 2, p, next_step=2)
    with pytest.raises(BadPushError, match="rank 5"):
        agg.add(5, 2, p, next_step=2)


@pytest.mark.parametrize(
    "read, version, policy, decision",
    [
        (4, 6, "drop", StaleDecision.APPLY),
        (3, 6, "drop", StaleDecision.DROP),
        (3, 6, "apply", StaleDecision.APPLY_STALE),
    ],
)
def test_staleness_policy_decisions(read, version, policy, decision):
    assert StalenessPolicy(2, policy).decide(read, version) is decision


def test_pending_counts_stay_bounded_and_keep_the_recent_ids():
    from paramserver.idmap import CountTable

    table = CountTable(limit=100)
    for step in range(10):
        ids = np.arange(step * 50, step * 50 + 50)
        table.add(ids, np.ones(50, np.int64), step)
        assert len(table) <= 100
    totals = table.add(np.array([449, 0]), np.array([1, 1]), 10)  # 449 (step 8) kept, 0 (step 0) forgotten
    assert totals.tolist() == [2, 1]


def test_a_full_table_evicts_one_percent_beyond_the_need():
    shard = EmbeddingShard(cfg_of(capacity_per_shard=200))
    shard.pull({"user": np.arange(200)}, step=0)
    shard.pull({"user": np.array([1000])}, step=1)
    assert shard.stats()["evicted_lfu"] == 2 and shard.stats()["rows_per_table"]["user"] == 199


def test_the_wire_form_refuses_repeated_or_unsorted_ids_and_leaves_the_table_alone():
    """An RPC surface: pull({'t': ([5, 5], [1, 1]))}) used to give id 5 two slots."""
    from paramserver.errors import BadPullError

    shard = EmbeddingShard(PSConfig(tables=(TableConfig("t", 4),), capacity_per_shard=8))
    for ids in ([5, 5], [7, 3]):
        with pytest.raises(BadPullError, match="distinct ids in ascending order"):
            shard.pull({"t": (np.array(ids), np.array([1, 1]))})
    assert shard.stats()["rows"] == 0
    rows = shard.pull({"t": (np.array([3, 7]), np.array([2, 1]))})["t"]
    assert rows.shape == (2, 4) and shard.stats()["rows"] == 2
