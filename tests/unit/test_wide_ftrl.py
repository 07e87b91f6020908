"""The wide part's FTRL-like learning (issue 24, third pass): the count anchor (an id's Adagrad accumulator grows
with its occurrences, as FTRL's n, not with their square) and the wide intercept (FTRL's bias coordinate),
checked through FBGEMM's real row-wise Adagrad on the local backend; versions from before load as trained."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.config import ConfigError
from tests.support.data import synthetic_file
from trainer.backends import LocalBackend, ps_config_for
from trainer.config import ModelConfig, TrainConfig, model_config_of_version
from trainer.core import TrainerCore, count_anchor
from trainer.data import load_spec
from trainer.model import build_model
from trainer.sparse import WIDE_DIM

SPEC = load_spec("taobao")
ROWS = 64
TCFG = TrainConfig(batch_size=ROWS, seed=5, sparse_lr=0.1)  # one file of ROWS rows = one step


def _one_step(model: ModelConfig):
    """(core after one training step on one file, the file, the residuals p - y of that step)."""
    core = TrainerCore(SPEC, model, TCFG, LocalBackend(ps_config_for(SPEC, TCFG, model=model)))
    batch = synthetic_file(SPEC, ROWS, seed=11)
    p = core.score(batch).astype(np.float64)  # the model before the step: the residuals the step learns from
    core.train(batch)
    return core, batch, p - batch.label


@pytest.mark.parametrize("anchor", ["count", "row"])
def test_the_wide_accumulator_grows_with_an_ids_occurrences_like_ftrls_n(anchor):
    """One step of FBGEMM's row-wise Adagrad on the item table's wide rows: for an id in c rows with residuals
    r, the weight's gradient is sum(r) / B and the anchor's beta sqrt(c) / B (count) or beta c / B (row), so
    the accumulator is their mean square over the row's 4 columns and the weight moved by -lr g / sqrt(acc)."""
    model = ModelConfig(wide_anchor=anchor)
    core, batch, r = _one_step(model)
    ids = np.asarray(batch.jagged("item")[0], np.int64)
    uniq, inv, c = np.unique(ids, return_inverse=True, return_counts=True)
    assert c.max() > 1 and c.min() == 1  # the file has repeated and single ids: both cases are checked
    g = np.bincount(inv, weights=r) / ROWS
    a = model.wide_beta * (np.sqrt(c) if anchor == "count" else c) / ROWS
    want_acc = (g**2 + a**2) / WIDE_DIM
    state = core.backend.table_state()["item__wide"]
    assert np.array_equal(state["ids"], uniq)
    acc = np.asarray(state["opt_state_0"], np.float64).reshape(-1)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-4)
    rows = np.asarray(state["rows"], np.float64)
    np.testing.assert_allclose(rows[:, 0], -TCFG.sparse_lr * g / (np.sqrt(want_acc) + TCFG.sparse_eps), rtol=1e-3)
    assert not rows[:, 2:].any()  # columns 2-3 never move


def test_count_anchor_scales_each_occurrence_by_one_over_the_root_of_its_ids_count():
    ids = np.array([4, 9, 4, 4, 2, 9])
    grads = np.full((6, WIDE_DIM), 0.5, np.float32)
    count_anchor(ids, grads)
    np.testing.assert_allclose(grads[:, 1], 0.5 / np.sqrt([3, 2, 3, 3, 1, 2]), rtol=1e-6)
    assert (grads[:, [0, 2, 3]] == 0.5).all()  # only the anchor column changes
    for i in (4, 9, 2):  # summed over an id's occurrences (what the kernel sees): 0.5 sqrt(c)
        assert grads[ids == i, 1].sum() == pytest.approx(0.5 * np.sqrt((ids == i).sum()), rel=1e-6)
    count_anchor(np.zeros(0, np.int64), np.zeros((0, WIDE_DIM), np.float32))  # an empty part is fine


def test_the_wide_intercept_is_a_dense_parameter_at_the_wide_gain_that_learns_the_base_rate():
    model = ModelConfig()  # the defaults: wide on, count anchor, wide intercept
    assert model.wide and model.wide_bias and model.wide_anchor == "count"
    net = build_model(SPEC, model, seed=1)
    assert float(net.wide_dense.bias.detach()) == 0.0  # zero at start: a new model's logit is the head's bias
    emb = {k: torch.zeros(3, 16) for k in net.tables} | {k: torch.zeros(3, WIDE_DIM) for k in net.wide_keys}
    dense = torch.zeros(3, len(SPEC.dense))
    with torch.no_grad():
        before = net.forward_pooled(emb, dense)
        net.wide_dense.bias.fill_(0.25)
        after = net.forward_pooled(emb, dense)
    torch.testing.assert_close(after - before, torch.full((3,), model.wide_dense_gain * 0.25))
    core, _, r = _one_step(model)
    bias = float(core.base_model.wide_dense.bias.detach())
    # it learns: against the mean residual p - y, by dense_lr (Adagrad's first step), i.e. gain * dense_lr on the logit
    assert abs(r.mean()) > 0.01 and bias == pytest.approx(-np.sign(r.mean()) * TCFG.dense_lr, rel=1e-3)
    no_bias = build_model(SPEC, ModelConfig(wide_bias=False), seed=1)
    assert "wide_dense.bias" in net.state_dict() and "wide_dense.bias" not in no_bias.state_dict()


def test_versions_from_before_load_with_the_wide_path_they_were_trained_with():
    before = {"arch": "dlrm", "wide": True, "wide_beta": 2.0, "wide_dense_gain": 16.0}  # the second pass's config
    old = model_config_of_version(before)
    assert not old.wide_bias and old.wide_anchor == "row"
    assert "wide_dense.bias" not in build_model(SPEC, old).state_dict()  # its stored dense parameters load as they are
    assert model_config_of_version(dataclasses.asdict(ModelConfig())) == ModelConfig()
    with pytest.raises(ConfigError, match="model.wide_anchor must be one of"):
        ModelConfig(wide_anchor="sqrt")
    with pytest.raises(ConfigError, match="model.wide_bias must be true or false"):
        ModelConfig(wide_bias="yes")


def test_workers_count_an_id_over_the_whole_global_minibatch_like_one_process():
    """Ray Train with 2 workers: each pushes its part's gradients; the anchors must be those of one process
    (c counted over the whole minibatch), so the summed update equals the one-process update."""
    step = np.array([7, 7, 9, 7, 3], np.int64)
    whole = np.ones((5, WIDE_DIM), np.float32)
    count_anchor(step, whole)
    parts = [step[:2], step[2:]]
    got = []
    for ids in parts:
        g = np.ones((len(ids), WIDE_DIM), np.float32)
        count_anchor(ids, g, step_ids=step)
        got.append(g)
    np.testing.assert_array_equal(np.concatenate(got), whole)
    alone = np.ones((2, WIDE_DIM), np.float32)
    count_anchor(parts[0], alone)  # counted within the part only: not what one process does
    assert not np.array_equal(alone, whole[:2])
