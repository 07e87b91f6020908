"""Writer fencing (a local directory, memory:// and moto's S3 server): one writer per store, a clear
error for a second one, a crashed writer never blocks a restart for longer than its lease, and a
writer that was taken over can never commit again (real processes stopped and killed by signals)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
from moto_s3 import s3_options, s3_server  # noqa: F401

from versions import VersionStore, VersionWriteError, WriterFencedError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["local", "memory", "s3"])
def url_options(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "versions"), {}
    if request.param == "memory":
        return f"memory://versions-{uuid.uuid4().hex[:8]}", {}
    url_of, options = request.getfixturevalue("s3_options")
    return url_of("run/versions"), options


def dense(w, value=1.0):
    return [w.write_part("dense", {"w": np.full(3, value, np.float32)}, {"role": "dense"})]


def test_a_second_writer_is_refused_with_a_clear_error(url_options):
    url, options = url_options
    first = VersionStore(url, options, writer_id="trainer-a")
    w = first.begin("full")
    w.commit(dense(w))
    second = VersionStore(url, options, writer_id="trainer-b", writer_wait_s=0)
    with pytest.raises(WriterFencedError, match="another writer holds this store: 'trainer-a'") as err:
        second.begin("full")
    assert isinstance(err.value, VersionWriteError) and err.value.holder == "trainer-a" and err.value.epoch == 1
    assert "expires" in str(err.value)
    w = first.begin("full")  # the holder goes on
    assert w.commit(dense(w)).version == 2
    state = second.writer_state()
    assert state["holder"] == "trainer-a" and state["epoch"] == 1 and state["live"] and state["writing"] == {}
    assert state["last_version"] == 2


def test_a_released_lease_is_taken_over_with_a_bumped_epoch_and_numbers_go_on(url_options):
    url, options = url_options
    first = VersionStore(url, options, writer_id="a")
    w = first.begin("full")
    w.commit(dense(w))
    aborted = first.begin("full")
    aborted.abort()
    assert first.release_writer() and not first.release_writer()
    second = VersionStore(url, options, writer_id="b", writer_wait_s=0)
    w = second.begin("full")
    assert w.version == 3 and w.epoch == 2  # the aborted 2 is never reused
    w.commit(dense(w))
    with pytest.raises(WriterFencedError, match="'b'"):
        VersionStore(url, options, writer_id="a", writer_wait_s=0).begin("full")


def test_a_one_off_compaction_gives_the_lease_back_so_the_restarted_trainer_can_write(url_options):
    """bench chaos seed 1 (gc beside kills): a long-lived process compacting now and then kept the writer lease
    it took for its first compaction and renewed it with every later one, so the restarted trainer waited out
    writer_wait_s, failed every version and restarted until it gave up. A compaction that had to take the lease
    gives it back; the writer's own compaction keeps its lease."""
    url, options = url_options
    trainer = VersionStore(url, options, writer_id="trainer")
    w = trainer.begin("full")
    w.commit(dense(w))
    assert trainer.release_writer()  # the trainer is gone (crashed: its lease lapsed, or stopped)
    operator = VersionStore(url, options, writer_id="operator", writer_wait_s=0)
    for _ in range(2):  # a loop beside the writer, as in the chaos harness
        m = operator.compact(operator.latest())
        assert m.extra["compacted_from"] == m.version - 1
    state = operator.writer_state()
    assert state["holder"] == "operator" and not state["live"] and state["writing"] == {}
    restarted = VersionStore(url, options, writer_id="trainer", writer_wait_s=0)
    w = restarted.begin("full")  # at once: before the fix, WriterFencedError naming 'operator'
    assert w.version == 4
    w.commit(dense(w, 2.0))
    own = restarted.compact(4)  # the writer's own compaction keeps the lease it holds
    assert own.version == 5 and restarted.writer_state()["holder"] == "trainer" and restarted.writer_state()["live"]
    with pytest.raises(WriterFencedError, match="'trainer'"):
        operator.compact(5)  # and a one-off compaction beside a live writer is refused, not a takeover
    assert restarted.writer_state()["holder"] == "trainer"


def test_a_compaction_of_a_version_that_is_no_longer_the_newest_is_refused_not_committed(url_options):
    """bench chaos seed 1 (gc beside kills), second cause: the compacting loop read LATEST (v1), waited for the
    trainer's lease, and once the trainer was killed (after it had committed v2) committed the compaction of v1
    as the newest version: the restarted trainer resumed from v1's model and ledger and trained part of the
    stream twice. A compaction checks, under the lease, that its source is still the newest version."""
    url, options = url_options
    trainer = VersionStore(url, options, writer_id="trainer")
    w = trainer.begin("full")
    w.commit(dense(w))
    trainer.release_writer()
    operator = VersionStore(url, options, writer_id="operator", writer_wait_s=0)
    begin = operator.begin

    def trainer_commits_first(*args, **kwargs):  # the trainer commits v2 between the read and the lease
        w = trainer.begin("full")
        w.commit(dense(w, 2.0))
        trainer.release_writer()
        return begin(*args, **kwargs)

    operator.begin = trainer_commits_first
    with pytest.raises(VersionWriteError, match="version 1 is no longer the newest committed version"):
        operator.compact(1)
    assert operator.latest() == 2 and operator.versions() == [1, 2]
    assert not operator.writer_state()["live"]  # given back
    operator.begin = begin
    assert operator.compact(2).version == 4 and operator.latest() == 4  # the newest is compacted (3 was aborted)


def test_a_forced_takeover_fences_the_old_writer_for_good(url_options):
    url, options = url_options
    old = VersionStore(url, options, writer_id="old")
    w = old.begin("full")
    parts = dense(w)
    new = VersionStore(url, options, writer_id="new")
    assert new.acquire_writer(takeover=True)["epoch"] == 2
    with pytest.raises(WriterFencedError, match=r"epoch 1\) was fenced.*'new'"):
        w.commit(parts)
    with pytest.raises(WriterFencedError, match="'new'"):
        VersionStore(url, options, writer_id="old", writer_wait_s=0).begin("full")
    assert VersionStore(url, options).latest() is None
    assert new.gc(keep=1, grace_s=0)["removed_uncommitted"] == [1]  # the fenced writer's version


def test_racing_writers_one_wins(url_options):
    """Compare-and-swap on WRITER.json: S3 conditional PUTs, flock, the memory lock."""
    url, options = url_options
    wins, losses = [], []
    barrier = threading.Barrier(6)

    def race(i):
        store = VersionStore(url, options, writer_id=f"w{i}", writer_wait_s=0)
        barrier.wait()
        try:
            store.acquire_writer()
            wins.append(i)
        except WriterFencedError:
            losses.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(wins) == 1 and len(losses) == 5
    assert VersionStore(url, options).writer_state()["holder"] == f"w{wins[0]}"


def test_a_transient_error_reading_the_writer_lease_is_retried_not_fatal(url_options, monkeypatch):
    """bench chaos (CI, seed 0 of test_chaos): one injected connection reset on WRITER.json's read failed the
    version being begun, so the Ray Train worker group failed and the driver restarted it. One call in three on
    the lease file fails here (reads and, on S3, the ETag lookup): begin, commit, gc and release all go on."""
    url, options = url_options
    store = VersionStore(url, options, writer_id="trainer")
    fs = store.fs
    faults = {"n": 0, "calls": 0}

    def flaky(name):
        real = getattr(fs, name)

        def call(path, *a, **k):
            if str(path).endswith("WRITER.json"):
                faults["calls"] += 1
                if faults["calls"] % 3 == 1:
                    faults["n"] += 1
                    raise ConnectionResetError(f"injected: {name} {path}")
            return real(path, *a, **k)

        return call

    for name in ("cat_file", "info"):
        monkeypatch.setattr(fs, name, flaky(name))
    for value in (1.0, 2.0, 3.0):
        w = store.begin("full")
        w.commit(dense(w, value))
    assert store.gc(keep=1, grace_s=0)["removed"]
    assert store.release_writer()
    assert faults["n"] >= 6
    monkeypatch.undo()
    state = VersionStore(url, options).writer_state()
    assert state["last_version"] == 3 and state["epoch"] == 1 and not state["live"]


def test_a_lease_write_whose_answer_is_lost_is_read_back_not_applied_twice(url_options, monkeypatch):
    """A conditional PUT of WRITER.json that S3 applied but whose answer was lost (a connection reset after the
    request): the writer reads the lease back and sees its own state, instead of failing the version (or, had it
    retried blindly, allocating a second version number). On a local directory and memory:// the write is a
    whole-file replace under a lock, retried as such."""
    url, options = url_options
    store = VersionStore(url, options, writer_id="trainer")
    w = store.begin("full")
    w.commit(dense(w))
    fs = store.fs
    lost = {"n": 0}
    real_pipe = fs.pipe_file

    def pipe_then_lose_the_answer(path, *a, **k):
        out = real_pipe(path, *a, **k)
        if str(path).endswith("WRITER.json") and lost["n"] < 2:
            lost["n"] += 1
            raise ConnectionResetError("injected: the answer to a PUT that was applied")
        return out

    monkeypatch.setattr(fs, "pipe_file", pipe_then_lose_the_answer)
    w = store.begin("full")
    assert w.version == 2
    w.commit(dense(w, 2.0))
    monkeypatch.undo()
    if not store.local:  # local writes go through open/rename, not pipe_file
        assert lost["n"] == 2
    state = VersionStore(url, options).writer_state()
    assert state["last_version"] == 2 and state["writing"] == {}
    assert VersionStore(url, options).latest() == 2


WRITER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from versions import VersionStore, WriterFencedError
    url, options, ttl = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
    store = VersionStore(url, options, writer_id="writer-process", writer_ttl_s=ttl)
    w = store.begin("full")
    parts = [w.write_part("dense", {"w": np.ones(3, np.float32)}, {"role": "dense"})]
    print(w.version, flush=True)
    sys.stdin.readline()              # the test stops (SIGSTOP) or kills us here
    try:
        w.commit(parts)
        print("committed", flush=True)
    except WriterFencedError as exc:
        print("fenced", exc, flush=True)
""")


def writer_process(url, options, ttl):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, url, json.dumps(options), str(ttl)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


@pytest.fixture(params=["local", "s3"])
def shared_url(request, tmp_path):
    """A store another process can reach: a directory, or a bucket on the moto server."""
    if request.param == "local":
        return str(tmp_path / "versions"), {}
    url_of, options = request.getfixturevalue("s3_options")
    return url_of("run/versions"), options


def test_a_paused_writer_is_taken_over_after_its_lease_and_its_late_commit_is_refused(shared_url):
    url, options = shared_url
    proc = writer_process(url, options, ttl=1.0)
    try:
        version = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)  # a long GC pause / a partitioned host: no heartbeat
        new = VersionStore(url, options, writer_id="restarted", writer_ttl_s=30)
        t0 = time.monotonic()
        w = new.begin("full")  # waits for the paused writer's lease to lapse, then takes over
        assert time.monotonic() - t0 < 15 and w.epoch == 2 and w.version == version + 1
        w.commit(dense(w, 2.0))
        assert new.gc(keep=1, grace_s=0)["removed_uncommitted"] == [version]
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
    assert out.startswith("fenced") and "restarted" in out, out
    fresh = VersionStore(url, options)
    assert fresh.versions() == [version + 1] and fresh.latest() == version + 1 and fresh.verify_chain(version + 1) == []


def test_a_killed_writer_on_this_host_does_not_block_its_restart(tmp_path):
    url, options = str(tmp_path / "versions"), {}  # the same takeover on S3: the paused-writer test
    proc = writer_process(url, options, ttl=600.0)  # a lease that would block for 10 minutes
    try:
        version = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    restarted = VersionStore(url, options, writer_id="restarted", writer_wait_s=0)
    w = restarted.begin("full")  # its holder's process is gone: taken over at once
    assert w.epoch == 2 and w.version == version + 1
    w.commit(dense(w))
    assert restarted.gc(keep=1, grace_s=0)["removed_uncommitted"] == [version]
