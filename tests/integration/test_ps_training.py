"""One training core, two backends: the local (in-process FBGEMM) backend and the parameter server
(real shard actors, real Ray Train workers with gloo DDP) end with the same parameters."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from paramserver import create_parameter_server
from paramserver.config import PSConfig
from tests.support.data import taobao_head
from trainer.backends import ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.core import TrainerCore
from trainer.data import Validator, load_spec, read_data_file
from trainer.data.split import split_into_files
from trainer.local import LocalTrainer
from trainer.run import TrainJob, run_ps_training

pytestmark = pytest.mark.integration
SPEC = load_spec("taobao")
TABLES = ("user", "item", "category")


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """The first 4,000 rows of the real Taobao log in 2-minute data files; a synthetic log of the
    same format when the shared data is absent (the PS training path is tested either way)."""
    root = tmp_path_factory.mktemp("taobao")
    head = taobao_head(root / "head.csv", 4000)
    out = split_into_files([head], Validator(SPEC), 120, root / "data", progress=False)
    assert len(out.files) >= 2
    return root / "data"


@pytest.fixture(scope="module")
def batches(small_files):
    v = Validator(SPEC)
    return [(p.name, read_data_file(p, v)) for p in sorted(small_files.glob("part-*.parquet"))]


def _rows(backend, table, ids):
    return backend.wait(backend.pull_many({table: ids}))[table]


def _assert_same_model(local: TrainerCore, other: TrainerCore, backend_other, exact: bool, atol: float = 0.0):
    for k, v in local.dense_state().items():
        if exact:
            assert torch.equal(other.dense_state()[k], v), k
        else:
            torch.testing.assert_close(other.dense_state()[k], v, atol=atol, rtol=0)
    assert local.stats.state_dict() == other.stats.state_dict()
    for table in TABLES:
        ids, rows = local.backend.table_rows(table)
        got = _rows(backend_other, table, ids)
        if exact:
            np.testing.assert_array_equal(got, rows, err_msg=table)
        else:
            assert np.abs(got - rows).max() <= atol, table


@pytest.fixture(scope="module")
def local_sync(batches):
    """The local backend trained on every file (seed 3): the same reference for 1, 2 and 4 shards (read only)."""
    local = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=128, seed=3))
    for name, b in batches:
        local.step_file(b, name)
    return local


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_sync_core_on_the_ps_is_bit_identical_to_the_local_backend(ray_local, batches, local_sync, num_shards):
    """The same core over the PS client (1 worker, 1/2/4 shard actors) and over in-process FBGEMM."""
    tcfg = TrainConfig(batch_size=128, seed=3)
    local = local_sync
    client = create_parameter_server(ps_config_for(SPEC, tcfg, PSConfig(num_shards=num_shards)))
    try:
        core = TrainerCore(SPEC, ModelConfig(), tcfg, client)
        for name, b in batches:
            core.step_file(b, name)
        assert [m.auc for m in core.validator.files] == [m.auc for m in local.validator.files]
        _assert_same_model(local, core, client, exact=True)
    finally:
        client.shutdown()


def test_torchrec_dlrm_dcn_trains_through_the_ps_like_the_local_backend(ray_local, batches):
    """TorchRec's own DLRM_DCN, built from the spec, over the parameter server (2 shards) and locally."""
    from torchrec.models.dlrm import DLRM_DCN

    mcfg = ModelConfig(arch="torchrec_dlrm_dcn", bottom_mlp=(32, 16), top_mlp=(32,), dcn_layers=2, dcn_rank=8)
    tcfg = TrainConfig(batch_size=128, seed=4)
    local = LocalTrainer(SPEC, mcfg, tcfg)
    assert isinstance(local.base_model, DLRM_DCN)
    client = create_parameter_server(ps_config_for(SPEC, tcfg, PSConfig(num_shards=2)))
    try:
        core = TrainerCore(SPEC, mcfg, tcfg, client)
        for name, b in batches:
            local.step_file(b, name)
            core.step_file(b, name)
        _assert_same_model(local, core, client, exact=True)
        assert local.validator.cumulative()["auc"] > 0.5
    finally:
        client.shutdown()


@pytest.mark.parametrize("strategy", ["periodic", "fusion"])
def test_ps_strategies_match_local_strategies(ray_local, batches, strategy):
    tcfg = TrainConfig(batch_size=128, seed=5, strategy=strategy, window=2, period=2, fusion_lambda=0.3)
    local = LocalTrainer(SPEC, ModelConfig(), tcfg)
    client = create_parameter_server(ps_config_for(SPEC, tcfg, PSConfig(num_shards=2)))
    try:
        core = TrainerCore(SPEC, ModelConfig(), tcfg, client)
        for name, b in batches:
            local.step_file(b, name)
            core.step_file(b, name)
        _assert_same_model(local, core, client, exact=True)
    finally:
        client.shutdown()


def test_multi_valued_genres_train_on_the_ps_like_the_local_backend(ray_local, ml100k_dir):
    """MovieLens ratings with each movie's genre list (jagged, mean pooled): the PS pulls each distinct
    genre once, pooling happens on the worker, gradients flow back per id; equal to the local backend."""
    from trainer.quality import log_files

    spec = load_spec("movielens100k_genres")
    files, names = log_files(spec, [ml100k_dir / "ml-100k.inter"], n_files=40)
    files, names = files[:3], names[:3]
    assert files[0].lengths["genre"].max() > 1  # really multi-valued
    tcfg = TrainConfig(batch_size=128, seed=2)
    local = LocalTrainer(spec, ModelConfig(), tcfg)
    client = create_parameter_server(ps_config_for(spec, tcfg, PSConfig(num_shards=2)))
    try:
        core = TrainerCore(spec, ModelConfig(), tcfg, client)
        for name, b in zip(names, files):
            local.step_file(b, name)
            core.step_file(b, name)
        for k, v in local.dense_state().items():
            assert torch.equal(core.dense_state()[k], v), k
        ids, rows = local.backend.table_rows("genre")
        assert 10 < len(ids) <= 19  # the 19 MovieLens genres
        np.testing.assert_array_equal(_rows(client, "genre", ids), rows)
    finally:
        client.shutdown()


# ------------------------------------------------------------- eviction pressure
# capacity well below the id universe (about 3,500 users, 3,900 items and 950 categories in these files):
# scoring a file refuses rows, training evicts every step; aged LFU and TTL in versions are on
PRESSURE = dict(capacity_per_shard=512, lfu_decay_every=8, ttl_versions=8)


def _same_tables(a, b, exact: bool) -> None:
    for table in TABLES:
        sa, sb = a.table_state()[table], b.table_state()[table]
        for key in ("ids", "count", "last_seen", "last_version"):
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{table} {key}")
        if exact:
            np.testing.assert_array_equal(sa["rows"], sb["rows"], err_msg=table)
        else:
            assert np.abs(sa["rows"] - sb["rows"]).max() <= 1e-5, table


def _train(client_or_local, tcfg, batches):
    core = (
        client_or_local
        if isinstance(client_or_local, TrainerCore)
        else TrainerCore(SPEC, ModelConfig(), tcfg, client_or_local)
    )
    for name, b in batches:
        core.step_file(b, name)
    return core


def _assert_bit_identical(local: TrainerCore, core: TrainerCore, state: dict) -> None:
    """The same AUCs, dense parameters and table state (rows, optimizer state, metadata) to the bit."""
    assert [m.auc for m in core.validator.files] == [m.auc for m in local.validator.files]
    for k, v in local.dense_state().items():
        assert torch.equal(core.dense_state()[k], v), k
    local_state = local.backend.table_state()
    for table in TABLES:
        for key, value in local_state[table].items():
            np.testing.assert_array_equal(state[table][key], value, err_msg=f"{table} {key}")


def test_sync_under_eviction_pressure_equals_the_local_backend_and_repeats(ray_local, batches):
    """1 worker: 1 shard of the local backend's capacity is bit-identical to it under eviction; 2 shards
    give the same result run to run."""
    tcfg = TrainConfig(batch_size=128, seed=3)
    local = _train(LocalTrainer(SPEC, ModelConfig(), tcfg, ps=PSConfig(**PRESSURE)), tcfg, batches)
    stats = local.backend.shard.stats()
    assert stats["evicted_lfu"] > 1000 and stats["refused_rows"] > 0 and stats["evicted_ttl"] > 0
    runs = []
    for num_shards in (1, 2, 2):
        client = create_parameter_server(ps_config_for(SPEC, tcfg, PSConfig(num_shards=num_shards, **PRESSURE)))
        try:
            core = _train(client, tcfg, batches)
            runs.append((core, client.table_state(), client.stats()))
        finally:
            client.shutdown()
    (one, one_state, one_stats), (two_a, state_a, _), (two_b, state_b, _) = runs
    _assert_bit_identical(local, one, one_state)
    for table in TABLES:
        for key, value in state_a[table].items():
            np.testing.assert_array_equal(state_b[table][key], value, err_msg=f"2 shards {table} {key}")
    assert (
        one_stats[0]["evicted_lfu"] == stats["evicted_lfu"] and one_stats[0]["dropped_grads"] == stats["dropped_grads"]
    )
    assert [m.auc for m in two_a.validator.files] == [m.auc for m in two_b.validator.files]


@pytest.mark.parametrize("pipeline_depth", [0, 1])
def test_two_workers_under_eviction_pressure_stream_each_file_once_and_match_one_process(
    ray_local, small_files, batches, tmp_path, pipeline_depth
):
    """W=2 (Ray Train, gloo DDP, both ranks push rows), 1 shard under eviction pressure: the leased pulls of a step
    are served as one union, so admission and eviction are the one process's exactly (ids, counts); rows, dense
    parameters and AUCs within float rounding. Pipelined (depth 1: step k's push and step k+2's pull in one call)
    the same holds against one process pipelined alike. Each data file once, in order, in the ledger (depth 0: history
    then incoming, a stream; depth 1: history only, as `freshrec train`), and the run directory's dense.pt is the one
    process's model. (This merges the stream test of two workers and two shards without pressure: docs/testing.md.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one process on one thread, as each Ray Train worker runs
    try:
        local = _train(
            LocalTrainer(
                SPEC,
                ModelConfig(),
                TrainConfig(batch_size=128, seed=3),
                ps=PSConfig(**PRESSURE, pipeline_depth=pipeline_depth),
            ),
            None,
            batches,
        )
    finally:
        torch.set_num_threads(threads)
    files = sorted(small_files.glob("part-*.parquet"))
    history, incoming = tmp_path / "history", tmp_path / "incoming"
    history.mkdir(), incoming.mkdir()
    # depth 0: a stream (one history file, then the incoming ones); depth 1: history only (what `freshrec train` runs)
    split = 1 if pipeline_depth == 0 else len(files)
    for f in files[:split]:
        shutil.copy(f, history / f.name)
    for f in files[split:]:
        shutil.copy(f, incoming / f.name)
    result, client = run_ps_training(
        TrainJob(
            SPEC,
            tmp_path / "run",
            model=ModelConfig(),
            train=TrainConfig(batch_size=128, seed=3, history_epochs=1),  # the reference takes the history once
            history=history,
            incoming=incoming if split < len(files) else None,
            drain=True,
            num_workers=2,
            versions=False,
            ps=PSConfig(num_shards=1, **PRESSURE, pipeline_depth=pipeline_depth),
            keep_ps=True,
        )
    )
    try:
        state, local_state = client.table_state(), local.backend.table_state()
        for table in TABLES:
            for key in ("ids", "count", "last_seen", "last_version"):
                np.testing.assert_array_equal(state[table][key], local_state[table][key], err_msg=f"{table} {key}")
            assert np.abs(state[table]["rows"] - local_state[table]["rows"]).max() <= 1e-5, table
        stats, local_stats = client.stats()[0], local.backend.shard.stats()
        for key in ("evicted_lfu", "evicted_ttl", "refused_rows", "dropped_grads", "admitted"):
            assert stats[key] == local_stats[key], key
        assert stats["leases"] == 0 and stats["lease_timeouts"] == 0
        assert [m["file"] for m in result.metrics] == [name for name, _ in batches]
        np.testing.assert_allclose(
            [m["auc"] for m in result.metrics], [m.auc for m in local.validator.files], atol=1e-4
        )
        saved = torch.load(result.run_dir / "dense.pt")
        assert saved["step"] == local.step and saved["stats"] == local.stats.state_dict()
        for k, v in local.dense_state().items():
            torch.testing.assert_close(saved["model"][k], v, atol=1e-5, rtol=0)
        entries = json.loads((result.run_dir / "ledger.json").read_text())["entries"]
        assert [e["file"] for e in entries] == [f.name for f in files]
        assert result.metrics[-1]["ledger_rows"] == sum(len(b) for _, b in batches)
    finally:
        client.shutdown()


def test_pipelined_and_prefetching_sync_on_shard_actors_equals_the_local_backend(ray_local, batches):
    """1 worker, 1 shard actor of the local backend's capacity, eviction pressure on: the pulls that run ahead
    of the pushes (pipelined at depth 2, with the prefetch option on: it applies at depth 0 only, so it must
    change nothing here) keep their rows leased and start in the order sent, and the run is bit-identical
    to the local backend doing the same. (The prefetch itself: tests/unit/test_ps_pipeline.py.)"""
    extra = dict(pipeline_depth=2, sync_prefetch=True)
    tcfg = TrainConfig(batch_size=128, seed=3)
    local = _train(LocalTrainer(SPEC, ModelConfig(), tcfg, ps=PSConfig(**PRESSURE, **extra)), tcfg, batches)
    client = create_parameter_server(ps_config_for(SPEC, tcfg, PSConfig(num_shards=1, **PRESSURE, **extra)))
    try:
        core = _train(client, tcfg, batches)
        state, stats = client.table_state(), client.stats()[0]
    finally:
        client.shutdown()
    _assert_bit_identical(local, core, state)
    assert stats["evicted_lfu"] > 1000 and stats["leases"] == 0 and stats["lease_timeouts"] == 0


def test_the_async_trainer_keeps_prefetched_rows_leased_and_reports_dropped_pushes(ray_local, batches):
    """The trainer's async path (prefetch of step k+1, up to four pushes in flight) under eviction pressure:
    no gradient of a pulled row is lost to eviction (leases), and with a staleness bound of 0 the
    pushes the shards drop are the ones the trainer is told about."""
    tcfg = TrainConfig(batch_size=128, seed=3)
    for max_staleness in (8, 0):
        client = create_parameter_server(
            ps_config_for(
                SPEC, tcfg, PSConfig(num_shards=2, mode="async", max_staleness=max_staleness, capacity_per_shard=256)
            )
        )
        try:
            core = _train(client, tcfg, batches)
            stats = client.stats()
        finally:
            client.shutdown()
        assert sum(s["evicted_lfu"] for s in stats) > 1000
        assert sum(s["leases"] for s in stats) == 0 and sum(s["lease_timeouts"] for s in stats) == 0
        dropped = sum(s["dropped_stale_pushes"] for s in stats)
        assert core.dropped_pushes == dropped
        if max_staleness == 8:
            assert dropped == 0 and sum(s["dropped_grads"] for s in stats) == 0
            assert sum(s["pushes"] for s in stats) > 0
        else:
            assert dropped > 0
