"""Exactly once across restarts (issue 19): the data layer's state is in every version, the bytes hashed
are the bytes trained, late files and far-future events have a policy, restarts cost O(new data).

The stream loop here is the worker's own (:func:`trainer.worker.consume`, the follower, the version
keeper with the data layer's state) over the local backend, without Ray; the real-process SIGKILL
proof is tests/integration/test_recovery_process.py.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer import bundle
from trainer.config import ModelConfig, TrainConfig
from trainer.data import DataLedger, DeadLetterWriter, Validator, load_spec, read_data_file
from trainer.data import follow as follow_mod
from trainer.data.dedup import DedupWindow
from trainer.data.follow import follow_data_files
from trainer.data.reasons import CHANGED_FILE, Reason
from trainer.data.state import DataState
from trainer.local import LocalTrainer
from trainer.versioning import VersionKeeper
from versions import SnapshotConfig, VersionStore
from versions.merge import merge_keyed

SPEC = load_spec("taobao")
BASE = 1_511_600_000


def _events(rng, n, t0, users=50, items=200):
    return {
        "user_id": rng.integers(1, users, n),
        "item_id": rng.integers(1, items, n),
        "category_id": rng.integers(1, 9, n),
        "behavior": rng.choice(["pv", "cart", "buy", "fav"], n),
        "ts": t0 + np.sort(rng.integers(0, 3000, n)),
    }


def _write(path, cols) -> None:
    tmp = path.with_name("." + path.name + ".tmp")  # the writer's contract: an in-progress name, then rename
    pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), tmp)
    tmp.rename(path)


def dirty_stream(root, files: int = 5, rows: int = 120, seed: int = 0) -> list:
    """Data files 2 h apart where each repeats 3 events of the file before it (duplicates across file
    boundaries) and carries one event older than the watermark by more than lateness.allowed_s
    (deferred to the next file)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    prev, out = None, []
    for k in range(files):
        cols = _events(rng, rows, BASE + k * 7200)
        if prev is not None:
            for c in cols:  # 3 repeats of the previous file's events, then a late one (new ids)
                late = (
                    np.array([BASE + (k - 1) * 7200 - 4000])
                    if c == "ts"
                    else (np.array([7777 + k]) if c in ("user_id", "item_id") else cols[c][:1])
                )
                cols[c] = np.concatenate([cols[c], prev[c][:3], late])
        path = root / f"part-{k:03d}.parquet"
        _write(path, cols)
        prev = cols
        out.append(path)
    return out


def stream(src, store_url, stop_after: int | None = None, data_state: bool = True):
    """One run of the worker's loop over ``src`` (resuming from ``store_url``); ``stop_after`` files: a crash
    (no final version, nothing flushed). Returns (trainer, validator, {file: FileReport})."""
    from trainer.worker import consume

    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=3, batch_size=64))
    v = Validator(SPEC, DeadLetterWriter(None), stream=True)
    keeper = VersionKeeper(
        store_url,
        t.backend,
        t,
        SnapshotConfig(full_every=3),
        data=DataState(v, lambda: t.ledger) if data_state else None,
    )
    keeper.restore()
    reports = {}
    for ref in follow_data_files(None, src, t.ledger, drain=True, poll_s=0.01, settle_s=0.0):
        taken = consume(ref, t, v, DeadLetterWriter(None), 1.0)
        if taken is not None:
            reports[ref.name] = taken[0]
        keeper.after_file()
        if stop_after is not None and len(reports) >= stop_after:
            keeper.wait()
            return t, v, reports
    keeper.finish()
    return t, v, reports


def _digest(url):
    store = VersionStore(url)
    return store.manifest(store.latest()).model_digest


def test_a_resumed_stream_drops_exactly_the_duplicates_of_an_uninterrupted_one(tmp_path):
    src = tmp_path / "in"
    dirty_stream(src, files=4, rows=60)
    _, _, whole = stream(src, str(tmp_path / "a"))
    assert sum(r.rows_duplicate for r in whole.values()) == 9 and sum(r.rows_late for r in whole.values()) == 3
    _, _, first = stream(src, str(tmp_path / "b"), stop_after=2)  # "killed" after two files
    _, v, rest = stream(src, str(tmp_path / "b"))
    assert sorted(first) + sorted(rest) == sorted(whole)  # each file once
    resumed = {**first, **rest}
    for name, r in whole.items():
        assert (resumed[name].rows_duplicate, resumed[name].rows_late, resumed[name].rows_good) == (
            r.rows_duplicate,
            r.rows_late,
            r.rows_good,
        ), name
    assert _digest(str(tmp_path / "a")) == _digest(str(tmp_path / "b"))
    # without the data layer's state in the version (the bug of issue 19) the resumed run trains a duplicate
    stream(src, str(tmp_path / "c"), stop_after=2, data_state=False)
    _, _, bad = stream(src, str(tmp_path / "c"), data_state=False)
    assert bad["part-002.parquet"].rows_duplicate < whole["part-002.parquet"].rows_duplicate
    assert _digest(str(tmp_path / "c")) != _digest(str(tmp_path / "a"))


def test_versions_hold_the_data_state_incrementally_and_the_manifest_only_references_the_ledger(tmp_path):
    src = tmp_path / "in"
    dirty_stream(src, files=3)
    _, v, reports = stream(src, str(tmp_path / "s"))
    store = VersionStore(str(tmp_path / "s"))
    ms = store.list()
    assert [m.kind for m in ms][:2] == ["full", "delta"]
    dedup = [p for p in ms[1].parts if p.meta.get("table") == bundle.DEDUP]
    r = reports["part-001.parquet"]
    assert len(dedup) == 1 and dedup[0].rows == r.rows_good + r.rows_late  # only the ids this window added
    led = ms[-1].ledger
    assert led["part"] == bundle.LEDGER and led["files"] == 3 and len(led["entries"]) == 1  # not the whole ledger
    assert [e.file for e in bundle.read_ledger(store, ms[-1].version).entries] == sorted(reports)
    data = bundle.read_data(store, ms[-1].version)
    np.testing.assert_array_equal(np.sort(data["dedup"]["ids"]), np.sort(v.dedup.state()))
    assert int(data["state"]["watermark"][0]) == v.watermark and int(data["state"]["late/n"][0]) == 1
    assert bundle.model_rows(ms[-1].parts, ms[-1].kind) == ms[-1].rows  # the data parts are not embedding rows


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_a_restored_dedup_window_forgets_exactly_what_the_uninterrupted_one_forgets(seed):
    """Bounded by count and by time. ``b`` saves deltas at random cuts (merged like the store merges a
    chain) and crashes at random points: restored from the chain, it replays the adds since the last cut
    (the files after the version) and must then hold exactly what the uninterrupted ``a`` holds."""
    rng = np.random.default_rng(seed)
    a, b = DedupWindow(capacity=300), DedupWindow(capacity=300)
    layers, marks, since_cut, watermark, crashes = [], (0, 0), [], 0, 0

    def step(w, ids, ts, floor):
        ids = ids[~w.contains(ids)]
        w.add(ids, ts[: len(ids)])
        w.forget(floor)

    for _ in range(80):
        ids = np.unique(rng.integers(0, 2000, rng.integers(1, 40)))
        ts = watermark + rng.integers(-50, 100, len(ids))
        watermark = max(watermark, int(ts.max()))
        op = (ids, ts, watermark - 400)
        step(a, *op)
        step(b, *op)
        since_cut.append(op)
        if rng.random() < 0.3:  # a version: the delta since the last one (the whole window in the first)
            layers.append([b.export(*marks) if layers else b.export()])
            marks, since_cut = (b.generation, b.journal_end), []
            b.trim_journal(marks[1])
        if rng.random() < 0.2 and layers:  # a crash: restore from the chain, replay what came after
            b = DedupWindow(capacity=300)
            b.load(merge_keyed(layers), marks[0])
            marks = (marks[0], b.journal_end)  # what DataState.load does: the journal starts again
            for op in since_cut:
                step(b, *op)
            crashes += 1
        assert sorted(a.state().tolist()) == sorted(b.state().tolist()) and len(a) <= 300 + 40
        q = rng.integers(0, 2000, 200)
        np.testing.assert_array_equal(a.contains(q), b.contains(q))
    assert crashes > 0 and len(layers) > 1


def test_dedup_window_bounds_and_incremental_export():
    w = DedupWindow(capacity=10)
    w.add(np.arange(6), np.arange(6) * 10)
    w.add(np.arange(6, 12), np.arange(6, 12) * 10)  # 12 > 10: the oldest generation goes, whole
    assert sorted(w.state().tolist()) == list(range(6, 12))
    gen, journal = w.generation, w.journal_end
    w.add(np.array([20, 21]), np.array([200, 210]))
    w.forget(95)  # the time bound: ids of events before 95 (6..9)
    assert sorted(w.state().tolist()) == [10, 11, 20, 21]
    delta = w.export(gen, journal)
    assert delta["ids"].tolist() == [20, 21] and delta["deleted"].tolist() == [6, 7, 8, 9]


def test_far_future_events_are_dead_lettered_and_never_move_the_watermark(tmp_path):
    dead = DeadLetterWriter(tmp_path / "dead.jsonl")
    v = Validator(SPEC, dead, stream=True)
    v.clock = lambda: BASE + 10_000
    rng = np.random.default_rng(1)
    cols = _events(rng, 20, BASE)
    cols["ts"][5] = 4_071_000_000  # the year 2098
    _write(tmp_path / "part-1.parquet", cols)
    batch = read_data_file(tmp_path / "part-1.parquet", v)
    assert len(batch) == 19 and v.last_file.by_reason[Reason.FUTURE.value] == 1
    assert v.watermark < BASE + 3600
    later = _events(rng, 20, BASE + 600)  # the next file is on time: nothing deferred
    _write(tmp_path / "part-2.parquet", later)
    assert len(read_data_file(tmp_path / "part-2.parquet", v)) == 20 and v.last_file.rows_late == 0
    dead.close()
    assert [r["reason"] for r in map(__import__("json").loads, open(tmp_path / "dead.jsonl"))] == ["future event"]


def test_a_late_file_is_taken_once_under_the_lateness_policy_and_the_stream_goes_on(tmp_path):
    src = tmp_path / "in"
    files = dirty_stream(src, files=4)
    late = files[1].rename(tmp_path / files[1].name)  # part-001 lands after part-002 and part-003
    stream(src, str(tmp_path / "s"))
    os.rename(late, src / late.name)
    t, _, reports = stream(src, str(tmp_path / "s"))
    assert list(reports) == ["part-001.parquet"] and reports["part-001.parquet"].rows_late > 0
    assert [e.file for e in t.ledger.entries].count("part-001.parquet") == 1
    digest = _digest(str(tmp_path / "s"))
    n = len(VersionStore(str(tmp_path / "s")).versions())
    _, _, again = stream(src, str(tmp_path / "s"))  # nothing new: no file, no version, the same model
    assert again == {} and len(VersionStore(str(tmp_path / "s")).versions()) == n
    assert _digest(str(tmp_path / "s")) == digest


def test_a_file_appended_after_it_was_consumed_is_refused_loudly_and_never_trained_twice(tmp_path, caplog):
    from trainer.worker import consume

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(2)
    path = src / "part-1.csv"
    path.write_text("".join(f"{u},{i},1,pv,{BASE + i}\n" for u, i in zip(rng.integers(1, 9, 30), range(30))))
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=3, batch_size=64))
    v = Validator(SPEC, stream=True)
    dead = DeadLetterWriter(tmp_path / "dead.jsonl")
    refs = list(follow_data_files(None, src, t.ledger, drain=True, poll_s=0.01, settle_s=0.0))
    assert len(refs) == 1 and consume(refs[0], t, v, dead, 1.0)[0].rows_good == 30
    trained = t.examples_trained
    with open(path, "a") as fh:  # the writer kept appending after the file was consumed
        fh.write(f"1,99,1,pv,{BASE + 99}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    refs = list(follow_data_files(None, src, t.ledger, drain=True, poll_s=0.01, settle_s=0.0))
    assert len(refs) == 1 and refs[0].refused == "changed" and refs[0].data is None
    assert consume(refs[0], t, v, dead, 1.0) is None and t.examples_trained == trained
    assert "changed after consumption" in caplog.text
    dead.close()
    assert [r["reason"] for r in map(__import__("json").loads, open(tmp_path / "dead.jsonl"))] == [CHANGED_FILE]
    statuses = sorted(e.status for e in t.ledger.entries)
    assert statuses == ["changed", "ok"]
    assert list(follow_data_files(None, src, t.ledger, drain=True, poll_s=0.01, settle_s=0.0)) == []  # once


def test_the_bytes_trained_are_the_bytes_hashed(tmp_path, monkeypatch):
    """The follower reads a file once; the consumer parses those bytes, even if the path changes after."""
    import hashlib

    src = tmp_path / "in"
    files = dirty_stream(src, files=1)
    ref = next(follow_data_files(None, src, DataLedger(), drain=True, settle_s=0.0))
    assert ref.sha256 == hashlib.sha256(ref.data).hexdigest() and ref.size == len(ref.data)
    files[0].write_bytes(b"garbage")  # replaced on disk after it was read: what was read is what is trained
    batch = read_data_file(ref, Validator(SPEC, stream=True))
    assert len(batch) == 120


def test_in_progress_names_are_ignored_until_renamed(tmp_path):
    from trainer.data.pipeline import is_data_file_name

    for name in (
        ".part-1.parquet",
        "_part-1.parquet",
        "part-1.parquet.tmp",
        "part-1.parquet.inprogress",
        "part-1.parquet._COPYING_",
        "part-1.tmp.parquet",
        "part-1.inprogress.csv",
    ):
        assert not is_data_file_name(name), name
    assert is_data_file_name("part-1.parquet")
    src = tmp_path / "in"
    files = dirty_stream(src, files=1)
    files[0].rename(src / "part-2.parquet._COPYING_")
    assert list(follow_data_files(None, src, DataLedger(), drain=True, settle_s=0.0)) == []
    (src / "part-2.parquet._COPYING_").rename(src / "part-2.parquet")
    assert [r.name for r in follow_data_files(None, src, DataLedger(), drain=True, settle_s=0.0)] == ["part-2.parquet"]


def test_a_partly_read_file_goes_on_after_the_rows_already_taken(tmp_path):
    """The ledger's position: the rows a partial read took are passed over (what exactly-once rests on
    for ``event_id: row`` specs, which have no event ids to deduplicate)."""
    src = tmp_path / "in"
    files = dirty_stream(src, files=1)
    whole = read_data_file(files[0], Validator(SPEC, stream=True))
    v = Validator(SPEC, stream=True)
    rest = read_data_file(files[0], v, skip_rows=50)
    assert v.last_file.rows_in == 70 and rest.rows.tolist() == whole.rows[50:].tolist()


def test_restart_recognises_consumed_files_without_reading_them(tmp_path, monkeypatch, capsys):
    """Restart in O(new data): consumed files are recognised by (name, size, mtime); prints the restart
    time after 10 and after 1,000 consumed files (a figure for the lead, not asserted)."""
    reads = []
    real = follow_mod.read_once
    monkeypatch.setattr(follow_mod, "read_once", lambda f, s: reads.append(f.name) or real(f, s))
    times = {}
    for n in (10, 1000):
        src = tmp_path / f"in-{n}"
        src.mkdir()
        for i in range(n):
            (src / f"part-{i:05d}.csv").write_text(f"1,{i},1,pv,{BASE + i}\n")
        ledger = DataLedger()
        for ref in follow_data_files(None, src, ledger, drain=True, settle_s=0.0):
            ledger.record(ref, 1, complete=True)
        t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=3))
        t.ledger = ledger
        v = Validator(SPEC, stream=True)
        keeper = VersionKeeper(str(tmp_path / f"s-{n}"), t.backend, t, data=DataState(v, lambda t=t: t.ledger))
        keeper.after_file(force=True)
        keeper.wait()
        reads.clear()
        t0 = time.perf_counter()
        t2 = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=3))
        v2 = Validator(SPEC, stream=True)
        VersionKeeper(str(tmp_path / f"s-{n}"), t2.backend, t2, data=DataState(v2, lambda t2=t2: t2.ledger)).restore()
        assert list(follow_data_files(None, src, t2.ledger, drain=True, settle_s=0.0)) == []
        times[n] = time.perf_counter() - t0
        assert reads == [] and len(t2.ledger) == n
    print(
        f"\nrestart (restore + one pass of the follower): {times[10] * 1e3:.1f} ms after 10 consumed files, "
        f"{times[1000] * 1e3:.1f} ms after 1,000 ({times[1000] / times[10]:.2f}x)"
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_saved_ledger_merged_over_a_chain_of_deltas_is_the_ledger(seed):
    """Records, partial entries replaced by complete ones, refusals and late names, saved as deltas at
    random cuts (merged like the store merges a chain): the merge reads back as the ledger itself."""
    import hashlib

    from trainer.data import DataFileRef

    rng = np.random.default_rng(seed)
    led, layers, mark = DataLedger(), [], 0
    for i in range(60):
        name = f"part-{int(rng.integers(0, 40)):03d}.csv"
        sha = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        ref = DataFileRef(name, sha, name, int(rng.integers(1, 999)), float(rng.integers(1, 10**9)) / 7)
        what = rng.random()
        if what < 0.2 and not led.consumed(name):
            led.record(ref, int(rng.integers(0, 5)), complete=False)  # a partial read: its position
        elif what < 0.3 and led.consumed(name):
            led.refuse(ref)
        elif not led.consumed(name):
            led.record(ref, int(rng.integers(5, 50)), complete=True)  # a partial entry is replaced
        if rng.random() < 0.3:
            layers.append([led.to_arrays(since=mark) if layers else led.to_arrays()])
            mark = led.seq
            led.trim_journal(mark)
    layers.append([led.to_arrays(since=mark)])
    back = DataLedger.from_arrays(merge_keyed(layers))
    key = lambda e: (e.file, e.sha256 or "")  # noqa: E731
    assert sorted(back.entries, key=key) == sorted(led.entries, key=key) and len(layers) > 2


def test_a_version_that_fails_to_commit_moves_no_mark(tmp_path):
    """The next delta carries what the failed one held (DataState.cut / committed)."""
    from trainer.data import DataFileRef

    v = Validator(SPEC, stream=True)
    led = DataLedger()
    state = DataState(v, lambda: led)
    v.dedup.add(np.array([1, 2]), np.array([10, 10]))
    led.record(DataFileRef("a.csv", "a" * 64, "a.csv", 3, 1.0), 3, complete=True)
    state.committed(state.cut(full=True))
    v.dedup.add(np.array([3]), np.array([11]))
    led.record(DataFileRef("b.csv", "b" * 64, "b.csv", 3, 1.0), 3, complete=True)
    failed = state.cut(full=False)  # written, never committed
    assert state.dirty() and failed.dedup["ids"].tolist() == [3]
    v.dedup.add(np.array([4]), np.array([12]))
    nxt = state.cut(full=False)
    assert nxt.dedup["ids"].tolist() == [3, 4] and len(nxt.ledger["ids"]) == 1
    state.committed(nxt)
    assert not state.dirty() and state.cut(full=False).dedup["ids"].tolist() == []


def test_event_id_row_specs_are_not_deduplicated_and_a_retry_goes_on_after_the_rows_taken(tmp_path):
    """criteo (``event_id: row``): identical rows are distinct impressions (both trained); exactly once
    rests on the ledger's position, even across a restored version (the row ordinal is in data/state)."""
    spec = load_spec("criteo")
    line = "1\t" + "\t".join(["3"] * 13) + "\t" + "\t".join(["68fd1e64"] * 26) + "\n"
    path = tmp_path / "day-0.tsv"
    path.write_text(line * 4)
    v = Validator(spec, stream=True)
    assert len(read_data_file(path, v)) == 4 and v.last_file.rows_duplicate == 0
    led = DataLedger()
    state = DataState(v, lambda: led)
    saved = state.cut(full=True)
    restored = Validator(spec, stream=True)
    DataState(restored, lambda: led).load({"ledger": None, "dedup": saved.dedup, "state": saved.state})
    again = read_data_file(path, restored, skip_rows=3)  # a partial read took 3 rows
    assert len(again) == 1 and again.ts.tolist() == [4]  # the ordinal goes on where the version left it


def test_a_restart_rewinds_the_dead_letter_file_to_the_version_so_each_rejected_row_is_written_once(tmp_path):
    """Rows rejected after a cut are rejected again when a restart replays their file: the version records
    the dead-letter file's length and a restore from it rewinds the file there (found by the SIGKILL test:
    the far-future event was dead-lettered twice when the kill fell between its file and the next version)."""
    path = tmp_path / "dead-letter.jsonl"
    dead = DeadLetterWriter(path)
    state = DataState(Validator(SPEC, dead, stream=True), DataLedger)
    dead.write("a.csv", [1], ["future event"], [""], ["x"])
    cut = state.validator_state()  # a version is cut here
    dead.write("b.csv", [2, 3], ["malformed id", "duplicate event id"], ["", ""], ["y", "z"])
    assert len(path.read_text().splitlines()) == 3
    dead.close()  # the process dies; a new one restores from the version
    again = DeadLetterWriter(path)
    DataState(Validator(SPEC, again, stream=True), DataLedger).load({"state": cut})
    assert [line for line in path.read_text().splitlines()] == [path.read_text().splitlines()[0]]
    again.write("b.csv", [2, 3], ["malformed id", "duplicate event id"], ["", ""], ["y", "z"])  # the replay
    assert len(path.read_text().splitlines()) == 3
    # a store without the record (a version from before it) leaves the file alone
    DataState(Validator(SPEC, DeadLetterWriter(path), stream=True), DataLedger).load({"state": {}})
    assert len(path.read_text().splitlines()) == 3
