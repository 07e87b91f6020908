"""Dynamic features served through Ray Serve's gRPC ingress: a version trained with the
taobao_dynamic spec is served with its own feature state, and a real grpc client gets the offline
scores of the same rows bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv

COLUMNS = ("user_id", "item_id", "category_id", "ts")


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    from ray import serve

    from serving.app import start_serving
    from serving.client import ScoringClient
    from serving.config import ServeConfig

    root = tmp_path_factory.mktemp("served-dynamic")
    trainer = StoreTrainer(root / "versions", spec="taobao_dynamic")
    for i in range(2):
        trainer.add_file(write_taobao_csv(root / "in" / f"part-{i}.csv", 1200, i, start_ts=1_511_658_000 + 3600 * i,
                                          users=150))
    port = start_serving(ServeConfig(store_url=str(root / "versions"), poll_interval_s=0.1))
    client = ScoringClient(f"127.0.0.1:{port}")
    client.wait_ready(120)
    yield {"root": root, "trainer": trainer, "client": client}
    client.close()
    serve.shutdown()


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
