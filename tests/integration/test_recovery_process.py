"""The whole `freshrec stream` process, two starts on one run directory: SIGKILL of the whole process tree
mid-stream, then a restart ends with the digest of an uninterrupted run over data files that repeat events of
the files before them and carry a far-future event (exactly once across the crash: issue 19); the restarted
stream then takes a late data file once while it follows its directory, and Ctrl-C commits a final version
and exits 130. One Ray Train worker with ``--ps-shards 2`` and ``ps.placement`` auto: the shards are threads of the
worker's process, so the restart ending with the uninterrupted digest is also the suite's end-to-end check of that
placement (formerly test_recovery.py::test_one_worker_hosts_its_shards_in_process_and_ends_with_the_one_process_digest).

This was two tests and five starts (each an embedded Ray and a Ray Train worker: 25 s or more); a third start
with ``--drain`` and nothing new (exit 0, the model unchanged, after a stop request) is the chaos seed's
``drain_idempotent`` check in tests/integration/test_chaos.py (docs/testing.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from trainer import bundle
from trainer.data import load_spec
from versions import VersionStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SPEC = load_spec("taobao")
# history_epochs 1: the one-file history once, as the reference (RECOVERY_TCFG; the default auto would pass 3 times)
ARGS = ["--spec", "taobao", "--batch-size", "128", "--seed", "7", "--ps-shards", "2", "--set", "train.history_epochs=1"]


def _stream(tmp_path, *extra: str) -> subprocess.Popen:
    log = open(tmp_path / f"stream-{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cluster.cli",
            "stream",
            "--history",
            "history",
            "--incoming",
            "incoming",
            "--run-dir",
            "run",
            *ARGS,
            *extra,
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    proc.log_path = log.name
    return proc


def _exited_early(proc: subprocess.Popen, what: str) -> str:
    with open(proc.log_path) as f:
        return f"freshrec stream exited early ({proc.returncode}) waiting for {what}; its output:\n{f.read()[-4000:]}"


def _wait_for_version(store: VersionStore, at_least: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (store.latest() or 0) < at_least:
        assert proc.poll() is None, _exited_early(proc, f"version {at_least}")
        assert time.monotonic() < deadline, "no version was committed in time"
        time.sleep(0.2)


def _layout(tmp_path, files, incoming_upto: int) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "incoming").mkdir()
    shutil.copy(files[0], tmp_path / "history")
    for f in files[1:incoming_upto]:
        shutil.copy(f, tmp_path / "incoming")


def _files_of(store: VersionStore) -> list[str]:
    return [e.file for e in bundle.read_ledger(store, store.latest()).entries]


FUTURE_TS = 4_071_000_000  # the year 2098


@pytest.fixture(scope="module")
def dirty_files(data_files, tmp_path_factory):
    """The recovery data files, each repeating the first 3 events of the file before it (duplicates across
    the file boundary, and across the crash); the third also carries one event in the year 2098."""
    root = tmp_path_factory.mktemp("dirty")
    out, prev = [], None
    for k, f in enumerate(data_files):
        table = pq.read_table(f)
        parts = [table] + ([prev.slice(0, 3)] if prev is not None else [])
        if k == 2:
            row = table.slice(0, 1)
            ts = pa.array([FUTURE_TS], pa.timestamp("s", tz="UTC")).cast(table.schema.field("ts").type)
            row = row.set_column(row.schema.get_field_index("ts"), "ts", ts)
            if "event_id" in row.column_names:
                row = row.set_column(row.schema.get_field_index("event_id"), "event_id", pa.array([12345], pa.int64()))
            parts.append(row)
        pq.write_table(pa.concat_tables(parts), root / f.name)
        out.append(root / f.name)
        prev = table
    return out


@pytest.fixture(scope="module")
def dirty_reference(dirty_files, tmp_path_factory):
    """The digest of one uninterrupted process over ``dirty_files`` (local backend, one thread, a stream
    validator: the same duplicates and the same far-future event dropped)."""
    import torch

    from tests.support.reference import RECOVERY_TCFG as TCFG
    from trainer.config import ModelConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer
    from trainer.versioning import VersionKeeper

    root = tmp_path_factory.mktemp("dirty-reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = LocalTrainer(SPEC, ModelConfig(), TCFG)
        keeper = VersionKeeper(str(root), t.backend, t)
        v = Validator(SPEC, stream=True)
        dups = 0
        for f in dirty_files:
            t.step_file(read_data_file(f, v), f.name, rows_read=0)
            dups += v.last_file.rows_duplicate
            keeper.after_file()
        keeper.wait()
    finally:
        torch.set_num_threads(threads)
    assert dups == 3 * (len(dirty_files) - 1) and v.report.by_reason["future event"] == 1
    store = VersionStore(str(root))
    return store.manifest(store.latest()).model_digest


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI's process group and every descendant (the embedded Ray's raylet and the Ray Train
    worker may sit in sessions of their own: killing the group alone left the worker training)."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(30)
    psutil.wait_procs(tree, timeout=30)


def _output(tmp_path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("stream-*.log")))


def _wait_until(what: str, predicate, proc: subprocess.Popen, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert proc.poll() is None, _exited_early(proc, what)
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)
    return value


def _late_file(data_files, incoming) -> str:
    """A late data file (named before every consumed one), half its events older than the watermark by more
    than lateness.allowed_s, the other half new events (not duplicates), landed by a rename."""
    late = pq.read_table(data_files[1])
    if "event_id" in late.column_names:
        late = late.drop_columns(["event_id"])
    ts = late.column("ts")
    seconds = pc.cast(pc.cast(ts, pa.timestamp("s", tz="UTC")), pa.int64())
    shifted = pc.cast(pc.subtract(seconds, 7200), pa.timestamp("s", tz="UTC")).cast(ts.type)
    idx = late.schema.get_field_index("ts")
    late = late.set_column(
        idx,
        "ts",
        pa.chunked_array(
            [
                pa.concat_arrays(
                    [ts.combine_chunks().slice(0, len(ts) // 2), shifted.combine_chunks().slice(len(ts) // 2)]
                )
            ]
        ),
    )
    late = late.set_column(
        late.schema.get_field_index("user_id"), "user_id", pc.add(late.column("user_id"), 10**9)
    )  # new events, not duplicates
    name = "part-0-late.parquet"
    assert name < min(f.name for f in data_files)
    pq.write_table(late, incoming / f".{name}.tmp")
    os.rename(incoming / f".{name}.tmp", incoming / name)
    return name


def _late_record(run_dir, name: str) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in open(path) if name in line] if path.exists() else []


def test_killed_stream_restarts_to_the_uninterrupted_model_takes_a_late_file_and_stops_on_ctrl_c(
    data_files, dirty_files, dirty_reference, tmp_path
):
    want = dirty_reference
    names = [f.name for f in dirty_files]
    _layout(tmp_path, dirty_files, 3)
    store = VersionStore(str(tmp_path / "run" / "versions"))
    # 1. SIGKILL of the whole process tree mid-stream
    proc = _stream(tmp_path, "--idle-timeout", "120")
    try:
        _wait_for_version(store, 2, proc)
    finally:
        _kill_tree(proc)
    assert store.latest() < len(dirty_files)  # a crash mid-stream: the files after it are not consumed yet
    for f in dirty_files[3:]:
        shutil.copy(f, tmp_path / "incoming")

    # 2. the restart resumes and ends with the uninterrupted digest; it goes on following its directory
    proc = _stream(tmp_path, "--idle-timeout", "120")
    try:
        _wait_until(
            "every data file in a committed version", lambda: store.latest() and _files_of(store) == names, proc
        )
        manifest = store.manifest(store.latest())
        assert manifest.model_digest == want, _output(tmp_path)  # the duplicates across the crash dropped exactly once
        assert store.verify(manifest.version) == []
        dead = [json.loads(line) for line in open(tmp_path / "run" / "dead-letter.jsonl")]
        assert [d["reason"] for d in dead].count("future event") == 1

        # a late data file while it follows: taken once, its old rows deferred by the policy, the stream goes on
        name = _late_file(data_files, tmp_path / "incoming")
        _wait_until("the late file in a committed version", lambda: name in _files_of(store), proc)
        record = _wait_until("the late file's metrics", lambda: _late_record(tmp_path / "run", name), proc)
        assert len(record) == 1 and record[0]["rows_late"] > 0

        # Ctrl-C: a final version, exit 130, and how to resume
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130, _output(tmp_path)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    out = _output(tmp_path)
    assert "resuming from version" in out
    assert "parameter server: 2 shard(s) in the worker's process (sync)" in out  # ps.placement auto, one worker
    assert "stopped on request" in out and "run the same command again to resume" in out
    stopped = store.manifest(store.latest())
    assert _files_of(store) == [*names, name] and store.verify(stopped.version) == []
