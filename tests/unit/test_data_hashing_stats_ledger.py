import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data import DataLedger, LedgerError, RunningStats
from trainer.data.dedup import DedupWindow
from trainer.data.hashing import combine, hash_strings


def test_hash_is_stable_across_processes():
    code = "import pyarrow as pa; from trainer.data.hashing import hash_strings; print(list(hash_strings(pa.array(['alice', '', '商品-42']))))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=".",
    ).stdout
    here = list(hash_strings(pa.array(["alice", "", "商品-42"])))
    assert out.strip() == str(here)


def test_hash_golden_values():
    # FNV-1a 64 + splitmix64 of the UTF-8 bytes: fixed forever (ids in stored models depend on it)
    got = hash_strings(pa.array(["alice", "", "a"]))
    assert got.dtype == np.int64
    fnv = 0xCBF29CE484222325
    for b in b"a":
        fnv = ((fnv ^ b) * 0x100000001B3) & (2**64 - 1)
    z = fnv
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    z = z ^ (z >> 31)
    assert int(got[2]) == (z - 2**64 if z >= 2**63 else z)


@given(st.lists(st.text(max_size=40), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_hash_equal_strings_equal_hashes(strings):
    h = hash_strings(pa.array(strings))
    for s in set(strings):
        idx = [i for i, x in enumerate(strings) if x == s]
        assert len(set(h[idx].tolist())) == 1
    assert len(set(h.tolist())) == len(set(strings))  # no collisions on small sets


def test_combine_orders_matter():
    a, b = np.array([1, 2]), np.array([2, 1])
    assert combine([a, b])[0] != combine([b, a])[0]


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=200), st.integers(1, 199))
@settings(max_examples=50, deadline=None)
def test_running_stats_merge_equals_whole(values, cut):
    x = np.asarray(values, np.float64).reshape(-1, 1)
    cut = min(cut, len(x) - 1)
    whole = RunningStats(1).update(x)
    merged = RunningStats(1).update(x[:cut]).merge(RunningStats(1).update(x[cut:]))
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(merged.var, x.var(axis=0), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-9, atol=1e-6)
    restored = RunningStats.from_state_dict(merged.state_dict())
    np.testing.assert_array_equal(restored.normalize(x), merged.normalize(x))


def test_ledger_roundtrip_and_order():
    led = DataLedger()
    led.record("d/part-1.parquet", 10, complete=True)
    led.record("d/part-2.parquet", 4, complete=False)
    led.record("d/part-2.parquet", 9, complete=True)
    again = DataLedger.from_json(led.to_json())
    assert again == led and again.total_rows == 19
    assert [p.name for p in again.pending(["x/part-3.parquet", "x/part-1.parquet"])] == ["part-3.parquet"]
    with pytest.raises(LedgerError, match="refusing"):
        again.record("part-1.parquet", 10, complete=True)
    again.record("part-0.parquet", 1, complete=True)  # a late file is recorded like any other (issue 19)
    assert again.is_complete("part-0.parquet") and again.total_rows == 20


def test_dedup_window_bounded_and_exact():
    w = DedupWindow(capacity=1000)
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(40):
        ids = rng.integers(-(2**62), 2**62, 100)
        assert not w.contains(ids).any()
        w.add(ids)
        seen.append(ids)
        assert w.contains(ids).all()
    assert len(w) <= 1000 + 100 * 12
    assert w.contains(seen[-1]).all()


def test_ledger_identifies_files_by_name_and_content(tmp_path):
    from trainer.data import data_file_ref

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "part-1.csv").write_text("first")
    (b / "part-1.csv").write_text("second")
    (b / "part-0-renamed.csv").write_text("first")
    ra, rb, renamed = (
        data_file_ref(a / "part-1.csv"),
        data_file_ref(b / "part-1.csv"),
        data_file_ref(b / "part-0-renamed.csv"),
    )
    led = DataLedger()
    led.record(ra, 5, complete=True)
    assert not led.is_complete(rb) and led.is_complete(renamed)
    led.record(rb, 7, complete=True)
    d = led.to_dict()
    assert d["version"] == 3 and [(e["file"], e["rows"]) for e in d["entries"]] == [
        ("part-1.csv", 5),
        ("part-1.csv", 7),
    ]
    assert all(len(e["sha256"]) == 64 for e in d["entries"]) and DataLedger.from_dict(d) == led
    old = DataLedger.from_dict({"version": 2, "entries": [{"file": "part-1.csv", "rows": 3, "complete": True}]})
    assert old.is_complete("x/part-1.csv") and old.is_complete(ra)  # a name-only entry still counts


garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
entry = st.fixed_dictionaries(
    {
        "file": garbage | st.just("part-1.csv"),
        "rows": garbage | st.integers(0, 9),
        "complete": garbage | st.booleans(),
        "sha256": garbage | st.just("a" * 64),
    }
)


@given(
    garbage
    | st.fixed_dictionaries(
        {"version": st.sampled_from([1, 2, 3]) | garbage, "entries": st.lists(entry, max_size=3) | garbage}
    )
)
@settings(max_examples=200, deadline=None)
def test_ledger_from_dict_rejects_garbage_with_ledger_error(data):
    try:
        led = DataLedger.from_dict(data)
    except LedgerError:
        return
    assert DataLedger.from_dict(led.to_dict()) == led  # whatever is accepted round-trips


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_consumed_by_stat_equals_by_stat_file_by_file(seed):
    """The follower's vectorised test of a whole listing (``consumed_by_stat``) against the per-file ``by_stat``
    it replaced, on a seeded ledger with entries in both the compact columns and the held ones: partly taken
    files, refused (changed) ones, names taken more than once, a renamed copy, and listings that differ in
    size, mtime or one byte of the name."""
    import hashlib

    from trainer.data.ledger import DataFileRef
    from trainer.data.storage import FileInfo

    rng = np.random.default_rng(seed)
    ledger = DataLedger(hot_entries=int(rng.integers(2, 40)))
    recorded = []
    for i in range(int(rng.integers(50, 400))):
        name = (
            f"part-{int(rng.integers(0, 300)):05d}.csv"
            if rng.random() < 0.8
            else f"p{i}-" + "x" * int(rng.integers(1, 300))
        )
        size, mtime = int(rng.integers(1, 10**6)), float(rng.integers(1, 10**9)) + float(rng.random())
        sha = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        ref = DataFileRef(name, sha, f"/in/{name}", size, mtime, source=int(rng.integers(0, 2)))
        kind = rng.random()
        try:
            if kind < 0.1:
                ledger.refuse(ref)
            else:
                ledger.record(ref, int(rng.integers(1, 100)), complete=kind > 0.25)
        except Exception:  # names too long for the compact columns, an entry going back: not recorded
            continue
        recorded.append((name, size, mtime))
    files = []
    for name, size, mtime in recorded:
        files.append(FileInfo(f"/in/{name}", size, mtime))
        files.append(FileInfo(f"/in/{name}", size + 1, mtime))
        files.append(FileInfo(f"/in/{name}", size, mtime + 0.5))
        files.append(FileInfo(f"/in/{name[:-1]}v", size, mtime))
    files += [FileInfo(f"/in/new-{i}.csv", 10, 1.0) for i in range(20)]
    order = rng.permutation(len(files))
    files = [files[i] for i in order]
    want = [(e := ledger.by_stat(f.name, f.size, f.mtime)) is not None and e.complete for f in files]
    got = ledger.consumed_by_stat(files).tolist()
    assert got == want and any(want) and not all(want)
    assert ledger.consumed_by_stat([]).tolist() == []
    assert len(ledger._cold) > 0 and len(ledger._entries) > 0  # both places exercised


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_from_arrays_builds_the_same_ledger_as_recording_its_entries_in_order(seed):
    """``from_arrays`` moves the complete entries to the compact columns as arrays (a restart reads every file
    ever consumed); the reference is the constructor, which records them one by one in their saved order and
    spills once. Seeded ledgers around the spill thresholds: partly taken and refused files, names taken
    twice, no hash, no size/mtime."""
    import hashlib

    from trainer.data.ledger import DataFileRef, _key_id

    rng = np.random.default_rng(seed)
    for n in (0, 1, 63, 64, 65, 129, 300, int(rng.integers(400, 900))):
        led = DataLedger(hot_entries=int(rng.integers(2, 200)))
        for i in range(n):
            name = f"part-{int(rng.integers(0, n + 1)):06d}.csv"
            sha = None if rng.random() < 0.1 else hashlib.sha256(f"{seed}-{n}-{i}".encode()).hexdigest()
            size = None if rng.random() < 0.1 else int(rng.integers(1, 10**6))
            mtime = None if size is None else float(rng.integers(1, 10**9)) + float(rng.random())
            ref = DataFileRef(name, sha, f"/in/{name}", size, mtime, source=int(rng.integers(0, 2)))
            try:
                if sha is not None and rng.random() < 0.05:
                    led.refuse(ref)
                else:
                    led.record(ref, int(rng.integers(1, 100)), complete=rng.random() > 0.1, sha256=sha)
            except Exception:  # taken again, going back: refused by the ledger, not recorded
                continue
        arrays = led.to_arrays(since=0)
        got = DataLedger.from_arrays(arrays)
        ordered = np.argsort(arrays["order"], kind="stable")
        by_id = {_key_id(e.key): e for e in led.entries}
        want = DataLedger([by_id[int(arrays["ids"][i])] for i in ordered.tolist()])
        assert got.entries == want.entries and len(got) == len(want) == len(led)
        assert got.seq == want.seq and got._changed == want._changed and got._by_name == want._by_name
        assert got.total_rows == want.total_rows == led.total_rows
        for k, v in vars(want._cold).items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(getattr(got._cold, k), v, err_msg=k)
        for since in (0, n // 3, n):
            a, b = got.to_arrays(since=since), want.to_arrays(since=since)
            assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)
    dup = led.to_arrays(since=0)
    if len(dup["ids"]) > 1:
        dup["ids"] = dup["ids"].copy()
        dup["ids"][1] = dup["ids"][0]
        with pytest.raises(LedgerError, match="distinct data files"):
            DataLedger.from_arrays(dup)
