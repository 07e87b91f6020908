"""Orphans of a killpg'd CLI (found by bench chaos, ``kill_driver_group``): Ray workers outlived the raylet that
started them, went on training and committing beside the restarted stream, and held the store's writer lease.
A Ray worker's :class:`common.orphans.OrphanGuard` ends it once its parent is gone: Ray Train workers (through
their ``VersionKeeper``) and parameter-server shard actors (``ShardHost``). Real processes: a parent (the
raylet's stand-in) starts a child that runs the guard (bare, or a real ``ShardHost``); the parent is SIGKILLed;
the child must exit promptly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from common.orphans import OrphanGuard

    out = Path(sys.argv[1])
    def on_orphan():
        out.joinpath("orphaned").write_text(str(os.getppid()))
        os._exit(75)
    guard = OrphanGuard(on_orphan, interval_s=0.05).start()
    out.joinpath("child.pid").write_text(str(os.getpid()))
    time.sleep(120)  # an orphan that nobody ends would live this long
    """
)
SHARD_CHILD = textwrap.dedent(
    """
    import logging, os, sys, time
    from pathlib import Path

    out = Path(sys.argv[1])
    logging.basicConfig(filename=str(out / "shard.log"), level=logging.INFO)
    from common.orphans import start_if_ray_worker

    # what ShardHost.__init__ starts in a shard actor's process (force: this child is not a Ray actor; the
    # ShardHost wiring is checked in process below and on real actors in tests/integration/test_ps_actors.py)
    guard = start_if_ray_worker("parameter-server shard actor 0", "(its rows are in the last version)", force=True)
    out.joinpath("child.pid").write_text(str(os.getpid()))
    time.sleep(120)  # an orphaned shard actor that nobody ends would live this long
    """
)
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)  # own group, as Ray's
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _orphan_exits(tmp_path, child_source: str) -> None:
    """Start ``child_source`` under a parent, SIGKILL the parent, and wait (10 s at most) for the child to end."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child_source, str(tmp_path)], env=env)
    child = None
    try:
        deadline = time.monotonic() + 120  # a loaded machine imports torch slowly
        while not (tmp_path / "child.pid").exists():
            assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.05)
        child = int((tmp_path / "child.pid").read_text())
        assert not (tmp_path / "orphaned").exists()  # its parent lives: the guard stays quiet
        time.sleep(0.3)
        assert _alive(child) and not (tmp_path / "orphaned").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the orphan outlived its parent by 10 s"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_a_worker_whose_parent_is_sigkilled_exits_promptly(tmp_path):
    _orphan_exits(tmp_path, CHILD)
    assert (tmp_path / "orphaned").exists()


def test_a_shard_actor_whose_raylet_is_sigkilled_exits_promptly(tmp_path):
    """Issue 19's remainder: shard actors had no guard and lingered with their tables after a killpg of the CLI.
    The guard a shard actor runs logs what it was and exits with status 75."""
    _orphan_exits(tmp_path, SHARD_CHILD)
    text = (tmp_path / "shard.log").read_text()
    assert "parameter-server shard actor 0" in text and "status 75" in text, text


def test_shard_hosts_guard_themselves_only_in_a_ray_actor_process(monkeypatch):
    """A shard actor's process (a Ray actor's, ``set_threads``) starts the guard; an in-process host (inside a Ray
    Train worker, which has its own guard) and any host outside Ray do not."""
    import torch

    from common.orphans import OrphanGuard
    from paramserver import PSConfig, TableConfig
    from paramserver.actor import ShardHost

    cfg = PSConfig(tables=(TableConfig("t", 4),), capacity_per_shard=8)
    threads = torch.get_num_threads()  # a host with set_threads sets this process's torch threads to 1
    try:
        assert ShardHost(cfg, 0).orphan_guard is None  # not a Ray worker: no guard
        monkeypatch.setattr(OrphanGuard, "in_ray_worker", staticmethod(lambda: True))
        assert ShardHost(cfg, 0, set_threads=False).orphan_guard is None  # an in-process host
        actor = ShardHost(cfg, 0)  # what ray.remote(ShardHost) builds in the actor's process
        try:
            assert actor.orphan_guard is not None and actor.orphan_guard.running
            assert actor.orphan_guard.what == "parameter-server shard actor 0"  # the guard the child above runs
            assert actor.orphan_guard.parent == os.getppid()
            assert ShardHost(cfg, 0, orphan_guard=False).orphan_guard is None
        finally:
            actor.orphan_guard.stop()
    finally:
        torch.set_num_threads(threads)


def test_the_guard_is_off_outside_ray_workers():
    from trainer.versioning import OrphanGuard

    assert OrphanGuard.in_ray_worker() is False  # a run in the CLI's own process outlives its shell


def test_a_seed_run_again_in_the_same_work_directory_starts_from_an_empty_one(tmp_path):
    """Seeds 51 and 52, re-run in their kept work directories to check a fix, observed the last run's stores as
    their own; run_seed now empties work/seed-N first (and says so)."""
    from bench.chaos.harness import fresh_seed_dir

    old = tmp_path / "seed-51" / "reference" / "store"
    old.mkdir(parents=True)
    (old / "LATEST").write_text("7")
    said = []
    root = fresh_seed_dir(tmp_path, 51, said.append)
    assert root == tmp_path / "seed-51" and not root.exists() and said and "removing" in said[0]
    assert fresh_seed_dir(tmp_path, 52) == tmp_path / "seed-52"  # nothing there: nothing to say or remove
