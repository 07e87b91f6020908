"""train.history_epochs through the real stream path (Ray Train worker, PS shards): the cold start makes
its extra passes over the history once the progressive pass over it is done and before the first
incoming file, training only (no file scored twice), and ends bit-identical to one process doing the same
(AUCs, dense state and stats, every table's rows): this is also the proof that one Ray Train worker over PS
shard actors is bit-identical to one process (it was test_ps_training's one-worker test, merged here)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from paramserver.config import PSConfig
from trainer.config import ModelConfig, TrainConfig
from trainer.data import Validator, load_spec, read_data_file
from trainer.data.split import split_into_files
from trainer.local import LocalTrainer
from trainer.run import TrainJob, run_ps_training
from trainer.strategies import history_decision

pytestmark = pytest.mark.integration
SPEC = load_spec("taobao")


def _log(path, rows=2400, seed=4):
    rng = np.random.default_rng(seed)
    users, items = rng.integers(1, 300, rows), rng.integers(1, 400, rows)
    buy = rng.random(rows) < np.where(items % 7 == 0, 0.6, 0.05)
    ts = 1511658000 + np.sort(rng.integers(0, 360, rows))
    lines = (f"{u},{i},{i % 40},{'buy' if b else 'pv'},{t}\n" for u, i, b, t in zip(users, items, buy, ts))
    path.write_text("".join(lines))


def test_history_epochs_pass_over_the_history_before_the_incoming_files(ray_local, tmp_path):
    _log(tmp_path / "log.csv")
    files = split_into_files([tmp_path / "log.csv"], Validator(SPEC), 120, tmp_path / "all", progress=False).files
    assert len(files) == 3
    history, incoming = tmp_path / "history", tmp_path / "incoming"
    history.mkdir(), incoming.mkdir()
    for f in files[:2]:
        shutil.copy(f, history / f.name)
    shutil.copy(files[2], incoming / files[2].name)
    tcfg = TrainConfig(batch_size=128, seed=3, history_epochs=3)
    result, client = run_ps_training(
        TrainJob(
            SPEC,
            tmp_path / "run",
            model=ModelConfig(),
            train=tcfg,
            history=history,
            incoming=incoming,
            drain=True,
            num_workers=1,
            ps=PSConfig(num_shards=2),
            keep_ps=True,
        )
    )
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the Ray Train worker runs
        try:
            v = Validator(SPEC)
            batches = [read_data_file(f, v) for f in files]
            local = LocalTrainer(SPEC, ModelConfig(), tcfg)
            for f, b in zip(files[:2], batches[:2]):
                local.step_file(b, f.name)
            spent = local.apply_decision(history_decision(tcfg, 2), batches[:2])
            local.step_file(batches[2], files[2].name)
        finally:
            torch.set_num_threads(threads)
        assert spent["examples"] == 2 * (len(batches[0]) + len(batches[1]))  # two extra epochs, training only
        assert [m["file"] for m in result.metrics] == [f.name for f in files]  # each file scored once
        assert [m["auc"] for m in result.metrics] == [m.auc for m in local.validator.files]
        saved = torch.load(result.run_dir / "dense.pt")
        assert saved["step"] == local.step and saved["examples_trained"] == local.examples_trained
        assert saved["stats"] == local.stats.state_dict()
        for k, val in local.dense_state().items():
            assert torch.equal(saved["model"][k], val), k
        for table in ("user", "item", "category", "user__wide"):
            ids, rows = local.backend.table_rows(table)
            np.testing.assert_array_equal(client.wait(client.pull_many({table: ids}))[table], rows, err_msg=table)
    finally:
        client.shutdown()
