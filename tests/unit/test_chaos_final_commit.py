"""Found by bench chaos (``faulty://`` store at 5% errors): a transient store error on the last commit of a
``stream --drain`` was not retried, so the last data file ended up in no committed version. The final version
(``VersionKeeper.finish``) is now cut again and retried on transient errors (jittered backoff, bounded
attempts), then fails with a clear error; permanent errors are never retried. Local backend, no Ray; the
faults are raised by the harness's real ``faulty://`` filesystem around the local store."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from bench.chaos import faultyfs
from tests.support.data import synthetic_file
from trainer import bundle
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.local import LocalTrainer
from trainer.versioning import FinalCommitError, VersionKeeper
from versions import CorruptVersionError, StoreUnavailableError, VersionStore, WriterFencedError, is_transient

SPEC = load_spec("taobao")
FILES = [synthetic_file(SPEC, 200, seed=s) for s in range(3)]
WRITES = ("pipe_file", "put_file", "open_w")


def _keeper(url: str):
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=2, batch_size=128))
    keeper = VersionKeeper(url, t.backend, t, storage_options={"rate": 0.0, "enospc": 0.0})
    keeper.retry_base_s, keeper.retry_max_s = 0.01, 0.02  # the backoff's shape, not its length, is under test
    return t, keeper


def _fail_next_writes(fs, kinds: list[str]) -> list[str]:
    """The next ``len(kinds)`` writes of a version (its parts, manifest, pointers) on the keeper's own ``faulty://``
    filesystem fail with these faults. The writer lease's own write is left alone: a failed write of it is read
    back and settled (test_versions_fencing), so it would not fail the version."""
    injected: list[str] = []
    real = fs._decide

    def decide(method, path):
        if method in WRITES and len(injected) < len(kinds) and not str(path).endswith("WRITER.json"):
            injected.append(kinds[len(injected)])
            return injected[-1]
        return real(method, path)

    fs._decide = decide
    return injected


def _drain(url: str, fail: list[str]):
    """Three data files, a version after each of the first two; the last one is committed by finish()."""
    t, keeper = _keeper(url)
    for i, df in enumerate(FILES):
        t.step_file(df, f"f{i}", rows_read=len(df))
        if i < len(FILES) - 1:
            keeper.after_file()
            keeper.wait()
    injected = _fail_next_writes(keeper.store.fs, fail) if fail else []
    return t, keeper, injected


@pytest.fixture(autouse=True)
def _faulty():
    faultyfs.register()


def test_transient_errors_on_the_final_commit_of_a_drain_are_retried_and_the_last_file_is_committed(tmp_path):
    _, ref, _ = _drain(str(tmp_path / "ref"), [])
    ref.finish()
    t, keeper, injected = _drain(f"faulty://{tmp_path / 'run'}", ["reset", "enospc", "eio"])
    keeper.finish()  # before the fix: RuntimeError (ConnectionResetError), version 3 aborted, f2 in no version
    assert injected == ["reset", "enospc", "eio"]
    store, ref_store = VersionStore(str(tmp_path / "run")), VersionStore(str(tmp_path / "ref"))
    latest = store.latest()
    assert latest == keeper.last_version and store.verify(latest) == []
    assert [e.file for e in bundle.read_ledger(store, latest).entries] == ["f0", "f1", "f2"]
    assert store.manifest(latest).model_digest == ref_store.manifest(ref_store.latest()).model_digest
    assert not [p for p in (tmp_path / "run").rglob("*") if ".tmp" in p.name]  # no temp files of failed writes


def test_a_store_that_stays_unavailable_ends_the_drain_with_a_clear_error_after_bounded_attempts(tmp_path):
    t, keeper, injected = _drain(f"faulty://{tmp_path}", ["eio"] * 1000)
    keeper.final_attempts = 3
    with pytest.raises(FinalCommitError, match="in 3 attempts.*run the stream again") as info:
        keeper.finish()
    assert isinstance(info.value.__cause__, OSError)
    assert VersionStore(str(tmp_path)).latest() == 2  # the last file is in no version: the restart trains it
    assert keeper.failures == 3


def test_a_permanent_error_on_the_final_commit_is_not_retried(tmp_path):
    t, keeper, _ = _drain(f"faulty://{tmp_path}", [])

    def fenced(*args, **kwargs):
        raise WriterFencedError(None, "another writer holds the store's lease (test)")

    keeper.store.begin = fenced
    with pytest.raises(RuntimeError, match="another writer holds"):
        keeper.finish()
    assert keeper.failures == 1


@pytest.mark.parametrize(
    "exc, transient",
    [
        (StoreUnavailableError("s3://b/p", "ReadTimeout"), True),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EIO, "Input/output error"), True),
        (TimeoutError("timed out"), True),
        (CorruptVersionError(3, "dense", "fails its checksum"), False),
        (WriterFencedError(4, "fenced"), False),
        (FileNotFoundError("v00000003/MANIFEST.json"), False),
        (PermissionError("denied"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_counts_as_a_transient_store_error(exc, transient):
    assert is_transient(exc) is transient
    wrapped = RuntimeError("writing a model version failed")
    wrapped.__cause__ = exc
    assert is_transient(wrapped) is transient  # found through the chain (Ray and the keeper wrap errors)


def test_an_idempotent_store_read_is_retried_on_a_transient_error(tmp_path):
    """Found by bench chaos (seed 3, faulty:// at 3%): the CLI's version ticker's first ``latest()`` hit an
    injected ConnectionReset on its glob and the whole ``freshrec stream`` exited; each restart, a new
    process with the same fault schedule, failed the same way. Reads (exists, small files, listings) are
    retried ``READ_ATTEMPTS`` times with a short backoff; a store that keeps failing still raises."""
    from versions.store import READ_ATTEMPTS

    writer = VersionStore(str(tmp_path))
    w = writer.begin("full", step=1)
    w.commit([w.write_part("dense", {"w": np.ones(2)}, {"role": "dense"})])
    reader = VersionStore(f"faulty://{tmp_path}", {"rate": 0.0, "enospc": 0.0})
    calls: list[str] = []
    real = reader.fs._decide

    def decide(method, path):  # the first READ_ATTEMPTS - 1 reads of each kind fail
        calls.append(method)
        return "reset" if calls.count(method) < READ_ATTEMPTS and method != "open" else real(method, path)

    reader.fs._decide = decide
    assert reader.versions() == [1] and reader.latest() == 1 and reader.manifest(1).version == 1
    always = VersionStore(f"faulty://{tmp_path}", {"rate": 0.0, "enospc": 0.0})
    always.fs._decide = lambda method, path: "eio"
    with pytest.raises(StoreUnavailableError, match="Input/output error"):
        always.versions()


def test_verifying_a_version_retries_a_transient_error_on_its_parts(tmp_path):
    """Found by the default chaos seed in the merged `make test`: after the SIGKILL every restart of
    `freshrec stream` died in ``latest_valid()`` -> ``verify``: a part's read got the same injected EIO in each
    new process (the fault schedule repeats per process), and verify's part reads were not retried. A part read
    that fails once is retried; a part that keeps failing still raises; a bad part is still a problem."""
    writer = VersionStore(str(tmp_path))
    w = writer.begin("full", step=1)
    w.commit([w.write_part("dense", {"w": np.ones(2)}, {"role": "dense"})])
    reader = VersionStore(f"faulty://{tmp_path}", {"rate": 0.0, "enospc": 0.0})
    failed: list[str] = []
    real = reader.fs._decide

    def decide(method, path):  # the first read of each part fails once
        if path.endswith(".part") and path not in failed:
            failed.append(path)
            return "eio"
        return real(method, path)

    reader.fs._decide = decide
    assert reader.verify(1) == [] and reader.latest_valid() == 1 and failed
    always = VersionStore(f"faulty://{tmp_path}", {"rate": 0.0, "enospc": 0.0})
    always.fs._decide = lambda method, path: "eio" if path.endswith(".part") else real(method, path)
    with pytest.raises(StoreUnavailableError):
        always.verify(1)
    part = next(tmp_path.rglob("*.part"))
    part.write_bytes(part.read_bytes()[:-1] + b"x")  # same size, other bytes
    assert "checksum mismatch" in reader.verify(1)[0]


def test_a_version_that_failed_while_the_stream_goes_idle_is_cut_again_when_idle(tmp_path):
    """Found by the default chaos seed in `make test` (faulty:// store, no --drain): the first version's part
    writes failed (EIO, ENOSPC), the stream then waited for a file that the harness only lands once that version
    is committed; before the fix nothing retried it while idle (a liveness failure after the wave timeout)."""
    ref_t, ref = _keeper(str(tmp_path / "ref"))
    ref_t.step_file(FILES[0], "f0", rows_read=len(FILES[0]))
    ref.after_file()
    ref.wait()
    t, keeper = _keeper(f"faulty://{tmp_path / 'run'}")
    t.step_file(FILES[0], "f0", rows_read=len(FILES[0]))
    assert keeper.after_idle() is False  # nothing failed: an idle tick does nothing
    injected = _fail_next_writes(keeper.store.fs, ["eio"] * 3)  # one write's every try (a write is tried 3 times)
    keeper.after_file()
    keeper._join()
    assert injected == ["eio"] * 3 and keeper._error is not None and is_transient(keeper._error)
    store = VersionStore(str(tmp_path / "run"))
    assert store.latest() is None  # the version failed: f0 is in no committed version
    assert keeper.after_idle() is True  # the idle tick cuts it again
    keeper.wait()
    latest = store.latest()
    assert latest == keeper.last_version and store.verify(latest) == []
    assert [e.file for e in bundle.read_ledger(store, latest).entries] == ["f0"]
    ref_store = VersionStore(str(tmp_path / "ref"))
    assert store.manifest(latest).model_digest == ref_store.manifest(ref_store.latest()).model_digest
    assert keeper.after_idle() is False  # committed: nothing to retry
