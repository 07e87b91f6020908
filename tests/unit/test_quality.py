"""The quality replay: point choice, and a small run on a slice of the real Taobao log."""

import math

import numpy as np

from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.quality import choose_points, run_quality, synthetic_file, taobao_files


def test_choose_points_spreads_and_skips_small_shards():
    assert choose_points([5000] * 10, warmup=2, points=0) == list(range(2, 10))
    assert choose_points([5000] * 10, warmup=2, points=3) == [2, 6, 9]
    assert choose_points([5000, 5000, 10, 5000], warmup=1, points=0) == [1, 3]


def test_small_quality_run_on_real_taobao(taobao_csv, tmp_path):
    import pyarrow.csv as pacsv

    # the first 30 minutes of the log (about 22k rows) in 5-minute shards
    table = pacsv.read_csv(taobao_csv, read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    ts = table.column(4).to_numpy()
    n = int(np.searchsorted(ts, ts[0] + 1800))
    lines = taobao_csv.read_text().splitlines()[:n]
    part = tmp_path / "slice.csv"
    part.write_text("\n".join(lines) + "\n")
    shards, names = taobao_files(part, every_s=300, work_dir=tmp_path)
    assert len(shards) >= 6 and sum(len(s) for s in shards) == n
    spec = load_spec("taobao")
    cfg = TrainConfig(epochs_full_retrain=2)
    r = run_quality("taobao", spec, shards, names, ModelConfig(), cfg, points=[3, 5])
    s = r.summary()
    assert [p.point for p in r.points] == [3, 5]
    assert all(0.0 <= p.auc_incremental <= 1.0 and 0.0 <= p.auc_full_retrain <= 1.0 for p in r.points)
    rows = r.file_rows
    # incremental: shards 0..4 once; full retrain: 2 epochs over shards < 3 and over shards < 5
    assert s["incremental_examples"] == sum(rows[:5])
    assert s["full_retrain_examples"] == 2 * sum(rows[:3]) + 2 * sum(rows[:5])
    assert math.isclose(s["compute_ratio"], sum(rows[:5]) / (2 * sum(rows[:3]) + 2 * sum(rows[:5])))
    assert r.points[1].inc_examples == rows[3] + rows[4]
    assert len(r.incremental_auc_by_file) == 6


def test_online_strategy_replay_agrees_with_the_incremental_side_of_run_quality():
    from trainer.quality import run_strategy, synthetic_file
    from trainer.strategies import OnlinePolicy, PeriodicPolicy

    spec = load_spec("taobao")
    shards = [synthetic_file(spec, 800, seed=s) for s in range(5)]
    cfg = TrainConfig(batch_size=128, epochs_full_retrain=1)
    r = run_quality("synthetic", spec, shards, [str(i) for i in range(5)], ModelConfig(), cfg, points=[2, 4])
    online = run_strategy(spec, shards, ModelConfig(), cfg, OnlinePolicy(), [2, 4])
    assert online["auc"] == r.summary()["auc_incremental"]
    assert online["examples"] == r.summary()["incremental_examples"] == 3200
    periodic = run_strategy(spec, shards, ModelConfig(), cfg, PeriodicPolicy(window=2), [2, 4])
    assert periodic["examples"] == 800 * (1 + 2 + 2 + 2)


def test_write_report_makes_a_png(tmp_path):
    from trainer.quality import synthetic_file
    from trainer.report import write_report

    spec = load_spec("taobao")
    shards = [synthetic_file(spec, 400, seed=s) for s in range(4)]
    cfg = TrainConfig(batch_size=128, epochs_full_retrain=1)
    r = run_quality("synthetic", spec, shards, [str(i) for i in range(4)], ModelConfig(), cfg, points=[2, 3])
    (path,) = write_report(r, tmp_path)
    assert path.name == "quality_synthetic.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_epochs_train_only_and_the_lr_baseline_is_scored_before_it_trains():
    import pytest

    from trainer.data import EventBatch
    from trainer.ftrl import FTRLConfig, FTRLProximal
    from trainer.metrics import auc

    spec = load_spec("taobao")
    files = [synthetic_file(spec, 300, s, start_ts=1_511_658_000 + 300 * s) for s in range(5)]
    names = [f"f{i}" for i in range(5)]
    rows = [len(f) for f in files]
    cfg = TrainConfig(batch_size=64, history_epochs=3)
    r = run_quality(
        "syn", spec, files, names, ModelConfig(), cfg, points=[2, 4], lr=FTRLConfig(), history=2, full_retrain=False
    )
    s = r.summary()
    # files 0, 1 once (progressive), then 2 more epochs over both (training only), then files 2, 3 once
    assert r.points[0].inc_examples == sum(rows[:2]) + 2 * sum(rows[:2])
    assert s["incremental_examples"] == sum(rows[:4]) + 2 * sum(rows[:2])
    assert len(r.incremental_auc_by_file) == 5  # each file scored exactly once
    assert math.isnan(s["auc_full_retrain"]) and s["full_retrain_examples"] == 0
    ref = FTRLProximal(spec, FTRLConfig())  # the LR gets the same files, in order, and the same history passes
    ref.train(files[0])
    ref.train(files[1])
    ref.train(EventBatch.concat(files[:2]), epochs=2)
    assert r.points[0].auc_lr == auc(files[2].label, ref.score(files[2]))
    ref.train(files[2])
    ref.train(files[3])
    assert r.points[1].auc_lr == auc(files[4].label, ref.score(files[4]))
    assert s["auc_lr"] == pytest.approx((r.points[0].auc_lr + r.points[1].auc_lr) / 2)
    with pytest.raises(ValueError, match="overlaps the first point"):
        run_quality("syn", spec, files, names, ModelConfig(), cfg, points=[1, 4], history=2)
