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
