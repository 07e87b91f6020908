"""bench serve's freshness takes each file's first version from the trainer's log, not from the store at the end.

gc (keep 5) removes most versions before the freshness phase ends, and the first surviving version that names a
file is a later compacted full version (it lists the whole ledger): reading the store at the end timed files
3-7 of a quiet run of 2026-12-07 to a full version committed 13-15 s after they landed, while the trainer had
committed each within a fraction of a second (p50 3.65 s land -> commit reported, 0.13 s per file in process).
"""

from __future__ import annotations

import pytest

from bench.serve import commits_of, freshness_summary


class _GcStore:
    """A store where every version the log names is gone (gc): manifests and gate decisions raise."""

    def manifest(self, v):
        raise FileNotFoundError(f"version {v} was removed by gc")

    def gate_decision(self, v):
        raise FileNotFoundError(f"version {v} was removed by gc")


def test_the_trainers_log_gives_each_files_first_version_commit_time_and_kind():
    log = (
        "restored version 38\n"
        "committed version 39 with part-b-fresh-0000.csv at 100.250000 kind delta\n"
        "some other line\n"
        "committed version 40 with part-b-fresh-0001.csv at 101.5 kind full\n"
        "committed version 41 with part-b-fresh-0001.csv at 109.0 kind full\n"  # a name once: the first counts
    )
    assert commits_of(log) == {
        "part-b-fresh-0000.csv": (39, 100.25, "delta"),
        "part-b-fresh-0001.csv": (40, 101.5, "full"),
    }
    with pytest.raises(ValueError):  # a malformed number is not skipped silently
        commits_of("committed version x with a.csv at 1 kind delta\n")


def test_freshness_from_the_log_needs_no_version_left_in_the_store():
    first_with = commits_of(
        "committed version 39 with a.csv at 100.2 kind delta\ncommitted version 40 with b.csv at 101.3 kind delta\n"
    )
    landed = {"a.csv": 100.0, "b.csv": 101.0}
    answers = [(100.1, 38), (100.35, 39), (101.45, 40)]
    out = freshness_summary(landed, answers, first_with, _GcStore())
    assert out["freshness_files"] == 2
    rows = {r["file"]: r for r in out["freshness_slowest"]}
    assert rows["a.csv"]["land_to_commit_s"] == pytest.approx(0.2) and rows["a.csv"]["fresh_s"] == pytest.approx(0.35)
    assert rows["b.csv"]["land_to_commit_s"] == pytest.approx(0.3) and rows["b.csv"]["gate"] == "none"
