"""``freshrec bench gate`` on a tiny synthetic log: nothing held on the replay, every fault held."""

from __future__ import annotations

import argparse

from bench import gate


def test_bench_gate_holds_the_faults_and_nothing_else(tmp_path):
    p = argparse.ArgumentParser()
    gate.add_arguments(p)
    args = p.parse_args(["--synthetic", "6", "--rows", "700", "--data", str(tmp_path / "absent.csv")])
    out = gate.run(args)
    assert out["data"].startswith("synthetic: 6 files") and out["versions"] == 3
    assert out["held"] == 0 and out["hold_rate"] == 0.0
    assert out["faults_held"] == 3, out["faults"]
    assert {k: f["code"] for k, f in out["faults"].items()} == gate.EXPECTED
    assert all(f["reason"] for f in out["faults"].values())
