"""A version's ledger is the ledger as of its cut, not as of its write. Without a DataState (search replay,
the local reference trainers) the writer thread read ``core.ledger`` when it committed, while training had
already gone on: a version holding the model after file 1 listed file 2 as consumed too, so a restart from it
would skip file 2 (found by reading the local reference's versions: step 4, two files in the ledger). Local
backend, no Ray; the writer is held at its first store call until the next file is trained."""

from __future__ import annotations

import threading

from tests.support.data import synthetic_file
from trainer import bundle
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.local import LocalTrainer
from trainer.versioning import VersionKeeper

SPEC = load_spec("taobao")


def test_a_version_lists_only_the_files_trained_before_its_cut(tmp_path):
    files = [synthetic_file(SPEC, 150, seed=s) for s in range(2)]
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=2, batch_size=128))
    keeper = VersionKeeper(str(tmp_path / "versions"), t.backend, t)
    go = threading.Event()
    real_begin = keeper.store.begin

    def held_begin(*a, **k):  # the writer waits here until file 2 is in the ledger
        assert go.wait(30), "the test never released the writer"
        return real_begin(*a, **k)

    keeper.store.begin = held_begin
    t.step_file(files[0], "f0", rows_read=len(files[0]))
    step_at_cut = t.step
    keeper.after_file(force=True)
    t.step_file(files[1], "f1", rows_read=len(files[1]))  # training goes on while the version is written
    go.set()
    keeper.wait()
    v = keeper.store.latest()
    assert keeper.store.manifest(v).step == step_at_cut
    assert [e.file for e in bundle.read_ledger(keeper.store, v).entries] == ["f0"]
