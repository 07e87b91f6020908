"""common.metrics definitions, the no-Ray fallback, and the emitters of the PS and the trainer (fakes, no Ray)."""

import types

import pytest

from common import metrics
from paramserver.telemetry import ShardTelemetry
from trainer import telemetry


def test_every_definition_follows_the_naming_rules():
    assert len(metrics.DEFINITIONS) == len(metrics.BY_NAME)  # no duplicates
    for d in metrics.DEFINITIONS:
        assert metrics.NAME_RE.match(d.name), d.name
        assert d.description and d.kind in metrics.KINDS
    with pytest.raises(ValueError, match="component"):
        metrics.MetricDef("freshrec_pull_ms", "gauge", "x")
    with pytest.raises(ValueError, match="counters"):
        metrics.MetricDef("freshrec_ps_pulls_total", "gauge", "x")
    with pytest.raises(ValueError, match="boundaries"):
        metrics.MetricDef("freshrec_ps_pull_latency_seconds", "histogram", "x")


def test_the_issue_s_series_are_all_defined():
    for name in (
        "freshrec_trainer_examples_per_second",
        "freshrec_ps_pull_latency_seconds",
        "freshrec_ps_push_latency_seconds",
        "freshrec_ps_stale_pushes_total",
        "freshrec_ps_dropped_pushes_total",
        "freshrec_ps_evictions_total",
        "freshrec_versions_write_duration_seconds",
        "freshrec_versions_size_bytes",
        "freshrec_serving_version_lag_versions",
        "freshrec_serving_freshness_seconds",
        "freshrec_serving_request_latency_seconds",
        "freshrec_serving_requests_total",
        "freshrec_trainer_dead_letters_total",
        "freshrec_trainer_progressive_auc_ratio",
        "freshrec_trainer_progressive_logloss_nats",
    ):
        assert name in metrics.BY_NAME
    assert metrics.BY_NAME["freshrec_serving_requests_total"].tags == ("method", "code")
    assert (
        metrics.exported_names(metrics.BY_NAME["freshrec_ps_pull_latency_seconds"])[0]
        == "ray_freshrec_ps_pull_latency_seconds_bucket"
    )


def test_record_checks_names_tags_and_values_and_sends_nothing_without_ray():
    assert metrics.record("freshrec_ps_pull_latency_seconds", 0.01, shard=0) is False  # no Ray here
    assert metrics.record("freshrec_trainer_progressive_auc_ratio", float("nan")) is False
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.record("freshrec_ps_pull_latency_ms", 1.0)
    with pytest.raises(ValueError, match="tags must be exactly"):
        metrics.record("freshrec_ps_pull_latency_seconds", 0.01)
    with pytest.raises(ValueError, match="only goes up"):
        metrics.record("freshrec_trainer_examples_total", -1)
    with pytest.raises(ValueError, match="number"):
        metrics.record("freshrec_trainer_examples_total", "3")


def test_shard_telemetry_sends_counter_increments_at_most_once_per_interval():
    sent, now = [], [0.0]
    t = ShardTelemetry(
        2, every_s=1.0, record=lambda name, value, **tags: sent.append((name, value, tags)), clock=lambda: now[0]
    )
    stats = {
        "rows": 5,
        "rows_pulled": 10,
        "rows_pushed": 4,
        "stale_pushes": 0,
        "dropped_stale_pushes": 0,
        "evicted_ttl": 1,
        "evicted_lfu": 0,
    }
    t.counters(lambda: stats)
    assert ("freshrec_ps_rows_pulled_total", 10, {"shard": "2"}) in sent
    assert ("freshrec_ps_evictions_total", 1, {"shard": "2", "reason": "ttl"}) in sent
    assert ("freshrec_ps_resident_rows", 5, {"shard": "2"}) in sent
    assert not any(name == "freshrec_ps_stale_pushes_total" for name, _, _ in sent)  # zero increments skipped
    sent.clear()
    stats.update(rows_pulled=15, stale_pushes=2)
    t.counters(lambda: stats)  # within the interval: nothing
    assert sent == []
    now[0] = 1.5
    t.counters(lambda: stats)
    assert ("freshrec_ps_rows_pulled_total", 5, {"shard": "2"}) in sent
    assert ("freshrec_ps_stale_pushes_total", 2, {"shard": "2"}) in sent
    sent.clear()
    stats.update(rows_pulled=3)  # a restored shard restarts its counters
    t.counters(lambda: stats, force=True)
    assert ("freshrec_ps_rows_pulled_total", 3, {"shard": "2"}) in sent
    t.latency("push", 0.002)
    assert sent[-1] == ("freshrec_ps_push_latency_seconds", 0.002, {"shard": "2"})
    for name, value, tags in sent:  # every emission is a valid one
        metrics.check(name, value, tags)


def test_trainer_telemetry_maps_a_file_record_and_a_version(monkeypatch):
    sent = []
    monkeypatch.setattr(telemetry, "record", lambda name, value=1, **tags: sent.append((name, value, tags)))
    report = types.SimpleNamespace(by_reason={"unknown action": 3}, rows_late=2)
    telemetry.record_file(
        {"examples_trained": 100, "examples_per_s": 50.0, "auc": float("nan"), "log_loss": 0.5, "cumulative_auc": 0.6},
        report,
    )
    names = [n for n, _, _ in sent]
    assert "freshrec_trainer_progressive_auc_ratio" not in names  # NaN (one class only) is not sent
    assert ("freshrec_trainer_dead_letters_total", 3, {"reason": "unknown action"}) in sent
    assert ("freshrec_trainer_progressive_logloss_nats", 0.5, {}) in sent
    sent.clear()
    telemetry.record_version(types.SimpleNamespace(kind="full", bytes=10, version=4), pause_ms=20.0, write_s=1.5)
    assert ("freshrec_versions_pause_seconds", 0.02, {"kind": "full"}) in sent
    assert ("freshrec_versions_latest_version", 4, {}) in sent
    for name, value, tags in sent:
        metrics.check(name, value, tags)


def test_every_series_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    missing = [d.name for d in metrics.DEFINITIONS if f"`ray_{d.name}`" not in doc]
    assert not missing, f"add to the series table of docs/operations.md: {missing}"


def test_a_gauge_is_set_again_while_the_process_lives(monkeypatch):
    """Ray drops a gauge series ~2 export intervals after its last set: record keeps setting its last value."""
    import time

    sets = []

    class FakeGauge:
        def set(self, value, tags=None):
            sets.append((value, tags))

    monkeypatch.setattr(metrics, "_ray_ready", lambda: True)
    monkeypatch.setattr(metrics, "_handle", lambda d: FakeGauge())
    monkeypatch.setattr(metrics, "GAUGE_REFRESH_S", 0.05)
    monkeypatch.setattr(metrics, "_gauges", {})
    monkeypatch.setattr(metrics, "_refresher", None)
    assert metrics.record("freshrec_serving_loaded_version", 7, replica="r")
    metrics.record("freshrec_serving_loaded_version", 8, replica="r")  # the last value is what is repeated
    deadline = time.monotonic() + 5
    while len(sets) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sets[:2] == [(7, {"replica": "r"}), (8, {"replica": "r"})]
    assert len(sets) >= 5 and all(s == (8, {"replica": "r"}) for s in sets[2:])
    monkeypatch.setattr(metrics, "_ray_ready", lambda: False)  # stop sending before the fakes go away
    time.sleep(0.1)
