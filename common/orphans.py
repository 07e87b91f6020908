"""The orphan guard of Ray worker processes: exit once the raylet that started the process is gone.

A Ray worker (a Ray Train worker, a parameter-server shard actor) is a child of its node's raylet.
``os.killpg`` of the ``freshrec stream`` CLI kills the CLI, the GCS and the raylet, but not the
workers (Ray starts each in a process group of its own), and Ray's own check lets them run on for
a while: an orphaned Ray Train worker went on training and committing versions beside the
restarted stream and held the store's writer lease; an orphaned shard actor kept its tables (its
memory) and its place on the machine until Ray's own check ended it. Here, not in ``trainer``,
because the trainer's workers and ``paramserver``'s shard actors both run it, and ``paramserver``
must not import ``trainer``.

    guard = start_if_ray_worker("shard actor 1")   # None outside a Ray worker process
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

ORPHAN_EXIT = 75  # the exit status of a Ray worker that found its raylet gone (EX_TEMPFAIL)


class OrphanGuard:
    """Ends this process promptly once the process that started it is gone (it was re-parented).

    Checks ``os.getppid()`` every ``interval_s`` (callers may also check :meth:`orphaned` at a critical
    point, e.g. just before a commit); when it changed, ``on_orphan()`` runs (log, exit). Only in Ray
    workers (:meth:`in_ray_worker`): a run in the CLI's own process keeps running when its shell goes away."""

    def __init__(self, on_orphan: Callable[[], None], interval_s: float = 0.5, parent: int | None = None) -> None:
        self.parent = os.getppid() if parent is None else int(parent)
        self.on_orphan, self.interval_s = on_orphan, float(interval_s)
        self.what = "process"  # what it guards, in words (start_if_ray_worker names it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def in_ray_worker() -> bool:
        """Whether this process is a Ray actor's worker process (Ray Train workers and shard actors are)."""
        ray = sys.modules.get("ray")
        try:
            return bool(ray is not None and ray.is_initialized() and ray.get_runtime_context().get_actor_id())
        except Exception:
            return False

    def orphaned(self) -> bool:
        return os.getppid() != self.parent

    def start(self) -> OrphanGuard:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="freshrec-orphan-guard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.orphaned():
                self.on_orphan()
                return


def exit_orphan(what: str = "Ray worker", consequence: str = "") -> None:
    """Log why and end this process at once with status :data:`ORPHAN_EXIT` (no cleanup: an orphan has
    nobody to hand anything to, and its state is in the last committed version)."""
    log.error(
        "the raylet that started this %s (pid %d) is gone (the freshrec stream driver was killed): this orphan "
        "exits now (status %d)%s",
        what,
        os.getpid(),
        ORPHAN_EXIT,
        f" {consequence}" if consequence else "",
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(ORPHAN_EXIT)


def start_if_ray_worker(what: str, consequence: str = "", force: bool = False) -> OrphanGuard | None:
    """A started :class:`OrphanGuard` that calls :func:`exit_orphan` when this process is a Ray worker (or
    ``force``); None otherwise."""
    if not (force or OrphanGuard.in_ray_worker()):
        return None
    guard = OrphanGuard(lambda: exit_orphan(what, consequence))
    guard.what = what
    return guard.start()


__all__ = ["ORPHAN_EXIT", "OrphanGuard", "exit_orphan", "start_if_ray_worker"]
