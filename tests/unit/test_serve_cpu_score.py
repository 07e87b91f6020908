"""Issue 22, fifth session: the training core scores freshrec's DLRM without a KJT (``trainer.core._PooledPlan``) and
a scoring forward takes the wide rows' column 0 without ``_WideWeight``'s autograd.Function. Both keep every bit:
each scores a fixed request set, and seeded random ones, against the code they replaced (kept verbatim in
``bench.profiling``: ``_old_core_score``, ``_old_forward_pooled``) and against the KJT path that TorchRec's archs keep
(``TrainerCore._logits_kjt``), over a spec with a sum- and a mean-pooled multi-valued feature (empty bags, bags of
one), dynamic features (a mean-pooled sequence, dynamic dense), the wide part, ids never seen, several chunks; the
served model with an unknown candidate id; and training with progressive validation (step_file scores every file
first) ends in the same parameters, rows and metrics whichever scoring code ran."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trainer.core as core_mod
from bench.profiling import _old_core_score, _old_forward_pooled, cpu_ab_names, cpu_cuts
from common.errors import UserError
from trainer.config import ModelConfig, TrainConfig
from trainer.core import TrainerCore, _PooledPlan
from trainer.data import EventBatch, load_spec
from trainer.data.spec import spec_from_dict
from trainer.local import LocalTrainer
from trainer.model import DLRM

START = 1_511_658_000


def _spec():
    """movielens100k_dynamic (a mean-pooled sequence per user, dynamic dense) plus a mean- and a sum-pooled
    multi-valued feature."""
    from common.config import load_yaml_config
    from trainer.data.spec import builtin_specs

    raw = dict(load_yaml_config(builtin_specs()["movielens100k_dynamic"]))
    raw["name"] = "servecpu_score"
    raw["columns"] = [*raw["columns"], {"name": "genre", "type": "id_list", "separator": " "}]
    raw["columns"].append({"name": "tags", "type": "id_list", "separator": " "})
    raw["sparse"] = [
        *raw["sparse"],
        {"name": "genre", "column": "genre", "dim": 8, "pooling": "mean"},
        {"name": "tags", "column": "tags", "dim": 4},
    ]
    raw["dynamic"] = {**raw["dynamic"], "sequences": raw["dynamic"]["sequences"][:1]}
    return spec_from_dict(raw, where="test spec")


SPEC = _spec()


def _jagged(rng, n: int, hi: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(0, max_len + 1, n).astype(np.int64)
    return rng.integers(0, hi, int(lengths.sum())).astype(np.int64), lengths


def _batch(rng, n: int, seed: int, users: int = 60, items: int = 80, ones: bool = False) -> EventBatch:
    """Events of SPEC (without dynamic features): ``ones``: every multi-valued bag holds one id."""
    sparse = {"user": rng.integers(0, users, n).astype(np.int64), "item": rng.integers(0, items, n).astype(np.int64)}
    lengths = {}
    for name, hi, max_len in (("genre", 19, 4), ("tags", 50, 3)):
        v, ln = _jagged(rng, n, hi, max_len)
        if ones:
            v, ln = rng.integers(0, hi, n).astype(np.int64), np.ones(n, np.int64)
        sparse[name], lengths[name] = v, ln
    eid = (np.int64(seed) << 32) + np.arange(n, dtype=np.int64)
    return EventBatch(
        source=f"s{seed}",
        event_id=eid,
        ts=START + seed * 600 + np.sort(rng.integers(0, 600, n)).astype(np.int64),
        label=(rng.random(n) < 0.3).astype(np.float32),
        sparse=sparse,
        dense=rng.normal(size=(n, len(SPEC.dense))).astype(np.float32),
        rows=np.arange(1, n + 1, dtype=np.int64),
        table=pa.table({"event_id": eid}),
        lengths=lengths,
    )


def _trained(files: int = 2, score=None, forward_pooled=None, rows: int = 200) -> LocalTrainer:
    """A core trained on ``files`` data files (step_file: each scored first, then trained; the dynamic state moves
    on); ``score`` / ``forward_pooled``: the scoring code to run meanwhile (the current one when None)."""
    core = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=64, seed=3))
    assert core.model_cfg.wide and core._plan is not None
    rng = np.random.default_rng(11)
    with pytest.MonkeyPatch.context() as mp:
        if score is not None:
            mp.setattr(TrainerCore, "score", score)
        if forward_pooled is not None:
            mp.setattr(DLRM, "forward_pooled", forward_pooled)
        for i in range(files):
            core.step_file(_batch(rng, rows, i), f"part-{i}")
    return core


@pytest.fixture(scope="module")
def core():
    return _trained()


def _kjt_score(core, batch) -> np.ndarray:
    """The current code with the KJT path (what a TorchRec arch takes)."""
    plan, core._plan = core._plan, None
    try:
        return core.score(batch)
    finally:
        core._plan = plan


def _old_score(core, batch) -> np.ndarray:
    """The code before this session: the old core score and the old forward_pooled."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DLRM, "forward_pooled", _old_forward_pooled)
        return _old_core_score(core, batch)


def _same(core, batch, inference: bool = False) -> np.ndarray:
    ctx = torch.inference_mode() if inference else torch.enable_grad()  # a replica's, or a caller's grad mode
    with ctx:
        new = core.score(batch)
        old = _old_score(core, batch)
        kjt = _kjt_score(core, batch)
    assert new.dtype == old.dtype == np.float32 and new.shape == (len(batch),)
    assert new.tobytes() == old.tobytes() == kjt.tobytes()
    return new


def test_a_fixed_request_set_scores_the_same_bits_with_the_old_and_the_new_code(core):
    rng = np.random.default_rng(5)
    batches = [
        _batch(rng, 100, 50),  # candidates: dynamic features from the state, multi-valued bags of 0-4 ids
        _batch(rng, 100, 51, users=10_000, items=10_000),  # mostly ids never seen: cold rows
        _batch(rng, 7, 52, ones=True),  # every bag of one id: _pool's shortcut
        _batch(rng, 1, 53),
        _batch(rng, 0, 54),  # nothing to score
    ]
    batches.append(core.with_features(batches[0]))  # a data file's events annotated (step_file's own scoring)
    seen = {}
    for b in batches:
        arrays = [*b.sparse.values(), *b.lengths.values()]
        before = [v.copy() for v in arrays]
        for inference in (False, True):
            seen[(id(b), inference)] = _same(core, b, inference)
        assert seen[(id(b), False)].tobytes() == seen[(id(b), True)].tobytes()
        for v, w in zip(arrays, before):  # the backend got read-only views: the batch is intact
            assert v.flags.writeable and np.array_equal(v, w)
    b = batches[0]
    assert (b.lengths["genre"] == 0).any() and (b.lengths["tags"] > 1).any()
    assert len(np.unique(seen[(id(b), False)])) > 50  # a real model: the scores differ row to row


def test_several_chunks_take_the_row_slices_as_batch_to_kjt_does(core, monkeypatch):
    monkeypatch.setattr(core_mod, "SCORE_BATCH", 7)  # the old code reads it from trainer.core too
    rng = np.random.default_rng(6)
    for n in (7, 20, 23):
        _same(core, _batch(rng, n, 60 + n))


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.sampled_from([8192, 5]))
def test_random_requests_score_the_same_bits(core, seed, n, chunk):
    rng = np.random.default_rng(seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core_mod, "SCORE_BATCH", chunk)
        _same(core, _batch(rng, n, 70, users=int(rng.integers(5, 500)), items=int(rng.integers(5, 500))))


def test_training_with_progressive_validation_is_the_same_whichever_scoring_code_ran():
    new = _trained(2, rows=80)
    old = _trained(2, score=_old_core_score, forward_pooled=_old_forward_pooled, rows=80)
    a, b = new.state_dict(), old.state_dict()
    for k, v in a["model"].items():
        assert v.numpy().tobytes() == b["model"][k].numpy().tobytes(), k
    for i, state in a["dense_optimizer"]["state"].items():
        for k, v in state.items():
            assert (
                torch.as_tensor(v).numpy().tobytes()
                == torch.as_tensor(b["dense_optimizer"]["state"][i][k]).numpy().tobytes()
            )
    assert a["stats"] == b["stats"] and a["step"] == b["step"] > 0
    for t, part in a["embeddings"].items():
        for field, arr in part.items():
            assert np.asarray(arr).tobytes() == np.asarray(b["embeddings"][t][field]).tobytes(), (t, field)
    assert [dataclasses.astuple(f)[:5] for f in new.validator.files] == [
        dataclasses.astuple(f)[:5] for f in old.validator.files
    ]


def test_ids_other_than_int64_and_models_with_their_own_forward_take_the_kjt_path(core):
    rng = np.random.default_rng(7)
    b = _batch(rng, 30, 80)
    b32 = dataclasses.replace(b, sparse={**b.sparse, "item": b.sparse["item"].astype(np.int32)})
    assert core._plan.fits(core._candidates(b)) and not core._plan.fits(core._candidates(b32))
    assert core.score(b32).tobytes() == _old_score(core, b32).tobytes() == core.score(b).tobytes()

    class OwnForward(DLRM):
        def forward(self, dense, sparse):
            return super().forward(dense, sparse) + 0.0

    ebc = core.base_model.embedding_bag_collection
    assert _PooledPlan.of(core.base_model, ebc) is not None
    assert _PooledPlan.of(OwnForward(ebc, len(SPEC.model_dense_names), core.model_cfg), ebc) is None
    taobao = load_spec("taobao")
    trc = LocalTrainer(taobao, ModelConfig(arch="torchrec_dlrm"), TrainConfig(batch_size=64))
    assert trc._plan is None  # TorchRec's DLRM: the KJT and the collection, as in training


def test_training_keeps_the_wide_anchor_gradient_a_scoring_forward_leaves_out(core):
    rng = np.random.default_rng(8)
    b = core.with_features(_batch(rng, 20, 90))
    kjt = core_mod.batch_to_kjt(b, core.features)
    ids = core.ebc.table_ids(kjt)
    core.ebc.stage(ids, core.backend.wait(core.backend.pull_many(ids)), requires_grad=True)
    dense = core._dense(b)
    core.base_model.train()
    core_mod.logits_of(core.base_model, dense, kjt).sum().backward()
    grads = core.ebc.take_grads()
    core.base_model.eval()
    wide = [t for t in grads if t.endswith("__wide")]
    assert wide and all((grads[t][1][:, 1] != 0).any() for t in wide)  # _WideWeight's anchor: training's path


def test_the_cpu_ab_knows_the_fifth_sessions_cuts_and_refuses_an_unknown_name():
    cuts = cpu_cuts()
    assert {"core_score_no_kjt", "wide_column_no_autograd_fn", "fifth_session"} <= set(cuts)
    assert cuts["fifth_session"] == cuts["core_score_no_kjt"] + cuts["wide_column_no_autograd_fn"]
    assert len(cuts["all"]) == sum(len(v) for k, v in cuts.items() if k not in ("all", "fifth_session"))
    assert cpu_ab_names("") is None
    assert cpu_ab_names(" fifth_session, all ") == ["fifth_session", "all"]
    with pytest.raises(UserError, match="unknown cut.*core_score_no_kjt"):
        cpu_ab_names("core_score_no_kjt,kjt")


def test_a_backend_that_writes_into_the_ids_fails_instead_of_changing_the_batch(core, monkeypatch):
    rng = np.random.default_rng(9)
    b = _batch(rng, 12, 95)
    users = b.sparse["user"].copy()
    real = type(core.backend).pull_many

    def scribbling(self, ids_by_table, *a, **k):
        ids_by_table["user"][:] = 0
        return real(self, ids_by_table, *a, **k)

    monkeypatch.setattr(type(core.backend), "pull_many", scribbling)
    with pytest.raises(ValueError, match="read-only"):
        core.score(b)
    assert np.array_equal(b.sparse["user"], users)
