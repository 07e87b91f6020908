"""The writer lease: one writer per store, fenced by an epoch, so gc knows what may still be committed.

``ROOT/WRITER.json`` says who writes versions and what they are writing::

    {"epoch": 7, "holder": "trainer-0:4711:9f3c", "host": "trainer-0", "pid": 4711,
     "acquired_at": ..., "renewed_at": ..., "expires_at": ..., "released": false,
     "writing": {"13": 12},          # versions begun and not yet committed/aborted -> their parent
     "last_version": 13}             # the highest number ever allocated (numbers are never reused)

Rules (``VersionStore.begin`` / ``commit`` / ``gc`` apply them; nothing to call by hand):

- ``begin()`` acquires the lease (or renews its own). A lease held by another holder is free only
  once it expired (``expires_at``, renewed by a heartbeat thread every ``ttl / 4`` while the writing
  process lives), was released (clean exit), or its holder is a process on this host that no longer
  exists. ``begin()`` waits up to ``writer_wait_s`` for that, then raises :class:`WriterFencedError`
  naming the holder. Taking a lease over bumps the **epoch**.
- ``commit()`` checks, just before the manifest is written, that the lease is still this writer's at
  the epoch the version began under; otherwise the commit is refused (``WriterFencedError``): a
  writer that was taken over (crashed, paused past its lease) can never commit again.
- ``gc`` never removes a version listed in ``writing`` of a live lease. To remove the in-flight
  versions of an expired lease, gc first takes the lease over (bumping the epoch, so their writer's
  commit is refused), then releases it.

Every read-modify-write of WRITER.json is a compare-and-swap: a conditional PUT on S3 (``If-Match``
the ETag read, ``If-None-Match: *`` to create; moto and AWS S3 honour both), ``flock`` on
``ROOT/WRITER.lock`` on a local file system, a process-wide lock on ``memory://``. Other fsspec
back ends get write-then-read-back (best effort: two writers racing on the very same instant may
both believe they won; the commit-time epoch check still refuses the loser's later commits).

Safety assumes what every lease does: a writer does not stall, between the commit-time check and its
manifest write, for longer than the lease's ``ttl`` (60 s by default), and clocks agree to well
within ``ttl``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import socket
import sys
import threading
import time
import uuid
import weakref

from versions.errors import StoreUnavailableError, WriterFencedError

log = logging.getLogger(__name__)

WRITER = "WRITER.json"
WRITER_LOCK = "WRITER.lock"
_TOKEN = uuid.uuid4().hex[:8]  # this process's part of its default holder name
_MEMORY_LOCKS: dict[str, threading.Lock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()


def default_holder() -> str:
    """``host:pid:token``: every VersionStore of this process writes as the same holder."""
    return f"{socket.gethostname()}:{os.getpid()}:{_TOKEN}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, TypeError):
        return True  # exists (another user's) or unknown: assume alive
    return True


def is_live(state: dict | None, now: float | None = None) -> bool:
    """Whether ``state`` is a lease that still protects its holder (not released, not expired, and not
    held by a process of this host that is gone)."""
    if not state or state.get("released"):
        return False
    now = time.time() if now is None else now
    if now >= float(state.get("expires_at", 0)):
        return False
    if state.get("host") == socket.gethostname() and state.get("pid") is not None and not pid_alive(state["pid"]):
        return False
    return True


def describe(state: dict) -> str:
    left = float(state.get("expires_at", 0)) - time.time()
    return (
        f"{state.get('holder')!r} (host {state.get('host')}, pid {state.get('pid')}, epoch {state.get('epoch')}, "
        f"lease {f'expires in {left:.0f} s' if left > 0 else 'expired'})"
    )


READ_ATTEMPTS_CAS = 3  # update(): transient errors on the lease's write tolerated before giving up
PROGRESS_S = 10.0  # acquire(): a progress line this often while another writer's lease blocks it


class WriterLease:
    """The compare-and-swap updates of ``ROOT/WRITER.json`` for one VersionStore."""

    def __init__(self, store) -> None:
        self.store = store
        self.epoch: int | None = None  # the epoch this store writes under, None when it holds no lease
        self.renewed = 0.0
        self._thread_lock = threading.Lock()

    @property
    def path(self) -> str:
        return f"{self.store.root}/{WRITER}"

    @property
    def holder(self) -> str:
        return self.store.writer_id or default_holder()

    # -------------------------------------------------------- compare and swap
    @contextlib.contextmanager
    def _mutex(self):
        store = self.store
        kind = _kind(store)
        if kind == "local":
            import fcntl

            with self._thread_lock:
                with store._io(f"lock {store.root}/{WRITER_LOCK}"):
                    os.makedirs(store.root, exist_ok=True)
                    fd = os.open(f"{store.root}/{WRITER_LOCK}", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    yield
                finally:
                    os.close(fd)  # releases the flock
        elif kind == "memory":
            with _MEMORY_LOCKS_GUARD:
                lock = _MEMORY_LOCKS.setdefault(store.root, threading.Lock())
            with lock:
                yield
        else:
            yield

    def _read_once(self) -> tuple[bytes, str | None] | None:
        store = self.store
        tag = None
        if _kind(store) == "s3":
            store.fs.invalidate_cache(self.path)
            try:
                tag = store.fs.info(self.path).get("ETag")
            except FileNotFoundError:
                return None
        try:
            return store.fs.cat_file(self.path), tag
        except FileNotFoundError:
            return None

    def read(self) -> tuple[dict | None, str | None]:
        """``(state, tag)``: the lease object (None when absent) and its ETag on S3. A read is idempotent, so a
        transient store error is retried like every other read (``VersionStore._retrying``): one dropped
        connection on WRITER.json must not fail a version, a renewal or a restart (bench chaos found a reset
        here failing the Ray Train worker group, which the driver then restarted)."""
        store = self.store
        found = store._retrying(f"read {self.path}", self._read_once)
        if found is None:
            return None, None
        data, tag = found
        try:
            state = json.loads(data)
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise ValueError("no epoch")
        except ValueError as exc:
            log.warning("the writer lease %s is unreadable (%s): treated as expired", self.path, exc)
            return {
                "epoch": 0,
                "holder": "",
                "expires_at": 0,
                "writing": {},
                "last_version": 0,
                "unreadable": True,
            }, tag
        return state, tag

    def _write(self, state: dict, tag: str | None, existed: bool) -> bool:
        """Write ``state`` if WRITER.json is still what was read; False when another update won."""
        store = self.store
        data = json.dumps(state, sort_keys=True).encode()
        kind = _kind(store)
        if kind in ("local", "memory"):  # under the mutex
            store._write_small(self.path, data)
            return True
        with store._io(f"write {self.path}"):
            if kind == "s3":
                try:
                    if existed and tag:
                        store.fs.pipe_file(self.path, data, IfMatch=tag)
                    else:
                        store.fs.pipe_file(self.path, data, mode="create")
                except FileExistsError:
                    return False
                except OSError as exc:
                    if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
                        return False
                    raise
                return True
            store.fs.pipe_file(self.path, data)
            store.fs.invalidate_cache(self.path)
            return store.fs.cat_file(self.path) == data

    def update(self, fn) -> dict | None:
        """Apply ``fn(state) -> new state | None (no change)`` as a compare-and-swap, retrying lost races."""
        transient = 0
        for attempt in range(50):
            with self._mutex():
                state, tag = self.read()
                new = fn(None if state is None else dict(state))
                if new is None:
                    return state
                try:
                    if self._write(new, tag, existed=state is not None):
                        return new
                except StoreUnavailableError as exc:
                    # A failed conditional write is ambiguous: the request may have been applied and only its
                    # answer lost. Read again: our own state there means it was (every state this writer writes
                    # carries a fresh renewed_at, so it cannot be an older one); anything else means it was not,
                    # and fn is applied again to what is there now, as after a lost race.
                    transient += 1
                    if transient >= READ_ATTEMPTS_CAS:
                        raise
                    log.warning(
                        "writing %s failed (%s): reading it back to see whether the write landed", self.path, exc
                    )
                    if self.read()[0] == json.loads(json.dumps(new, sort_keys=True)):
                        return new
            time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 10))
        raise StoreUnavailableError(self.store.url, f"could not update {self.path}: too many concurrent updates")

    # ------------------------------------------------------------- the lease
    def _fresh(self, state: dict | None, epoch: int, now: float) -> dict:
        state = dict(state or {})
        state.update(
            epoch=epoch,
            holder=self.holder,
            host=socket.gethostname(),
            pid=os.getpid(),
            renewed_at=now,
            expires_at=now + self.store.writer_ttl_s,
            released=False,
        )
        state.setdefault("acquired_at", now)
        state.setdefault("writing", {})
        state.setdefault("last_version", 0)
        state.pop("unreadable", None)
        return state

    def _take(self, state: dict | None, *, takeover: bool = False) -> dict:
        """The new state once this writer holds the lease; WriterFencedError when another holds it."""
        now = time.time()
        if state is not None and state.get("holder") == self.holder and not state.get("released"):
            return self._fresh(state, int(state["epoch"]), now)  # a renewal (or another store of this process)
        if state is not None and is_live(state, now) and not takeover:
            raise WriterFencedError(
                None,
                f"another writer holds this store: {describe(state)}; stop it, or wait "
                f"until its lease expires (a crashed writer's lease expires "
                f"{self.store.writer_ttl_s:g} s after its last heartbeat)",
                str(state.get("holder")),
                int(state.get("epoch", 0)),
            )
        epoch = int(state.get("epoch", 0)) + 1 if state else 1
        if state is not None and state.get("holder") != self.holder and state.get("holder"):
            log.warning("taking over the writer lease of %s with epoch %d", describe(state), epoch)
        new = self._fresh(state, epoch, now)
        new["acquired_at"] = now
        new["writing"] = {}  # the versions of the previous holder: never committed now (epoch bumped); gc removes them
        return new

    def acquire(self, *, takeover: bool = False, wait_s: float | None = None) -> dict:
        """Hold the writer lease (waiting up to ``wait_s`` for a held one to lapse); returns the state."""
        wait_s = self.store.writer_wait_s if wait_s is None else wait_s
        started = time.monotonic()
        deadline, told = started + wait_s, started
        while True:
            try:
                state = self.update(lambda s: self._take(s, takeover=takeover))
                break
            except WriterFencedError as exc:
                now = time.monotonic()
                if now >= deadline:
                    raise
                if now - told >= PROGRESS_S:  # a restart after a crash waits here: say for whom and how long
                    told = now
                    log.warning(
                        "waiting for the writer lease of %s (%.0f s so far, giving up in %.0f s): %s",
                        self.store.url,
                        now - started,
                        deadline - now,
                        exc,
                    )
                time.sleep(min(0.5, max(0.01, deadline - time.monotonic())))
        self.epoch, self.renewed = int(state["epoch"]), time.time()
        _register(self.store)
        return state

    def check(self, epoch: int, version: int | None = None) -> dict:
        """Renew the lease if it is still this writer's at ``epoch``; WriterFencedError otherwise."""

        def renew(state):
            if (
                state is None
                or state.get("holder") != self.holder
                or state.get("epoch") != epoch
                or state.get("released")
            ):
                who = describe(state) if state else "nobody (WRITER.json is gone)"
                raise WriterFencedError(
                    version,
                    f"this writer (epoch {epoch}) was fenced: the store's writer "
                    f"lease is now held by {who}; restart the writer (it resumes "
                    f"from the newest committed version)",
                    str((state or {}).get("holder", "")),
                    int((state or {}).get("epoch", 0)),
                )
            return self._fresh(state, epoch, time.time())

        try:
            state = self.update(renew)
        except WriterFencedError:
            if self.epoch == epoch:
                self.epoch = None
            raise
        self.renewed = time.time()
        return state

    def release(self) -> bool:
        """Give the lease up (the epoch stays, so a later writer bumps it); False when not held."""
        if self.epoch is None:
            return False
        epoch, self.epoch = self.epoch, None

        def drop(state):
            if state is None or state.get("holder") != self.holder or state.get("epoch") != epoch:
                return None
            return {**state, "released": True, "expires_at": time.time()}

        self.update(drop)
        return True


def _kind(store) -> str:
    protocol = store.fs.protocol
    protocol = protocol[0] if isinstance(protocol, (tuple, list)) else protocol
    if store.local:
        return "local"
    if protocol == "memory":
        return "memory"
    if protocol in ("s3", "s3a"):
        return "s3"
    return "other"


# ------------------------------------------------------------------ heartbeat
_HOLDING: weakref.WeakSet = weakref.WeakSet()
_HB_GUARD = threading.Lock()
_HB_THREAD: threading.Thread | None = None


def _register(store) -> None:
    global _HB_THREAD
    with _HB_GUARD:
        _HOLDING.add(store)
        if _HB_THREAD is None or not _HB_THREAD.is_alive():
            _HB_THREAD = threading.Thread(target=_heartbeat, name="freshrec-writer-lease", daemon=True)
            _HB_THREAD.start()


def _heartbeat() -> None:
    while not _EXITING.wait(0.5):
        with _HB_GUARD:
            stores = list(_HOLDING)
        for store in stores:
            lease = store._writer
            if lease.epoch is None:
                _HOLDING.discard(store)
                continue
            if time.time() - lease.renewed < store.writer_ttl_s / 4:
                continue
            try:
                lease.check(lease.epoch)
            except WriterFencedError as exc:
                log.error("the writer lease of %s was lost: %s", store.url, exc)
                _HOLDING.discard(store)
            except (FileNotFoundError, StoreUnavailableError) as exc:
                if sys.is_finalizing() or _EXITING.is_set():
                    return
                log.warning("renewing the writer lease of %s failed (retried): %s", store.url, exc)
            except Exception:
                log.exception("renewing the writer lease of %s failed", store.url)


_EXITING = threading.Event()


@atexit.register
def _release_all() -> None:
    _EXITING.set()  # the heartbeat stops renewing (its I/O may already be shut down)
    for store in list(_HOLDING):
        with contextlib.suppress(Exception):
            store._writer.release()
