"""Update policies return the right decisions; fusion is exact; the core applies them."""

import pytest
import torch

from tests.support.data import synthetic_file
from trainer.config import ModelConfig, Strategy, TrainConfig
from trainer.data import load_spec
from trainer.local import LocalTrainer
from trainer.strategies import (
    Action,
    Decision,
    FullRetrainPolicy,
    FusionPolicy,
    OnlinePolicy,
    PeriodicPolicy,
    fuse,
    make_policy,
)

SPEC = load_spec("taobao")
CFG = TrainConfig(batch_size=128, seed=3)


def test_online_trains_each_new_shard_once_in_order():
    assert [OnlinePolicy().decide(i) for i in range(3)] == [Decision(Action.TRAIN, (i,)) for i in range(3)]


def test_periodic_trains_the_window_every_period_shards():
    p = PeriodicPolicy(window=3, period=2)
    got = [p.decide(i) for i in range(6)]
    assert [d.action for d in got] == [Action.SKIP, Action.TRAIN] * 3
    assert [d.files for d in got if d.action is Action.TRAIN] == [(0, 1), (1, 2, 3), (3, 4, 5)]
    assert all(d.epochs == 1 and not d.shuffle for d in got)
    with pytest.raises(ValueError):
        PeriodicPolicy(window=0)


def test_fusion_and_full_retrain_decisions():
    assert FusionPolicy(0.25).decide(4) == Decision(Action.TRAIN, (4,), fuse_lambda=0.25)
    d = FullRetrainPolicy(3).decide(2)
    assert (d.action, d.files, d.epochs, d.shuffle) == (Action.RETRAIN, (0, 1, 2), 3, True)
    for s, cls in [
        ("online", OnlinePolicy),
        ("periodic", PeriodicPolicy),
        ("fusion", FusionPolicy),
        ("full_retrain", FullRetrainPolicy),
    ]:
        assert isinstance(make_policy(TrainConfig(strategy=s)), cls)
    assert TrainConfig(strategy="fusion").strategy is Strategy.FUSION


def test_fuse_formula_is_exact():
    new = {"w": torch.tensor([1.0, 2.0, -4.0]), "b": torch.tensor([0.5])}
    prev = {"w": torch.tensor([3.0, 0.0, 4.0]), "b": torch.tensor([-0.5])}
    out = fuse(new, prev, 0.25)
    assert torch.equal(out["w"], 0.25 * new["w"] + 0.75 * prev["w"])
    assert torch.equal(out["w"], torch.tensor([2.5, 0.5, 2.0]))
    assert torch.equal(fuse(new, prev, 1.0)["w"], new["w"])
    assert torch.equal(fuse(new, prev, 0.0)["b"], prev["b"])
    with pytest.raises(KeyError):
        fuse({"w": new["w"]}, prev, 0.5)


def test_apply_fusion_mixes_dense_params_of_before_and_after():
    shards = [synthetic_file(SPEC, 600, seed=s) for s in range(2)]
    t = LocalTrainer(SPEC, ModelConfig(), CFG)
    t.train(shards[0])
    prev = t.dense_state()
    plain = LocalTrainer(SPEC, ModelConfig(), CFG)
    plain.train(shards[0])
    plain.apply_decision(OnlinePolicy().decide(1), shards)
    spent = t.apply_decision(FusionPolicy(0.3).decide(1), shards)
    assert spent["examples"] == 600
    for k, v in t.dense_state().items():
        assert torch.equal(v, 0.3 * plain.dense_state()[k] + 0.7 * prev[k]), k


def test_full_retrain_starts_fresh_and_counts_every_epoch():
    shards = [synthetic_file(SPEC, 400, seed=s) for s in range(3)]
    t = LocalTrainer(SPEC, ModelConfig(), CFG)
    t.train(shards[0])
    fresh = t.fresh()
    fresh.apply_decision(FullRetrainPolicy(2).decide(2), shards)
    spent = t.apply_decision(FullRetrainPolicy(2).decide(2), shards)
    assert spent["examples"] == 2 * 1200 and t.examples_trained == 2400
    for k, v in fresh.dense_state().items():  # a retrain in place equals one on a fresh trainer
        assert torch.equal(v, t.dense_state()[k]), k
    spent = t.apply_decision(PeriodicPolicy(2, period=2).decide(0), shards)
    assert spent["examples"] == 0
