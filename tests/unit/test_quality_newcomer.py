"""trainer.quality.newcomer_windows: issue 24's newcomer case (train a fresh model and a fresh FTRL-LR on a new
log's first rows, score the rows after them) repeated on disjoint windows, each window exactly the newcomer
path run on its own rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.support.data import synthetic_file
from trainer.config import ModelConfig, TrainConfig
from trainer.data import EventBatch, load_spec
from trainer.ftrl import FTRLConfig, FTRLProximal
from trainer.local import LocalTrainer
from trainer.metrics import auc
from trainer.quality import newcomer_windows


def test_every_window_is_the_newcomer_path_on_its_own_rows_and_the_summary_pairs_them():
    spec = load_spec("taobao")
    log = synthetic_file(spec, 600, seed=3)
    cfg = TrainConfig(batch_size=32, history_epochs=2)
    res = newcomer_windows(spec, log, 120, 30, 2, ModelConfig(), cfg, FTRLConfig(), file_rows=60)
    assert res.starts == (0, 450)  # disjoint, spread over the log
    s0 = 450  # window 1 by hand: two files of 60 scored then trained, one more shuffled pass, then the 30 after
    parts = [log.take(np.arange(s0, s0 + 60)), log.take(np.arange(s0 + 60, s0 + 120))]
    test = log.take(np.arange(s0 + 120, s0 + 150))
    ref = LocalTrainer(spec, ModelConfig(), cfg)
    for i, p in enumerate(parts):
        ref.step_file(p, f"part-{i:05d}")
    ref.train(EventBatch.concat(parts), epochs=1, shuffle=True)  # history_epochs 2: one more pass, training only
    lr = FTRLProximal(spec, FTRLConfig())
    for p in parts:
        lr.train(p)
    assert res.auc_lr[1] == auc(test.label, lr.score(test))  # the LR saw exactly the window's trained rows, once
    assert res.auc_model[1] == auc(test.label, ref.score(test))
    s = res.summary()
    d = np.asarray(res.auc_model) - np.asarray(res.auc_lr)
    assert s["windows"] == 2 and s["wins"] + s["ties"] + s["losses"] == 2
    assert s["auc_model_minus_lr"] == pytest.approx(d.mean())
    assert s["stderr"] == pytest.approx(d.std(ddof=1) / math.sqrt(2))


def test_a_window_whose_held_out_rows_hold_one_class_is_left_out_and_bad_sizes_are_refused():
    spec = load_spec("taobao")
    log = synthetic_file(spec, 200, seed=1)
    log.label[150:200] = 0.0  # the second window's held-out rows: no click, AUC undefined
    res = newcomer_windows(spec, log, 50, 50, 2, ModelConfig(), TrainConfig(batch_size=64))
    assert res.starts == (0,) and len(res.auc_model) == 1
    with pytest.raises(ValueError, match="fewer than one window"):
        newcomer_windows(spec, log, 150, 60, 1, ModelConfig(), TrainConfig())
    with pytest.raises(ValueError, match="must be >= 1"):
        newcomer_windows(spec, log, 0, 60, 1, ModelConfig(), TrainConfig())
