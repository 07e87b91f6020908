"""The whole `freshrec stream` process: SIGKILL mid-stream then a restart on the same run directory ends
with the digest of an uninterrupted run; Ctrl-C commits a final version and exits 130."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from trainer.data import load_spec
from versions import VersionStore

pytestmark = pytest.mark.integration
SPEC = load_spec("taobao")
ARGS = ["--spec", "taobao", "--batch-size", "128", "--seed", "7", "--ps-shards", "2"]


def _stream(tmp_path, *extra: str) -> subprocess.Popen:
    log = open(tmp_path / f"stream-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "cluster.cli", "stream", "--history", "history", "--incoming",
                             "incoming", "--run-dir", "run", *ARGS, *extra], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_version(store: VersionStore, at_least: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while (store.latest() or 0) < at_least:
        assert proc.poll() is None, f"freshrec stream exited early ({proc.returncode})"
        assert time.monotonic() < deadline, "no version was committed in time"
        time.sleep(0.2)


def _layout(tmp_path, files, incoming_upto: int) -> None:
    (tmp_path / "history").mkdir()
    (tmp_path / "incoming").mkdir()
    shutil.copy(files[0], tmp_path / "history")
    for f in files[1:incoming_upto]:
        shutil.copy(f, tmp_path / "incoming")


def _output(tmp_path) -> str:
    return "\n".join(p.read_text() for p in sorted(tmp_path.glob("stream-*.log")))


def test_killed_stream_process_restarts_to_the_uninterrupted_model(data_files, uninterrupted, tmp_path):
    want = uninterrupted[0]
    _layout(tmp_path, data_files, 3)
    store = VersionStore(str(tmp_path / "run" / "versions"))
    proc = _stream(tmp_path, "--idle-timeout", "120")
    try:
        _wait_for_version(store, 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its embedded Ray, at once
        proc.wait(30)
    for f in data_files[3:]:
        shutil.copy(f, tmp_path / "incoming")
    proc = _stream(tmp_path, "--drain")
    assert proc.wait(300) == 0, _output(tmp_path)
    out = _output(tmp_path)
    assert "resuming from version" in out
    manifest = store.manifest(store.latest())
    assert manifest.model_digest == want, out
    assert list(manifest.data_files) == [f.name for f in data_files]
    assert store.verify(manifest.version) == []


def test_ctrl_c_commits_a_final_version_and_exits_130(data_files, tmp_path):
    _layout(tmp_path, data_files, 3)
    store = VersionStore(str(tmp_path / "run" / "versions"))
    proc = _stream(tmp_path, "--idle-timeout", "120")
    try:
        _wait_for_version(store, 3, proc)  # history + both incoming files: now idle, waiting for more
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130, _output(tmp_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = _output(tmp_path)
    assert "stopped on request" in out and "run the same command again to resume" in out
    manifest = store.manifest(store.latest())
    assert list(manifest.data_files) == [f.name for f in data_files[:3]]
