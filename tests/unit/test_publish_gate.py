"""The publish gate (versions.publish), the PUBLISHED / PINNED pointers, the gate in the training loop,
replicas following PUBLISHED and the store's pin, the serving metrics, and the rollback CLI (no Ray)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv
from cluster.cli import main
from cluster.config import load_run_config
from common.config import ConfigError
from serving.config import ServeConfig
from serving.errors import InvalidRequestError
from serving.follower import VersionFollower
from serving.model import load_model
from serving.service import ScoringService
from serving.telemetry import ReplicaTelemetry
from serving.wire import pb
from tests.support.data import flipped
from trainer.metrics import FileMetrics
from versions import (
    NoSuchVersionError,
    PublishConfig,
    Publisher,
    PublishGate,
    VersionMetrics,
    VersionStore,
    model_digest,
)
from versions.publish import serving_target


# ------------------------------------------------------------------ the policy
def vm(auc, examples=2000):
    return VersionMetrics(auc=auc, log_loss=0.4, examples=examples, files=1)


OLD = PublishConfig(max_auc_drop=0.05)  # the fixed-drop rule of manifests without a score histogram


@pytest.mark.parametrize(
    "cand, problems, base, base_v, cfg, publish, code, words",
    [
        (vm(0.60), [], None, None, OLD, True, "ok", "no version was published before"),
        (vm(0.66), [], vm(0.70), 4, OLD, True, "ok", "allowed drop 0.05"),
        (vm(0.64), [], vm(0.70), 4, OLD, False, "auc_drop", "0.0600 below 0.7000 of the published versions up to 4"),
        (vm(0.30), ["part 'dense': missing"], vm(0.70), 4, OLD, False, "checksum", "part 'dense': missing"),
        (vm(0.99), ["x"], None, None, PublishConfig(max_auc_drop=None), False, "checksum", "does not verify"),
        (vm(0.30), [], vm(0.70), 4, PublishConfig(max_auc_drop=None), True, "ok", "AUC check is off"),
        (vm(0.30, examples=100), [], vm(0.70), 4, OLD, False, "small_window", "100 validated examples"),
        (vm(None), [], vm(0.70), 4, OLD, False, "small_window", "one class only"),
        (vm(0.30), [], vm(None), 4, OLD, True, "ok", "version 4 has no progressive AUC"),
        (vm(0.69), [], vm(0.70), 4, PublishConfig(max_auc_drop=0.0), False, "auc_drop", "max_auc_drop 0"),
        (
            VersionMetrics(None, None, 900, 1, nonfinite=900),
            [],
            vm(0.70),
            4,
            OLD,
            False,
            "nonfinite_scores",
            "900 of the 900 scores",
        ),
        (
            VersionMetrics(0.7, 0.4, 900, 1, nonfinite=3),
            [],
            None,
            None,
            PublishConfig(max_auc_drop=None),
            False,
            "nonfinite_scores",
            "NaN or infinite",
        ),
        (
            VersionMetrics(0.7, 0.4, 900, 1, out_of_range=2, score_min=-0.5, score_max=1.0),
            [],
            None,
            None,
            OLD,
            False,
            "scores_out_of_range",
            "outside [0, 1]",
        ),
        (
            VersionMetrics(None, 0.4, 900, 1, score_min=0.25, score_max=0.25),
            [],
            vm(0.7),
            4,
            OLD,
            False,
            "constant_scores",
            "all 900 scores of its window are 0.25",
        ),
    ],
)
def test_the_gate_publishes_or_holds_with_a_reason(cand, problems, base, base_v, cfg, publish, code, words):
    d = PublishGate(cfg).decide(cand, problems, base, base_v)
    assert (d.publish, d.code) == (publish, code) and words in d.reason
    assert d.to_dict()["decision"] == ("publish" if publish else "hold")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"max_auc_drop": -0.1}, "max_auc_drop must be an AUC difference"),
        ({"max_auc_drop": "lots"}, "max_auc_drop"),
        ({"min_examples": -1}, "min_examples must be an integer >= 0"),
        ({"verify_checksums": "yes"}, "verify_checksums must be true or false"),
        ({"margin": 0.1}, "margin"),
        ({"significance": 0.7}, "significance must be a p-value"),
        ({"significance": 0}, "significance"),
    ],
)
def test_publish_config_errors_say_what_to_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        PublishConfig.from_dict(raw)


def test_the_margin_is_in_the_run_config_tree(tmp_path):
    cfg = load_run_config(None, ["publish.max_auc_drop=0.02", "publish.min_examples=0"])
    assert cfg.publish == PublishConfig(max_auc_drop=0.02, min_examples=0)
    (tmp_path / "run.yaml").write_text("publish: {max_auc_drop: null}\n")
    assert load_run_config(tmp_path / "run.yaml").publish.max_auc_drop is None
    assert load_run_config().to_dict()["publish"] == {
        "max_auc_drop": 0.02,
        "min_examples": 500,
        "verify_checksums": True,
        "baseline_versions": 5,
        "significance": 0.001,
    }
    with pytest.raises(ConfigError, match="publish.max_auc_drop"):
        load_run_config(None, ["publish.max_auc_drop=2"])


def test_version_metrics_weight_files_by_examples_and_skip_undefined_aucs():
    files = [
        FileMetrics("a", 100, 10, 0.8, 0.3),
        FileMetrics("b", 300, 30, 0.6, 0.5),
        FileMetrics("c", 50, 0, float("nan"), 0.1),
    ]
    m = VersionMetrics.of_files(files)
    assert m.auc == pytest.approx((100 * 0.8 + 300 * 0.6) / 400) and m.examples == 450 and m.files == 3
    assert m.log_loss == pytest.approx((100 * 0.3 + 300 * 0.5 + 50 * 0.1) / 450)
    assert VersionMetrics.of_files([]) == VersionMetrics(None, None, 0, 0)
    assert VersionMetrics.from_extra({"metrics": m.to_dict()}) == m
    assert VersionMetrics.from_extra({}) == VersionMetrics()
    assert serving_target(3, 5, 7) == (3, "pinned") and serving_target(None, 5, 7) == (5, "published")
    assert serving_target(None, None, 7) == (7, "latest") and serving_target(None, None, None) == (None, "latest")


# ------------------------------------------------------------------ pointers in the store
def _commit(store: VersionStore, auc: float | None, examples: int = 2000) -> int:
    tables = {"user": {"ids": np.arange(4, dtype=np.int64), "rows": np.full((4, 2), len(store.versions()), np.float32)}}
    w = store.begin("full", step=len(store.versions()))
    part = w.write_part("ps/shard-0/user", tables["user"], {"merge": "by_id", "role": "table", "table": "user"})
    metrics = VersionMetrics(auc, 0.4, examples, 1).to_dict()
    return w.commit([part], model_digest=model_digest(tables), extra={"metrics": metrics}).version


def test_published_moves_forward_only_and_pinned_overrides_it(tmp_path):
    store = VersionStore(tmp_path)
    assert store.serving_state() == {"pinned": None, "published": None, "latest": None, "target": None, "why": "latest"}
    v1, v2, v3 = (_commit(store, a) for a in (0.7, 0.7, 0.7))
    assert store.serving_state()["target"] == v3 and store.serving_state()["why"] == "latest"  # never published
    store.publish(v2)
    store.publish(v1)  # older: ignored
    assert store.published() == v2 and store.serving_state()["target"] == v2
    with pytest.raises(NoSuchVersionError):
        store.publish(9)
    store.pin(v1)
    assert store.serving_state() == {"pinned": v1, "published": v2, "latest": v3, "target": v1, "why": "pinned"}
    assert store.unpin() and not store.unpin() and store.pinned() is None
    with pytest.raises(NoSuchVersionError):
        store.pin(9)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # written through temp + rename


def test_gc_keeps_the_published_and_the_pinned_version(tmp_path):
    store = VersionStore(tmp_path)
    vs = [_commit(store, 0.7) for _ in range(5)]
    store.publish(vs[1])
    store.pin(vs[0])
    out = store.gc(keep=1)
    assert out["removed"] == [vs[2], vs[3]] and store.versions() == [vs[0], vs[1], vs[4]]


def test_the_publisher_holds_an_auc_drop_and_a_bad_checksum_and_keeps_its_decisions(tmp_path):
    store = VersionStore(tmp_path)
    pub = Publisher(store, PublishConfig(max_auc_drop=0.05))  # manifests with scalars only: the fixed-drop rule
    v1 = _commit(store, 0.70)
    assert pub(v1).publish and store.published() == v1
    v2 = _commit(store, 0.40)  # labels flipped: the AUC collapses
    d = pub(v2)
    assert not d.publish and d.code == "auc_drop" and store.published() == v1
    assert store.gate_decision(v2)["decision"] == "hold" and store.gate_decision(v2)["baseline_version"] == v1
    v3 = _commit(store, 0.68)  # judged against the last *published* version (v1), not v2
    assert pub(v3).publish and store.published() == v3
    v4 = _commit(store, 0.69)
    part = Path(store.part_path(v4, "ps/shard-0/user"))
    raw = bytearray(part.read_bytes())
    raw[-1] ^= 0xFF
    part.write_bytes(bytes(raw))
    d = pub(v4)
    assert not d.publish and d.code == "checksum" and "checksum" in d.reason and store.published() == v3
    assert store.gate_decision(99) is None


# ------------------------------------------------------------------ the gate in the training loop
def _ts(i: int) -> int:
    return 1_511_658_000 + 3600 * i


def test_the_training_loop_holds_back_a_version_trained_on_flipped_labels(tmp_path):
    t = StoreTrainer(tmp_path / "versions")
    good = [t.add_file(write_taobao_csv(tmp_path / "in" / f"part-{i}.csv", 1500, i, start_ts=_ts(i))) for i in range(3)]
    store = VersionStore(tmp_path / "versions")
    assert store.published() == good[-1] and all(t.keeper.decisions[v].publish for v in good)
    m = store.manifest(good[-1]).extra["metrics"]
    assert m["progressive_auc"] > 0.7 and m["examples_validated"] == 1500 and m["files_validated"] == 1
    bad = t.add_file(
        flipped(write_taobao_csv(tmp_path / "x.csv", 1500, 3, start_ts=_ts(3)), tmp_path / "in" / "part-3.csv")
    )
    d = t.keeper.decisions[bad]
    assert not d.publish and d.code == "auc_drop" and d.baseline_version == good[-1]
    assert d.auc < 0.4 and store.published() == good[-1] and store.latest() == bad  # training went on
    assert store.gate_decision(bad)["decision"] == "hold" and "below" in store.gate_decision(bad)["reason"]


# ------------------------------------------------------------------ replicas
class Sink:
    def __init__(self):
        self.sent = []

    def __call__(self, name, value, **tags):
        self.sent.append((name, value, tags))

    def of(self, name):
        return [(v, t) for n, v, t in self.sent if n == name]


def test_replicas_follow_published_then_the_stores_pin(tmp_path):
    t = StoreTrainer(tmp_path / "versions")
    v1 = t.add_file(write_taobao_csv(tmp_path / "in" / "part-0.csv", 1500, 0, start_ts=_ts(0)))
    v2 = t.add_file(write_taobao_csv(tmp_path / "in" / "part-1.csv", 1500, 1, start_ts=_ts(1)))
    store = VersionStore(tmp_path / "versions")
    sink = Sink()
    f = VersionFollower(
        store, lambda v, prev: load_model(store, v, previous=prev), telemetry=ReplicaTelemetry("r0", record=sink)
    )
    assert f.poll() and f.model.version == v2 and f.why == "published"
    bad = t.add_file(
        flipped(write_taobao_csv(tmp_path / "x.csv", 1500, 2, start_ts=_ts(2)), tmp_path / "in" / "part-2.csv")
    )
    assert store.latest() == bad and store.published() == v2
    assert not f.poll() and f.model.version == v2  # the held-back version is not served
    store.pin(v1)
    assert f.poll() and f.model.version == v1 and f.pinned
    store.unpin()
    assert f.poll() and f.model.version == v2 and not f.pinned
    assert sink.of("freshrec_serving_loaded_version")[-1] == (v2, {"replica": "r0"})
    assert {v for v, _ in sink.of("freshrec_serving_version_lag_versions")} == {0}
    f.configure(pin_version=v1)  # a user_config pin wins over the store's pointers
    assert f.model.version == v1 and f.why == "config-pin"


def test_lag_and_freshness_are_reported_when_a_replica_moves_forward(tmp_path):
    t = StoreTrainer(tmp_path / "versions")
    t.add_file(write_taobao_csv(tmp_path / "in" / "part-0.csv", 1500, 0, start_ts=_ts(0)))
    store = VersionStore(tmp_path / "versions")
    sink = Sink()
    f = VersionFollower(
        store, lambda v, prev: load_model(store, v, previous=prev), telemetry=ReplicaTelemetry("r1", record=sink)
    )
    f.poll()
    picked = time.time()
    path = write_taobao_csv(tmp_path / "in" / "part-1.csv", 800, 1, start_ts=_ts(1))
    t.trainer.step_file(t.read(path), path.name, rows_read=800)
    t.keeper.after_file(picked_up_at=picked)
    t.keeper.wait()
    v2 = store.published()
    assert store.manifest(v2).extra["freshness"]["newest_file_picked_up_at"] == picked
    f._load = lambda v, prev: (_ for _ in ()).throw(OSError("slow disk"))  # the replica cannot load it yet
    f.poll()
    assert sink.of("freshrec_serving_version_lag_versions")[-1] == (1, {"replica": "r1"})
    f._load = lambda v, prev: load_model(store, v, previous=prev)
    f.retry_now()  # a transient failure is retried after a jittered backoff; do not wait for it
    assert f.model.version == v2
    ((fresh, tags),) = sink.of("freshrec_serving_freshness_seconds")
    assert tags == {"replica": "r1"} and 0 <= fresh < 60
    assert sink.of("freshrec_serving_version_lag_versions")[-1] == (0, {"replica": "r1"})


def test_every_request_is_timed_and_counted_by_status_code(tmp_path):
    t = StoreTrainer(tmp_path / "versions")
    t.add_file(write_taobao_csv(tmp_path / "in" / "part-0.csv", 1500, 0, start_ts=_ts(0)))
    sink = Sink()
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions")), telemetry=ReplicaTelemetry("r", sink))
    svc.follower.poll()
    req = pb.ScoreRequest()
    req.context["user_id"].id = 5
    req.candidate_columns["item_id"].ids.extend([1, 2])
    svc.score(req)
    with pytest.raises(InvalidRequestError):
        svc.score(pb.ScoreRequest())
    svc.model_info()
    counted = sink.of("freshrec_serving_requests_total")
    assert counted == [
        (1, {"method": "Score", "code": "OK"}),
        (1, {"method": "Score", "code": "INVALID_ARGUMENT"}),
        (1, {"method": "ModelInfo", "code": "OK"}),
    ]
    timed = sink.of("freshrec_serving_request_latency_seconds")
    assert len(timed) == 3 and all(0 <= v < 10 and tags.keys() == {"method"} for v, tags in timed)


# ------------------------------------------------------------------ the CLI
def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rollback_unpin_and_status_from_the_cli(tmp_path, capsys):
    store = VersionStore(tmp_path / "versions")
    v1, v2, v3 = (_commit(store, a) for a in (0.7, 0.7, 0.3))
    pub = Publisher(store)
    for v in (v1, v2, v3):
        pub(v)
    code, out, _ = run(capsys, "snapshots", "status", "--run-dir", str(tmp_path), "--json")
    state = json.loads(out)
    assert code == 0 and state["target"] == v2 and state["why"] == "published" and state["latest"] == v3
    assert [h["version"] for h in state["held_since_published"]] == [v3]
    code, out, _ = run(capsys, "snapshots", "rollback", str(v1), "--run-dir", str(tmp_path))
    assert code == 0 and f"pinned serving to version {v1}" in out and store.pinned() == v1
    code, out, _ = run(capsys, "snapshots", "list", "--run-dir", str(tmp_path))
    assert "PINNED" in out and "hold" in out and "publish" in out
    rows = json.loads(run(capsys, "snapshots", "list", "--run-dir", str(tmp_path), "--json")[1])
    assert [r["gate"] for r in rows] == ["publish", "publish", "hold"] and rows[0]["pointers"] == ["PINNED"]
    code, out, _ = run(capsys, "snapshots", "unpin", "--run-dir", str(tmp_path))
    assert code == 0 and f"was {v1}" in out and f"follows version {v2} (published)" in out and store.pinned() is None
    code, _, err = run(capsys, "snapshots", "rollback", "9", "--run-dir", str(tmp_path))
    assert code == 2 and "no committed version 9" in err
    part = Path(store.part_path(v1, "ps/shard-0/user"))
    part.write_bytes(part.read_bytes()[:-1])
    code, _, err = run(capsys, "snapshots", "rollback", str(v1), "--run-dir", str(tmp_path))
    assert code == 1 and "not pinned" in err and store.pinned() is None
    with pytest.raises(SystemExit) as exc:
        main(["snapshots", "rollback", "latest", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2 and "version number" in capsys.readouterr().err


class _FakeStore:
    """The store calls a Publisher makes, in memory: manifests with window metrics, PUBLISHED."""

    def __init__(self, aucs):
        import types

        self.extra = {
            v: {"metrics": {"progressive_auc": a, "examples_validated": 1000, "files_validated": 1}}
            for v, a in enumerate(aucs, start=1)
        }
        self.pointer, self.decisions, self._types = None, {}, types

    def manifest(self, v):
        return self._types.SimpleNamespace(extra=self.extra[v])

    def verify_chain(self, v, memo=None):
        return []

    def published(self):
        return self.pointer

    def publish(self, v):
        self.pointer = v

    def write_gate_decision(self, v, d):
        self.decisions[v] = d


@pytest.mark.parametrize("baseline_versions, held", [(1, [6, 7, 8]), (5, [])])
def test_the_baseline_pools_recent_windows_so_one_lucky_window_does_not_hold_everything(baseline_versions, held):
    """Windows 0.60 .. then a lucky 0.80: against it alone (baseline_versions 1) every ordinary window
    after it is held back; pooled over 5 published windows, ordinary windows go on publishing."""
    store = _FakeStore([0.60, 0.61, 0.59, 0.60, 0.80, 0.60, 0.61, 0.60])
    pub = Publisher(store, PublishConfig(max_auc_drop=0.05, baseline_versions=baseline_versions))
    got = [v for v in range(1, 9) if not pub(v).publish]
    assert got == held
    flipped = _FakeStore([0.60, 0.61, 0.59, 0.60, 0.80, 0.30])  # a real drop is still held either way
    pub2 = Publisher(flipped, PublishConfig(max_auc_drop=0.05, baseline_versions=baseline_versions))
    assert [pub2(v).publish for v in range(1, 7)] == [True] * 5 + [False]
    with pytest.raises(ConfigError, match="baseline_versions"):
        PublishConfig(baseline_versions=0)
