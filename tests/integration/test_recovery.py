"""Consistent versions across real shard actors: the same digest through 1 or 2 shards and locally,
and a shard actor killed by SIGKILL mid-stream recovers with no update lost or applied twice."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from paramserver import create_parameter_server
from paramserver.config import PSConfig
from tests.support.reference import RECOVERY_SPEC, RECOVERY_TCFG, explain_mismatch
from trainer import bundle
from trainer.backends import ps_config_for
from trainer.config import ModelConfig
from trainer.core import TrainerCore
from trainer.data import Validator, read_data_file
from trainer.run import TrainJob, run_ps_training
from trainer.runfiles import request_stop
from trainer.versioning import VersionKeeper
from versions import VersionStore

pytestmark = pytest.mark.integration
SPEC, TCFG = RECOVERY_SPEC, RECOVERY_TCFG


def test_one_shard_two_shards_and_local_end_with_the_same_digest(
    ray_local, data_files, uninterrupted, tmp_path, one_thread
):
    want = uninterrupted[0]
    for shards in (1, 2):
        client = create_parameter_server(ps_config_for(SPEC, TCFG, PSConfig(num_shards=shards)))
        try:
            core = TrainerCore(SPEC, ModelConfig(), TCFG, client)
            keeper = VersionKeeper(str(tmp_path / f"ps{shards}"), client, core)
            v = Validator(SPEC)
            for f in data_files:
                core.step_file(read_data_file(f, v), f.name, rows_read=0)
                keeper.after_file()
            keeper.wait()
            store = VersionStore(str(tmp_path / f"ps{shards}"))
            assert store.manifest(store.latest()).model_digest == want, shards
        finally:
            client.shutdown()


def test_a_shard_killed_mid_stream_recovers_to_the_uninterrupted_model(
    ray_local, data_files, uninterrupted, tmp_path, one_thread
):
    """Sync mode: SIGKILL shard 0's process after a few versions; the driver restarts the shards and
    the worker from the last version, the stream completes, and the final digest is the one of an
    uninterrupted run; the ledger holds every data file exactly once."""
    want, reference = uninterrupted
    history, incoming, run_dir = tmp_path / "history", tmp_path / "incoming", tmp_path / "run"
    history.mkdir(), incoming.mkdir()
    shutil.copy(data_files[0], history)
    for f in data_files[1:3]:
        shutil.copy(f, incoming)
    client = create_parameter_server(ps_config_for(SPEC, TCFG, PSConfig(num_shards=2)))
    victim = client.pids()[0]
    events: list[str] = []
    out: dict = {}

    def run():
        try:
            out["result"], out["client"] = run_ps_training(
                TrainJob(
                    SPEC,
                    run_dir,
                    model=ModelConfig(),
                    train=TCFG,
                    ps=PSConfig(num_shards=2),
                    history=history,
                    incoming=incoming,
                    drain=False,
                    idle_timeout_s=120.0,  # a bound only: the test requests the stop once every file is committed
                ),
                client=client,
                on_event=events.append,
            )
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    store = VersionStore(str(run_dir / "versions"))
    deadline = time.monotonic() + 180
    while (store.latest() or 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (store.latest() or 0) >= 3, f"no versions were committed; run error: {out.get('error')!r}; events: {events}"
    os.kill(victim, signal.SIGKILL)
    for f in data_files[3:]:
        shutil.copy(f, incoming)
    names = [f.name for f in data_files]
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        latest = store.latest()
        if latest and [e.file for e in bundle.read_ledger(store, latest).entries] == names:
            break
        time.sleep(0.2)
    request_stop(run_dir)  # every file is in a committed version: stop now (Ctrl-C's path), not after an idle wait
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert "error" not in out, f"the run failed: {out.get('error')!r}; events: {events}"
    result = out["result"]
    try:
        assert result.restarts >= 1 and any("restart" in e for e in events), events
        manifest = store.manifest(store.latest())
        assert manifest.model_digest == want, explain_mismatch(reference, str(run_dir / "versions"))
        assert [e.file for e in bundle.read_ledger(store, manifest.version).entries] == [
            f.name for f in data_files
        ]  # each once, in order
        assert [m["file"] for m in result.metrics] == [f.name for f in data_files]
    finally:
        out["client"].shutdown()


def test_async_mode_consumes_every_data_file(ray_local, data_files, tmp_path):
    data_files = data_files[:3]  # two workers, two shards, async: three files prove each is consumed once
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for f in data_files:
        shutil.copy(f, incoming)
    result, _ = run_ps_training(
        TrainJob(
            SPEC,
            tmp_path / "run",
            model=ModelConfig(),
            train=TCFG,
            ps=PSConfig(num_shards=2, mode="async"),
            incoming=incoming,
            drain=True,
            num_workers=2,
        )
    )
    store = VersionStore(str(tmp_path / "run" / "versions"))
    manifest = store.manifest(store.latest())
    assert [e.file for e in bundle.read_ledger(store, manifest.version).entries] == [f.name for f in data_files]
    assert store.verify(manifest.version) == [] and manifest.model_digest
    assert all(np.isfinite(m["log_loss"]) for m in result.metrics)
