"""The pure parts of ``bench soak`` (issue 21): the RSS growth fit, the last-10%-over-first-10% ratio, the
process discovery from Ray's actor table, the verdict, the soak's data files, the version index. No Ray."""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.soak import (
    MIB,
    _grown,
    _memory,
    _sites,
    _VersionIndex,
    add_arguments,
    growth_by_process,
    growth_mib_per_1000,
    last_over_first,
    roles_of,
    run,
    soak_rows,
    verdict,
)


def test_growth_is_the_slope_after_the_warmup_in_mib_per_1000_files():
    # 50 MiB of warm-up (tables filling, caches) in the first 200 files, then 0.5 MiB per 1,000 files
    xs = list(range(0, 2001, 100))
    ys = [(50 * MIB * min(x, 200) / 200) + (0.5 * MIB * max(0, x - 200) / 1000) for x in xs]
    assert growth_mib_per_1000(list(zip(xs, ys)), after=200) == pytest.approx(0.5, rel=1e-6)
    # the warm-up, fitted with everything, would be reported as far more
    assert growth_mib_per_1000(list(zip(xs, ys)), after=0) > 5


def test_growth_needs_two_samples_after_the_warmup():
    assert math.isnan(growth_mib_per_1000([(100, 1.0), (200, 2.0)], after=200))
    assert math.isnan(growth_mib_per_1000([], after=0))
    assert math.isnan(growth_mib_per_1000([(300, 1.0), (300, 5.0)], after=200))  # one distinct x


@settings(max_examples=50, deadline=None)
@given(
    slope=st.floats(-8.0, 8.0),
    base=st.floats(1e6, 4e9),
    xs=st.lists(st.integers(200, 100_000), min_size=2, max_size=30, unique=True),
)
def test_growth_recovers_any_linear_trend(slope, base, xs):
    pts = [(x, base + slope * MIB * x / 1000) for x in xs]
    assert growth_mib_per_1000(pts, after=200) == pytest.approx(slope, abs=1e-3)


def test_a_replaced_process_is_fitted_on_its_last_pid_only():
    samples = [
        {"files": 200, "procs": {"shard-0": {"pid": 10, "rss": 900 * MIB}, "driver": {"pid": 1, "rss": 100 * MIB}}},
        {"files": 300, "procs": {"shard-0": {"pid": 10, "rss": 950 * MIB}, "driver": {"pid": 1, "rss": 100 * MIB}}},
        # shard-0 restarted: a fresh process, far smaller; its own series is flat
        {"files": 400, "procs": {"shard-0": {"pid": 77, "rss": 300 * MIB}, "driver": {"pid": 1, "rss": 101 * MIB}}},
        {"files": 500, "procs": {"shard-0": {"pid": 77, "rss": 300 * MIB}, "driver": {"pid": 1, "rss": 102 * MIB}}},
        {"files": 600, "procs": {"shard-0": {"pid": 77, "rss": 300 * MIB}}},  # the driver missed one sample
    ]
    g = growth_by_process(samples, after=200)
    assert g["shard-0"] == pytest.approx(0.0, abs=1e-9)
    assert g["driver"] == pytest.approx(7.0, rel=0.05)  # 100 -> 102 MiB over 300 files, fitted


def test_last_over_first_compares_medians_of_the_ends_and_drops_missing_values():
    values = [1.0] * 10 + [5.0] * 80 + [1.3] * 10
    r = last_over_first(values)
    assert (r["first"], r["last"], r["n"]) == (1.0, 1.3, 10) and r["ratio"] == pytest.approx(1.3)
    # NaN (the first file: start-up) and None are not counted; a single outlier in a tail does not move it
    r = last_over_first([float("nan"), None, 2.0, 2.0, 2.0, 9.0, 2.0, 2.0, 2.0, 2.4, 99.0, 2.4], share=0.3)
    assert r["n"] == 3 and r["first"] == 2.0 and r["last"] == 2.4
    assert math.isnan(last_over_first([1.0])["ratio"])
    with pytest.raises(ValueError):
        last_over_first([1.0, 2.0], share=0.7)


def _actor(cls, pid, state="ALIVE", start=0.0):
    return {"ActorClassName": cls, "Pid": pid, "State": state, "StartTime": start}


def test_the_processes_are_found_by_actor_class_in_rays_actor_table():
    table = {
        "a1": _actor("ShardHost", 301, start=2.0),
        "a2": _actor("ShardHost", 300, start=1.0),
        "a3": _actor("RayTrainWorker", 400),
        "a4": _actor("ServeReplica:freshrec:Scorer", 500),
        "a5": _actor("ServeController", 600),  # not followed
        "a6": _actor("ShardHost", 299, state="DEAD", start=0.5),  # a shard of an earlier attempt
        "a7": _actor("RayTrainWorker", 0, state="PENDING_CREATION"),
        "a8": _actor("ServeReplica:other:Scorer", 700),  # another application's replica
    }
    assert roles_of(table, driver_pid=123) == {
        "driver": 123,
        "replica": 500,
        "shard-0": 300,
        "shard-1": 301,
        "train_worker": 400,
    }
    two = {"w1": _actor("RayTrainWorker", 11, start=1), "w2": _actor("RayTrainWorker", 12, start=2)}
    assert roles_of(two, 1) == {"driver": 1, "train_worker-0": 11, "train_worker-1": 12}


def test_memory_of_a_live_process_and_a_gone_one():
    mem = _memory({"driver": os.getpid(), "gone": 2**22 + 12345})
    assert set(mem) == {"driver"} and mem["driver"]["rss"] > 10 * MIB and mem["driver"]["pid"] == os.getpid()


def test_verdict_says_met_missed_or_not_measured():
    ok = verdict({"driver": 0.2, "shard-0": 0.9}, {"ratio": 1.1}, {"ratio": 1.2}, 1.5)
    assert ok == {"rss_growth": True, "commit_time": True, "freshness": True, "restart": True}
    bad = verdict({"driver": 0.2, "replica": 3.0}, {"ratio": 1.3}, {"ratio": float("nan")}, 2.5)
    assert bad == {"rss_growth": False, "commit_time": False, "freshness": None, "restart": False}
    assert verdict({"driver": float("nan")}, {}, {}, float("nan"))["rss_growth"] is None


def test_soak_files_are_valid_taobao_files_with_both_classes_and_later_times(tmp_path):
    from trainer.data import Validator, load_spec, read_data_file

    assert soak_rows(3, 16) == soak_rows(3, 16)
    v = Validator(load_spec("taobao"), stream=True)
    last_ts = -1
    for i in range(4):
        text = soak_rows(i, 16)
        ts = [int(line.split(",")[4]) for line in text.splitlines()]
        assert min(ts) > last_ts and len(set(ts)) == 16
        last_ts = max(ts)
        users = {int(line.split(",")[0]) for line in text.splitlines()}
        items = {int(line.split(",")[1]) for line in text.splitlines()}
        assert max(users) <= 300 and max(items) <= 400  # a fixed universe: the tables stop growing
        path = tmp_path / f"part-{i}.csv"
        path.write_text(text)
        batch = read_data_file(path, v)
        report = v.last_file
        assert report.rows_good == 16 and report.rows_dead == 0 and 0 < report.positives < 16
        assert len(np.asarray(batch.label)) == 16
    with pytest.raises(ValueError):
        soak_rows(0, 1)


class _Manifest:
    def __init__(self, files, t):
        self.data_files, self.committed_at = tuple(files), t


class _Store:
    def __init__(self):
        self.manifests, self.latest_v, self.reads = {}, None, 0

    def latest(self):
        return self.latest_v

    def manifest(self, v):
        self.reads += 1
        if v not in self.manifests:
            raise KeyError(v)  # an aborted version number, or one gc removed
        return self.manifests[v]


def test_the_version_index_finds_the_first_version_holding_a_file_reading_each_manifest_once():
    s = _Store()
    idx = _VersionIndex(s)
    assert idx.version_of("a") is None
    s.manifests[1] = _Manifest(["a"], 10.0)
    s.latest_v = 1
    assert idx.version_of("a") == (1, 10.0)
    s.manifests[3] = _Manifest(["b"], 12.0)  # 2 was aborted
    s.manifests[4] = _Manifest(["a", "b"], 13.0)  # a compaction: the same files again
    s.latest_v = 4
    assert idx.version_of("b") == (3, 12.0)
    reads = s.reads
    assert idx.version_of("c") is None and s.reads == reads  # nothing new: no manifest read again


def _args(**kw):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_bad_arguments_are_refused_before_anything_starts():
    from common.errors import UserError

    with pytest.raises(UserError, match="--files must be > 10"):
        run(_args(files=5))
    with pytest.raises(UserError, match="--rows >= 2"):
        run(_args(files=30, rows=1))


def test_soak_is_registered_as_a_bench():
    from bench.cli import BENCHES

    assert "soak" in BENCHES


def test_the_driver_allocation_site_that_grew_is_named():
    import tracemalloc

    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on")
    tracemalloc.start(1)
    try:
        before = _sites(tracemalloc)
        kept = [bytearray(4096) for _ in range(256)]  # 1 MiB held at this line
        top = _grown(tracemalloc, before)
    finally:
        tracemalloc.stop()
    assert len(kept) == 256
    assert "test_bench_soak.py" in top[0]["where"] and top[0]["kib"] >= 1000 and top[0]["blocks"] >= 256
    assert _grown(tracemalloc, None) == []
