"""The driver of a PS-mode run: the parameter server's shard actors and a Ray Train run over the data files.

Needs a running Ray (``cluster.ray_runtime.ensure_ray`` starts or joins one). The run directory is the
driver's: training rank 0 sends each data file's record, the ledger, its dead-letter lines and the final
dense state through a channel actor, and the driver writes them there and prints the per-file lines
(:mod:`trainer.runfiles`), so the workers may run on nodes with no disk in common with the driver.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from trainer import bundle
from trainer.backends import ps_config_for
from trainer.config import TrainJob
from trainer.failure import DataFileError, FailurePolicy, supervise
from trainer.runfiles import RunBook, RunPaths, create_run_channel, keep_metrics_of
from trainer.versioning import read_newest
from trainer.worker import WorkerConfig, train_loop_per_worker

__all__ = ["DataFileError", "RunResult", "TrainJob", "describe_ps", "resolve_placement", "run_ps_training"]


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: list[dict]
    files: int
    steps: int
    seconds: float
    resumed_from: int | None = None  # the version this run started from (None: from scratch)
    restarts: int = 0  # times the PS and the workers were restarted from the last version after a failure
    store_url: str | None = None


def _fit(trainer) -> None:
    """``trainer.fit()`` in a helper thread: Ray Train then leaves SIGINT to the caller (the CLI asks the
    workers to commit a final version; Ray Train's own handler would abort the run instead)."""
    import threading

    box: dict = {}

    def run() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="freshrec-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)  # short waits keep the main thread responsive to signals
    if "error" in box:
        raise box["error"]


def _absolute(path) -> str | None:
    """An absolute local path (Ray Train workers run in their own directory) or the URL as it is."""
    from trainer.data import storage

    if path is None:
        return None
    return str(path) if storage.is_url(str(path)) else str(Path(path).absolute())


def _failure_cause(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 600 else text[:600] + " ..."


def resolve_placement(placement: str, num_workers: int, has_client: bool = False, keep_ps: bool = False) -> str:
    """Where a run's shards live: ``ray`` (shard actors) or ``in_process`` (threads of the one worker's
    process). ``auto`` picks in_process for one worker unless the caller brings or keeps the shards."""
    if placement == "in_process" and (has_client or keep_ps):
        raise ValueError(
            "ps.placement=in_process puts the shards inside the training worker, so there is no "
            "client to pass in or keep: use placement ray (or auto) with client= or keep_ps=True"
        )
    if placement == "auto":
        return "in_process" if num_workers == 1 and not (has_client or keep_ps) else "ray"
    return placement


def describe_ps(ps, num_workers: int) -> str:
    """A run's parameter server in words, e.g. "2 shards in the worker's process (sync)"."""
    where = (
        "in the worker's process" if resolve_placement(ps.placement, num_workers) == "in_process" else "as Ray actors"
    )
    extra = f", pipeline depth {ps.pipeline_depth}" if ps.pipeline_depth else ""
    return f"{ps.num_shards} shard(s) {where} ({ps.mode}{extra})"


def newest_consumed(store) -> tuple[int | None, tuple[object | None, set[str]]]:
    """``(version, (manifest, consumed data files))`` of the store's newest valid version, read under a restore
    lease (:func:`trainer.versioning.read_newest`); ``(None, (None, set()))`` for an empty store."""

    def read(version: int):
        return store.manifest(version), {e.file for e in bundle.read_ledger(store, version).entries}

    version, got = read_newest(store, read)
    return version, (got if got is not None else (None, set()))


def run_ps_training(job: TrainJob, *, client=None, on_file=None, on_event=None):
    """Start the PS (unless ``client`` is given) and a Ray Train run over the data files of ``job``.

    With ``job.versions`` (the default) model versions go to ``job.store_url`` (default
    ``RUN_DIR/versions``) at the data-file boundaries ``job.snapshots`` picks, and a run directory
    that holds committed versions resumes from the newest valid one. Each failure of the worker
    group goes to a :class:`trainer.failure.FailurePolicy`: a shard actor or a worker that died
    restarts the PS and the workers from the last committed version, up to ``job.max_restarts``
    times (nothing is lost or applied twice); a data file that stopped a worker raises
    :class:`trainer.failure.DataFileError` with its report. ``on_file(i, record)`` is called in the
    driver as each data file is done, ``on_event(text)`` for resumes and restarts. Returns
    ``(RunResult, client)``; the PS is shut down unless ``job.keep_ps``. With ``ps.placement`` auto and
    one worker (or in_process) the shards live in the worker's process and the returned client is None.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from paramserver import create_parameter_server
    from versions import VersionStore

    if not ray.is_initialized():
        raise RuntimeError("run_ps_training needs a running Ray: call cluster.ray_runtime.ensure_ray() first")
    if not isinstance(job, TrainJob):
        raise TypeError(f"run_ps_training takes a trainer.config.TrainJob, got {type(job).__name__}")
    on_event = on_event or (lambda text: None)
    run_dir = job.run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(run_dir)
    paths.stop.unlink(missing_ok=True)
    resumed_from, store, store_url = None, None, None
    if job.versions:
        store_url = job.store_url or str(paths.versions)
        store = VersionStore(store_url, job.storage_options)
        # the newest version and its consumed files, read under a restore lease: a gc beside the restart (an
        # operator's, or a compaction's keep) cannot remove it mid-read (the workers lease it again to restore)
        resumed_from, (manifest, consumed_at_start) = newest_consumed(store)
        if resumed_from is not None:
            on_event(
                f"resuming from version {resumed_from} (step {manifest.step}, {bundle.ledger_totals(manifest)[0]} data "
                f"files consumed, committed {manifest.committed_at_iso})"
            )
    else:
        for stale in (paths.metrics, paths.ledger):
            stale.unlink(missing_ok=True)
        consumed_at_start = set()

    def follow_from(consumed: set[str]) -> RunBook:
        """Apply rank 0's records to the run directory, from the records of the ``consumed`` data files (those
        of the version the run resumes from) on (later files are replayed)."""
        book = RunBook(channel, paths, on_file or (lambda i, rec: None), skip=keep_metrics_of(paths.metrics, consumed))
        book.start()
        return book

    num_workers = job.num_workers
    ps_cfg = ps_config_for(job.spec, job.train, job.ps, num_workers=num_workers, model=job.model)
    ps_cfg = dataclasses.replace(
        ps_cfg, placement=resolve_placement(ps_cfg.placement, num_workers, client is not None, job.keep_ps)
    )
    in_worker = ps_cfg.placement == "in_process"  # the one worker hosts the shards (and restores them)
    if client is None and not in_worker:
        client = create_parameter_server(ps_cfg)
    # Ray Train workers run in their own working directory: hand them absolute paths
    resolved = job.replace(
        run_dir=run_dir, history=_absolute(job.history), incoming=_absolute(job.incoming), store_url=store_url
    )
    use_gpu = torch.cuda.is_available()  # NCCL for the dense all-reduce on GPUs, gloo on CPU
    # rank 0 -> this driver's run directory (and STOP back); made once the shards are laid out over the nodes
    channel = create_run_channel()
    box = {"client": client, "follower": follow_from(consumed_at_start)}

    def attempt(i: int):
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=WorkerConfig(resolved, ps_cfg, box["client"], channel),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=None if use_gpu else {"CPU": 1}
            ),
            run_config=ray.train.RunConfig(storage_path=str(run_dir / "ray"), name=f"train-{i}"),
        )
        _fit(trainer)

    def restart(exc: BaseException, decision) -> None:
        on_event(
            f"training failed ({_failure_cause(exc)}); restart {decision.restart}/{job.max_restarts}: new shard "
            f"actors and workers resume from the last committed version"
        )
        if not in_worker:  # in_process: the new worker starts new shards itself
            box["client"].shutdown()
            box["client"] = create_parameter_server(ps_cfg)
        box["follower"].stop()
        box["follower"] = follow_from(newest_consumed(store)[1][1])

    policy = FailurePolicy(job.max_restarts, can_restart=store_url is not None)
    t0 = time.perf_counter()
    try:
        supervise(attempt, policy, restart)
    finally:
        box["follower"].stop()
        ray.kill(channel)
        if not job.keep_ps and box["client"] is not None:
            box["client"].shutdown()
    client = box["client"]
    seconds = time.perf_counter() - t0
    metrics = [json.loads(line) for line in paths.metrics.read_text().splitlines()] if paths.metrics.exists() else []
    steps = metrics[-1]["step"] if metrics else 0
    result = RunResult(run_dir, metrics, len(metrics), steps, seconds, resumed_from, policy.restarts, store_url)
    return result, client
