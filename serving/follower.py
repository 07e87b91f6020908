"""Following the version store: load the newest committed version in the background, swap atomically.

One daemon thread per replica::

    every poll_interval_s:
        v = the target                user_config pin, else the store's PINNED (freshrec snapshots
                                      rollback), else PUBLISHED (the publish gate), else LATEST
        v == serving, or v refused before  -> nothing
        build ServableModel(v)        deltas after the served version applied to its tables;
                                      every part read is checksummed
        self._model = new             ONE reference assignment: the swap is atomic
    store unreachable, version corrupt  -> keep serving the last good model, log, retry later

A request reads ``follower.model`` once and uses that object to the end, so every answer is
computed by one version and names it; the old model is freed when its last request ends.
Only committed versions are visible in the store (a manifest exists), and a version whose
parts do not verify is refused (remembered, never retried).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from serving.model import ServableModel
from serving.telemetry import ReplicaTelemetry
from versions import VersionStore
from versions.errors import VersionError

log = logging.getLogger(__name__)


class VersionFollower:
    """Holds the served model and replaces it with newer versions (see the module docstring).

    ``load(version, previous) -> ServableModel``. ``on_swap(model)`` runs after each swap.
    ``telemetry`` receives the served version and its lag at each poll, and the freshness of each
    forward swap (a newer version while following; not the first load, not a pin).
    """

    def __init__(self, store: VersionStore, load: Callable[[int, ServableModel | None], ServableModel], *,
                 poll_interval_s: float = 0.2, pin_version: int | None = None,
                 on_swap: Callable[[ServableModel], None] | None = None,
                 telemetry: ReplicaTelemetry | None = None) -> None:
        self.store, self._load = store, load
        self.poll_interval_s = poll_interval_s
        self.pin_version = pin_version
        self.on_swap = on_swap or (lambda model: None)
        self._model: ServableModel | None = None
        self.refused: dict[int, str] = {}  # version -> why (corrupt, unservable)
        self.last_error: str | None = None  # the last poll's failure (store unreachable ...), None when fine
        self.swaps = 0
        self.telemetry = telemetry or ReplicaTelemetry()
        self._newest: int | None = None  # the newest version this replica has served
        self.why: str | None = None  # why the last target was chosen: config-pin, pinned, published, latest
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def model(self) -> ServableModel | None:
        """The served model (None until a first version loads)."""
        return self._model

    @property
    def alive(self) -> bool:
        """True while the background thread follows the store."""
        return self._thread is not None and self._thread.is_alive()

    # ---------------------------------------------------------------- control
    def start(self) -> "VersionFollower":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="freshrec-version-follower", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def configure(self, pin_version: int | None, poll_interval_s: float | None = None) -> None:
        """Pin a version (rollback) or follow the newest (None); takes effect at once."""
        self.pin_version = pin_version
        if poll_interval_s is not None:
            self.poll_interval_s = poll_interval_s
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()

    # ------------------------------------------------------------------- poll
    @property
    def pinned(self) -> bool:
        """True while the replica serves a pinned version (user_config or the store's PINNED)."""
        return self.why in ("config-pin", "pinned")

    def target(self) -> int | None:
        """The version to serve now: the user_config pin, else the store's PINNED, else PUBLISHED, else
        LATEST (a store that was never published: written before the gate, or without it)."""
        if self.pin_version is not None:
            self.why = "config-pin"
            return self.pin_version
        for why, read in (("pinned", self.store.pinned), ("published", self.store.published),
                          ("latest", self.store.latest)):
            v = read()
            if v is not None:
                self.why = why
                return v
        self.why = None
        return None

    def poll(self) -> bool:
        """Look once; load and swap if there is a newer (or a newly pinned) version. True on a swap."""
        with self._poll_lock:
            target = [None]
            try:
                return self._poll(target)
            finally:
                self.telemetry.poll(self._model.version if self._model is not None else None, target[0])

    def _poll(self, target: list) -> bool:
        try:
            v = target[0] = self.target()
        except Exception as exc:  # noqa: BLE001 (an unreachable store: keep serving)
            self._failed(f"the version store is unavailable: {type(exc).__name__}: {exc}")
            return False
        current = self._model
        if v is None or (current is not None and current.version == v) or v in self.refused:
            self.last_error = None if v is not None else "the store has no committed version yet"
            return False
        previous = current if current is not None and v > current.version else None
        t0 = time.perf_counter()
        try:
            model = self._load(v, previous)
        except (VersionError, ValueError, KeyError) as exc:  # corrupt or unservable: never retried
            self.refused[v] = f"{type(exc).__name__}: {exc}"
            self._failed(f"version {v} is refused, serving {current.version if current else 'nothing'}: "
                         f"{self.refused[v]}")
            return False
        except Exception as exc:  # noqa: BLE001 (I/O: retried at the next poll)
            self._failed(f"loading version {v} failed (retried): {type(exc).__name__}: {exc}")
            return False
        self._model = model  # the atomic swap
        newest, self._newest = self._newest, max(v, self._newest or 0)
        self.swaps += 1
        self.last_error = None
        if newest is not None and v > newest and not self.pinned:  # a version newer than any served: freshness
            try:
                self.telemetry.swap(self.store.manifest(v).extra)
            except Exception:  # noqa: BLE001 (metrics never fail a swap)
                log.debug("freshness of version %d not recorded", v, exc_info=True)
        log.info("serving version %d (loaded in %.0f ms%s)", v, (time.perf_counter() - t0) * 1e3,
                 f", deltas on {previous.version}" if previous is not None else "")
        self.on_swap(model)
        return True

    def _failed(self, why: str) -> None:
        if why != self.last_error:
            log.warning("%s", why)
        self.last_error = why
