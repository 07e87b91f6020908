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
