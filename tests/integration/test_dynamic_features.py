"""Dynamic features on real parts: the core over parameter-server shard actors trains the
taobao_dynamic spec bit for bit like the local backend (sequence tables and feature state included),
and a version of it is served through Ray Serve's gRPC ingress with its own feature state: a real
grpc client gets the offline scores of the same rows bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv

COLUMNS = ("user_id", "item_id", "category_id", "ts")


def test_sync_core_on_the_ps_with_dynamic_features_is_bit_identical_to_local(ray_local, tmp_path):
    from paramserver import create_parameter_server
    from paramserver.config import PSConfig
    from trainer.backends import ps_config_for
    from trainer.config import ModelConfig, TrainConfig
    from trainer.core import TrainerCore
    from trainer.data import Validator, load_spec, read_data_file
    from trainer.data.split import split_into_files
    from trainer.local import LocalTrainer

    spec = load_spec("taobao_dynamic")
    files = [
        write_taobao_csv(tmp_path / f"log{i}.csv", 1000, i, start_ts=1_511_658_000 + 600 * i, users=120)
        for i in range(3)
    ]
    out = split_into_files(files, Validator(spec), 300, tmp_path / "data", progress=False)
    v = Validator(spec)
    batches = [(p.name, read_data_file(p, v)) for p in out.files]
    tcfg = TrainConfig(batch_size=128, seed=3)
    local = LocalTrainer(spec, ModelConfig(), tcfg)
    client = create_parameter_server(ps_config_for(spec, tcfg, PSConfig(num_shards=2)))
    try:
        core = TrainerCore(spec, ModelConfig(), tcfg, client)
        for name, b in batches:
            local.step_file(b, name)
            core.step_file(b, name)
        assert [m.auc for m in core.validator.files] == [m.auc for m in local.validator.files]
        for k, t in local.dense_state().items():
            assert np.array_equal(core.dense_state()[k].numpy(), t.numpy()), k
        for table in ("user", "item", "category", "user_items", "user_categories"):
            ids, rows = local.backend.table_rows(table)
            assert len(ids) and np.array_equal(client.wait(client.pull_many({table: ids}))[table], rows), table
        a, b = local.dynamic.state_dict(), core.dynamic.state_dict()
        assert all(np.array_equal(a[k], b[k]) for k in a)
    finally:
        client.shutdown()


@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from serving.app import APP_NAME, start_serving
    from serving.client import ScoringClient
    from serving.config import ServeConfig

    root = tmp_path_factory.mktemp("served-dynamic")
    trainer = StoreTrainer(root / "versions", spec="taobao_dynamic")
    for i in range(2):
        trainer.add_file(
            write_taobao_csv(root / "in" / f"part-{i}.csv", 1200, i, start_ts=1_511_658_000 + 3600 * i, users=150)
        )
    port = start_serving(ServeConfig(store_url=str(root / "versions"), poll_interval_s=0.1), grpc_port=serve_port)
    client = ScoringClient(f"127.0.0.1:{port}")
    client.wait_ready(120)
    yield {"root": root, "trainer": trainer, "client": client}
    client.close()
    serve.delete(APP_NAME)  # the proxy stays for the next module (conftest)


def test_dynamic_features_served_through_grpc_equal_offline(app):
    trainer, client = app["trainer"], app["client"]
    batch = trainer.read(write_taobao_csv(app["root"] / "probe.csv", 300, 9, start_ts=1_511_670_000, users=200))
    cols = {c: batch.table.column(c).cast("int64").to_numpy().tolist() for c in COLUMNS}
    offline = trainer.trainer.score(batch)  # the trainer that wrote the served version: its feature state
    r = client.score(None, cols["item_id"], item_columns={k: v for k, v in cols.items() if k != "item_id"})
    assert r.model_version == 2
    np.testing.assert_array_equal(np.float32(r.scores), offline)
    # the features matter: the same rows without any history score differently
    bare = trainer.trainer.dynamic.copy()
    bare.tables = {k: t.take(np.zeros(len(t.ids), bool)) for k, t in bare.tables.items()}
    assert not np.array_equal(bare.lookup(batch).dense, trainer.trainer.dynamic.lookup(batch).dense)
