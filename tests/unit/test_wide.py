"""model.wide: a first-order part (one weight per id of every sparse feature, plus a linear dense term)
held in PS tables like any other: FBGEMM's smallest row, bit-identical on the local backend and on PS
shards, versioned and served with the same scores as offline evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from common.config import ConfigError
from paramserver import create_parameter_server
from paramserver.config import PSConfig
from tests.support.data import synthetic_file
from trainer.backends import LocalBackend, ps_config_for
from trainer.config import ModelConfig, TrainConfig
from trainer.core import TrainerCore
from trainer.data import load_spec
from trainer.model import build_model
from trainer.sparse import WIDE_DIM

SPEC = load_spec("taobao")
WIDE = ModelConfig(wide=True)
TCFG = TrainConfig(batch_size=64, seed=3, sparse_lr=0.1)
WIDE_TABLES = [f.name + "__wide" for f in SPEC.sparse]


def test_wide_tables_are_ps_tables_of_fbgemms_smallest_dim_with_zero_init():
    cfg = ps_config_for(SPEC, TCFG, model=WIDE)
    tables = {t.name: t for t in cfg.tables}
    assert [t.name for t in cfg.tables] == [f.name for f in SPEC.sparse] + WIDE_TABLES
    assert all(tables[n].dim == WIDE_DIM == 4 and tables[n].scale == 0.0 for n in WIDE_TABLES)
    assert ps_config_for(SPEC, TCFG).tables == cfg.tables  # on by default (arch dlrm)
    assert [t.name for t in ps_config_for(SPEC, TCFG, model=ModelConfig(wide=False)).tables] == [
        f.name for f in SPEC.sparse
    ]
    assert ModelConfig().wide and not ModelConfig(arch="torchrec_dlrm", interaction="dot").wide
    from paramserver.config import TableConfig

    with pytest.raises(ConfigError, match="multiple of 4"):  # why 4: FBGEMM's TBE refuses dim 1 (see sparse.py)
        TableConfig("w", 1)


def test_bad_wide_settings_are_refused_clearly():
    with pytest.raises(ConfigError, match="model.wide must be true or false"):
        ModelConfig(wide="yes")
    with pytest.raises(ConfigError, match="arch dlrm or wide false"):
        ModelConfig(wide=True, arch="torchrec_dlrm", interaction="dot")
    spec = dataclasses.replace(SPEC, sparse=(dataclasses.replace(SPEC.sparse[0], name="user__wide"), *SPEC.sparse[1:]))
    with pytest.raises(ConfigError, match="rename them in the spec or set model.wide false"):
        build_model(spec, WIDE)


def test_the_wide_part_adds_one_weight_per_id_to_the_logit():
    model = build_model(SPEC, WIDE, seed=1)
    rng = np.random.default_rng(0)
    deep = {f.name: torch.from_numpy(rng.standard_normal((5, f.dim)).astype(np.float32)) for f in SPEC.sparse}
    dense = torch.from_numpy(rng.standard_normal((5, len(SPEC.dense))).astype(np.float32))
    zero = {n: torch.zeros(5, WIDE_DIM) for n in WIDE_TABLES}
    w = {n: torch.from_numpy(rng.standard_normal((5, WIDE_DIM)).astype(np.float32)) for n in WIDE_TABLES}
    with torch.no_grad():
        base = model.forward_pooled({**deep, **zero}, dense)
        with_w = model.forward_pooled({**deep, **w}, dense)
        model.wide_dense.weight.fill_(0.5)
        with_dense = model.forward_pooled({**deep, **zero}, dense)
    torch.testing.assert_close(with_w - base, sum(w[n][:, 0] for n in WIDE_TABLES))  # columns 1..3 unused
    gain = WIDE.wide_dense_gain
    torch.testing.assert_close(with_dense - base, gain * 0.5 * dense.sum(dim=1))
    no_wide = build_model(SPEC, ModelConfig(wide=False), seed=1)  # the deep part is initialised as without wide,
    for k, v in no_wide.state_dict().items():  # but for its head's weights: zero, the deep part grows in
        assert torch.equal(model.state_dict()[k], torch.zeros_like(v) if k == "head.weight" else v), k
    assert no_wide.head.weight.abs().sum() > 0
    from trainer.config import model_config_of_version

    assert not model_config_of_version({"arch": "dlrm"}).wide  # a version from before model.wide: no wide tables
    # a wide version from before the LR-like wide path scores as it was trained: no gain, no anchor
    old = model_config_of_version({"arch": "dlrm", "wide": True})
    assert old.wide and old.wide_dense_gain == 1.0 and old.wide_beta == 0.0
    assert model_config_of_version(dataclasses.asdict(WIDE)) == WIDE


def test_the_anchor_makes_the_wide_step_proportional_to_the_residual_like_ftrl():
    """Row-wise Adagrad alone moves a weight ~2 lr whatever its gradient (sign-like); with the anchor (column 1
    of the wide row, never read) the first step is 2 lr r / sqrt(r^2 + beta^2) for an id in one row with
    residual r, so a clicked row (large residual) moves its ids more than a shown one, as FTRL does."""
    from trainer.model import _WideWeight

    rows = torch.zeros(3, WIDE_DIM, requires_grad=True)
    out = _WideWeight.apply(rows, 2.0)
    assert torch.equal(out.detach(), rows.detach()[:, 0])
    out.backward(torch.tensor([0.3, -0.1, 0.0]))
    want = torch.tensor([[0.3, 2 / 3, 0, 0], [-0.1, 2 / 3, 0, 0], [0.0, 2 / 3, 0, 0]])
    torch.testing.assert_close(rows.grad, want)

    def first_step(residual: float, beta: float, lr: float = 0.1) -> float:  # FBGEMM's row-wise Adagrad, one row
        g = torch.tensor([residual, beta, 0.0, 0.0]) / 8  # batch of 8, the id in one row
        return float(lr * g[0] / (g.pow(2).mean().sqrt() + 1e-8))

    plain = [first_step(r, 0.0) for r in (0.9, 0.1)]
    anchored = [first_step(r, 2.0) for r in (0.9, 0.1)]
    assert plain[0] == pytest.approx(plain[1], rel=1e-5)  # sign-like: the residual's size is lost
    assert anchored[0] / anchored[1] == pytest.approx((0.9 / 0.1) * (4.01 / 4.81) ** 0.5, rel=1e-5)
    with pytest.raises(ConfigError, match="model.wide_beta must be a finite number >= 0"):
        ModelConfig(wide_beta=-1)
    with pytest.raises(ConfigError, match="model.wide_dense_gain must be a finite number >= 0"):
        ModelConfig(wide_dense_gain=float("inf"))


def _train(backend, batches, model=WIDE):
    core = TrainerCore(SPEC, model, TCFG, backend)
    for i, b in enumerate(batches):
        core.step_file(b, f"f{i}")
    return core


def test_wide_training_is_bit_identical_on_the_local_backend_and_on_ps_shards():
    batches = [synthetic_file(SPEC, 600, seed=s) for s in range(3)]
    local = _train(LocalBackend(ps_config_for(SPEC, TCFG, PSConfig(num_shards=1), model=WIDE)), batches)
    client = create_parameter_server(
        ps_config_for(SPEC, TCFG, PSConfig(num_shards=2), model=WIDE), placement="in_process"
    )
    try:
        ps = _train(client, batches)
        a, b = local.backend.table_state(), client.table_state()
    finally:
        client.shutdown()
    assert set(a) == set(b) == {f.name for f in SPEC.sparse} | set(WIDE_TABLES)
    for table, arrays in a.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(b[table][key], value, err_msg=f"{table} {key}")
    for k, v in local.dense_state().items():
        assert torch.equal(ps.dense_state()[k], v), k
    assert [m.auc for m in local.validator.files] == [m.auc for m in ps.validator.files]
    for n in WIDE_TABLES:  # column 0 learned; column 1 is the anchor (moves, never read); 2-3 never move from 0
        rows = a[n]["rows"]
        assert np.abs(rows[:, 0]).max() > 0 and (rows[:, 1] < 0).any() and not rows[:, 2:].any()


def test_a_wide_model_serves_the_scores_of_offline_evaluation(tmp_path):
    from bench.servedata import StoreTrainer, write_taobao_csv
    from serving.config import ServeConfig
    from serving.service import ScoringService
    from serving.wire import pb
    from trainer.local import LocalTrainer
    from trainer.versioning import VersionKeeper, load_trainer
    from versions import VersionStore

    ps = PSConfig(num_shards=1)
    t = StoreTrainer(tmp_path / "versions", model=WIDE, ps=ps)
    for i in range(2):
        t.add_file(
            write_taobao_csv(
                tmp_path / "in" / f"part-{i}.csv", 1200, i, start_ts=1_511_658_000 + 3600 * i, new_items=30
            )
        )
    v = VersionStore(str(tmp_path / "versions")).latest()
    later = write_taobao_csv(tmp_path / "later.csv", 600, 7, start_ts=1_511_700_000, users=600, new_items=40)
    batch = t.read(later)
    req = pb.ScoreRequest()
    cols = {c: batch.table.column(c).cast("int64").to_numpy() for c in ("user_id", "item_id", "category_id", "ts")}
    for i in range(len(batch)):
        cand = req.candidates.add()
        for c, col in cols.items():
            cand.features[c].id = int(col[i])
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        served = svc.score(req)
    finally:
        svc.stop()
    offline = LocalTrainer(t.spec, WIDE, TrainConfig(), ps)
    assert VersionKeeper(str(tmp_path / "versions"), offline.backend, offline).restore() == v
    evaluated, manifest = load_trainer(str(tmp_path / "versions"), None, None)  # what `freshrec evaluate` loads
    assert evaluated.model_cfg.wide and manifest.version == v == served.model_version
    want = offline.score(batch)
    np.testing.assert_array_equal(np.asarray(served.scores, np.float32), want)
    np.testing.assert_array_equal(evaluated.score(batch), want)
    assert np.abs(offline.backend.table_rows("item__wide")[1][:, 0]).max() > 0
