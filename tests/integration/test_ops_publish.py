"""The publish gate and rollback end to end, on a real local Ray with Ray Serve's gRPC proxy: a data
file with flipped labels produces a version the gate holds back while the replicas keep serving the
previous one; ``freshrec snapshots rollback`` / ``unpin`` move every replica within seconds while a
client calls Score in a loop, with zero failed requests."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv
from cluster.cli import main
from tests.support.data import flipped
from versions import VersionStore


def _ts(i: int) -> int:
    return 1_511_658_000 + 3600 * i


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
def served(serve_port, tmp_path_factory):
    from ray import serve

    from serving.app import APP_NAME, start_serving
    from serving.client import ScoringClient
    from serving.config import ServeConfig

    root = tmp_path_factory.mktemp("gated")
    trainer = StoreTrainer(root / "versions")
    good = [
        trainer.add_file(write_taobao_csv(root / "in" / f"part-{i}.csv", 1500, i, start_ts=_ts(i))) for i in range(2)
    ]
    cfg = ServeConfig(store_url=str(root / "versions"), poll_interval_s=0.1)
    port = start_serving(cfg, grpc_port=serve_port)  # the shared proxy (conftest)
    client = ScoringClient(f"127.0.0.1:{port}")
    client.wait_ready(120, min_version=good[-1])
    yield {"root": root, "trainer": trainer, "good": good, "port": port, "client": client}
    client.close()
    serve.delete(APP_NAME)  # the proxy stays for the next module (conftest)


def test_a_version_trained_on_flipped_labels_is_held_back_while_serving_keeps_the_previous(served):
    root, trainer, client = served["root"], served["trainer"], served["client"]
    published = served["good"][-1]
    load = Load(client)
    load.start()
    try:
        bad = trainer.add_file(
            flipped(write_taobao_csv(root / "x.csv", 1500, 2, start_ts=_ts(2)), root / "in" / "part-2.csv")
        )
        store = VersionStore(root / "versions")
        decision = store.gate_decision(bad)
        assert decision["decision"] == "hold" and decision["code"] == "auc_drop", decision
        assert store.latest() == bad and store.published() == published  # committed, not published
        time.sleep(1.5)  # 15 polls of the replica
        assert client.model_info().model_version == published
    finally:
        load.stop()
    assert load.failures == [] and load.calls > 20
    assert set(load.versions) == {published}  # the held-back version never answered


def test_rollback_and_unpin_under_load_with_zero_failed_requests(served, capsys):
    root, client, port = served["root"], served["client"], served["port"]
    store = VersionStore(root / "versions")
    first, published = served["good"][0], store.published()
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
