"""bench restart (in process, no Ray): restart-to-first-new-file after N consumed files, and the live follower's
CPU per poll over them."""

import argparse

import pytest

from bench import restart


def test_bench_restart_reports_each_phase_and_the_poll_cost(tmp_path, monkeypatch):
    monkeypatch.setattr(restart, "POLL_SECONDS", 0.5)
    args = argparse.Namespace(files="3,12", rows=2, new_rows=20, repeats=1, work_dir=tmp_path)
    out = restart.run(args)
    assert set(out["consumed_files"]) == {"3", "12"}
    for n in ("3", "12"):
        phases = out["consumed_files"][n]
        for k in ("restart_s", "restore_s", "follow_s", "train_s", "poll_cpu_ms", "poll_cpu_share"):
            assert phases[k]["median"] > 0 and phases[k]["min"] <= phases[k]["median"] <= phases[k]["max"]
    assert out["ratio"] > 0 and out["poll_ratio"] > 0


def test_bench_restart_refuses_bad_counts():
    from common.errors import UserError

    with pytest.raises(UserError, match="--files"):
        restart._counts("3,x")
