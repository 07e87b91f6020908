"""The driver of a PS-mode run: the parameter server's shard actors and a Ray Train run over the data files.

Needs a running Ray (``cluster.ray_runtime.ensure_ray`` starts or joins one). The driver
tails the run's metrics for live per-file lines while the workers train.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from trainer.backends import ps_config_for
from trainer.config import ModelConfig, PSOptions, TrainConfig
from trainer.runfiles import MetricsFollower, RunPaths
from trainer.worker import train_loop_per_worker


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: list[dict]
    files: int
    steps: int
    seconds: float


def run_ps_training(spec, model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, *,
                    ps: PSOptions | None = None, history: Path | None = None, incoming: Path | None = None,
                    drain: bool = True, num_workers: int = 1, client=None, idle_timeout_s: float | None = None,
                    keep_ps: bool = False, on_file=None):
    """Start the PS (unless ``client`` is given) and a Ray Train run over the data files.

    ``on_file(i, record)`` is called in the driver as each data file is done (progress lines).
    Returns ``(RunResult, client)``; the PS is shut down unless ``keep_ps``.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from paramserver import create_parameter_server

    if not ray.is_initialized():
        raise RuntimeError("run_ps_training needs a running Ray: call cluster.ray_runtime.ensure_ray() first")
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(run_dir)
    for stale in (paths.metrics, paths.ledger):
        stale.unlink(missing_ok=True)
    if client is None:
        client = create_parameter_server(ps_config_for(spec, train_cfg, ps, num_workers=num_workers))
    # Ray Train workers run in their own working directory: hand them absolute paths
    config = {"spec": spec, "model_cfg": model_cfg, "train_cfg": train_cfg, "client": client, "run_dir": str(run_dir),
              "history": str(Path(history).absolute()) if history else None,
              "incoming": str(Path(incoming).absolute()) if incoming else None,
              "drain": drain, "idle_timeout_s": idle_timeout_s}
    use_gpu = torch.cuda.is_available()  # NCCL for the dense all-reduce on GPUs, gloo on CPU
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=None if use_gpu else {"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(run_dir / "ray"), name="train"),
    )
    follower = MetricsFollower(paths.metrics, on_file or (lambda i, rec: None))
    follower.start()
    t0 = time.perf_counter()
    try:
        trainer.fit()
    finally:
        follower.stop()
        if not keep_ps:
            client.shutdown()
    seconds = time.perf_counter() - t0
    metrics = [json.loads(line) for line in paths.metrics.read_text().splitlines()] if paths.metrics.exists() else []
    steps = metrics[-1]["step"] if metrics else 0
    return RunResult(run_dir, metrics, len(metrics), steps, seconds), client
