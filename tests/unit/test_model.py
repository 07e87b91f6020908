"""Model shapes for both interactions, config errors, and gradients reaching embedding rows."""

import numpy as np
import pytest
import torch

from cluster.config import ConfigError
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.embeddings import LocalEmbeddings, TableFullError
from trainer.model import DLRM, build_model
from paramserver.config import TableConfig


@pytest.mark.parametrize("cfg", [ModelConfig("dcn", dcn_layers=2), ModelConfig("dcn", dcn_layers=3, dcn_rank=4),
                                 ModelConfig("dot", bottom_mlp=(32, 16)), ModelConfig("dcn", top_mlp=())])
def test_forward_shapes_and_loss(cfg):
    m = DLRM({"user": 16, "item": 16, "category": 16}, dense_dim=2, cfg=cfg)
    emb = {t: torch.randn(5, 16) for t in ("user", "item", "category")}
    logits = m(emb, torch.randn(5, 2))
    assert logits.shape == (5,)
    loss = DLRM.loss(logits, torch.tensor([0, 1, 0, 1, 1.0]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    s = DLRM.scores(logits)
    assert ((s > 0) & (s < 1)).all()


def test_dot_needs_matching_dims_and_configs_explain():
    with pytest.raises(ConfigError, match="bottom_mlp"):
        DLRM({"user": 16, "item": 8}, 2, ModelConfig("dot", bottom_mlp=(16,)))
    with pytest.raises(ConfigError, match="interaction must be one of"):
        ModelConfig("fm")
    with pytest.raises(ConfigError, match="fusion_lambda must be in"):
        TrainConfig(fusion_lambda=1.5)
    with pytest.raises(ConfigError, match="strategy must be one of"):
        TrainConfig(strategy="sometimes")
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"lr": 0.1})


def test_build_model_is_seeded_and_leaves_global_rng_alone():
    spec = load_spec("taobao")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(spec, ModelConfig(), seed=7)
    assert torch.equal(torch.rand(1), before)
    b = build_model(spec, ModelConfig(), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("interaction", ["dcn", "dot"])
def test_backward_updates_exactly_the_rows_looked_up(interaction):
    spec = load_spec("taobao")
    emb = LocalEmbeddings.for_spec(spec, TrainConfig(table_capacity=64))
    model = build_model(spec, ModelConfig(interaction, bottom_mlp=(16,)))
    ids = {"user": np.array([5, 9, 5]), "item": np.array([100, 200, 300]), "category": np.array([1, 1, 2])}
    emb.lookup({"user": np.array([77]), "item": np.array([77]), "category": np.array([77])})  # untouched rows
    before = {t: dict(zip(*map(list, emb.table_rows(t)))) for t in emb.names}
    out = emb.lookup(ids)
    assert out["user"].requires_grad
    DLRM.loss(model(out, torch.randn(3, 2)), torch.tensor([1.0, 0.0, 1.0])).backward()
    for t in emb.names:
        ids_after, rows_after = emb.table_rows(t)
        for i, r in zip(ids_after, rows_after):
            changed = not np.array_equal(before[t].get(i, r), r) if i in before[t] else True
            assert changed == (i in set(ids[t].tolist())), (t, i)
    assert model.head.weight.grad is not None


def test_new_rows_are_the_ps_initial_rows_and_full_tables_say_so():
    from paramserver.hashing import init_rows

    t = TableConfig("item", 8)
    e = LocalEmbeddings((t,), capacity=4, lr=0.1, seed=3)
    with torch.no_grad():
        rows = e.lookup({"item": np.array([2**40, -5, 2**40])})["item"].numpy()
    assert np.array_equal(rows, init_rows(t, np.array([2**40, -5, 2**40]), seed=3))
    assert len(e) == 2
    with pytest.raises(TableFullError, match="table_capacity"):
        e.lookup({"item": np.array([1, 2, 3])})
