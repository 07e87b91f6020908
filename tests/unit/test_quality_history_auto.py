"""``train.history_epochs: auto`` (issue 24): passes over the history from its size. A pass over history files of
n_1, n_2, ... rows is sum ceil(n_i / batch_size) optimizer steps; auto makes the fewest passes whose steps reach
``history_steps``, between 1 and ``history_max_epochs``, so a new small log gets several passes and a long
history one; a run without history makes none."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.cli import main
from common.config import ConfigError
from tests.support.data import synthetic_file
from trainer.config import HISTORY_AUTO, ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.ftrl import FTRLConfig
from trainer.quality import newcomer_windows, run_quality
from trainer.strategies import Action, history_decision

ROWS = st.lists(st.integers(0, 5000), max_size=8)
CFG = st.builds(
    TrainConfig,
    batch_size=st.integers(1, 512),
    history_epochs=st.just(HISTORY_AUTO),
    history_steps=st.integers(1, 200),
    history_max_epochs=st.integers(1, 6),
)


def test_auto_is_accepted_and_anything_else_but_an_integer_is_refused_with_what_to_write():
    assert TrainConfig(history_epochs="auto").history_epochs == HISTORY_AUTO
    assert TrainConfig.from_dict({"history_epochs": "auto", "history_steps": 10}).history_steps == 10
    for bad in ("three", "AUTO", "", 0, 1.5, True):
        with pytest.raises(ConfigError, match="history_epochs"):
            TrainConfig(history_epochs=bad)
    with pytest.raises(ConfigError, match="history_steps"):
        TrainConfig(history_steps=0)
    with pytest.raises(ConfigError, match="history_max_epochs"):
        TrainConfig(history_max_epochs=0)


@given(cfg=CFG, rows=ROWS)
def test_auto_makes_the_fewest_passes_that_reach_the_steps_within_the_cap(cfg, rows):
    steps = sum(math.ceil(r / cfg.batch_size) for r in rows)
    assert cfg.history_steps_of(rows) == steps
    p = cfg.history_passes(rows)
    assert 1 <= p <= cfg.history_max_epochs
    if steps == 0:
        assert p == 1
    elif p < cfg.history_max_epochs:
        assert p * steps >= cfg.history_steps  # enough steps ...
        assert p == 1 or (p - 1) * steps < cfg.history_steps  # ... and not one pass more than needed
    else:
        assert (p - 1) * steps < cfg.history_steps or p == 1  # capped: fewer passes would not have reached them
    d = history_decision(cfg, len(rows), rows)
    assert (d.action, d.epochs) == ((Action.SKIP, 1) if p == 1 or not rows else (Action.TRAIN, p - 1))


@given(cfg=CFG, rows=ROWS, more=ROWS)
def test_a_history_once_done_stays_at_one_pass_so_the_worker_may_drop_its_files(cfg, rows, more):
    """The stream worker keeps the history's files for the extra passes only until ``history_done``: from then
    on one pass is settled, whatever history files follow; a longer history never gets more passes."""
    if cfg.history_done(rows):
        assert cfg.history_passes(rows) == 1 and cfg.history_passes(rows + more) == 1
    assert cfg.history_passes(rows + more) <= cfg.history_passes(rows) or cfg.history_steps_of(rows) == 0


def test_an_integer_is_taken_as_it_is_and_auto_needs_the_rows():
    assert TrainConfig(history_epochs=3).history_passes([10**7]) == 3
    assert TrainConfig(history_epochs=1).history_done([]) and not TrainConfig(history_epochs=2).history_done([10**7])
    assert history_decision(TrainConfig(history_epochs="auto"), 0).action is Action.SKIP  # no history: no passes
    with pytest.raises(ValueError, match="needs the history files' rows"):
        history_decision(TrainConfig(history_epochs="auto"), 2)


def _replay(cfg, history, files):
    spec = load_spec("taobao")
    names = [f"f{i}" for i in range(len(files))]
    return run_quality(
        "syn", spec, files, names, ModelConfig(), cfg, points=[2], lr=FTRLConfig(), history=history, full_retrain=False
    )


def _same(a, b):
    assert [(p.auc_incremental, p.auc_lr, p.inc_examples) for p in a.points] == [
        (p.auc_incremental, p.auc_lr, p.inc_examples) for p in b.points
    ]


def test_in_the_replay_auto_is_the_integer_it_resolves_to_and_changes_nothing_without_history():
    spec = load_spec("taobao")
    files = [synthetic_file(spec, 64, s, start_ts=1_511_658_000 + 300 * s) for s in range(3)]
    auto = TrainConfig(batch_size=32, history_epochs="auto", history_steps=5)  # 2 files of 64: 4 steps a pass
    assert auto.history_passes([64, 64]) == 2
    two = _replay(auto, 2, files)
    assert two.points[0].inc_examples == 2 * 128  # the progressive pass and one more, training only
    _same(two, _replay(auto.replace(history_epochs=2), 2, files))  # model and LR: 2 passes
    long = auto.replace(history_steps=4)  # the history has given 4 steps in one pass: no more
    _same(_replay(long, 2, files), _replay(long.replace(history_epochs=1), 2, files))
    _same(_replay(auto, 0, files), _replay(auto.replace(history_epochs=1), 0, files))  # no history, no pass


def test_the_newcomer_windows_resolve_auto_from_the_rows_they_train_on():
    spec = load_spec("taobao")
    log = synthetic_file(spec, 300, seed=5)
    auto = TrainConfig(batch_size=16, history_epochs="auto", history_steps=12, history_max_epochs=3)
    assert auto.history_passes([50, 50]) == 2  # 8 steps a pass
    a = newcomer_windows(spec, log, 100, 50, 2, ModelConfig(), auto, file_rows=50)
    b = newcomer_windows(spec, log, 100, 50, 2, ModelConfig(), auto.replace(history_epochs=2), file_rows=50)
    assert a.auc_model == b.auc_model and a.auc_lr == b.auc_lr


def test_bench_quality_newcomer_takes_auto_and_reports_the_passes_and_each_window(tmp_path, capsys):
    from tests.support.data import small_csv

    data = small_csv(tmp_path / "log.csv", 3000, 0)
    args = ["bench", "quality", "--spec", "taobao", "--data", str(data), "--files", "3", "--warmup", "1", "--json"]
    assert main([*args, "--newcomer", "400,100,2,200", "--history-epochs", "auto", "--per-point"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["history_epochs"] == "auto" and out["history_passes"] == 3  # 2 files of 200, batch 256: 2 steps
    assert len(out["per_window"]) == out["windows"] == 2
    m = [w["auc_model"] for w in out["per_window"].values()]
    assert out["auc_model"] == pytest.approx(float(np.mean(m)))
    with pytest.raises(SystemExit) as bad:  # argparse's usage error
        main([*args, "--newcomer", "400,100,2", "--history-epochs", "three"])
    assert bad.value.code == 2 and "integer >= 1 or auto" in capsys.readouterr().err
