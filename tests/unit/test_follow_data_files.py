"""follow_data_files: history first, then incoming data files as they land, each once, in name order."""

import threading
import time

from trainer.data import DataLedger
from trainer.data.follow import follow_data_files


def _touch(path, text=None):
    text = path.name if text is None else text  # different files have different content
    tmp = path.with_name("." + path.name + ".tmp")  # as split writes: temp name, then rename
    tmp.write_text(text)
    tmp.rename(path)


def test_history_then_incoming_in_order_and_once(tmp_path):
    history, incoming = tmp_path / "h", tmp_path / "i"
    history.mkdir(), incoming.mkdir()
    for name in ("part-2.parquet", "part-1.parquet"):
        _touch(history / name)
    _touch(incoming / "part-3.parquet")
    got = [p.name for p in follow_data_files(history, incoming, DataLedger(), drain=True)]
    assert got == ["part-1.parquet", "part-2.parquet", "part-3.parquet"]


def test_ledger_skips_what_was_taken(tmp_path):
    for name in ("part-1.parquet", "part-2.parquet"):
        _touch(tmp_path / name)
    ledger = DataLedger()
    ledger.record("part-1.parquet", 10, complete=True)
    assert [p.name for p in follow_data_files(tmp_path, None, ledger, drain=True)] == ["part-2.parquet"]


def test_new_data_files_are_picked_up_within_a_second(tmp_path):
    landed: dict[str, float] = {}

    def land():
        for i in range(3):
            time.sleep(0.3)
            landed[f"part-{i}.parquet"] = time.monotonic()
            _touch(tmp_path / f"part-{i}.parquet")

    writer = threading.Thread(target=land)
    writer.start()
    seen = {}
    for path in follow_data_files(None, tmp_path, DataLedger(), drain=False, poll_s=0.05, idle_timeout_s=1.5):
        seen[path.name] = time.monotonic()
    writer.join()
    assert sorted(seen) == sorted(landed)
    assert max(seen[n] - landed[n] for n in seen) < 1.0


def test_same_name_different_content_both_taken_and_renamed_copy_is_not(tmp_path):
    history, incoming = tmp_path / "h", tmp_path / "i"
    history.mkdir(), incoming.mkdir()
    _touch(history / "part-1.parquet", "window 1, first export")
    _touch(incoming / "part-1.parquet", "window 1, a different file")
    ledger = DataLedger()
    got = []
    for ref in follow_data_files(history, incoming, ledger, drain=True, poll_s=0.01, settle_s=0.0):
        got.append(ref)
        ledger.record(ref, 1, complete=True)
    assert [r.name for r in got] == ["part-1.parquet", "part-1.parquet"] and got[0].sha256 != got[1].sha256
    _touch(incoming / "part-2.parquet", "window 1, first export")  # the history file again, renamed
    assert list(follow_data_files(None, incoming, ledger, drain=True, poll_s=0.01, settle_s=0.0)) == []
    assert len(ledger.entries) == 2


def test_a_file_still_being_written_is_not_taken_early(tmp_path):
    path = tmp_path / "part-1.csv"
    stop = threading.Event()

    def copy_slowly():  # a producer that copies in place, ignoring the rename protocol
        with open(path, "w") as fh:
            while not stop.is_set():
                fh.write("1,2,3,pv,1511658000\n")
                fh.flush()
                time.sleep(0.02)

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    try:
        it = follow_data_files(None, tmp_path, DataLedger(), drain=False, poll_s=0.05, settle_s=0.3, idle_timeout_s=0.6)
        t0 = time.monotonic()
        timer = threading.Timer(0.8, stop.set)
        timer.start()
        ref = next(it)
        assert time.monotonic() - t0 >= 0.8  # only once the writer stopped and the size settled
        assert ref.sha256 and ref.name == "part-1.csv"
    finally:
        stop.set()
        writer.join()


def test_a_file_read_incompletely_is_retried_when_its_content_changes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer.data import Validator, load_spec, read_data_file

    whole = tmp_path / "whole.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": [1, 2],
                "item_id": [3, 4],
                "category_id": [5, 6],
                "behavior": ["pv", "buy"],
                "ts": [1511658000, 1511658001],
            }
        ),
        whole,
    )
    incoming = tmp_path / "in"
    incoming.mkdir()
    target = incoming / "part-1.parquet"
    target.write_bytes(whole.read_bytes()[:40])  # half-copied
    ledger, v = DataLedger(), Validator(load_spec("taobao"), stream=True)
    taken = []
    for ref in follow_data_files(None, incoming, ledger, drain=False, poll_s=0.02, settle_s=0.0, idle_timeout_s=0.5):
        batch = read_data_file(ref, v)
        ledger.record(ref, v.last_file.rows_in, complete=v.last_file.complete)
        taken.append((len(batch), v.last_file.complete))
        if not v.last_file.complete:
            target.write_bytes(whole.read_bytes())  # the copy finishes
    assert taken == [(0, False), (2, True)]
    # the partly taken entry is replaced by the complete one (its position is where a retry goes on)
    assert [(e.complete, e.rows) for e in ledger.entries] == [(True, 2)]


def test_a_live_poll_stats_only_the_files_not_consumed_and_a_changed_one_is_still_found(tmp_path, monkeypatch):
    """A follower over a local directory of many consumed files: between full polls (every FULL_SCAN_S) a poll lists
    names and stats only the files not yet consumed (before: a stat and a ledger test per consumed file, 41 ms per
    poll at 1,000 files); a consumed file whose bytes then change is still found, at the next full poll, and yielded
    refused, and a new file is taken at once."""
    import hashlib
    import os

    from trainer.data import follow, storage
    from trainer.data.ledger import DataFileRef

    monkeypatch.setattr(follow, "FULL_SCAN_S", 0.5)
    monkeypatch.setattr(follow, "FULL_SCAN_CPU_SHARE", 1e-6)  # full polls every FULL_SCAN_S, whatever they cost
    ledger = DataLedger()
    for i in range(300):
        path = tmp_path / f"part-{i:04d}.csv"
        _touch(path, f"row {i}\n")
        st = os.stat(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        ledger.record(DataFileRef(path.name, sha, str(path), st.st_size, st.st_mtime, source=1), 1, complete=True)
    stats, full, polls, got = [], [], [0], []
    real_stat, real_list = storage.stat, storage.list_files
    monkeypatch.setattr(storage, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    monkeypatch.setattr(storage, "list_files", lambda d, *a, **k: full.append(1) or real_list(d, *a, **k))

    def stop():  # called once per poll that took nothing
        polls[0] += 1
        if polls[0] == 5:  # quick polls by now: a consumed file changes, a new one lands
            stats.clear()
            with open(tmp_path / "part-0007.csv", "a") as fh:
                fh.write("appended after it was consumed\n")
            _touch(tmp_path / "part-9999.csv", "new\n")
        return polls[0] > 2000

    t0 = time.monotonic()
    for ref in follow_data_files(None, tmp_path, ledger, drain=False, poll_s=0.005, settle_s=0.0, stop=stop):
        got.append((ref.name, ref.refused, time.monotonic() - t0))
        ledger.record(ref, 1, complete=True) if ref.refused is None else ledger.refuse(ref)
        if len(got) >= 2:
            break
    assert [(n, r) for n, r, _ in got] == [("part-9999.csv", None), ("part-0007.csv", "changed")]
    assert 2 <= len(full) and len(full) * 5 < polls[0]  # most polls were quick; a full one found the change
    assert set(stats) <= {str(tmp_path / "part-9999.csv")}  # quick polls stat'ed no consumed file


def test_a_stop_during_quick_polls_ends_on_a_full_poll_that_finds_a_changed_file(tmp_path, monkeypatch):
    """A stop (Ctrl-C, the chaos harness's STOP) or an idle timeout ends the follower on a full poll, so a consumed
    file rewritten since the last full poll is yielded refused first, as before quick polls existed."""
    import hashlib
    import os

    from trainer.data import follow
    from trainer.data.ledger import DataFileRef

    monkeypatch.setattr(follow, "FULL_SCAN_S", 3600.0)  # no periodic full poll in this test
    monkeypatch.setattr(follow, "FULL_SCAN_CPU_SHARE", 1e-9)
    ledger = DataLedger()
    path = tmp_path / "part-1.csv"
    _touch(path, "a\n")
    st = os.stat(path)
    ledger.record(
        DataFileRef(path.name, hashlib.sha256(b"a\n").hexdigest(), str(path), st.st_size, st.st_mtime, source=1),
        1,
        complete=True,
    )
    for how in ("stop", "idle"):
        calls = [0]

        def stop(calls=calls, how=how):
            calls[0] += 1
            if calls[0] == 3:  # quick polls by now
                path.write_text(f"rewritten for {how}\n")
            return how == "stop" and calls[0] >= 3

        refs = list(
            follow_data_files(
                None,
                tmp_path,
                ledger,
                drain=False,
                poll_s=0.005,
                settle_s=0.0,
                stop=stop,
                idle_timeout_s=0.3 if how == "idle" else None,
            )
        )
        assert [(r.name, r.refused) for r in refs] == [("part-1.csv", "changed")], how
        ledger.refuse(refs[0])


def test_a_small_directory_is_polled_in_full_every_time_so_a_rewrite_is_found_in_name_order(tmp_path, monkeypatch):
    """Full polls are spaced by their own CPU cost (FULL_SCAN_CPU_SHARE of a core): a few files cost next to nothing,
    so every poll is a full one and a consumed file rewritten in place is found at the next poll, in name order with
    the files landed beside it (bench chaos seed 51 on 665efe6, where full polls were every 5 s whatever their cost:
    the reference found the rewrite after the next wave's files, a restarted run before them, and the runs' latest
    versions differed)."""
    import hashlib
    import os

    from trainer.data import storage
    from trainer.data.ledger import DataFileRef

    ledger = DataLedger()
    for name in ("part-10.csv", "part-30.csv"):
        _touch(tmp_path / name, f"{name}\n")
        st = os.stat(tmp_path / name)
        sha = hashlib.sha256(f"{name}\n".encode()).hexdigest()
        ledger.record(DataFileRef(name, sha, str(tmp_path / name), st.st_size, st.st_mtime, source=1), 1, complete=True)
    full = []
    real_list = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda d, *a, **k: full.append(1) or real_list(d, *a, **k))
    polls = [0]

    def stop():
        polls[0] += 1
        if polls[0] == 10:  # a wave: a consumed file rewritten in place, and new files beside it
            (tmp_path / "part-30.csv").write_text("rewritten\n")
            _touch(tmp_path / "part-20.csv", "new 20\n")
            _touch(tmp_path / "part-40.csv", "new 40\n")
        return polls[0] > 30

    got = []  # poll_s 0.05 (the default is 0.2): a full poll of a few files costs well under 1 ms of CPU
    for ref in follow_data_files(None, tmp_path, ledger, drain=False, poll_s=0.05, settle_s=0.0, stop=stop):
        got.append((ref.name, ref.refused))
        ledger.record(ref, 1, complete=True) if ref.refused is None else ledger.refuse(ref)
    assert got == [("part-20.csv", None), ("part-30.csv", "changed"), ("part-40.csv", None)]
    assert len(full) >= 0.9 * polls[0]  # (nearly) every poll was a full one
