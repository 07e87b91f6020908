"""Model shapes for both interactions, config errors, and gradients reaching embedding rows."""

import numpy as np
import pytest
import torch

from cluster.config import ConfigError
from paramserver.config import PSConfig, TableConfig
from trainer.backends import LocalBackend, ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.model import DLRM, build_model
from trainer.sparse import BackendEmbeddingBagCollection, EmbeddingBagConfig, batch_to_kjt


def _ebc(dims):
    return BackendEmbeddingBagCollection(
        [EmbeddingBagConfig(num_embeddings=64, embedding_dim=d, name=t, feature_names=[t]) for t, d in dims.items()]
    )


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig("dcn", dcn_layers=2),
        ModelConfig("dcn", dcn_layers=3, dcn_rank=4),
        ModelConfig("dot", bottom_mlp=(32, 16)),
        ModelConfig("dcn", top_mlp=()),
    ],
)
def test_forward_shapes_and_loss(cfg):
    m = DLRM(_ebc({"user": 16, "item": 16, "category": 16}), dense_dim=2, cfg=cfg)
    emb = {t: torch.randn(5, 16) for t in ("user", "item", "category")}
    logits = m.forward_pooled(emb, torch.randn(5, 2))
    assert logits.shape == (5,)
    loss = DLRM.loss(logits, torch.tensor([0, 1, 0, 1, 1.0]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    s = DLRM.scores(logits)
    assert ((s > 0) & (s < 1)).all()


def test_dot_needs_matching_dims_and_configs_explain():
    with pytest.raises(ConfigError, match="bottom_mlp"):
        DLRM(_ebc({"user": 16, "item": 8}), 2, ModelConfig("dot", bottom_mlp=(16,)))
    with pytest.raises(ConfigError, match="TorchRec"):
        build_model(load_spec("taobao"), ModelConfig(arch="torchrec_dlrm", bottom_mlp=(8,)))
    with pytest.raises(ConfigError, match="arch must be one of"):
        ModelConfig(arch="wide_deep")
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


@pytest.mark.parametrize("arch", ["dlrm", "torchrec_dlrm", "torchrec_dlrm_dcn"])
def test_a_push_updates_exactly_the_rows_looked_up(arch):
    """Pull -> stage -> forward -> backward -> push changes the looked-up rows and no other."""
    from tests.support.data import synthetic_file

    spec = load_spec("taobao")
    backend = LocalBackend(ps_config_for(spec, TrainConfig()))
    model = build_model(spec, ModelConfig(interaction="dot", arch=arch, bottom_mlp=(16,)))
    ebc = model.embedding_bag_collection if arch == "dlrm" else model.sparse_arch.embedding_bag_collection
    batch = synthetic_file(spec, 3, seed=0)
    untouched = {"user": np.array([7777]), "item": np.array([7777]), "category": np.array([7777])}
    backend.wait(backend.pull_many(untouched, step=0))
    before = {t: dict(zip(*map(list, backend.table_rows(t)))) for t in untouched}
    kjt = batch_to_kjt(batch, ["user", "item", "category"])
    ids = ebc.table_ids(kjt)
    ebc.stage(ids, backend.wait(backend.pull_many(ids, step=0)), requires_grad=True)
    logits = model(torch.randn(3, 2), kjt).reshape(-1)
    DLRM.loss(logits, torch.tensor([1.0, 0.0, 1.0])).backward()
    backend.wait(backend.push_many(ebc.take_grads(), step=0))
    for t in untouched:
        for i, r in zip(*backend.table_rows(t)):
            changed = not np.array_equal(before[t][i], r) if i in before[t] else True
            assert changed == (i in set(ids[t].tolist())), (t, i)


def test_new_rows_are_the_ps_initial_rows():
    from paramserver.hashing import init_rows

    t = TableConfig("item", 8)
    b = LocalBackend(PSConfig(tables=(t,), capacity_per_shard=4, seed=3))
    rows = b.wait(b.pull_many({"item": np.array([2**40, -5, 2**40])}, step=0))["item"]
    assert np.array_equal(rows, init_rows(t, np.array([2**40, -5, 2**40]), seed=3))
    assert len(b.table_rows("item")[0]) == 2
