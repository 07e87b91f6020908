"""Issue 22's per-request savings keep the answers bit-identical: the catalogue's item ids are not parsed a
second time when a request gives them as int64 ids, and scoring does not re-enter eval mode per request."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.features import RequestFeatures, SpecRoles
from trainer.data import load_spec
from trainer.data.parse import Rejections, parse_columns

SPEC = load_spec("taobao")
FEATURES = RequestFeatures(SPEC, SpecRoles.of(SPEC, None, None))


def _parsed(name: str, arr: pa.Array) -> np.ndarray:
    rej = Rejections(len(arr))
    parsed, _ = parse_columns(pa.table({name: arr}), (SPEC.column_map[name],), SPEC.null_tokens, rej)
    return np.asarray(parsed[name], np.int64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50))
def test_int64_item_ids_skip_the_second_parse_with_the_same_ids(ids):
    item = FEATURES.roles.item_column
    arr = pa.array(np.asarray(ids, np.int64))
    fast = FEATURES._ids_of(item, arr)
    assert fast.dtype == np.int64 and np.array_equal(fast, _parsed(item, arr))


def test_text_or_null_ids_still_take_the_parser():
    item = FEATURES.roles.item_column
    for arr in (pa.array(["12", " 7", "x"]), pa.array([1, None, 3], pa.int64()), pa.array([1, 2], pa.int32())):
        assert np.array_equal(FEATURES._ids_of(item, arr), _parsed(item, arr))


def test_scoring_leaves_eval_mode_alone_and_training_sets_it_back(tmp_path):
    from bench.servedata import write_taobao_csv
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer

    batch = read_data_file(write_taobao_csv(tmp_path / "p.csv", 300, 0), Validator(SPEC))
    core = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=64))
    core.base_model.train()  # as training leaves it
    first = core.score(batch)
    assert not any(m.training for m in core.base_model.modules())
    seen = []
    for m in core.base_model.modules():
        m.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    again = core.score(batch)  # already in eval mode: scored as such, the same bits
    assert seen and not any(seen) and np.array_equal(first, again)
    core.base_model.train()
    after = core.score(batch)  # back from training: eval mode again
    assert seen[-1] is False and not core.base_model.training and after.shape == first.shape


def test_the_foreach_dense_optimizer_trains_the_same_bits(tmp_path, monkeypatch):
    """Adagrad (and SGD) stepping all dense parameters in one foreach call: the same weights and state,
    bit for bit, as the per-parameter loop; a version's param groups restore with foreach on."""
    import torch

    import trainer.core as core_mod
    from bench.servedata import write_taobao_csv
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer

    batch = read_data_file(write_taobao_csv(tmp_path / "p.csv", 200, 3), Validator(SPEC))
    out = {}
    for foreach in (False, True):
        monkeypatch.setattr(core_mod, "DENSE_FOREACH", foreach)
        t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=64, seed=5))
        t.train(batch)
        out[(foreach, "adagrad")] = t
    # SGD on the same kinds of tensors (a trainer each would double the test's time)
    for foreach in (False, True):
        monkeypatch.setattr(core_mod, "DENSE_FOREACH", foreach)
        gen = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((64, 32), (32,), (32, 1), (1,))]
        opt = core_mod.dense_optimizer(params, TrainConfig(dense_optimizer="sgd"))
        for _ in range(5):
            for q in params:
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()
        out[(foreach, "sgd")] = params
    assert all(torch.equal(a, b) for a, b in zip(out[(False, "sgd")], out[(True, "sgd")], strict=True))
    for opt in ("adagrad",):
        loop, fused = out[(False, opt)], out[(True, opt)]
        assert fused.optimizer.param_groups[0]["foreach"] is True
        for (k, a), b in zip(loop.dense_state().items(), fused.dense_state().values(), strict=True):
            assert torch.equal(a, b), k
        arrays, meta = loop.export_state()
        for key in [k for k in arrays if k.startswith("optimizer/")]:
            assert np.array_equal(arrays[key], fused.export_state()[0][key]), key
    # a version written with the loop (foreach False in its param groups) restores stepping with foreach
    monkeypatch.setattr(core_mod, "DENSE_FOREACH", True)
    arrays, meta = out[(False, "adagrad")].export_state()
    restored = out[(True, "adagrad")]
    restored.import_state(arrays, meta)
    assert restored.optimizer.param_groups[0]["foreach"] is True
