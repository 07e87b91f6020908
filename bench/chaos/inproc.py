"""A ``freshrec stream`` run in the harness's own process: the fault-free reference, without Ray.

    proc = InProcessStream(argv, log_path)       # argv: what follows ``freshrec`` on the command line
    proc.poll() -> None while it runs, then its exit status (0, or 1 with the traceback in log_path)

What runs is the real run, minus Ray: the CLI's own arguments parsed by the CLI's parser and its
own :class:`~trainer.config.TrainJob` (:func:`cluster.commands.train.cli_job`), the placement and
PS config :func:`trainer.run.run_ps_training` resolves, and then the Ray Train worker loop itself
(:func:`trainer.worker.train_loop_per_worker`) as its one worker, with its shards in this process
(``ps.placement`` in_process: what ``freshrec stream`` does with one worker). Only Ray Train's
own calls are answered here: the worker's context (rank 0 of 1), its device (CPU) and its final
``report``. So it trains the same bytes through the same code and writes the same run directory
and versions (metrics.jsonl, dead letters, ledger, model_digest) as a one-worker ``freshrec
stream`` whose shards live in the worker's process, but costs no Ray start and no Ray Train start
(25 s or more each).

Used for the reference run of a seed whose faulted run has one worker and its shards in the
worker's process (:class:`bench.chaos.harness.ChaosConfig`'s ``reference``): the two runs then run
one code path and must end with one ``model_digest``. A run with two workers (DDP) or shard actors
keeps a ``freshrec stream`` process as its reference. Optionally (``ChaosConfig.final_drain``) also
for the faulted run's final ``stream --drain`` (the drain_idempotent check), over the faulted run's
``faulty://`` store with its fault schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import traceback
from pathlib import Path

_ONE_AT_A_TIME = threading.Lock()  # ray.train's functions are patched process-wide while a run goes


@dataclasses.dataclass(frozen=True)
class _OneWorkerContext:
    """What the worker loop asks of ``ray.train.get_context()``."""

    def get_world_rank(self) -> int:
        return 0

    def get_world_size(self) -> int:
        return 1

    def get_local_rank(self) -> int:
        return 0

    def get_local_world_size(self) -> int:
        return 1

    def get_node_rank(self) -> int:
        return 0


def run_stream_in_process(argv: list[str], storage_options: dict | None = None) -> dict:
    """Run ``freshrec <argv>`` (a ``stream`` or ``train`` command) in this process as described above; returns
    the worker's final report. Raises what the run raised. ``storage_options``: the version store's (a
    ``faulty://`` store's fault schedule, which a ``freshrec stream`` process reads from its environment)."""
    import ray.train
    import ray.train.torch
    import torch

    from cluster.cli import build_parser
    from cluster.commands.options import run_config_from_args
    from cluster.commands.train import check_inputs, cli_job
    from trainer.backends import ps_config_for
    from trainer.run import _absolute, resolve_placement
    from trainer.runfiles import LocalRunChannel, RunPaths
    from trainer.worker import WorkerConfig, train_loop_per_worker

    args = build_parser().parse_args(argv)
    if args.command not in ("stream", "train"):
        raise ValueError(f"an in-process run is a stream or train command, got {args.command!r}")
    history, incoming = (args.history, args.incoming) if args.command == "stream" else (args.data, None)
    drain = args.drain if args.command == "stream" else True
    cfg, spec = run_config_from_args(args)
    check_inputs(history, incoming, drain)
    if cfg.workers != 1:
        raise ValueError(f"an in-process run has one worker, got workers={cfg.workers}")
    job = cli_job(args, cfg, spec, history, incoming, drain, getattr(args, "idle_timeout", None))
    # what run_ps_training resolves before it starts the workers (trainer/run.py)
    ps_cfg = ps_config_for(job.spec, job.train, job.ps, num_workers=1, model=job.model)
    placement = resolve_placement(ps_cfg.placement, 1)
    if placement != "in_process":
        raise ValueError(f"an in-process run hosts its shards in this process, got ps.placement={ps_cfg.placement}")
    ps_cfg = dataclasses.replace(ps_cfg, placement=placement)
    run_dir = Path(job.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    RunPaths(run_dir).stop.unlink(missing_ok=True)
    job = job.replace(
        run_dir=run_dir,
        history=_absolute(job.history),
        incoming=_absolute(job.incoming),
        store_url=job.store_url or str(RunPaths(run_dir).versions),
        storage_options=storage_options if storage_options is not None else job.storage_options,
    )
    reports: list[dict] = []
    threads = torch.get_num_threads()  # the worker loop sets one torch thread, as in a Ray Train worker
    with _ONE_AT_A_TIME, contextlib.ExitStack() as patches:
        from unittest import mock

        patches.enter_context(mock.patch.object(ray.train, "get_context", lambda: _OneWorkerContext()))
        patches.enter_context(mock.patch.object(ray.train.torch, "get_device", lambda: torch.device("cpu")))
        patches.enter_context(mock.patch.object(ray.train, "report", lambda metrics, *a, **k: reports.append(metrics)))
        try:
            train_loop_per_worker(WorkerConfig(job, ps_cfg, None, LocalRunChannel(run_dir)))
        finally:
            torch.set_num_threads(threads)
    return reports[-1] if reports else {}


class InProcessStream:
    """:func:`run_stream_in_process` in a thread, with the part of ``subprocess.Popen``'s interface the harness
    uses (``poll``, ``wait``, ``returncode``); what it prints and any traceback go to ``log_path``."""

    pid = None  # no process of its own: nothing to signal, no descendants

    def __init__(self, argv: list[str], log_path: Path, storage_options: dict | None = None) -> None:
        self.argv, self.log_path, self.storage_options = list(argv), Path(log_path), storage_options
        self.returncode: int | None = None
        self.report: dict = {}
        self._thread = threading.Thread(target=self._run, name="chaos-inprocess-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"in process: freshrec {' '.join(self.argv)}\n")
            log.flush()
            try:
                self.report = run_stream_in_process(self.argv, self.storage_options)
                log.write(f"done: {self.report}\n")
                self.returncode = 0
            except BaseException:
                log.write(traceback.format_exc())
                self.returncode = 1

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess

        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired(self.argv, timeout)
        return self.returncode
