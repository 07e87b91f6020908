"""Issue 24, sixth pass: ``train.history_epochs: auto`` is the default (docs/training.md, "Cold start").

Through the real ``freshrec stream`` / ``freshrec train`` worker loop, run in this process without Ray
(:func:`bench.chaos.inproc.run_stream_in_process`: the CLI's parser and job, the Ray Train worker loop as its one
worker, its shards in this process, a version store): a stream over incoming files only ends with the model
digest of ``history_epochs: 1`` (no history, no extra pass: bit-identical), a long history (one that has given
``history_steps`` steps in one pass) too, and a short one (``freshrec train --data``: its data directory is its
history) with the digest of the integer auto resolves to (3).
"""

from __future__ import annotations

import shutil
import time

import pytest

from bench.chaos.inproc import run_stream_in_process
from tests.support.data import small_csv
from trainer.bundle import ledger_totals
from trainer.config import HISTORY_AUTO, TrainConfig
from versions import VersionStore


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two small Taobao-format data files (120 and 100 rows: one step each at batch 128, 15 and 13 at batch 8)."""
    root = tmp_path_factory.mktemp("history-default")
    (root / "files").mkdir()
    return [small_csv(root / "files" / f"part-{i:05d}.csv", rows, i) for i, rows in enumerate((120, 100))]


def _run(root, name: str, command: list[str], batch: int, *extra: str) -> tuple[str, dict]:
    run_dir = root / name
    argv = [*command, "--spec", "taobao", "--run-dir", str(run_dir), "--workers", "1", "--seed", "3"]
    report = run_stream_in_process([*argv, "--batch-size", str(batch), *extra])
    store = VersionStore(str(run_dir / "versions"))
    return store.manifest(store.latest()).model_digest, report


def _dirs(root, data, history: bool) -> list[str]:
    d = root / ("history" if history else "incoming")
    d.mkdir(parents=True, exist_ok=True)
    for f in data:
        shutil.copy(f, d / f.name)
    return ["train", "--data", str(d)] if history else ["stream", "--incoming", str(d), "--drain"]


AUTO = ("--set", f"train.history_epochs={HISTORY_AUTO}")  # the default, named where a test is about auto


def test_auto_is_the_default():
    assert TrainConfig().history_epochs == HISTORY_AUTO
    assert TrainConfig().history_passes([4000]) == 3 and TrainConfig().history_passes([10**6]) == 1


def test_a_stream_without_history_is_bit_identical_to_one_pass(data, tmp_path):
    incoming = _dirs(tmp_path, data, history=False)
    default, rep = _run(tmp_path, "default", incoming, 128)
    one, rep1 = _run(tmp_path, "one", incoming, 128, "--set", "train.history_epochs=1")
    assert default == one
    assert rep["steps"] == rep1["steps"] == 2 and rep["examples"] == rep1["examples"] == 220  # each file once


def test_a_short_history_gets_the_passes_auto_resolves_to(data, tmp_path):
    history = _dirs(tmp_path, data, history=True)
    # 2 steps in one pass at batch 128: auto (48 steps, at most 3 passes) resolves to 3
    short, rep = _run(tmp_path, "short", history, 128)
    three, rep3 = _run(tmp_path, "three", history, 128, "--set", "train.history_epochs=3")
    assert short == three and rep["examples"] == rep3["examples"] == 3 * 220  # two more passes, training only


def test_a_long_history_gets_the_plain_cold_start(data, tmp_path):
    history = _dirs(tmp_path, data, history=True)
    # 15 + 13 = 28 steps in one pass at batch 8: with history_steps 28 auto is settled after one pass
    auto, rep = _run(tmp_path, "long", history, 8, "--set", "train.history_steps=28")
    one, rep1 = _run(tmp_path, "one", history, 8, "--set", "train.history_epochs=1")
    assert auto == one and rep["examples"] == rep1["examples"] == 220
    # one step short of it: two passes (what moved is the passes, not something else of the default)
    two, rep2 = _run(tmp_path, "two", history, 8, "--set", "train.history_steps=29")
    assert two != one and rep2["examples"] == 2 * 220


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three small data files (one step each at batch 128)."""
    root = tmp_path_factory.mktemp("history-crash")
    (root / "files").mkdir()
    return [small_csv(root / "files" / f"part-{i:05d}.csv", rows, 10 + i) for i, rows in enumerate((120, 100, 110))]


@pytest.mark.parametrize(
    "steps, passes",
    [(48, 3), (2, 1)],  # a short history (3 passes), a long one (settled on one pass after its second file)
    ids=["short-history", "settled-history"],
)
def test_a_crash_during_the_history_ends_with_the_uninterrupted_digest(three, tmp_path, monkeypatch, steps, passes):
    """The extra passes are crash-consistent: a run killed while training the history's third file, then run
    again on its run directory, ends with the uninterrupted run's model. Before, a version was cut after every
    history file: the restart resumed after the second file and made its extra passes over the third only (a
    short history), or made extra passes that the uninterrupted run, settled on one pass, never made (the worker
    judged the history's length from the files it read since it started)."""
    from trainer import worker

    history = _dirs(tmp_path, three, history=True)
    settings = (*AUTO, "--set", f"train.history_steps={steps}")
    whole, rep = _run(tmp_path, "whole", history, 128, *settings)
    assert rep["examples"] == passes * 330
    consume, calls = worker.consume, []

    def killed_at_the_third_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            if passes == 1:  # settled after the second file: its version is committed before the kill
                store, t0 = VersionStore(str(tmp_path / "crashed" / "versions")), time.monotonic()
                while time.monotonic() - t0 < 60:
                    if store.latest() is not None and ledger_totals(store.manifest(store.latest()))[0] == 2:
                        break
                    time.sleep(0.05)
                else:
                    raise AssertionError("no version after the second history file")
            raise RuntimeError("killed (test)")
        return consume(*args, **kwargs)

    monkeypatch.setattr(worker, "consume", killed_at_the_third_file)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path, "crashed", history, 128, *settings)
    monkeypatch.setattr(worker, "consume", consume)
    again, _ = _run(tmp_path, "crashed", history, 128, *settings)
    assert again == whole
