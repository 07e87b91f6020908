"""The run directory's files travel from training rank 0 to the driver through Ray (trainer/runfiles.py): the
dead-letter lines rank 0 sends, applied by the driver's RunBook, give the very file (and the very sizes a version
records) that writing it in place gives, through random writes and restores; the channel returns to rank 0 only
once the driver has applied its operations; the worker loop itself writes no file."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data.deadletter import DeadLetterWriter
from trainer.runfiles import RunBook, RunChannel, RunPaths, ShippedDeadLetters

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # any unicode (é, 字, emoji), no surrogates
WRITE = st.tuples(st.just("write"), st.lists(st.tuples(st.integers(1, 10**6), TEXT, TEXT), min_size=0, max_size=4))
STEP = st.one_of(WRITE, st.tuples(st.just("size"), st.none()), st.tuples(st.just("rewind"), st.integers(-1, 400)))


class _Loopback:
    """Rank 0's RankZeroFiles with the driver's RunBook on the other end, without Ray in between."""

    def __init__(self, book: RunBook) -> None:
        self.book, self.sent = book, []

    def send(self, ops: list) -> None:
        self.sent.extend(kind for kind, _ in ops)
        for kind, payload in ops:
            self.book._apply(kind, payload)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(STEP, max_size=12), existing=st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"") + b"\n"))
def test_shipped_dead_letters_make_the_file_writing_in_place_makes(tmp_path_factory, steps, existing):
    root = tmp_path_factory.mktemp("book")
    here, there = RunPaths(root / "in-place"), RunPaths(root / "driver")
    for p in (here, there):
        p.root.mkdir()
        p.dead_letter.write_bytes(existing)  # a run directory with dead letters from before
    local = DeadLetterWriter(here.dead_letter)
    shipped = ShippedDeadLetters(_Loopback(RunBook(None, there, lambda i, r: None)), len(existing))
    for kind, arg in steps:
        if kind == "write":
            rows = [r for r, _, _ in arg]
            args = ("part-1.csv", rows, ["malformed id"] * len(rows), [d for _, d, _ in arg], [w for _, _, w in arg])
            local.write(*args)
            shipped.write(*args)
        elif kind == "size":  # what a version records
            assert shipped.size() == local.size()
        else:
            local.rewind(arg)
            shipped.rewind(arg)
        assert shipped.written == local.written
    local.close()
    shipped.close()
    assert there.dead_letter.read_bytes() == here.dead_letter.read_bytes()
    assert shipped.size() == local.size()


def test_records_the_ledger_and_the_dense_state_land_in_the_drivers_run_directory(tmp_path):
    import torch

    from trainer.runfiles import RankZeroFiles

    paths = RunPaths(tmp_path)
    seen = []
    book = RunBook(None, paths, lambda i, rec: seen.append((i, rec["file"])), skip=2)
    files = RankZeroFiles(None)
    files.send = _Loopback(book).send
    dead = ShippedDeadLetters(files, 0)
    dead.write("b.csv", [3], ["unknown action"], ["clik"], ["1,2,3,clik"])
    files.file_done({"file": "b.csv", "step": 4}, '{"entries": []}', dead)
    files.dense({"step": 4, "model": {"w": torch.ones(2)}})
    assert seen == [(3, "b.csv")]  # numbered after the records a resumed run kept
    assert paths.metrics.read_text() == '{"file": "b.csv", "step": 4}\n'
    assert paths.ledger.read_text() == '{"entries": []}'
    assert '"reason": "unknown action"' in paths.dead_letter.read_text()
    assert torch.load(paths.dense)["step"] == 4


def test_the_channel_returns_to_rank_0_only_once_the_driver_applied_its_operations():
    async def scenario():
        ch = RunChannel()
        put = asyncio.ensure_future(ch.put([("record", {"file": "a"}), ("ledger", "{}")], timeout_s=5))
        ops, seq = await ch.take(1.0)
        assert [k for k, _ in ops] == ["record", "ledger"] and seq == 2
        await asyncio.sleep(0.02)
        assert not put.done()  # taken, not yet applied
        await ch.ack(seq)
        assert await put is True
        assert await ch.take(0.01) == ([], 2)  # nothing more; a wait that times out returns empty
        assert await ch.put([("dead", "x\n")], timeout_s=0.05) is False  # nobody applies it: rank 0 is told
        assert not await ch.stop_requested()
        await ch.request_stop()
        assert await ch.stop_requested()
        await ch.set_dead_letter_bytes(17)
        assert await ch.dead_letter_bytes() == 17

    asyncio.run(scenario())


def test_the_worker_loop_writes_no_file_itself():
    """Rank 0 may run on a node with no disk in common with the driver: trainer/worker.py opens no file, saves
    nothing with torch and knows no run-directory path (it sends them through RankZeroFiles)."""
    tree = ast.parse((Path(__file__).parents[2] / "trainer" / "worker.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"open", "RunPaths", "write_atomic"}, names & {"open", "RunPaths", "write_atomic"}
    assert not attrs & {"save", "write_text", "write_bytes", "run_dir", "mkdir"}, attrs & {"save", "write_text"}


def test_the_ledger_copy_is_sent_at_most_every_period_while_files_stream_and_whenever_the_stream_waits(tmp_path):
    """RUN_DIR/ledger.json grows with every file ever consumed: rewriting it after each file made a long stream's
    cost per file grow with its history. LedgerCopy sends it with the first file, then at most every period, on an
    idle tick and at the end; the copy on the driver's disk is then the ledger's own JSON."""
    import json

    from trainer.data import DataLedger
    from trainer.runfiles import LedgerCopy, RankZeroFiles

    paths = RunPaths(tmp_path)
    book = RunBook(None, paths, lambda i, rec: None)
    files = RankZeroFiles(None)
    loop = _Loopback(book)
    files.send = loop.send
    now = [0.0]
    copy = LedgerCopy(files, every_s=10.0, clock=lambda: now[0])
    ledger = DataLedger()
    for i in range(40):  # a file a second for 40 s
        ledger.record(f"part-{i:03d}.csv", 5, complete=True, sha256=f"{i:064x}")
        files.file_done({"file": f"part-{i:03d}.csv"}, copy.due(ledger))
        now[0] += 1.0
    assert loop.sent.count("record") == 40 and loop.sent.count("ledger") == 4  # at 0, 10, 20, 30 s
    assert len(json.loads(paths.ledger.read_text())["entries"]) == 31
    copy.flush(ledger)  # the stream waits (an idle tick), or ends
    assert paths.ledger.read_text() == ledger.to_json() and loop.sent.count("ledger") == 5
    copy.flush(ledger)  # nothing changed: nothing sent
    assert loop.sent.count("ledger") == 5
    assert copy.due(ledger) is None  # unchanged since the flush
