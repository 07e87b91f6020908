"""Dynamic features through versions and serving (no Ray): the state is a part of every version,
restored with it (a resumed run equals an uninterrupted one bit for bit), covered by the model digest,
and served from the same version: served scores equal offline scores bit for bit."""

from __future__ import annotations

import numpy as np

from bench.servedata import StoreTrainer, write_taobao_csv
from paramserver.config import PSConfig
from serving.config import ServeConfig
from serving.model import load_model
from serving.service import ScoringService
from tests.support.serving import row_request
from trainer.config import ModelConfig, TrainConfig
from trainer.local import LocalTrainer
from trainer.versioning import FEATURES_PART, VersionKeeper, load_trainer
from versions import VersionStore

SPEC = "taobao_dynamic"


def files(root, n):
    return [
        write_taobao_csv(
            root / "in" / f"part-{i}.csv", 900, i, start_ts=1_511_658_000 + 3600 * i, users=80, new_items=20
        )
        for i in range(n)
    ]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_state_is_a_version_part_restored_with_it_and_a_resumed_run_is_bit_identical(tmp_path):
    paths = files(tmp_path, 3)
    whole = StoreTrainer(tmp_path / "a", spec=SPEC)
    for p in paths:
        whole.add_file(p)
    part = StoreTrainer(tmp_path / "b", spec=SPEC)
    for p in paths[:2]:
        part.add_file(p)
    resumed = StoreTrainer(tmp_path / "b", spec=SPEC)  # a new process: restore, then the third file
    assert resumed.restore() == 2
    assert same_state(resumed.trainer.dynamic.state_dict(), part.trainer.dynamic.state_dict())
    resumed.add_file(paths[2])
    assert same_state(resumed.trainer.dynamic.state_dict(), whole.trainer.dynamic.state_dict())
    a, b = VersionStore(str(tmp_path / "a")), VersionStore(str(tmp_path / "b"))
    assert a.manifest(3).model_digest == b.manifest(3).model_digest  # the digest covers the feature state
    m = a.manifest(3)
    assert m.kind == "delta" and m.part(FEATURES_PART).meta["features"]["stats"]["user_id"]["ids"] > 0
    assert a.digest(3) == m.model_digest
    t, _ = load_trainer(str(tmp_path / "a"), 3)
    assert same_state(t.dynamic.state_dict(), whole.trainer.dynamic.state_dict())


def test_served_scores_equal_offline_scores_and_read_the_versions_state(tmp_path):
    paths = files(tmp_path, 2)
    trainer = StoreTrainer(tmp_path / "versions", spec=SPEC)
    for p in paths:
        trainer.add_file(p)
    store = VersionStore(str(tmp_path / "versions"))
    v = store.latest()
    later = write_taobao_csv(tmp_path / "later.csv", 400, 7, start_ts=1_511_700_000, users=120, new_items=30)
    batch = trainer.read(later)
    svc = ScoringService(ServeConfig(store_url=str(tmp_path / "versions"))).start()
    try:
        served = svc.score(row_request(batch))
    finally:
        svc.stop()
    assert served.model_version == v
    offline = trainer.trainer.score(batch)  # the trainer that wrote the version
    restored = LocalTrainer(trainer.spec, ModelConfig(), TrainConfig(), PSConfig(num_shards=1))
    assert VersionKeeper(str(tmp_path / "versions"), restored.backend, restored).restore() == v
    np.testing.assert_array_equal(np.asarray(served.scores, np.float32), offline)
    np.testing.assert_array_equal(restored.score(batch), offline)
    # serving reads the user's sequence and counters of that version, decayed to the request time
    model = load_model(store, v)
    feats = model.core.dynamic.lookup(batch)
    known = np.isin(batch.sparse["user"], trainer.trainer.dynamic.tables["user_id"].ids)
    assert known.any() and (feats.lengths["user_items"][known] > 0).all()
    assert (feats.lengths["user_items"][~known] == 0).all()
    # and a request never changes it
    assert same_state(model.core.dynamic.state_dict(), trainer.trainer.dynamic.state_dict())
