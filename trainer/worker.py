"""The Ray Train worker loop: every worker follows the same data files through one TrainerCore.

Rank 0 follows the data files and reads each one ONCE; it broadcasts the file with its bytes,
so every worker validates the same bytes (files are small time windows; validating them all
keeps the feature statistics and the data layer's state identical without communication),
trains on its part of every global minibatch, and pushes/pulls rows through its rank's
parameter-server client. A file whose bytes changed after it was consumed is refused: recorded
in the ledger with status ``changed``, dead-lettered with reason ``changed after consumption``,
counted (``freshrec_trainer_dead_letters_total``) and logged; never trained. Rank 0 scores
each file first (progressive validation) and keeps the books: each file's metrics record, the
ledger, the dead-letter lines and, at a clean end, the dense state go to the driver through Ray
(:mod:`trainer.runfiles`), which writes them into ITS run directory (rank 0 may be on a node with
no disk in common); a stop request comes back the same way. Data URLs are opened with the run's
``storage_options``. With a version store, every rank first restores the newest valid version
(rank 0 restores the shards), and a version is cut at the data-file boundaries the snapshot
policy picks (:mod:`trainer.versioning`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch

from common.memory import MemoryHousekeeping
from paramserver.config import PSConfig
from trainer.config import TrainJob
from trainer.core import TrainerCore
from trainer.data import DeadLetterWriter, Validator, check_file_report, read_data_file
from trainer.data.follow import IdleTick, follow_data_files
from trainer.data.reasons import CHANGED_FILE
from trainer.data.state import DataState
from trainer.runfiles import LedgerCopy, LocalRunChannel, RankZeroFiles
from trainer.telemetry import record_file
from trainer.versioning import VersionKeeper, collectives

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """What every Ray Train worker of a run gets (its ``train_loop_config``).

    job: the run (:class:`trainer.config.TrainJob`) with absolute paths and its store URL resolved (None:
    no versions). ps_cfg: the parameter server's config, tables included (placement resolved).
    client: the driver's PS client (shard actors; each rank takes ``client.for_rank(rank)``), or None
    when the shards live in the (one) worker's process (``ps.placement`` in_process).
    channel: the driver's :class:`trainer.runfiles.RunChannel` actor (rank 0 sends the run directory's
    files through it; every rank's stop decision comes from it through rank 0).
    """

    job: TrainJob
    ps_cfg: PSConfig
    client: Any = None
    channel: Any = None


def train_loop_per_worker(config: WorkerConfig) -> None:
    import ray.train
    import ray.train.torch

    from trainer.data import storage

    if config.channel is None:
        raise ValueError("WorkerConfig.channel is None: trainer.run.run_ps_training makes the run's channel")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config.job.train.seed)
    torch.set_num_threads(1)
    if config.client is not None:
        client = config.client.for_rank(rank)
    else:  # ps.placement in_process: this (only) worker hosts the shards; rank 0 restores them below
        from paramserver import create_parameter_server

        client = create_parameter_server(config.ps_cfg, placement="in_process")
    try:
        with storage.storage_options(config.job.storage_options):  # the data URLs' fsspec options
            _train(config.job, rank, world, client, _rank_zero_files(config.channel) if rank == 0 else None)
    finally:
        if config.client is None:
            client.shutdown()


def _rank_zero_files(channel) -> RankZeroFiles:
    """Rank 0's side of the run channel: the driver's RunChannel actor, or a LocalRunChannel (no Ray)."""
    return channel.files() if isinstance(channel, LocalRunChannel) else RankZeroFiles(channel)


def _train(job: TrainJob, rank: int, world: int, client, book: RankZeroFiles | None) -> None:
    import ray.train
    import ray.train.torch

    spec = job.spec
    wrap = ray.train.torch.prepare_model if world > 1 else None
    core = TrainerCore(
        spec,
        job.model,
        job.train,
        client,
        rank=rank,
        world=world,
        wrap_model=wrap,
        device=ray.train.torch.get_device(),
    )
    dead = book.dead_letters() if book is not None else DeadLetterWriter(None)
    validator = Validator(spec, dead, stream=True)  # late events: the spec's lateness policy
    data_state = DataState(validator, lambda: core.ledger)  # saved with every version, restored with it
    history, incoming = job.history, job.incoming  # absolute paths or fsspec URLs
    barrier, broadcast = collectives(world)
    keeper = None
    if job.store_url:
        keeper = VersionKeeper(
            job.store_url,
            client,
            core,
            job.snapshots,
            storage_options=job.storage_options,
            extra=job.version_extra,
            barrier=barrier,
            broadcast=broadcast,
            publish=job.publish,
            data=data_state,
        )
    restored = keeper.restore(reread=lambda name: _reread(name, history, incoming, spec)) if keeper else None
    memory = MemoryHousekeeping()  # FRESHREC_MALLOC_TRIM / _MEMORY_PROBE / _TRACEMALLOC (common/memory.py)
    files = 0
    # history_epochs > 1, or auto (until the history is long enough). Crash-consistent: no version is cut while
    # the extra passes are still due (the history's first pass, unsettled), so a run restored from a version has
    # either made its passes (the version after them) or settled on one pass before it: it never starts them
    # again, and a crash before then restarts the cold start from the beginning, as the uninterrupted run went.
    extra_epochs = restored is None and not job.train.history_done([])
    history_batches: list = []  # train.history_epochs: the history files of this run, for the extra passes
    ledger_copy = LedgerCopy(book) if rank == 0 else None  # RUN_DIR/ledger.json, bounded in cost per file
    for ref in _followed(rank, broadcast, job, core.ledger, book):
        if isinstance(ref, IdleTick):  # waiting for files: a version whose write failed is cut again now
            if keeper is not None:
                keeper.after_idle()
            if ledger_copy is not None:  # and RUN_DIR/ledger.json is brought up to date
                ledger_copy.flush(core.ledger)
            continue
        from_history = extra_epochs and _is_under(ref, history)
        if history_batches and not from_history:  # the history is done: its extra passes, then a version
            _history_passes(core, history_batches, keeper)
            history_batches = []
        picked_up_at = time.time()  # rank 0: the data file has landed and was taken (freshness starts)
        keep = (lambda batch, kept=history_batches: kept.append(core.with_features(batch))) if from_history else None
        taken = consume(ref, core, validator, dead, spec.max_dead_share, keep)
        if taken is None:  # refused: nothing trained
            continue
        report, metrics = taken
        if from_history and job.train.history_done([len(b) for b in history_batches]):
            extra_epochs, history_batches = False, []  # auto: one pass will do, whatever follows: keep no more
        files += 1
        if rank == 0:
            rate = core.last_trained / metrics.train_seconds if metrics.train_seconds > 0 else float("nan")
            record = {
                **dataclasses.asdict(metrics),
                "examples_trained": core.last_trained,
                "examples_per_s": rate,
                "dropped_pushes": core.dropped_pushes,
                "cumulative_auc": core.validator.cumulative()["auc"],
                "ledger_rows": core.ledger.total_rows,
                "rows_dead": report.rows_dead,
                "rows_late": report.rows_late,
                "warnings": list(report.warnings)
                + ([] if report.complete else [report.unreadable or "not read to its end: retried when it changes"]),
                "step": core.step,
                "picked_up_at": picked_up_at,
                "wall_time": time.time(),
            }
            book.file_done(record, ledger_copy.due(core.ledger), dead)  # on the driver's disk before we go on
            record_file(record, report)  # Prometheus series through Ray's metrics
        stop = broadcast(book.stop_requested() if rank == 0 else None)  # one decision for every rank
        passes_due = extra_epochs and from_history  # the history's first pass, extra passes to come: no version
        if keeper is not None and not passes_due:
            keeper.after_file(force=bool(stop), picked_up_at=picked_up_at if rank == 0 else None)
        memory.after_version(files)
        if stop:
            # stopped before the extra passes: they are not started and no version holds the history (nor does the
            # final one below), so a restart begins the cold start again (small: at most history_steps steps, auto)
            abandoned, history_batches = passes_due, []
            break
    else:
        abandoned = False
    if history_batches:  # a run of history only (`freshrec train --data`)
        _history_passes(core, history_batches, keeper)
    dead.close()
    if keeper is not None and not abandoned:
        keeper.finish()
    if rank == 0:
        ledger_copy.flush(core.ledger)
        book.dense(core.state_dict())
    ray.train.report(
        {
            "files": files,
            "steps": core.step,
            "examples": core.examples_trained,
            "version": keeper.last_version if keeper else None,
        }
    )


def consume(ref, core, validator, dead, max_dead_share: float, keep=None):
    """Every rank: take one data file (a DataFileRef carrying its bytes) into ``core``: validate the bytes,
    train on the good rows (after the rows an earlier partial read took), record it in the ledger.
    ``keep(batch)``, if given, sees the validated batch before it is trained (the history's extra passes).
    Returns (FileReport, FileMetrics or None off rank 0), or None for a refused file (nothing trained)."""
    if ref.refused:
        _refuse(ref, core, dead, core.rank)
        return None
    partial = core.ledger.partial(ref.name)  # an earlier read stopped part-way: go on after its rows
    skip = partial.rows if partial is not None else 0
    batch = read_data_file(ref, validator, skip_rows=skip)
    report = check_file_report(validator.last_file, max_dead_share)
    if keep is not None:
        keep(batch)
    metrics = core.step_file(batch, ref, rows_read=skip + report.rows_in, complete=report.complete)
    return report, metrics


def _refuse(ref, core, dead, rank: int) -> None:
    """A data file whose bytes changed after it was consumed: in the ledger (every rank), dead-lettered,
    counted and logged (rank 0); never trained."""
    from common.metrics import record

    core.ledger.refuse(ref, ref.refused)
    if rank != 0:
        return
    taken = [e.sha256 for e in core.ledger.consumed(ref.name, ref.source)]
    detail = (
        f"{ref.name} now has sha256 {ref.sha256} ({ref.size} bytes); the file consumed under this name had "
        f"{', '.join(str(t) for t in taken)}: a data file must not change after it lands (write under an "
        "in-progress name, then rename); publish new rows as a new file"
    )
    dead.write(ref.path, [0], [CHANGED_FILE], [detail], [""])
    record("freshrec_trainer_dead_letters_total", 1, reason=CHANGED_FILE)
    log.warning("data file refused (%s): %s", CHANGED_FILE, detail)


IDLE_TICK_S = 2.0  # while a stream waits for files: how often the ranks meet to retry a failed version


def _followed(rank: int, broadcast, job: TrainJob, ledger, book: RankZeroFiles | None):
    """The data files to train on, in the same order on every rank: rank 0 follows the directories
    and broadcasts each file (None: the end, also on a stop request while it waits for files; an
    :class:`IdleTick` every ``IDLE_TICK_S`` while it waits, when the run keeps versions)."""
    files = None
    if rank == 0:
        files = follow_data_files(
            job.history,
            job.incoming,
            ledger,
            job.drain,
            idle_timeout_s=job.idle_timeout_s,
            stop=book.stop_requested,
            idle_tick_s=IDLE_TICK_S if job.store_url else None,
        )
    while True:
        ref = next(files, None) if rank == 0 else None
        ref = broadcast(ref)
        if ref is None:
            return
        yield ref


def _is_under(ref, directory) -> bool:
    """Whether data file ``ref`` was found in ``directory`` (the history), not in the incoming one."""
    if directory is None:
        return False
    return str(getattr(ref, "path", ref)).startswith(str(directory).rstrip("/") + "/")


def _history_passes(core: TrainerCore, batches: list, keeper) -> None:
    """``train.history_passes - 1`` more passes over the history files of this run, training only (shuffled,
    seeded: the same on every rank), then a version that holds them: the first version of the run, since no
    version is cut while the passes are due. A run restarted after it does not repeat them; one restarted before
    it (a crash during the history or the passes) has no version and starts the cold start again
    (docs/training.md, "Cold start")."""
    from trainer.strategies import history_decision

    core.apply_decision(history_decision(core.cfg, len(batches), [len(b) for b in batches]), dict(enumerate(batches)))
    if keeper is not None:
        keeper.after_file(force=True)


def _reread(name: str, history, incoming, spec):
    """A data file a periodic update may revisit after a restore, read again by name."""
    from trainer.data import storage

    for d in (history, incoming):
        if d is not None:
            path = storage.join(str(d), name)
            if storage.exists(path):
                return read_data_file(path, Validator(spec))
    raise FileNotFoundError(f"data file {name} of the restored strategy state is in neither {history} nor {incoming}")
