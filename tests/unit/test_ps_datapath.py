"""The shard's data path without Ray: the push's direct call of FBGEMM's fused backward kernel
(bit-identical to forward + backward) and the pull reply gathered into one flat buffer."""

import numpy as np
import pytest
import torch

from paramserver import EmbeddingShard, PSConfig, TableConfig
from paramserver.config import CPU_OPTIMIZERS
from paramserver.tbe import DIRECT_UPDATE_OPTIMIZERS, autograd_update, build_tbe, fused_update

TABLES = (TableConfig("user", 8), TableConfig("item", 16), TableConfig("cat", 4))
CAPACITY = 96


def cfg_of(optimizer, weights_dtype, **kw):
    return PSConfig(
        tables=TABLES,
        capacity_per_shard=CAPACITY,
        optimizer=optimizer,
        weights_dtype=weights_dtype,
        learning_rate=0.05,
        eps=1e-6,
        **kw,
    )


def assert_same_state(a: EmbeddingShard, b: EmbeddingShard) -> None:
    for t in TABLES:
        sa, sb = a.table_state(t.name), b.table_state(t.name)
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, (t.name, key)
            assert np.array_equal(sa[key], sb[key]), (t.name, key)  # bit-identical (no NaN here)


def test_every_cpu_optimizer_has_a_direct_update():
    assert set(DIRECT_UPDATE_OPTIMIZERS) == set(CPU_OPTIMIZERS)
    for optimizer in CPU_OPTIMIZERS:
        assert EmbeddingShard(cfg_of(optimizer, "fp32")).direct_update
    assert not EmbeddingShard(cfg_of("sgd", "fp32"), direct_update=False).direct_update


@pytest.mark.parametrize("weights_dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direct_push_is_bit_identical_to_forward_backward(optimizer, weights_dtype, seed):
    """Random pushes (distinct ids, 1-3 tables per push so others get padding bags, ids without a slot)
    leave the same weights and optimizer state through both paths, and they do change them."""
    rng = np.random.default_rng(seed)
    cfg = cfg_of(optimizer, weights_dtype)
    direct, reference = EmbeddingShard(cfg), EmbeddingShard(cfg, direct_update=False)
    assert direct.direct_update and not reference.direct_update
    universe = rng.choice(10**9, size=CAPACITY, replace=False).astype(np.int64)
    for t in TABLES:  # admit most of the universe (the rest read zeros and drop their grads)
        seen = np.sort(universe[: CAPACITY * 3 // 4])
        direct.pull({t.name: seen})
        reference.pull({t.name: seen})
    before = direct.table_state("user")["rows"].copy()
    for step in range(12):
        chosen = rng.choice(len(TABLES), size=rng.integers(1, len(TABLES) + 1), replace=False)
        batch = {}
        for i in chosen:
            t = TABLES[i]
            ids = rng.choice(universe, size=int(rng.integers(1, 40)), replace=False)  # distinct, unsorted
            batch[t.name] = (ids, rng.standard_normal((len(ids), t.dim)).astype(np.float32))
        assert direct.push(batch, step=step) == reference.push(batch, step=step)
    assert_same_state(direct, reference)
    assert not np.array_equal(direct.table_state("user")["rows"], before)  # the pushes did update


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "adagrad", "sgd"])
def test_fused_update_equals_the_modules_backward_with_longer_bags(optimizer):
    """The kernel called directly equals forward + backward also for bags of several rows and repeats."""
    tables = (TableConfig("a", 8), TableConfig("b", 4))
    mods = [build_tbe(tables, 20, optimizer, 0.1, 1e-6) for _ in range(2)]
    gen = torch.Generator().manual_seed(3)
    init = [torch.rand(w.shape, generator=gen) for w in mods[0].split_embedding_weights()]
    for m in mods:
        for w, x in zip(m.split_embedding_weights(), init):
            w.copy_(x)
    update_direct, update_ref = fused_update(mods[0], optimizer), autograd_update(mods[1])
    assert update_direct is not None
    for _ in range(4):
        lengths = torch.randint(0, 4, (2 * 6,), generator=gen)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        indices = torch.randint(0, 20, (int(offsets[-1]),), generator=gen)
        grad = torch.randn((6, 12), generator=gen)
        update_direct(indices, offsets, grad)
        update_ref(indices, offsets, grad)
    for wa, wb in zip(mods[0].split_embedding_weights(), mods[1].split_embedding_weights()):
        assert torch.equal(wa, wb)
    if optimizer != "sgd":
        for sa, sb in zip(mods[0].split_optimizer_states(), mods[1].split_optimizer_states()):
            assert all(torch.equal(x, y) for x, y in zip(sa, sb))


def test_no_direct_update_where_there_is_no_cpu_kernel():
    tables = (TableConfig("a", 8),)
    assert fused_update(build_tbe(tables, 4, "sgd"), "adam") is None


# ------------------------------------------------------------------ pull reply
@pytest.mark.parametrize("weights_dtype", ["fp32", "fp16"])
def test_pull_flat_is_the_wire_reply_table_after_table(weights_dtype):
    shard = EmbeddingShard(cfg_of("rowwise_adagrad", weights_dtype, admission_threshold=2))
    rng = np.random.default_rng(5)
    ids = {t.name: rng.choice(1000, size=9, replace=False).astype(np.int64) for t in TABLES}
    shard.pull(ids)  # one sighting: nothing admitted yet (threshold 2)
    half = {name: v[:5] for name, v in ids.items()}
    shard.pull(half)  # the first 5 of each table are admitted now
    batch = {
        "item": (np.sort(ids["item"]), np.ones(9, np.int64)),  # the client's (distinct ids, counts) form
        "user": np.concatenate([ids["user"], ids["user"][:3]]),
    }  # raw ids with repeats
    before = {name: shard.read(name, ids[name]) for name in ids}
    flat = shard.pull_flat(batch)
    assert flat.dtype == np.float32 and flat.ndim == 1 and flat.flags.c_contiguous
    # the pull saw the ids again: "item" got all 9 rows, "user" too (its 4 others reached 2 sightings)
    expect = np.concatenate(
        [shard.read("item", batch["item"][0]).reshape(-1), shard.read("user", batch["user"]).reshape(-1)]
    )
    assert np.array_equal(flat, expect)
    assert np.array_equal(before["item"][5:], np.zeros((4, 16), np.float32))  # no slot: zeros


@pytest.mark.parametrize("weights_dtype", ["fp32", "fp16"])
def test_pull_returns_views_into_one_flat_buffer_and_zeros_without_a_slot(weights_dtype):
    shard = EmbeddingShard(cfg_of("sgd", weights_dtype, admission_threshold=3))
    admitted = np.array([4, 8, 15], np.int64)
    for _ in range(3):
        shard.pull({"user": admitted})
    rows = shard.pull({"user": np.array([15, 99, 4]), "cat": np.array([1, 2])})
    assert rows["user"].base is not None and rows["user"].base is rows["cat"].base  # views into one reply buffer
    assert rows["user"].shape == (3, 8) and rows["cat"].shape == (2, 4)
    assert np.array_equal(rows["user"][1], np.zeros(8, np.float32))
    assert np.array_equal(rows["cat"], np.zeros((2, 4), np.float32))
    assert np.array_equal(rows["user"][[0, 2]], shard.read("user", np.array([15, 4])))
    assert rows["user"][0].any()


def test_an_empty_pull_gives_an_empty_reply():
    shard = EmbeddingShard(cfg_of("sgd", "fp32"))
    assert shard.pull_flat({"user": np.empty(0, np.int64)}).shape == (0,)
    assert shard.pull({"user": np.empty(0, np.int64)})["user"].shape == (0, 8)


# ------------------------------------------------------------------ the microbenchmark's CLI
def test_bench_shard_cli_runs_small_and_refuses_a_bad_dim(capsys):
    import json

    from cluster.cli import main

    assert (
        main(
            [
                "bench",
                "shard",
                "--json",
                "--rounds",
                "2",
                "--chunk",
                "1",
                "--rows",
                "500",
                "--batch",
                "64",
                "--tables",
                "2",
                "--dim",
                "8",
                "--optimizer",
                "adagrad",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["direct_update"] is True and out["bit_identical_after_pushes"] is True
    assert out["push_ratio_old_over_new"]["median"] > 0 and len(out["load_average_1_5_15"]["start"]) == 3
    assert main(["bench", "shard", "--dim", "6"]) == 2
    assert "multiple of 4" in capsys.readouterr().err
