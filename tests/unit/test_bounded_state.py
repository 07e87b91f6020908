"""Issue 21, bounded per-run state: every in-memory structure that grew with the number of data
files or versions has a bound, and the ledger stays exact while held compactly.

Each test drives one structure with thousands of synthetic files/versions and checks that its
length (or bytes) stops growing after its bound; the last drives the driver-side objects together
under tracemalloc.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from trainer import versioning
from trainer.data import ledger as ledger_mod
from trainer.data.counts import FileReport, ValidationReport
from trainer.data.follow import KEEP_FOLLOW, follow_data_files
from trainer.data.ledger import DataFileRef, DataLedger, LedgerError
from trainer.data.validate import STREAM_FILE_REPORTS
from trainer.metrics import ProgressiveValidator

N = 5000


def _sha(i: int, salt: str = "") -> str:
    return hashlib.sha256(f"{salt}{i}".encode()).hexdigest()


def _ref(i: int, salt: str = "") -> DataFileRef:
    return DataFileRef(f"part-{i:07d}.csv", _sha(i, salt), f"/in/part-{i:07d}.csv", 100 + i, 1e9 + i)


def test_the_ledger_holds_the_latest_entries_as_objects_and_the_rest_compactly_yet_refuses_every_file():
    led = DataLedger()
    for i in range(N):
        led.record(_ref(i), rows=10, complete=True)
    held = led.held()
    assert held["objects"] <= ledger_mod.HOT_ENTRIES and held["compact"] == N - held["objects"]
    assert held["compact_bytes"] / held["compact"] < 160  # ~110 B + the name per file, not ~600 as objects
    assert len(led) == N and led.total_rows == 10 * N
    for i in (0, 1, 777, N // 2, N - 1):  # old (compact) and new (object) entries alike
        assert led.is_complete(_ref(i)) and led.is_complete(DataFileRef("renamed.csv", _sha(i), "/x"))
        with pytest.raises(LedgerError, match="already recorded"):
            led.record(_ref(i), rows=10, complete=True)
        with pytest.raises(LedgerError, match="already recorded"):
            led.refuse(_ref(i))
        assert led.by_stat(f"part-{i:07d}.csv", 100 + i, 1e9 + i).sha256 == _sha(i)
    assert not led.is_complete(_ref(3, salt="other bytes"))  # same name, other bytes: a new file
    back = DataLedger.from_arrays(led.to_arrays())  # a restart: still exact, and compact again
    assert back.entries == led.entries and back.held()["objects"] <= ledger_mod.HOT_ENTRIES
    with pytest.raises(LedgerError):
        back.record(_ref(5), rows=10, complete=True)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_a_compact_ledger_answers_like_one_held_whole_under_random_operations(seed):
    """Against a fault-free reference (everything held as objects): record, partial reads, refusals,
    renamed copies and re-used names, and the incremental saving (to_arrays since a mark)."""
    rng = random.Random(seed)
    small, whole = DataLedger(hot_entries=4), DataLedger(hot_entries=10**9)
    mark = 0
    for step in range(400):
        i = rng.randrange(120)
        op = rng.random()
        ref = _ref(i, salt=rng.choice(["", "", "v2"]))
        if rng.random() < 0.1:
            ref = DataFileRef(f"copy-{step}.csv", ref.sha256, "/c", ref.size, ref.mtime)
        outcomes = []
        for led in (small, whole):
            try:
                if op < 0.6:
                    led.record(ref, rows=random.Random(step).randrange(1, 50), complete=op < 0.45)
                elif op < 0.7:
                    led.refuse(ref)
                outcomes.append("ok")
            except LedgerError as exc:
                outcomes.append(str(exc).split(":")[0])
        assert outcomes[0] == outcomes[1], (seed, step)
        probe = _ref(rng.randrange(120), salt=rng.choice(["", "v2"]))
        assert small.is_complete(probe) == whole.is_complete(probe)
        assert small.consumed(probe.name) == whole.consumed(probe.name)
        assert small.partial(probe.name) == whole.partial(probe.name)
        if step % 37 == 0:
            a, b = small.to_arrays(since=mark), whole.to_arrays(since=mark)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
            assert sorted(small.changed_since(mark), key=str) == sorted(whole.changed_since(mark), key=str)
            mark = small.seq
            assert small.seq == whole.seq
    assert sorted(small.entries, key=str) == sorted(whole.entries, key=str) and small.total_rows == whole.total_rows
    assert small.held()["compact"] > 0  # the compact path was exercised


def test_the_progressive_validator_keeps_the_latest_records_and_the_run_wide_mean():
    v = ProgressiveValidator(keep_files=100)
    rng = np.random.default_rng(0)
    aucs, lens = [], []
    for i in range(N):
        labels = np.array([0, 1, 0, 1])
        m = v.record(f"f{i}", labels, rng.random(4))
        aucs.append(m.auc)
        v.hold_from = v.recorded  # as the version keeper does at each cut
        lens.append(len(v.files))
    assert max(lens[200:]) == 100 and v.recorded == N and v.files[-1].file == f"f{N - 1}"
    assert v.mean_file_auc() == pytest.approx(np.nanmean(aucs))
    held = ProgressiveValidator(keep_files=10)  # records a version has not taken yet are never dropped
    for i in range(50):
        held.record(f"f{i}", np.array([0, 1]), np.array([0.1, 0.9]))
    assert len(held.since(0)) == 50
    held.hold_from = 50
    held.record("f50", np.array([0, 1]), np.array([0.1, 0.9]))
    assert len(held.files) == 10 and [m.file for m in held.since(50)] == ["f50"]


def test_the_stream_validation_report_keeps_the_latest_file_reports_and_counts_them_all():
    rep = ValidationReport()
    lens = []
    for i in range(N):
        f = FileReport(f"f{i}", rows_in=1, rows_good=1, warnings=["w"] if i % 10 == 0 else [])
        rep.add(f, STREAM_FILE_REPORTS)
        lens.append(len(rep.per_file))
    assert max(lens) == STREAM_FILE_REPORTS and rep.per_file[-1].name == f"f{N - 1}"
    assert rep.files_warned == N // 10 and rep.per_file_dropped == N - STREAM_FILE_REPORTS
    assert rep.as_dict()["files_warned"] == N // 10


def _keeper(core=None, data=None):
    """A VersionKeeper with only what its gate bookkeeping touches (the store and shards play no part)."""
    k = object.__new__(versioning.VersionKeeper)
    k.decisions, k.core, k.data = {}, core or SimpleNamespace(), data
    k.pauses_ms = versioning.collections.deque(maxlen=versioning.KEEP_VERSIONS)
    k.publisher = lambda v: SimpleNamespace(publish=True, code="ok")
    return k


def test_the_version_keeper_keeps_the_latest_decisions_and_pauses():
    k = _keeper()
    lens = []
    for v in range(1, N + 1):
        k._gate(v)
        k.pauses_ms.append(1.0)
        lens.append((len(k.decisions), len(k.pauses_ms)))
    assert max(lens) == (versioning.KEEP_VERSIONS, versioning.KEEP_VERSIONS)
    assert list(k.decisions) == list(range(N - versioning.KEEP_VERSIONS + 1, N + 1))
    assert k.state_sizes()["decisions"] == versioning.KEEP_VERSIONS


def test_the_data_follower_caches_stop_growing_with_consumed_files(tmp_path):
    inc = tmp_path / "incoming"
    inc.mkdir()
    led = DataLedger()
    gen = follow_data_files(None, inc, led, drain=False, poll_s=0.001, settle_s=0.0, stop=lambda: False)
    sizes, n = [], 0
    for _wave in range(25):
        for _ in range(40):  # a wave of data files lands (old mtimes: settled)
            p = inc / f"part-{n:06d}.csv"
            p.write_bytes(f"{n}\n".encode())
            os.utime(p, (time.time() - 60, time.time() - 60))
            n += 1
        for _ in range(40):
            ref = next(gen)
            led.record(ref, rows=1, complete=True)
        loc = gen.gi_frame.f_locals
        sizes.append(len(loc["hashes"]) + len(loc["yielded"]) + len(loc["seen"]))
    assert n == 1000 and len(led) == 1000
    assert max(sizes[5:]) <= 2 * KEEP_FOLLOW + 2 * 40, sizes  # bounded, not ~3 entries per file
    gen.close()


def test_driver_side_objects_together_grow_under_the_target_after_warm_up():
    """3,000 versions of one file each through the ledger, the progressive validator, the stream report
    and the keeper's gate bookkeeping: after 500 versions, traced growth under 1 MiB per 1,000 versions
    (issue 21's target per process; the ledger's compact rows are the only part that still grows)."""
    core = SimpleNamespace(ledger=DataLedger(), validator=ProgressiveValidator())
    report = ValidationReport()
    k = _keeper(core, SimpleNamespace(validator=SimpleNamespace(report=report)))
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.9])

    def version(i):
        core.ledger.record(_ref(i), rows=4, complete=True)
        core.validator.record(f"part-{i:07d}.csv", labels, scores)
        core.validator.hold_from = core.validator.recorded
        report.add(FileReport(f"part-{i:07d}.csv", rows_in=4, rows_good=4), STREAM_FILE_REPORTS)
        k.pauses_ms.append(1.0)
        k._gate(i)

    tracemalloc.start()
    try:
        for i in range(500):
            version(i)
        before = tracemalloc.take_snapshot()
        for i in range(500, 3000):
            version(i)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_1000 = grown / 2.5
    assert per_1000 < 1 << 20, f"{per_1000 / 2**20:.2f} MiB per 1,000 versions"
    assert per_1000 < 400_000  # the compact ledger (~130 B per file) and nothing else of note
