"""common/memory.py (issue 21): where a process's resident pages are, what glibc's allocator holds, and the
per-version housekeeping switched by environment variables. Real /proc and real glibc calls; no Ray."""

from __future__ import annotations

import json
import os
import sys
import threading

import pytest

from common import memory
from common.memory import MIB, MemoryConfig, MemoryHousekeeping

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or memory.malloc_stats() is None, reason="Linux with glibc >= 2.33 only"
)

STATUS = """Name:\tpython
VmPeak:\t 1000000 kB
VmRSS:\t  532480 kB
RssAnon:\t  380000 kB
RssFile:\t  150000 kB
RssShmem:\t    2480 kB
VmSwap:\t       0 kB
Threads:\t47
"""

ALIGNED = 0x7F0000000000  # a multiple of 64 MiB
SMAPS = f"""55d0c0000000-55d0c4000000 rw-p 00000000 00:00 0                          [heap]
Size:              65536 kB
Rss:               40000 kB
{ALIGNED:x}-{ALIGNED + 0x2000000:x} rw-p 00000000 00:00 0
Size:              32768 kB
Rss:               30000 kB
{ALIGNED + 0x2000000:x}-{ALIGNED + 0x4000000:x} ---p 00000000 00:00 0
Rss:                   0 kB
{ALIGNED + 0x4001000:x}-{ALIGNED + 0x4801000:x} rw-p 00000000 00:00 0
Rss:                8000 kB
7f1000001000-7f1000101000 rw-p 00000000 00:00 0                          [anon:stuff]
Rss:                1000 kB
7f2000001000-7f2000002000 r-xp 00000000 08:01 1234                       /usr/lib/libc.so.6
Rss:                 500 kB
7f3000000000-7f3010000000 rw-s 00000000 00:1a 99                         /dev/shm/plasma (deleted)
Rss:                2480 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
VmFlags: rd wr mr mw me gd ac
"""


def test_status_gives_rss_by_backing_and_threads():
    s = memory.parse_status(STATUS)
    assert s == {
        "rss": 532480 * 1024,
        "anon": 380000 * 1024,
        "file": 150000 * 1024,
        "shmem": 2480 * 1024,
        "swap": 0,
        "threads": 47,
    }


def test_smaps_splits_anonymous_memory_into_heap_arenas_and_the_rest():
    r = memory.parse_smaps(SMAPS)
    assert r["heap"] == 40000 * 1024
    assert r["arenas"] == 30000 * 1024  # the 64 MiB-aligned rw part; its ---p reservation holds nothing
    # not aligned (a large mmapped block), a named anonymous mapping, the main stack
    assert r["anon_other"] == (8000 + 1000 + 132) * 1024
    assert r["mappings"] == 8  # field lines (Rss:, VmFlags:) are not mappings
    # file and shared-memory mappings are left to the status line's exact totals
    assert sum(r[k] for k in ("heap", "arenas", "anon_other")) == (40000 + 30000 + 8000 + 1000 + 132) * 1024


@linux_glibc
def test_regions_of_this_process_add_up_and_a_gone_pid_is_an_oserror():
    r = memory.regions()
    assert set(memory.REGION_KEYS) <= set(r)
    assert r["rss"] > 10 * MIB and r["threads"] >= 1 and r["mappings"] > 10
    assert abs(r["anon"] + r["file"] + r["shmem"] - r["rss"]) <= 64 * 1024  # the kernel's own counters
    assert r["heap"] + r["arenas"] + r["anon_other"] <= r["anon"] + 4 * MIB  # COW file pages count as anon only
    assert memory.regions_mib({"rss": int(3 * MIB), "threads": 7}) == {"rss": 3.0, "threads": 7}
    with pytest.raises(OSError):
        memory.regions(2**22 + 4321)


MALLOC_INFO = """<malloc version="1">
<heap nr="0">
<sizes>
  <size from="17" to="32" total="64" count="2"/>
  <unsorted from="0" to="0" total="0" count="0"/>
</sizes>
<total type="fast" count="2" size="64"/>
<total type="rest" count="3" size="1000"/>
<system type="current" size="2000000"/>
<system type="max" size="3000000"/>
<aspace type="total" size="2000000"/>
<aspace type="mprotect" size="2000000"/>
</heap>
<heap nr="1">
<sizes>
</sizes>
<total type="fast" count="0" size="0"/>
<total type="rest" count="1" size="500000"/>
<system type="current" size="800000"/>
<system type="max" size="800000"/>
<aspace type="total" size="800000"/>
<aspace type="mprotect" size="800000"/>
</heap>
<total type="fast" count="2" size="64"/>
<total type="rest" count="4" size="501000"/>
<total type="mmap" count="3" size="7000000"/>
<system type="current" size="2800000"/>
<system type="max" size="3800000"/>
<aspace type="total" size="2800000"/>
<aspace type="mprotect" size="2800000"/>
</malloc>
"""


def test_malloc_info_xml_gives_each_arena_and_the_totals():
    info = memory.parse_malloc_info(MALLOC_INFO)
    assert info["arenas"] == 2
    assert info["per_arena"] == [
        {"nr": 0, "free": 1064, "system": 2000000, "max": 3000000},
        {"nr": 1, "free": 500000, "system": 800000, "max": 800000},
    ]
    assert (info["free"], info["system"], info["mmap"]) == (501064, 2800000, 7000000)


def _churn_in_threads(kept: list, n_threads: int = 6, blocks: int = 64, size: int = 64 * 1024) -> None:
    """Threads that each allocate ``blocks`` transient blocks below the mmap threshold, each followed by a
    small long-lived one (kept in ``kept``), and free the transient ones: the freed blocks are holes below
    live data in each thread's arena, resident until trimmed (what a version's work leaves behind)."""

    together = threading.Barrier(n_threads)  # all alive at once: each thread gets an arena of its own

    def work():
        held = []
        for _ in range(blocks):
            b = bytearray(size)  # bytearray past 512 bytes: glibc malloc, not pymalloc
            b[::4096] = b"\1" * len(b[::4096])  # touch every page
            held.append(b)
            kept.append(bytearray(1024))  # lives on, above the hole
        together.wait(timeout=30)
        del held

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@linux_glibc
def test_freed_blocks_of_threads_stay_in_their_arenas_until_malloc_trim_returns_them():
    memory.malloc_trim(0)
    kept: list = []
    _churn_in_threads(kept)
    before = memory.malloc_stats()
    held_before = memory.regions()
    assert before["arenas"] >= 2 and len(before["per_arena"]) == before["arenas"]
    assert before["free"] >= 8 * MIB  # 6 threads x 4 MiB freed, some of it still inside the arenas
    assert memory.malloc_trim(0) is True
    after = memory.regions()
    # the freed pages left the process (madvise): anonymous RSS down by most of what the arenas held free
    assert held_before["anon"] - after["anon"] >= 4 * MIB, (held_before, after)
    assert memory.malloc_stats()["free"] >= 8 * MIB  # still free in the arenas (not unmapped), just not resident
    assert len(kept) == 6 * 64


def test_allocator_env_bounds_the_arenas_and_keeps_an_operators_setting(monkeypatch):
    for var in memory.ALLOCATOR_VARS:
        monkeypatch.delenv(var, raising=False)
    assert memory.allocator_env() == {"MALLOC_ARENA_MAX": "2"}
    assert memory.allocator_env(None) == {}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    assert memory.allocator_env() == {"MALLOC_ARENA_MAX": "4", "MALLOC_TRIM_THRESHOLD_": "1048576"}


def test_config_from_the_environment_and_clear_errors():
    assert MemoryConfig.from_env({}) == MemoryConfig()
    assert not MemoryConfig.from_env({}).active
    cfg = MemoryConfig.from_env(
        {
            memory.TRIM_ENV: "1",
            memory.PROBE_ENV: "/tmp/x.jsonl",
            memory.PROBE_EVERY_ENV: "10",
            memory.TRACE_ENV: "2",
            memory.TRACE_FROM_ENV: "100",
        }
    )
    assert cfg == MemoryConfig(True, "/tmp/x.jsonl", 10, 2, 100) and cfg.active
    tuned = MemoryConfig.from_env({memory.ARENA_MAX_ENV: "2", memory.MMAP_THRESHOLD_ENV: "131072"})
    assert (tuned.arena_max, tuned.mmap_threshold, tuned.active) == (2, 131072, True)
    on = MemoryConfig(trim=True, arena_max=2)  # a loop's own defaults: the environment overrides them
    assert MemoryConfig.from_env({}, on) == on
    assert MemoryConfig.from_env({memory.TRIM_ENV: "0", memory.ARENA_MAX_ENV: "4"}, on) == MemoryConfig(arena_max=4)
    with pytest.raises(ValueError, match="FRESHREC_MALLOC_ARENA_MAX"):
        MemoryConfig.from_env({memory.ARENA_MAX_ENV: "-1"})
    with pytest.raises(ValueError, match="FRESHREC_MEMORY_PROBE_EVERY='ten': give a whole number"):
        MemoryConfig.from_env({memory.PROBE_EVERY_ENV: "ten"})
    with pytest.raises(ValueError, match="FRESHREC_MALLOC_TRIM='maybe'"):
        MemoryConfig.from_env({memory.TRIM_ENV: "maybe"})
    with pytest.raises(ValueError, match="probe_every >= 1"):
        MemoryConfig.from_env({memory.PROBE_EVERY_ENV: "0"})


def test_housekeeping_off_does_nothing(tmp_path):
    h = MemoryHousekeeping(MemoryConfig())
    assert all(h.after_version(n) is None for n in range(1, 60)) and h.trims == 0


@linux_glibc
def test_housekeeping_trims_every_version_and_probes_every_nth(tmp_path):
    path = tmp_path / "probe.jsonl"
    h = MemoryHousekeeping(MemoryConfig(trim=True, probe_path=str(path), probe_every=5))
    written = [h.after_version(n) for n in range(1, 13)]
    assert h.trims == 12
    assert [w["n"] for w in written if w is not None] == [5, 10]
    lines = memory.read_probe(path)
    assert [ln["n"] for ln in lines] == [5, 10] and lines[0]["pid"] == os.getpid()
    ln = lines[-1]
    assert ln["regions_mib"]["rss"] > 10 and ln["malloc_mib"]["arenas"] >= 1 and ln["python_objects"] > 1000
    assert ln["ray"] is None  # no Ray in this process
    assert ln["trims"] == 10 and len(ln["malloc_arena_mib"]) == ln["malloc_mib"]["arenas"]
    with open(path, "a") as fh:
        fh.write('{"n": 15, "torn')  # a process killed mid-line
    assert [x["n"] for x in memory.read_probe(path)] == [5, 10]
    assert memory.read_probe(tmp_path / "none.jsonl") == []


def test_housekeeping_names_the_python_site_that_grew_since_the_base_probe(tmp_path):
    import tracemalloc

    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc already on")
    path = tmp_path / "probe.jsonl"
    h = MemoryHousekeeping(MemoryConfig(probe_path=str(path), probe_every=1, trace_frames=1, trace_from=2))
    kept: list = []
    try:
        assert "traced_base" not in h.after_version(1)  # before trace_from: no base yet
        assert h.after_version(2)["traced_base"] is True
        kept.extend(bytearray(4096) for _ in range(256))  # 1 MiB held at this line
        line = h.after_version(3)
    finally:
        tracemalloc.stop()
    top = line["traced_grown"][0]
    assert "test_memory.py" in top["where"] and top["kib"] >= 1000 and top["blocks"] >= 256
    assert not any("common/memory.py" in g["where"] for g in line["traced_grown"])
    assert json.loads(path.read_text().splitlines()[-1])["n"] == 3


def test_ray_refs_without_ray_is_none_and_does_not_import_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    assert memory.ray_refs() is None
    assert "ray" not in sys.modules


@linux_glibc
def test_mallopt_settings_are_applied_when_the_housekeeping_starts(tmp_path):
    import subprocess

    code = (
        "import json, sys; from common import memory as m\n"
        "h = m.MemoryHousekeeping(m.MemoryConfig(arena_max=2, mmap_threshold=131072, probe_path=sys.argv[1], "
        "probe_every=1))\n"
        "print(json.dumps(h.after_version(1)['mallopt']))"
    )
    out = subprocess.run(  # a process of its own: this one's allocator stays as it is
        [sys.executable, "-c", code, str(tmp_path / "p.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"arena_max": True, "mmap_threshold": True}


PYMALLOC = """Small block threshold = 512, in 32 size classes.

# arenas allocated total           =                2,056
# arenas reclaimed                 =                1,993
# arenas highwater mark            =                   73
# arenas allocated current         =                   63
63 arenas * 1048576 bytes/arena    =           66,060,288

# bytes in allocated blocks        =           62,874,880
# bytes in available blocks        =              651,312
34 unused pools * 16384 bytes      =              557,056
# bytes lost to pool headers       =              190,656
Total                              =           66,060,288
"""


def test_pymalloc_stats_parse_and_a_live_call_leaves_stderr_working(capfd):
    assert memory.parse_pymalloc_stats(PYMALLOC) == {
        "arenas": 63,
        "arenas_highwater": 73,
        "arena_bytes": 66060288,
        "in_use": 62874880,
        "available": 651312,
        "unused_pools": 557056,
    }
    live = memory.pymalloc_stats()
    assert live is not None and live["arenas"] >= 1 and 0 < live["in_use"] <= live["arena_bytes"]
    os.write(2, b"still stderr\n")
    assert capfd.readouterr().err == "still stderr\n"  # nothing of the stats leaked, fd 2 restored
