"""The failure policy through a real Ray Train run: a data file most of whose rows are dead-lettered
stops the run with a DataFileError carrying the file's report (found by the exception's type after Ray
Train v2 brought it back from the worker), with no restart."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from paramserver.config import PSConfig
from trainer.config import TrainConfig
from trainer.data import Validator, load_spec
from trainer.data.split import split_into_files
from trainer.run import DataFileError, TrainJob, run_ps_training

pytestmark = pytest.mark.integration
SPEC = load_spec("taobao")


def test_a_bad_data_file_stops_a_real_run_with_its_reasons_and_no_restart(ray_local, tmp_path):
    rng = np.random.default_rng(5)
    rows = 600
    users, items = rng.integers(1, 200, rows), rng.integers(1, 300, rows)
    ts = 1511658000 + np.sort(rng.integers(0, 60, rows))
    (tmp_path / "log.csv").write_text("".join(f"{u},{i},{i % 40},pv,{t}\n" for u, i, t in zip(users, items, ts)))
    good = split_into_files([tmp_path / "log.csv"], Validator(SPEC), 600, tmp_path / "all", progress=False).files
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(good[0], incoming / good[0].name)
    (incoming / "zz-wrong-spec.csv").write_text("".join(f"{i},only two columns\n" for i in range(50)))
    events: list[str] = []
    job = TrainJob(
        SPEC, tmp_path / "run", train=TrainConfig(batch_size=128), ps=PSConfig(num_shards=1), incoming=incoming
    )
    with pytest.raises(DataFileError, match=r"zz-wrong-spec\.csv.*dead-lettered.*right spec") as caught:
        run_ps_training(job, on_event=events.append)
    assert caught.value.report.name.endswith("zz-wrong-spec.csv") and caught.value.report.rows_dead == 50
    assert not any("restart" in e for e in events), events  # the same file would fail again
