"""bench soak's memory evidence (issue 21): resident memory by kind per process, the growth fit per kind, the
environment each process started with, the Ray Train worker's probe lines summarised, and ``--env``. No Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.soak import (
    MIB,
    _memory,
    _start_ray,
    add_arguments,
    environments,
    parse_env,
    region_growth,
    summarize_probe,
)
from common.errors import UserError


def test_env_items_parse_and_a_bad_one_says_what_to_give():
    assert parse_env(["MALLOC_ARENA_MAX=2", "FRESHREC_MALLOC_TRIM=1", "X=a=b", "EMPTY="]) == {
        "MALLOC_ARENA_MAX": "2",
        "FRESHREC_MALLOC_TRIM": "1",
        "X": "a=b",
        "EMPTY": "",
    }
    with pytest.raises(UserError, match="give KEY=VALUE"):
        parse_env(["MALLOC_ARENA_MAX"])
    with pytest.raises(UserError, match="give KEY=VALUE"):
        parse_env(["=2"])


def test_the_embedded_ray_starts_with_the_env_and_the_driver_gets_its_own_back(monkeypatch):
    monkeypatch.setenv("FRESHREC_SOAK_T1", "before")
    monkeypatch.delenv("FRESHREC_SOAK_T2", raising=False)
    seen = {}

    def fake_ensure_ray():  # the raylet is spawned here and copies this environment
        seen.update({k: os.environ.get(k) for k in ("FRESHREC_SOAK_T1", "FRESHREC_SOAK_T2")})

    _start_ray(fake_ensure_ray, {"FRESHREC_SOAK_T1": "during", "FRESHREC_SOAK_T2": "2"})
    assert seen == {"FRESHREC_SOAK_T1": "during", "FRESHREC_SOAK_T2": "2"}
    assert os.environ["FRESHREC_SOAK_T1"] == "before" and "FRESHREC_SOAK_T2" not in os.environ

    def failing():
        raise RuntimeError("no Ray")

    with pytest.raises(RuntimeError):
        _start_ray(failing, {"FRESHREC_SOAK_T2": "x"})
    assert "FRESHREC_SOAK_T2" not in os.environ


def test_a_child_process_environment_is_read_from_proc():
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "FRESHREC_MALLOC_TRIM": "1"}
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    code = "import sys, time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "up"  # the interpreter runs (a launcher may exec it)
        got = environments(
            {"child": child.pid, "gone": 2**22 + 99},
            ["MALLOC_ARENA_MAX", "FRESHREC_MALLOC_TRIM", "MALLOC_TRIM_THRESHOLD_"],
        )
    finally:
        child.kill()
        child.wait()
    assert got == {"child": {"MALLOC_ARENA_MAX": "2", "FRESHREC_MALLOC_TRIM": "1"}}


def test_each_sampled_process_carries_its_resident_memory_by_kind():
    mem = _memory({"driver": os.getpid()})
    r = mem["driver"]["regions"]
    assert r["rss"] > 10 * MIB and {"heap", "arenas", "anon_other", "file", "shmem"} <= set(r)


def _sample(files, **procs):
    return {
        "files": files,
        "procs": {k: {"pid": pid, "rss": sum(reg.values()), "regions": reg} for k, (pid, reg) in procs.items()},
    }


def test_region_growth_names_the_kind_of_memory_that_grows():
    def worker(x):  # arenas +20 MiB per 1,000 files, the rest flat
        return 7, {"heap": 50 * MIB, "arenas": 100 * MIB + 20 * MIB * x / 1000, "anon_other": 30 * MIB, "file": 9e7}

    def shard(x, pid=8):  # shared memory +3 MiB per 1,000 files
        return pid, {"heap": 10 * MIB, "arenas": 0.0, "anon_other": 5 * MIB, "shmem": 3 * MIB * x / 1000}

    samples = [_sample(x, train_worker=worker(x), **{"shard-0": shard(x)}) for x in (100, 200, 400, 600, 800)]
    g = region_growth(samples, after=200)
    assert g["train_worker"]["arenas"] == pytest.approx(20.0)
    assert g["train_worker"]["heap"] == pytest.approx(0.0, abs=1e-9)
    assert g["shard-0"]["shmem"] == pytest.approx(3.0)
    assert g["train_worker"]["shmem"] != g["train_worker"]["shmem"]  # no such figure: NaN, not 0
    # a replaced process (new PID) is fitted on its own samples
    samples.append(_sample(1000, **{"shard-0": shard(0, pid=99)}))
    samples.append(_sample(1200, **{"shard-0": shard(0, pid=99)}))
    assert region_growth(samples, after=200)["shard-0"]["shmem"] == pytest.approx(0.0, abs=1e-9)


def _line(n, pid=5, arenas_mib=300.0, objects=100_000, refs=12):
    return {
        "n": n,
        "pid": pid,
        "regions_mib": {"rss": 500.0 + arenas_mib, "anon": 400.0, "heap": 20.0, "arenas": arenas_mib, "threads": 40},
        "malloc_mib": {"in_use": 200.0, "free": arenas_mib - 250.0, "arenas": 16, "mmapped": 5.0},
        "malloc_arena_mib": [[64.0, 10.0]] * 16,
        "python_objects": objects,
        "ray": {"object_refs": refs},
        "env": {"MALLOC_ARENA_MAX": "2"},
    }


def test_the_worker_probe_summary_fits_each_figure_after_the_warmup():
    lines = [_line(n, arenas_mib=300.0 + 0.03 * n, objects=100_000 + 2 * n) for n in range(100, 401, 50)]
    lines.insert(0, _line(50, pid=4, arenas_mib=900.0))  # an earlier worker process: left out
    s = summarize_probe(lines, after=200)
    assert s["lines"] == 7 and s["pid"] == 5 and s["env"] == {"MALLOC_ARENA_MAX": "2"}
    g = s["growth_per_1000"]
    assert g["arenas"] == pytest.approx(30.0) and g["malloc_free"] == pytest.approx(30.0)
    assert g["malloc_in_use"] == pytest.approx(0.0, abs=1e-9) and g["heap"] == pytest.approx(0.0, abs=1e-9)
    assert g["python_objects"] == pytest.approx(2000.0) and g["object_refs"] == pytest.approx(0.0, abs=1e-9)
    assert g["traced_mib"] != g["traced_mib"]  # not traced: NaN
    assert s["series"][0]["n"] == 100 and s["arena_mib_last"] == [[64.0, 10.0]] * 16
    assert summarize_probe([], 200)["lines"] == 0


def test_the_new_options_parse():
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    a = p.parse_args(["--env", "MALLOC_ARENA_MAX=2", "--env", "FRESHREC_MALLOC_TRIM=1", "--worker-probe"])
    assert a.env == ["MALLOC_ARENA_MAX=2", "FRESHREC_MALLOC_TRIM=1"] and a.worker_probe and a.worker_tracemalloc == 0
