"""Issue 22, freshness on the replica: a version that is the store's compaction of the served one (the same
model, every ``full_every``-th version) is taken over without reading or rebuilding anything, and the next
delta applies on it; a delta's load reuses the served version's parsed spec (no YAML parse). Answers are the
bits a fresh load of each version gives. In process, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from bench.servedata import StoreTrainer, write_taobao_csv
from serving.config import ServeConfig
from serving.model import load_model
from serving.service import ScoringService
from serving.wire import pb
from versions import SnapshotConfig


def _req(users=(3, 9, 11)) -> list[pb.ScoreRequest]:
    out = []
    for u in users:
        r = pb.ScoreRequest()
        r.context["user_id"].id = u
        r.context["ts"].id = 1_511_700_000
        r.candidate_columns["item_id"].ids.extend([1, 2, 5, 8, 13, 21, 400, 10**12])
        out.append(r)
    return out


def _fresh_scores(store, version, reqs, catalogue) -> list[np.ndarray]:
    m = load_model(store, version, catalogue)
    out = []
    for r in reqs:
        batch, _ = m.features.batch(
            {"user_id": r.context["user_id"].id, "ts": 1_511_700_000},
            _items(r),
            len(r.candidate_columns["item_id"].ids),
        )
        out.append(m.score(batch)[0])
    return out


def _items(r):
    import pyarrow as pa

    return {"item_id": pa.array(np.fromiter(r.candidate_columns["item_id"].ids, np.int64))}


@pytest.fixture()
def store(tmp_path):
    t = StoreTrainer(tmp_path / "versions", snapshots=SnapshotConfig(full_every=2))
    files = [
        write_taobao_csv(tmp_path / "in" / f"part-{i}.csv", 300, i, start_ts=1_511_658_000 + 3600 * i) for i in range(3)
    ]
    return t, files


def test_a_compaction_of_the_served_version_is_taken_over_without_a_load(store, monkeypatch):
    trainer, files = store
    trainer.add_file(files[0])  # v1 full
    compacted = trainer.add_file(files[1])  # v2 delta, then compacted: v3 full, published
    s = trainer.keeper.store
    v2 = s.manifest(compacted).extra["compacted_from"]
    assert v2 == compacted - 1 and s.manifest(compacted).kind == "full" and s.manifest(v2).kind == "delta"
    svc = ScoringService(ServeConfig(store_url=str(s.url), pin_version=v2))
    svc.follower.poll()
    served = svc.follower.model
    assert served.version == v2
    reads = []
    real_read = type(s).read_part
    monkeypatch.setattr(type(s), "read_part", lambda self, *a, **k: reads.append(a) or real_read(self, *a, **k))
    # the compacted version becomes the target (what the published pointer does when the gate passes it; a pin
    # here: these 300-row windows are below the gate's minimum)
    svc.reconfigure({"pin_version": compacted})
    model = svc.follower.model
    assert model.version == compacted and svc.model_info().model_version == compacted
    assert model.core is served.core and model.tables is served.tables and not reads  # nothing read or rebuilt
    reqs = _req()
    for r, want in zip(reqs, _fresh_scores(s, compacted, reqs, None), strict=True):
        got = svc.score(r)
        assert got.model_version == compacted and np.float32(got.scores).tobytes() == want.tobytes()
    # the next data file: a delta on the compacted version, applied on the taken-over tables
    newest = trainer.add_file(files[2])  # v4, a delta on v3 (then compacted again: full_every 2)
    v4 = s.manifest(newest).extra.get("compacted_from", newest)
    assert s.manifest(v4).parent == compacted and s.manifest(v4).kind == "delta"
    svc.reconfigure({"pin_version": v4})
    assert svc.follower.version == v4 and reads  # this one is read: its own parts
    for r, want in zip(reqs, _fresh_scores(s, v4, reqs, None), strict=True):
        assert np.float32(svc.score(r).scores).tobytes() == want.tobytes()
    svc.stop()


def test_a_full_version_that_is_not_the_served_model_is_loaded(store, monkeypatch):
    """Only the served version's own compaction with the same digest is taken over: a different digest (or
    a compaction of another version) is read like any other version."""
    trainer, files = store
    trainer.add_file(files[0])
    compacted = trainer.add_file(files[1])
    s = trainer.keeper.store
    v2 = s.manifest(compacted).extra["compacted_from"]
    svc = ScoringService(ServeConfig(store_url=str(s.url), pin_version=v2))
    svc.follower.poll()
    served = svc.follower.model
    real = s.manifest(compacted)
    import dataclasses

    monkeypatch.setattr(
        svc.store,
        "manifest",
        lambda v: (
            dataclasses.replace(real, model_digest="0" * 64) if v == compacted else type(s).manifest(svc.store, v)
        ),
    )
    assert svc._compacted_from_served(compacted, served) is None
    monkeypatch.undo()
    assert svc._compacted_from_served(compacted, None) is None
    assert svc._compacted_from_served(v2, served) is None  # not a compaction
    svc.stop()


def test_a_delta_load_reuses_the_served_spec_without_parsing_yaml(store, monkeypatch):
    import serving.model as model_mod

    trainer, files = store
    trainer.add_file(files[0])
    s = trainer.keeper.store
    first = load_model(s, 1)
    v2 = trainer.add_file(files[1])
    parsed = []
    real = model_mod.yaml.safe_load
    monkeypatch.setattr(model_mod.yaml, "safe_load", lambda text: parsed.append(1) or real(text))
    second = load_model(s, v2, previous=first)
    assert not parsed and second.spec is first.spec and second.version == v2
    load_model(s, v2)  # without a served version: parsed
    assert parsed == [1]
