"""Orphans of a killpg'd CLI (found by bench chaos, ``kill_driver_group``): Ray workers outlived the raylet that
started them, went on training and committing beside the restarted stream, and held the store's writer lease.
A Ray worker's :class:`trainer.versioning.OrphanGuard` ends it once its parent is gone. Real processes: a parent
(the raylet's stand-in) starts a child that runs the guard; the parent is SIGKILLed; the child must exit promptly."""

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
    from trainer.versioning import OrphanGuard

    out = Path(sys.argv[1])
    def on_orphan():
        out.joinpath("orphaned").write_text(str(os.getppid()))
        os._exit(75)
    guard = OrphanGuard(on_orphan, interval_s=0.05).start()
    out.joinpath("child.pid").write_text(str(os.getpid()))
    time.sleep(120)  # an orphan that nobody ends would live this long
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


def test_a_worker_whose_parent_is_sigkilled_exits_promptly(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, str(tmp_path)], env=env)
    child = None
    try:
        deadline = time.monotonic() + 60
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
        assert (tmp_path / "orphaned").exists()
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_guard_is_off_outside_ray_workers():
    from trainer.versioning import OrphanGuard

    assert OrphanGuard.in_ray_worker() is False  # a run in the CLI's own process outlives its shell
