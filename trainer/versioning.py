"""Model versions from the training loop: consistent cuts, background writes, two-phase commit, resume.

A version is a consistent cut, at one step boundary, of every parameter-server shard (rows,
optimizer state, id map, row metadata) and of the training core (dense parameters and their
optimizer state, feature statistics, counters, strategy state, data ledger). Every rank calls
:meth:`VersionKeeper.after_file` at the same data-file boundary; rank 0 drives::

    all ranks   barrier                         every rank has waited for its own pushes:
                                                every step so far is applied in every shard
    rank 0      backend.prepare_cut(cut)        each shard copies what changed (nothing cleared)
                core.export_state()             dense params, optimizer, statistics, ledger
    all ranks   barrier                         training resumes (the pause is only the copies)
    rank 0      background thread:
                  backend.write_cut(cut, v)     each shard writes ps/shard-i/<table> itself
                  bundle.write_model(...)       checksummed parts first: dense state, statistics,
                                                dynamic features, the data layer's state (trainer.bundle)
                  digest over the whole model   then the manifest, then LATEST (atomic renames)
                  backend.commit_cut(cut)       the shards forget the changes the version covers
                  store.compact(v)              every full_every-th version: a full version built
                                                from the store (no training pause), then
                  store.gc(keep)                retention (snapshots.keep), never a needed base
                  publish gate (versions.publish) checksums of the chain + progressive AUC of the
                                                version's window vs the last published version:
                                                PUBLISHED <- v, or held back (logged, counted)
                (on any failure: backend.abort_cut(cut): nothing is lost, the next version carries
                 the changes; three failures in a row stop the run with the error)

A run directory's store is ``RUN_DIR/versions`` unless a store URL (``s3://...``) is given.
On start, :meth:`restore` loads the newest version whose whole chain verifies (a corrupt part
is refused with a warning and an earlier version is used): the shards, the core's state, the
ledger and the data layer's state (dedup window, watermark, deferred late rows), so consumed
data files are skipped, nothing is trained twice and a resumed run drops exactly the duplicates
an uninterrupted run drops. What a version contains is :mod:`trainer.bundle`'s business.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable

from common import orphans
from trainer import bundle, telemetry
from versions import (
    CorruptVersionError,
    PublishConfig,
    Publisher,
    SnapshotConfig,
    SnapshotPolicy,
    VersionMetrics,
    VersionStore,
    VersionWriteError,
    is_transient,
)

log = logging.getLogger(__name__)
KEEP_VERSIONS = 64  # per-version records (publish decisions, cut pauses) a run keeps in memory: the latest
CORE_PART = bundle.CORE_PART  # re-exported for callers that name the parts (tests)
FEATURES_PART = bundle.FEATURES_PART


def _single_process_barrier() -> None:
    pass


def _single_process_broadcast(value):
    return value


def collectives(world: int):
    """(barrier, broadcast-from-rank-0) over the process group Ray Train set up; no-ops for one process."""
    if world == 1:
        return _single_process_barrier, _single_process_broadcast
    import torch.distributed as dist

    def broadcast(value):
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    return dist.barrier, broadcast


# the orphan guard lives in common (paramserver's shard actors run it too); re-exported for callers and tests
ORPHAN_EXIT = orphans.ORPHAN_EXIT
OrphanGuard = orphans.OrphanGuard
_TRAIN_ORPHAN = (
    "so that it trains and commits nothing more and a restarted stream takes the store's writer lease at once"
)


class FinalCommitError(RuntimeError):
    """The final version of a run could not be committed: the store stayed unavailable through every retry."""


def _with_model_config(extra: dict, model_cfg) -> dict:
    """The manifest's run config with the model config the core really trains (whole): serving and evaluate
    build the model from it, and a partial ``model`` section (a caller's hand-written config) made versions
    that no replica could load (a state_dict without the keys a newer default adds)."""
    from trainer.config import ModelConfig

    config = extra.get("config")
    if isinstance(config, dict) and "model" in config and isinstance(model_cfg, ModelConfig):
        extra["config"] = {**config, "model": dataclasses.asdict(model_cfg)}
    return extra


RESTORE_LEASE_S = 900.0  # a restore's lease on its version (released when done; a crash leaves it to expire)
RESTORE_LEASE_TRIES = 5


def lease_newest(store: VersionStore, holder: str, tries: int = RESTORE_LEASE_TRIES) -> int | None:
    """The newest valid version of ``store``, leased by ``holder`` (role ``restore``): a version gc removed
    between the choice and the lease is chosen again (bounded). None when the store has none."""
    for _ in range(tries):
        version = store.latest_valid()
        if version is None:
            return None
        store.renew_lease(holder, version, ttl_s=RESTORE_LEASE_S, role="restore")
        if version in store.versions():  # still there once leased: gc keeps it (and its chain) now
            return version
    raise VersionWriteError(None, f"no version of {store.root} stayed in the store long enough to restore it")


def read_newest(store: VersionStore, read: Callable[[int], object], tries: int = RESTORE_LEASE_TRIES):
    """``(version, read(version))`` for the newest valid version, read under a restore lease that is released
    afterwards; ``(None, None)`` when the store has none.

    The trainer's driver reads what it resumes from this way (the manifest, the ledger) so that a gc beside
    the restart (an operator's, or a compaction's ``keep``) cannot remove the version mid-read. A gc that
    listed the leases just before this lease was written may still remove the version: then its manifest is
    gone (gc removes the manifest first) and the newest version is chosen again, instead of reporting a
    version that no longer exists as corrupt."""
    holder = f"restore-{uuid.uuid4().hex[:12]}"
    try:
        for _ in range(tries):
            version = lease_newest(store, holder, tries)
            if version is None:
                return None, None
            try:
                return version, read(version)
            except CorruptVersionError:
                if version in store.versions():
                    raise  # really corrupt (its manifest is there): latest_valid skips it next time
                log.info("version %d was removed by a gc while it was read; reading the newest again", version)
        raise VersionWriteError(None, f"no version of {store.root} stayed in the store long enough to read it")
    finally:
        try:
            store.release_lease(holder)
        except Exception:  # it expires by itself (RESTORE_LEASE_S)
            log.warning("could not release the restore lease %s", holder)


class VersionKeeper:
    """Writes and restores the model versions of one run (see the module docstring).

    ``barrier()`` and ``broadcast(value) -> value`` synchronise the ranks (gloo collectives in
    Ray Train; no-ops in one process). ``extra`` goes into every manifest (spec, configs).
    ``data`` (a :class:`trainer.data.DataState`) is the data layer's state that goes into every version
    and is restored with it. ``publish`` configures the publish gate run after each commit (:mod:`versions.publish`); every
    manifest's ``extra["metrics"]`` holds the progressive validation of the version's window (the
    data files trained since the previous version, each scored before training on it).
    """

    def __init__(
        self,
        store_url: str,
        backend,
        core,
        snapshots: SnapshotConfig | None = None,
        *,
        storage_options: dict | None = None,
        extra: dict | None = None,
        barrier: Callable[[], None] = _single_process_barrier,
        broadcast: Callable = _single_process_broadcast,
        on_commit=None,
        publish: PublishConfig | None = None,
        data=None,
    ) -> None:
        self.url, self.storage_options = str(store_url), storage_options
        # its manifest cache holds a chain and the gate's recent versions: 64, full long before a soak's warm-up
        self.store = VersionStore(self.url, storage_options, manifest_cache=KEEP_VERSIONS)
        self.backend, self.core = backend, core
        self.data = data  # trainer.data.DataState: the data layer's state (every rank holds the same)
        self.policy = SnapshotPolicy(snapshots)
        self.extra = _with_model_config(dict(extra or {}), getattr(core, "model_cfg", None))
        self.barrier, self.broadcast = barrier, broadcast
        self.on_commit = on_commit or (lambda manifest, pause_ms: None)
        self.rank = core.rank
        self.last_version: int | None = None  # the newest version committed (or restored) by this run
        self.pauses_ms: collections.deque[float] = collections.deque(maxlen=KEEP_VERSIONS)  # the latest cuts'
        self.failures = 0
        self.max_failures = 3  # consecutive failed versions before the run stops with the error
        self.final_attempts = 5  # the final version (finish): attempts on transient store errors
        self.retry_base_s, self.retry_max_s = 0.25, 4.0  # its backoff: base * 2**n, capped, jittered x0.5-1.5
        self._consecutive_failures = 0
        self._cut_step = 0  # the step of the last version cut (or restored)
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self.publisher = Publisher(self.store, publish)
        self.decisions: dict[int, object] = {}  # version -> PublishDecision (this run's latest KEEP_VERSIONS)
        self._files_mark = self._validated()  # validated data files already in a version
        self._picked_up_at: float | None = None  # when rank 0 took the newest data file (freshness)
        # in a Ray worker: exit once the raylet is gone (an orphan must not train or commit beside a restart)
        self.orphan_guard = orphans.start_if_ray_worker("Ray Train worker", _TRAIN_ORPHAN)

    def _validated(self) -> int:
        validator = getattr(self.core, "validator", None)
        if validator is None:
            return 0
        return getattr(validator, "recorded", None) or len(validator.files)

    def _window_metrics(self) -> VersionMetrics:
        """Progressive validation of the data files trained since the last cut (rank 0's validator)."""
        validator = getattr(self.core, "validator", None)
        if validator is None:
            files = []
        elif hasattr(validator, "since"):
            files = validator.since(self._files_mark)
        else:
            files = validator.files[self._files_mark :]
        self._files_mark = self._validated()
        if validator is not None:
            validator.hold_from = self._files_mark  # the records before it are in a version: they may go
        take = getattr(validator, "take_window", None)  # the window's score histogram (the publish gate's test)
        return VersionMetrics.of_files(files, take() if take is not None else None)

    # ---------------------------------------------------------------- restore
    def restore(self, reread=None) -> int | None:
        """Every rank: load the newest valid version (shards by rank 0); None when the store has none.

        Rank 0 holds a lease on the version while every rank reads it (``ROOT/leases/``, as a serving
        replica does), so that a gc beside the restart (an operator's, or its compaction's) cannot remove
        it mid-read; the lease goes once every rank has read it."""
        holder = f"restore-{uuid.uuid4().hex[:12]}"
        version = self.broadcast(lease_newest(self.store, holder) if self.rank == 0 else None)
        if version is None:
            return None
        try:
            return self._restore_from(version, reread)
        finally:
            if self.rank == 0:
                try:
                    self.store.release_lease(holder)
                except Exception:  # it expires by itself (RESTORE_LEASE_S)
                    log.warning("could not release the restore lease %s of version %d", holder, version)

    def _restore_from(self, version: int, reread) -> int:
        if self.rank == 0:
            self.backend.restore(self.url, version, self.storage_options)
        self.barrier()
        arrays, meta = bundle.read_core(self.store, version)
        self.core.import_state(arrays, meta, reread, ledger=bundle.read_ledger(self.store, version))
        self.core.import_features(*bundle.read_features(self.store, version))
        if self.data is not None:
            self.data.load(bundle.read_data(self.store, version))
        self.policy.restored(self.core.step, time.time(), chain_length=len(self.store.chain(version)))
        self.last_version = version
        self._cut_step = self.core.step
        self._files_mark = self._validated()
        self.barrier()  # every rank has read the version: its restore lease may go
        return version

    # -------------------------------------------------------------------- cut
    def after_file(self, force: bool = False, picked_up_at: float | None = None) -> bool:
        """Every rank, at the same data-file boundary: cut a version if the policy (or ``force``) says so.
        ``picked_up_at`` (rank 0): when the data file just trained was taken from its directory."""
        decision = None
        if picked_up_at is not None:
            self._picked_up_at = float(picked_up_at)
        if self.rank == 0:
            self._join()  # the previous version is committed (or failed) before the policy decides the next
            if self._error is not None:  # its changes stay pending: the next version carries them
                self._consecutive_failures += 1
                if self._consecutive_failures >= self.max_failures:
                    self._raise_writer_error()
                log.warning(
                    "writing a model version failed (%d in a row; training goes on, the next version "
                    "carries its changes): %s",
                    self._consecutive_failures,
                    self._error,
                )
                self._error = None
            d = self.policy.decide(self.core.step, time.time(), data_file_done=True)
            if d.snapshot or force:
                decision = d if d.snapshot else dataclasses.replace(d, snapshot=True, reason="final")
        decision = self.broadcast(decision)
        if decision is None:
            return False
        kind = decision.kind
        if kind == "delta" and self.last_version is None:  # nothing committed yet in this run: a full one
            kind = "full"
            decision = dataclasses.replace(decision, kind="full")
        self._cut_step = self.core.step  # every rank: the same step (finish() decides on it)
        self.barrier()  # every rank has waited for its pushes: all steps are applied
        if self.rank == 0:
            cut_id = uuid.uuid4().hex
            t0 = time.perf_counter()
            self.backend.prepare_cut(cut_id, kind == "full")
            arrays, meta = self.core.export_state()
            feats = self.core.export_features()
            if feats is not None:
                meta = {**meta, "features": feats}
            if self.data is not None:  # what changed since the last committed version (whole in a full one)
                meta = {**meta, "data": self.data.cut(full=kind == "full")}
            else:  # the ledger as of this cut: the writer runs while the next data files are trained
                meta = {**meta, "_ledger_at_cut": self.core.ledger.to_dict()}
            pause_ms = (time.perf_counter() - t0) * 1e3
            self.pauses_ms.append(pause_ms)
            step = self.core.step
            window = {"metrics": self._window_metrics().to_dict()}
            if self._picked_up_at is not None:
                window["freshness"] = {"newest_file_picked_up_at": self._picked_up_at}
            self._writer = threading.Thread(
                target=self._write,
                args=(cut_id, decision, step, arrays, meta, pause_ms, window),
                name="freshrec-version-writer",
                daemon=True,
            )
            self._writer.start()
        self.barrier()  # training resumes
        return True

    def after_idle(self) -> bool:
        """Every rank, while the stream waits for data files: if the last version's write failed (a transient
        store error; its changes stay pending), cut a version again now instead of waiting for the next data
        file, which may never come. Counts as a failed version like :meth:`after_file` (``max_failures`` in a
        row stop the run, which restarts from the last committed version). True when a version was cut."""
        retry = None
        if self.rank == 0:
            busy = self._writer is not None and self._writer.is_alive()
            retry = not busy and self._error is not None
        if not self.broadcast(retry):
            return False
        log.info("retrying the model version whose write failed while the stream waits for data files")
        return self.after_file(force=True)  # rank 0 reports (and clears) the failure before this cut

    def finish(self) -> None:
        """Every rank, at the end of a run (drained, idle, or stopped): a final version if anything was
        trained (or the data layer's state changed) since the last one, then wait until it is committed.

        The final version is the only one no later version can carry: when its write fails with a
        transient store error (:func:`versions.is_transient`: the store unreachable, EIO, ENOSPC; never a
        corrupt part or a fenced writer) it is cut again and retried, every rank together, with jittered
        exponential backoff, at most ``final_attempts`` times in all; then :meth:`wait` raises a clear error
        and the run exits non-zero (a restart resumes from the newest committed version)."""
        if self.rank == 0:
            self._join()  # the version in flight is committed (or failed: after_file/wait report it)
        need = self.core.step != self._cut_step
        if self.rank == 0:
            if self.data is not None:  # data-layer changes only (a refused file, a file of duplicates) count too
                need = need or self.data.dirty()
            if self._error is not None and is_transient(self._error):
                need = True  # the last version in flight failed: no later version would carry its changes
        need = bool(self.broadcast(need if self.rank == 0 else None))
        attempt = 1
        while need:
            self.after_file(force=True)  # rank 0 first reports (and clears) a failure before this cut
            delay = None
            if self.rank == 0:
                self._join()
                delay = self._final_retry_delay(attempt)
            delay = self.broadcast(delay)
            if delay is None:
                break
            time.sleep(delay)
            attempt += 1
        if self.rank == 0:
            self.wait()

    def _final_retry_delay(self, attempt: int) -> float | None:
        """Rank 0, after final attempt ``attempt``: seconds to wait before the next, or None (committed, a
        permanent error, or out of attempts: the error stays for :meth:`wait`)."""
        exc = self._error
        if exc is None:
            return None
        if not is_transient(exc) or attempt >= self.final_attempts:
            if is_transient(exc):
                self._error = FinalCommitError(
                    f"the final model version could not be committed in {attempt} attempts, the store "
                    f"stayed unavailable ({type(exc).__name__}: {exc}); the data files trained since version "
                    f"{self.last_version} are in no committed version: check the store, then run the stream "
                    f"again (it resumes from the newest committed version and trains them once)"
                )
                self._error.__cause__ = exc
            return None
        delay = min(self.retry_max_s, self.retry_base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        log.warning(
            "committing the final model version failed (attempt %d of %d, transient: %s: %s); retrying in %.2f s",
            attempt,
            self.final_attempts,
            type(exc).__name__,
            exc,
            delay,
        )
        self._error = None
        return delay

    def _write(
        self, cut_id: str, decision, step: int, arrays: dict, meta: dict, pause_ms: float, window: dict | None = None
    ) -> None:
        t_write = time.perf_counter()
        kind = decision.kind
        parent = self.last_version if kind == "delta" else None
        writer = None
        try:
            writer = self.store.begin(kind, parent=parent, step=step, meta=self.extra)
            parts = list(self.backend.write_cut(cut_id, self.url, writer.version, self.storage_options))
            feats = meta.pop("features", None)
            data = meta.pop("data", None)
            cut_ledger = meta.pop("_ledger_at_cut", None)
            parts += bundle.write_model(writer, (arrays, meta), feats, data)
            digest = writer.digest(parts)
            ledger = bundle.ledger_ref(data.summary) if data is not None else cut_ledger
            if self.orphan_guard is not None and self.orphan_guard.orphaned():  # the driver died meanwhile
                self.orphan_guard.on_orphan()
            manifest = writer.commit(
                parts,
                ledger=ledger,
                model_digest=digest,
                rows=bundle.model_rows(parts, kind),
                extra={"pause_ms": round(pause_ms, 3), "examples_trained": meta["examples_trained"], **(window or {})},
            )
            if data is not None:
                self.data.committed(data)
            self.backend.commit_cut(cut_id)
            self.policy.record(decision, step, time.time())
            self.last_version = manifest.version
            self._consecutive_failures = 0
            telemetry.record_version(manifest, pause_ms, time.perf_counter() - t_write)
            self.on_commit(manifest, pause_ms)
            self._gate(manifest.version)
            if decision.compact:  # a full version built from the store: the chain stays short, no pause
                self.last_version = self.store.compact(manifest.version).version
                self._gate(self.last_version)  # the same model: the same decision, unless its parts are bad
                self.store.gc(keep=self.policy.cfg.keep)  # retention: never a base a kept delta needs
        except BaseException as exc:
            self.failures += 1
            telemetry.record_version_failure()
            try:
                self.backend.abort_cut(cut_id)
                if writer is not None and not writer.done:
                    writer.abort()
            except Exception:
                log.exception("aborting a failed version")
            self._error = exc

    def _gate(self, version: int) -> None:
        """The publish gate on a committed version; its own failure (the store unreachable) leaves the
        version unpublished (the next one is judged again) and never fails the version."""
        try:
            d = self.publisher(version)
        except Exception:
            log.exception("the publish gate could not judge version %d: it stays unpublished", version)
            return
        self.decisions[version] = d
        while len(self.decisions) > KEEP_VERSIONS:  # a long run keeps the latest only (issue 21)
            del self.decisions[next(iter(self.decisions))]
        telemetry.record_gate(d, version)
        self._record_state()

    def state_sizes(self) -> dict[str, int]:
        """Entries held by the run's per-file/per-version structures (each bounded; issue 21)."""
        out = {"decisions": len(self.decisions), "pauses": len(self.pauses_ms)}
        ledger = getattr(self.core, "ledger", None)
        if ledger is not None and hasattr(ledger, "held"):
            held = ledger.held()
            out["ledger_objects"], out["ledger_compact"] = held["objects"], held["compact"]
        validator = getattr(self.core, "validator", None)
        if validator is not None:
            out["progressive_files"] = len(validator.files)
        data_validator = getattr(self.data, "validator", None)
        if data_validator is not None:
            out["file_reports"] = len(data_validator.report.per_file)
        return out

    def _record_state(self) -> None:
        try:
            telemetry.record_state(self.state_sizes())
        except Exception:  # a metric never fails a version
            log.exception("recording the state sizes")

    def wait(self) -> None:
        """Block until the version being written is committed (or raise its error)."""
        self._join()
        self._raise_writer_error()

    def _join(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None

    def _raise_writer_error(self) -> None:
        if isinstance(self._error, FinalCommitError):
            exc, self._error = self._error, None
            raise exc
        if self._error is not None:
            exc, self._error = self._error, None
            raise RuntimeError(
                f"writing a model version failed (its changes stay pending for the next one): "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def load_trainer(store_url: str, version: int | None = None, spec=None, storage_options: dict | None = None):
    """A :class:`trainer.local.LocalTrainer` holding committed ``version`` (default: the newest valid
    one) of a store: embeddings, dense state, statistics, ledger. It scores exactly as the run did.
    ``spec`` overrides the feature spec stored with the version (e.g. to point a side table elsewhere).
    Returns (trainer, manifest)."""
    from trainer.local import LocalTrainer
    from versions import NoSuchVersionError

    store = VersionStore(str(store_url), storage_options)

    def load(version: int):
        manifest = store.manifest(version)
        the_spec = spec
        if the_spec is None:
            try:
                the_spec = bundle.load_spec(manifest)
            except ValueError as exc:
                raise ValueError(f"{exc}: pass the spec explicitly") from None
        model_cfg, train_cfg, ps = bundle.configs(manifest)
        trainer = LocalTrainer(the_spec, model_cfg, train_cfg, ps)
        trainer.backend.restore(str(store_url), version, storage_options)
        arrays, meta = bundle.read_core(store, version)
        trainer.import_state(arrays, meta, ledger=bundle.read_ledger(store, version))
        trainer.import_features(*bundle.read_features(store, version))
        return trainer, manifest

    if version is not None:
        return load(version)
    newest, loaded = read_newest(store, load)  # the newest, under a restore lease: a gc beside cannot remove it
    if newest is None:
        raise NoSuchVersionError(None, store.versions())
    return loaded


read_features = bundle.read_features
version_extra = bundle.version_extra
