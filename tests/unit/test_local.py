"""LocalTrainer: learns a known signal, is deterministic, and matches a sync PS step for step."""

import numpy as np
import pytest
import torch

from paramserver.config import PSConfig
from tests.support.data import synthetic_file
from trainer.backends import ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.core import dense_optimizer
from trainer.data import EventBatch, RunningStats, load_spec
from trainer.local import LocalTrainer
from trainer.metrics import auc
from trainer.model import DLRM, build_model

SPEC = load_spec("taobao")
CFG = TrainConfig(batch_size=128, sparse_lr=0.1, dense_lr=0.05, seed=11)
PS = PSConfig(capacity_per_shard=1024)


def test_learns_a_synthetic_signal_on_a_held_out_shard():
    t = LocalTrainer(SPEC, ModelConfig(), CFG, PS)
    for s in range(4):
        t.step_file(synthetic_file(SPEC, 3000, seed=s))
    held_out = synthetic_file(SPEC, 3000, seed=99)
    a = auc(held_out.label, t.score(held_out))
    assert a > 0.75, a  # the Bayes AUC of this signal is about 0.8; an untrained model gives 0.5
    first, last = t.validator.files[0], t.validator.files[-1]
    assert last.auc > first.auc + 0.1
    assert last.examples_per_s > 0


def test_same_seed_gives_bit_identical_parameters():
    def run(seed):
        t = LocalTrainer(SPEC, ModelConfig(), CFG.replace(seed=seed), PS)
        for s in range(2):
            t.step_file(synthetic_file(SPEC, 1500, seed=s))
        t.train(synthetic_file(SPEC, 1000, seed=5), epochs=2, shuffle=True)
        return t.state_dict()

    a, b, c = run(1), run(1), run(2)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for table in a["embeddings"]:
        for key in ("ids", "rows", "opt_state_0", "count", "last_seen"):
            assert np.array_equal(a["embeddings"][table][key], b["embeddings"][table][key]), (table, key)
    assert a["stats"] == b["stats"]
    assert not np.array_equal(a["embeddings"]["item"]["rows"], c["embeddings"]["item"]["rows"])


def test_scoring_a_fresh_model_leaves_the_batch_alone():
    """Regression: with empty statistics, scoring clipped the batch's own dense features in place."""
    batch = synthetic_file(SPEC, 300, seed=4)
    batch.dense[:, 0] = 23.0  # beyond dense_clip: a raw hour of day
    before = batch.dense.copy()
    LocalTrainer(SPEC, ModelConfig(), CFG, PS).score(batch)
    np.testing.assert_array_equal(batch.dense, before)


def test_score_does_not_change_the_model_or_the_statistics():
    t = LocalTrainer(SPEC, ModelConfig(), CFG, PS)
    t.train(synthetic_file(SPEC, 500, seed=0))
    before = t.state_dict()
    t.score(synthetic_file(SPEC, 500, seed=1))
    after = t.state_dict()
    assert before["stats"] == after["stats"]
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


@pytest.mark.parametrize("interaction", ["dcn", "dot"])
def test_matches_a_sync_parameter_server_shard_step_for_step(interaction):
    """The core's recipe equals a hand-written pull / forward / backward / push loop on a PS shard."""
    from paramserver.shard import EmbeddingShard
    from trainer.core import count_anchor

    mcfg = ModelConfig(interaction, bottom_mlp=(16,))
    batch = EventBatch.concat([synthetic_file(SPEC, 700, seed=s) for s in range(2)])
    local = LocalTrainer(SPEC, mcfg, CFG, PS)
    local.train(batch)

    shard = EmbeddingShard(ps_config_for(SPEC, CFG, PS))
    model = build_model(SPEC, mcfg, CFG.seed)
    opt = dense_optimizer(model.parameters(), CFG)
    stats = RunningStats(len(SPEC.dense)).update(batch.dense)
    dense = torch.from_numpy(np.clip(stats.normalize(batch.dense), -CFG.dense_clip, CFG.dense_clip))
    for step, lo in enumerate(range(0, len(batch), CFG.batch_size)):
        sl = slice(lo, lo + CFG.batch_size)
        ids = {k: v[sl] for k, v in batch.sparse.items()}
        ids |= {f"{k}__wide": v for k, v in ids.items()}  # model.wide (the default): each feature's wide table
        rows = {k: torch.from_numpy(r).requires_grad_() for k, r in shard.pull(ids, step=step).items()}
        loss = DLRM.loss(model.forward_pooled(rows, dense[sl]), torch.from_numpy(batch.label[sl]))
        opt.zero_grad()
        loss.backward()
        grads = {k: (ids[k], rows[k].grad.numpy()) for k in ids}
        for k in grads:  # model.wide_anchor count (the default): the anchor column scaled per id
            if k.endswith("__wide"):
                count_anchor(*grads[k])
        shard.push(grads, step=step)
        opt.step()

    for table in ("user", "item", "category", "user__wide", "item__wide", "category__wide"):
        lid, lrows = local.backend.table_rows(table)
        pid, prows = shard.table_rows(table)
        assert np.array_equal(lid, pid)
        np.testing.assert_array_equal(lrows, prows)  # bit-identical, not just within 1e-6
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(local.model.state_dict()[k].numpy(), v.numpy())
