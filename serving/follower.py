"""Following the version store: ONE follower for every serving role (Scorer replica, table shard, Search).

Generic over what it loads (``load(version, previous) -> T``; ``version_of(T) -> int``). One
daemon thread per follower::

    every poll_interval_s (longer, jittered, while the store fails):
        v = the target                the explicit pin (user_config / --pin-version), else the store's
                                      PINNED (freshrec snapshots rollback), else PUBLISHED (the publish
                                      gate), else LATEST
        v == serving                  -> renew the serving lease, nothing else
        v refused (corrupt) recently  -> nothing; re-checked once ``retry.recheck_corrupt_s`` passed
        v failed transiently          -> nothing until its jittered backoff expires, then retried
        lease v                       v is leased BEFORE loading (gc keeps leased versions) under a second
                                      holder name (``HOLDER+loading``): the served version keeps its lease
        build T(v)                    deltas after the served version applied; every part checksummed
        self._model = new             ONE reference assignment: the swap is atomic; then the serving lease
                                      moves to v and the loading lease is released

The lease (``VersionStore.renew_lease(holder, v)``, renewed every ttl/3) is released on :meth:`stop`.

Transient is not corrupt. A load that fails with a checksum or format error
(:class:`versions.CorruptVersionError`, :class:`serving.errors.UnsupportedError`, ``ValueError``,
``KeyError``) refuses the version; anything else (``StoreUnavailableError``, ``OSError``, a
version gc'd meanwhile, a Ray error from a table shard) is retried with exponential backoff and
full jitter (:class:`RetryPolicy`), forever. A refused version is re-checked after
``recheck_corrupt_s`` (a repaired object, a misread), with a log line and
``freshrec_serving_load_failures_total{kind="recheck"}``.

Health: a follower that has never loaded a version is not ready (:meth:`VersionFollower.health`
says why); the transports turn that into a failed Ray Serve ``check_health`` and a NOT_SERVING
``grpc.health.v1`` status; ModelInfo answers UNAVAILABLE with the reason, or (``include_not_ready``)
``ready = false`` and the reason in ``not_ready_reason``.

A request reads ``follower.model`` once and uses that object to the end, so every answer is
computed by one version and names it; the old model is freed when its last request ends.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from serving.errors import UnsupportedError
from serving.telemetry import ReplicaTelemetry
from versions import VersionStore
from versions.errors import CorruptVersionError

log = logging.getLogger(__name__)
T = TypeVar("T")

# a load failing with one of these refuses the version (re-checked later); anything else is transient
CORRUPT = (CorruptVersionError, UnsupportedError, ValueError, KeyError)


def is_corrupt(exc: BaseException) -> bool:
    """True for a checksum or format failure (the version's bytes or contents), False for the store or the
    network failing (retried). ``StoreUnavailableError`` and ``NoSuchVersionError`` are never corrupt."""
    return isinstance(exc, CORRUPT)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient failures, and when a refused (corrupt) version is
    looked at again. The n-th consecutive failure waits uniform(0, min(max_s, base_s * 2**(n-1))), at least
    ``floor_s``."""

    base_s: float = 0.2
    max_s: float = 1.0  # a replica serves the newest version within about a second after the store recovers
    floor_s: float = 0.05
    recheck_corrupt_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.floor_s <= self.base_s <= self.max_s:
            raise ValueError(
                f"retry: need 0 < floor_s <= base_s <= max_s, got {self.floor_s}, {self.base_s}, {self.max_s}"
            )
        if self.recheck_corrupt_s <= 0:
            raise ValueError(f"retry.recheck_corrupt_s must be > 0, got {self.recheck_corrupt_s}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        cap = min(self.max_s, self.base_s * 2 ** max(0, min(attempt - 1, 30)))
        return max(self.floor_s, rng.uniform(0.0, cap))


@dataclasses.dataclass(frozen=True)
class LeaseSettings:
    """The serving lease a follower renews for the version it serves (``VersionStore.renew_lease``):
    ``holder`` names this replica or shard; None: no lease (a test, an offline tool)."""

    holder: str | None = None
    role: str = "replica"
    ttl_s: float = 60.0

    @property
    def renew_every_s(self) -> float:
        return self.ttl_s / 3


@dataclasses.dataclass
class _Backoff:
    attempts: int
    next_at: float


MAX_REMEMBERED = 64  # refused / backed-off versions remembered (bounded: a follower runs for months)


class VersionFollower(Generic[T]):
    """Holds the served ``T`` and replaces it as the target moves (see the module docstring).

    ``load(version, previous) -> T`` (``previous``: the served T when the target is newer, for deltas).
    ``on_swap(model)`` runs after each swap. ``telemetry`` receives the served version and its lag at each
    poll, the freshness of each forward swap, and each load failure by kind.
    """

    def __init__(
        self,
        store: VersionStore,
        load: Callable[[int, T | None], T],
        *,
        poll_interval_s: float = 0.2,
        pin_version: int | None = None,
        on_swap: Callable[[T], None] | None = None,
        telemetry: ReplicaTelemetry | None = None,
        version_of: Callable[[T], int] = lambda m: m.version,
        retry: RetryPolicy = RetryPolicy(),
        lease: LeaseSettings = LeaseSettings(),
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "replica",
    ) -> None:
        self.store, self._load = store, load
        self.poll_interval_s = poll_interval_s
        self.pin_version = pin_version
        self.on_swap = on_swap or (lambda model: None)
        self.version_of = version_of
        self.retry, self.lease = retry, lease
        self.name = name
        self._rng = random.Random(seed)
        self._clock = clock
        self._model: T | None = None
        self.refused: OrderedDict[int, str] = OrderedDict()  # version -> why (corrupt, unservable)
        self._refused_at: dict[int, float] = {}
        self._backoff: OrderedDict[int, _Backoff] = OrderedDict()  # version -> transient failures
        self._store_failures = 0  # consecutive polls that could not read the store's pointers
        self.last_error: str | None = None  # the last poll's failure (store unreachable ...), None when fine
        self.swaps = 0
        self.telemetry = telemetry or ReplicaTelemetry()
        self._newest: int | None = None  # the newest version this follower has served
        self.why: str | None = None  # why the last target was chosen: config-pin, pinned, published, latest
        self._leased: tuple[int, float] | None = None  # (version, when) of the last lease renewal
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def model(self) -> T | None:
        """The served model (None until a first version loads)."""
        return self._model

    @property
    def version(self) -> int | None:
        m = self._model
        return None if m is None else self.version_of(m)

    @property
    def alive(self) -> bool:
        """True while the background thread follows the store."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def ready(self) -> bool:
        return self._model is not None

    def health(self) -> tuple[bool, str]:
        """(serving, why): not ready until a first version loaded; not healthy when the thread died."""
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return False, "the version follower thread is not running"
        if self._model is None:
            why = self.last_error or "no version loaded yet"
            if self.refused:
                why += "; refused: " + "; ".join(f"v{v}: {w}" for v, w in list(self.refused.items())[-3:])
            return False, f"{self.name} has not loaded a version yet: {why}"
        return True, f"serving version {self.version} ({self.why})"

    # ---------------------------------------------------------------- control
    def start(self) -> "VersionFollower[T]":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"freshrec-follower-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following and release the serving lease (the version may now be collected)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.lease.holder is not None and self._leased is not None:
            try:
                self.store.release_lease(self.lease.holder)
            except Exception as exc:
                log.warning(
                    "%s: releasing the serving lease failed (it expires in %.0f s): %s",
                    self.name,
                    self.lease.ttl_s,
                    exc,
                )
            self._leased = None
        if self.lease.holder is not None:
            self._release_next()  # a load cut short by stop: its lease goes too

    def configure(self, pin_version: int | None, poll_interval_s: float | None = None) -> None:
        """Pin a version (rollback) or follow the pointers (None); takes effect at once."""
        self.pin_version = pin_version
        if poll_interval_s is not None:
            self.poll_interval_s = poll_interval_s
        self.retry_now()  # an operator acted

    def retry_now(self) -> None:
        """Forget the transient failures' backoff: the next poll tries the target at once."""
        self._backoff.clear()
        self._store_failures = 0
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        if self._store_failures:
            return max(self.poll_interval_s, self.retry.delay(self._store_failures, self._rng))
        if self._backoff:  # wake when the earliest backoff expires (not earlier than a poll interval)
            due = min(b.next_at for b in self._backoff.values()) - self._clock()
            return max(self.poll_interval_s, min(due, self.retry.max_s))
        return self.poll_interval_s

    # ------------------------------------------------------------------- poll
    @property
    def pinned(self) -> bool:
        """True while the follower serves a pinned version (explicit pin or the store's PINNED)."""
        return self.why in ("config-pin", "pinned")

    def target(self) -> int | None:
        """The version to serve now: the explicit pin, else the store's PINNED, else PUBLISHED, else
        LATEST (a store that was never published: written before the gate, or without it)."""
        if self.pin_version is not None:
            self.why = "config-pin"
            return self.pin_version
        for why, read in (
            ("pinned", self.store.pinned),
            ("published", self.store.published),
            ("latest", self.store.latest),
        ):
            v = read()
            if v is not None:
                self.why = why
                return v
        self.why = None
        return None

    def poll(self) -> bool:
        """Look once; load and swap if the target moved. True on a swap."""
        with self._poll_lock:
            target = [None]
            try:
                return self._poll(target)
            finally:
                self.telemetry.poll(self.version, target[0])

    def _poll(self, target: list) -> bool:
        try:
            v = target[0] = self.target()
        except Exception as exc:
            self._store_failures += 1
            self._failed(f"the version store is unavailable: {type(exc).__name__}: {exc}", "store")
            return False
        self._store_failures = 0
        current = self._model
        served = self.version
        if v is None:
            self.last_error = "the store has no committed version yet"
            return False
        if served == v:
            self.last_error = None
            self._renew(v)
            return False
        now = self._clock()
        if v in self.refused:
            if now - self._refused_at.get(v, now) < self.retry.recheck_corrupt_s:
                self.last_error = None  # nothing failed this poll: the refusal is in ``refused``
                self._renew(served)
                return False
            log.warning(
                "%s: re-checking version %d, refused %.0f s ago: %s",
                self.name,
                v,
                now - self._refused_at[v],
                self.refused[v],
            )
            self.telemetry.load_failure("recheck")
        b = self._backoff.get(v)
        if b is not None and now < b.next_at:
            self._renew(served)
            return False
        previous = current if current is not None and v > served else None
        # lease the target before loading it (gc must not collect it meanwhile) under a second holder name:
        # the served version keeps its own lease while the load runs (its requests still read it, e.g. from
        # table shards); found by the serving chaos run: gc removed the served version during a slow load
        loading = served is not None and self._lease_next(v)
        if served is None:
            self._renew(v, force=True)
        t0 = time.perf_counter()
        try:
            model = self._load(v, previous)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
            if loading:
                self._release_next()
            else:
                self._renew(served, force=True)  # the lease goes back to what is served
            if is_corrupt(exc):
                self._remember(self.refused, v, why)
                self._refused_at = {k: t for k, t in self._refused_at.items() if k in self.refused}
                self._refused_at[v] = now
                self._backoff.pop(v, None)
                self._failed(
                    f"version {v} is refused (re-checked in {self.retry.recheck_corrupt_s:.0f} s), serving "
                    f"{served if served is not None else 'nothing'}: {why}",
                    "corrupt",
                )
            else:
                attempts = (b.attempts if b is not None else 0) + 1
                delay = self.retry.delay(attempts, self._rng)
                self._remember(self._backoff, v, _Backoff(attempts, now + delay))
                self._failed(
                    f"loading version {v} failed (attempt {attempts}, retried in {delay:.2f} s), serving "
                    f"{served if served is not None else 'nothing'}: {why}",
                    "transient",
                )
            return False
        self._model = model  # the atomic swap
        if served is not None:
            self._renew(v, force=True)  # the lease moves to the new version, then the loading lease goes
            if loading:
                self._release_next()
        self.refused.pop(v, None)
        self._refused_at.pop(v, None)
        self._backoff.pop(v, None)
        newest, self._newest = self._newest, max(v, self._newest or 0)
        self.swaps += 1
        self.last_error = None
        if newest is not None and v > newest and not self.pinned:  # a version newer than any served: freshness
            try:
                self.telemetry.swap(self.store.manifest(v).extra)
            except Exception:
                log.debug("freshness of version %d not recorded", v, exc_info=True)
        log.info(
            "%s: serving version %d (%s, loaded in %.0f ms%s)",
            self.name,
            v,
            self.why,
            (time.perf_counter() - t0) * 1e3,
            f", deltas on {previous and self.version_of(previous)}" if previous is not None else "",
        )
        self.on_swap(model)
        return True

    def _renew(self, version: int, force: bool = False) -> None:
        """Renew the serving lease for ``version`` (at most every ttl/3 unless the version changed)."""
        if self.lease.holder is None or version is None:
            return
        now = self._clock()
        if (
            not force
            and self._leased is not None
            and self._leased[0] == version
            and now - self._leased[1] < self.lease.renew_every_s
        ):
            return
        try:
            self.store.renew_lease(self.lease.holder, version, ttl_s=self.lease.ttl_s, role=self.lease.role)
            self._leased = (version, now)
        except Exception as exc:
            log.warning("%s: renewing the serving lease on version %d failed: %s", self.name, version, exc)

    @property
    def _next_holder(self) -> str:
        return f"{self.lease.holder}+loading"

    def _lease_next(self, version: int) -> bool:
        """Lease ``version`` (being loaded) under the loading holder name; False without a lease holder."""
        if self.lease.holder is None:
            return False
        try:
            self.store.renew_lease(self._next_holder, version, ttl_s=self.lease.ttl_s, role=self.lease.role)
        except Exception as exc:
            log.warning("%s: leasing version %d for its load failed: %s", self.name, version, exc)
        return True

    def _release_next(self) -> None:
        try:
            self.store.release_lease(self._next_holder)
        except Exception as exc:
            log.warning("%s: releasing the loading lease failed (it expires by itself): %s", self.name, exc)

    @staticmethod
    def _remember(d: OrderedDict, key: int, value) -> None:
        d[key] = value
        d.move_to_end(key)
        while len(d) > MAX_REMEMBERED:
            d.popitem(last=False)

    def _failed(self, why: str, kind: str) -> None:
        if kind != "store":
            self.telemetry.load_failure(kind)
        if why != self.last_error:
            log.warning("%s: %s", self.name, why)
        self.last_error = why
