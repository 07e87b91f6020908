"""PS-mode training on Ray Train against the local reference trainer (real Ray, FBGEMM, gloo)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.data import Validator, load_spec, read_data_file
from trainer.data.split import split_into_files
from trainer.local import LocalTrainer
from trainer.ps_trainer import run_ps_training

pytestmark = pytest.mark.integration


def _synthetic_log(path, rows=4000, seed=0):
    """A Taobao-format log (user,item,category,behavior,ts) with a learnable signal."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 400, rows), rng.integers(1, 600, rows)
    buy = rng.random(rows) < np.where(items % 7 == 0, 0.6, 0.05)
    ts = 1511658000 + np.sort(rng.integers(0, 600, rows))
    path.write_text("".join(f"{u},{i},{i % 40},{'buy' if b else 'pv'},{t}\n" for u, i, b, t in zip(users, items, buy, ts)))


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """The first 4,000 rows of the real Taobao log in 2-minute shards; a synthetic log of the
    same format when the shared data is absent (the PS training path is tested either way)."""
    from tests.conftest import TAOBAO_CSV

    root = tmp_path_factory.mktemp("taobao")
    head = root / "head.csv"
    if TAOBAO_CSV.exists():
        with open(TAOBAO_CSV) as src:
            head.write_text("".join(next(src) for _ in range(4000)))
    else:
        _synthetic_log(head)
    out = split_into_files([head], Validator(load_spec("taobao")), 120, root / "shards", progress=False)
    assert len(out.files) >= 2
    return root / "shards"


def test_sync_one_worker_matches_local_trainer(ray_local, small_files, tmp_path):
    spec = load_spec("taobao")
    mcfg, tcfg = ModelConfig(), TrainConfig(batch_size=128, seed=3)
    local = LocalTrainer(spec, mcfg, tcfg)
    v = Validator(spec)
    local_aucs = []
    for shard in sorted(small_files.glob("part-*.parquet")):
        local_aucs.append(local.step_file(read_data_file(shard, v), shard.name).auc)

    result, client = run_ps_training(spec, mcfg, tcfg, tmp_path / "run", history=small_files, num_workers=1,
                                     num_shards=2, mode="sync", keep_ps=True)
    try:
        assert [m["file"] for m in result.metrics] == [p.name for p in sorted(small_files.glob("part-*.parquet"))]
        np.testing.assert_allclose([m["auc"] for m in result.metrics], local_aucs, atol=1e-5)
        dense = torch.load(result.run_dir / "dense.pt")["dense"]
        for k, v_local in local.dense_state().items():
            torch.testing.assert_close(dense[k], v_local, atol=1e-6, rtol=0)
        for table in ("user", "item", "category"):
            ids, rows = local.embeddings.table_rows(table)
            ps_rows = client.wait(client.pull(table, ids))
            assert np.abs(ps_rows - rows).max() <= 1e-6, table
    finally:
        client.shutdown()


def test_two_workers_stream_incoming_once_each(ray_local, small_files, tmp_path):
    spec = load_spec("taobao")
    shards = sorted(small_files.glob("part-*.parquet"))
    history, incoming = tmp_path / "history", tmp_path / "incoming"
    history.mkdir(), incoming.mkdir()
    shutil.copy(shards[0], history / shards[0].name)
    for s in shards[1:]:
        shutil.copy(s, incoming / s.name)
    result, _ = run_ps_training(spec, ModelConfig(), TrainConfig(batch_size=128, seed=3), tmp_path / "run",
                                history=history, incoming=incoming, drain=True, num_workers=2, num_shards=2)
    assert [m["file"] for m in result.metrics] == [s.name for s in shards]
    ledger = (result.run_dir / "ledger.json").read_text()
    assert all(s.name in ledger for s in shards)
    assert result.metrics[-1]["ledger_rows"] == sum(len(read_data_file(s, Validator(spec))) for s in shards)
    assert all(0.0 <= m["auc"] <= 1.0 for m in result.metrics if m["auc"] == m["auc"])


@pytest.mark.parametrize("strategy", ["periodic", "fusion"])
def test_ps_strategies_match_local_strategies(ray_local, small_files, strategy):
    """Periodic window updates and dense fusion in PS mode (no Ray Train: one core object)."""
    from paramserver import create_parameter_server
    from trainer.embeddings import ps_config_for
    from trainer.ps_trainer import PSTrainerCore
    from trainer.strategies import apply_decision, make_policy

    spec = load_spec("taobao")
    mcfg = ModelConfig()
    tcfg = TrainConfig(batch_size=128, seed=5, strategy=strategy, window=2, period=2, fusion_lambda=0.3)
    v = Validator(spec)
    batches = [read_data_file(p, v) for p in sorted(small_files.glob("part-*.parquet"))]
    local, policy = LocalTrainer(spec, mcfg, tcfg), make_policy(tcfg)
    for i, b in enumerate(batches):
        local.validator.record(str(i), b.label, local.score(b))
        local, _ = apply_decision(local, policy.decide(i), batches)
    client = create_parameter_server(ps_config_for(spec, tcfg, num_shards=2))
    try:
        core = PSTrainerCore(spec, mcfg, tcfg, client)
        for i, b in enumerate(batches):
            core.step_file(b, str(i))
        np.testing.assert_allclose([m.auc for m in core.validator.files], [m.auc for m in local.validator.files],
                                   atol=1e-5)
        for k, v_local in local.dense_state().items():
            torch.testing.assert_close(core.dense_state()[k], v_local, atol=1e-6, rtol=0)
    finally:
        client.shutdown()
