"""PS-mode training: the model's dense part in each Ray Train worker (DDP), embedding rows in
the parameter server, pulled and pushed through :class:`paramserver.PSClient`.

One step of worker ``r`` of ``W`` on global minibatch ``k`` (rows [k*B, (k+1)*B) of the shard,
split in W nearly equal parts, part r for worker r)::

    ids {table: int64 [b_r]} ─► client.pull_many(step=s) ─► rows {table: [b_r, dim]} (leaf tensors)
    loss_r = W * sum(BCE over the b_r rows) / B_k           (B_k: rows of global minibatch k)
    loss_r.backward()      dense grads: DDP averages over W  -> mean over the global minibatch
    client.push_many({table: (ids, row_grads / W)}, step=s)  shards sum W pushes -> the same
    dense_optimizer.step()

With W=1 this is exactly :class:`trainer.local.LocalTrainer`'s update (the sync-mode test
checks parameters agree within 1e-6). Dense features are normalised with running stats that
every worker updates from the whole shard (each worker reads the whole shard: shards are
small time windows, and this keeps the stats identical without communication). Progressive
validation: rank 0 scores the whole shard before anyone trains on it.

Sync mode: a pull for step s can only be answered once every worker's push of step s-1 is
applied, so each step makes ONE round trip per shard, ``push_pull`` (push step s, pull the
rows of step s+1). Async mode: the next minibatch's rows are prefetched before the current
one is computed (staleness 1, within the PS's bound) and pushes are not waited for until
four are in flight.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from common.config import ConfigError
from trainer.config import ModelConfig, Strategy, TrainConfig
from trainer.data import DataLedger, EventBatch, RunningStats
from trainer.local import dense_optimizer, normalize_dense, score_minibatches
from trainer.data.follow import follow_data_files
from trainer.metrics import FileMetrics, ProgressiveValidator
from trainer.model import build_model
from trainer.strategies import Action, fuse, make_policy


class PSTrainerCore:
    """The per-worker training logic; hosts no Ray Train calls (the loop below does)."""

    def __init__(self, spec, model_cfg: ModelConfig, train_cfg: TrainConfig, client, rank: int = 0,
                 world: int = 1, wrap_model=None, device: torch.device | None = None) -> None:
        self.spec, self.cfg, self.client = spec, train_cfg, client
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self.model: torch.nn.Module = build_model(spec, model_cfg, train_cfg.seed).to(self.device)
        if wrap_model is not None:
            self.model = wrap_model(self.model)
        self.stats = RunningStats(len(spec.dense))
        self.optimizer = dense_optimizer(self.model.parameters(), train_cfg)
        self.validator = ProgressiveValidator()
        self.step = 0  # the sync step counter, identical on every worker
        self.examples_trained = 0
        self.async_mode = client.cfg.mode == "async"
        if train_cfg.strategy is Strategy.FULL_RETRAIN:
            raise ConfigError("train.strategy=full_retrain is the baseline of `freshrec bench quality`, not a PS "
                              "mode: use online, periodic or fusion")
        self.policy = make_policy(train_cfg)
        self._recent: dict[int, EventBatch] = {}  # shards a periodic update may revisit
        self._shards_seen = 0

    def _normalize(self, dense: np.ndarray) -> np.ndarray:
        return normalize_dense(self.stats, dense, self.cfg.dense_clip)

    def score(self, batch: EventBatch) -> np.ndarray:
        """Probabilities for ``batch``; in sync mode reads once every step so far is applied."""
        step = None if self.async_mode else self.step

        def lookup(ids: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(v) for k, v in self.client.wait(self.client.pull_many(ids, step=step)).items()}

        return score_minibatches(self.model, self._normalize(batch.dense), batch.sparse, lookup, self.device)

    def _parts(self, n: int) -> list[np.ndarray]:
        """This worker's row indices of each global minibatch (possibly empty)."""
        bs = self.cfg.batch_size
        return [np.array_split(np.arange(lo, min(lo + bs, n)), self.world)[self.rank] for lo in range(0, n, bs)]

    def train(self, batch: EventBatch) -> dict[str, float]:
        t0 = time.perf_counter()
        self.stats.update(batch.dense)
        dense = torch.from_numpy(self._normalize(batch.dense)).to(self.device)
        labels = torch.from_numpy(np.ascontiguousarray(batch.label, np.float32)).to(self.device)
        n, bs = len(batch), self.cfg.batch_size
        parts = self._parts(n)
        self.model.train()
        client, world = self.client, self.world
        step0 = self.step

        def ids_of(k: int) -> dict[str, np.ndarray]:
            return {t: v[parts[k]] for t, v in batch.sparse.items()}

        ticket = client.pull_many(ids_of(0), step=step0) if parts else None
        pending = []  # push tickets not yet waited for
        total_loss = 0.0
        for k, idx in enumerate(parts):
            rows = client.wait(ticket)
            last = k + 1 == len(parts)
            if self.async_mode and not last:
                ticket = client.pull_many(ids_of(k + 1), step=step0 + k + 1)  # prefetch during this step
            emb = {t: torch.from_numpy(r).to(self.device).requires_grad_(True) for t, r in rows.items()}
            n_global = min(bs, n - k * bs)
            ti = torch.from_numpy(idx).to(self.device)
            logits = self.model(emb, dense[ti])
            loss_sum = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[ti], reduction="sum")
            loss = loss_sum * (world / n_global)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = {t: (batch.sparse[t][idx], (e.grad.cpu().numpy() / world).astype(np.float32, copy=False))
                     for t, e in emb.items()}
            if self.async_mode or last:
                pending.append(client.push_many(grads, step=step0 + k))
            else:  # sync: one round trip per shard pushes step k and brings step k+1's rows
                ticket = client.push_pull(grads, ids_of(k + 1), step=step0 + k)
            self.optimizer.step()
            total_loss += float(loss_sum.detach())
            while len(pending) > 4 or (last and pending):  # bound what is in flight; errors surface here
                client.wait(pending.pop(0))
        self.step = step0 + len(parts)
        self.examples_trained += n
        seconds = time.perf_counter() - t0
        return {"examples": n, "seconds": seconds, "loss": total_loss}

    def step_file(self, batch: EventBatch, name: str) -> FileMetrics | None:
        """Progressive validation (rank 0 scores the whole shard first), then the update the
        strategy decides (online: this shard once; periodic: the last W shards every P-th
        shard; fusion: online, then theta = lambda * theta_new + (1 - lambda) * theta_prev)."""
        metrics = None
        i = self._shards_seen
        self._shards_seen += 1
        if self.rank == 0:
            self.validator.record(name, batch.label, self.score(batch))
        decision = self.policy.decide(i)
        self._recent[i] = batch
        keep = getattr(self.policy, "window", 1)
        for old in [j for j in self._recent if j <= i - keep]:
            del self._recent[old]
        seconds, self.last_trained = 0.0, 0
        if decision.action is Action.TRAIN and decision.shards:
            prev = self.dense_state() if decision.fuse_lambda is not None else None
            todo = EventBatch.concat([self._recent[j] for j in decision.shards])
            seconds = self.train(todo)["seconds"]
            self.last_trained = len(todo)
            if prev is not None:
                self._model().load_state_dict(fuse(self.dense_state(), prev, decision.fuse_lambda))
        if self.rank == 0:
            self.validator.set_train_seconds(seconds)
            metrics = self.validator.files[-1]
        return metrics

    def _model(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)  # unwrap DDP

    def dense_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._model().state_dict().items()}


@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.json"

    @property
    def dead_letter(self) -> Path:
        return self.root / "dead-letter.jsonl"

    @property
    def dense(self) -> Path:
        return self.root / "dense.pt"


class MetricsFollower(threading.Thread):
    """Tails a run's metrics.jsonl in the driver and hands each new record to ``on_record``."""

    def __init__(self, path: Path, on_record, poll_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="freshrec-metrics")
        self.path, self.on_record, self.poll_s = path, on_record, poll_s
        self._stop_event = threading.Event()
        self._seen = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.drain()
            self._stop_event.wait(self.poll_s)

    def drain(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        complete = text[: text.rfind("\n") + 1].splitlines()  # a line still being written waits
        for line in complete[self._seen:]:
            self._seen += 1
            self.on_record(self._seen, json.loads(line))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.drain()


def train_loop_per_worker(config: dict) -> None:
    """The Ray Train loop: every worker follows the same shards; rank 0 keeps the books."""
    import ray.train
    import ray.train.torch

    from trainer.data import DeadLetterWriter, Validator, read_data_file

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(config["train_cfg"].seed)
    torch.set_num_threads(1)
    client = config["client"].for_rank(rank)
    wrap = ray.train.torch.prepare_model if world > 1 else None
    core = PSTrainerCore(config["spec"], config["model_cfg"], config["train_cfg"], client, rank, world, wrap,
                         device=ray.train.torch.get_device())
    paths = RunPaths(Path(config["run_dir"]))
    ledger = DataLedger()
    dead = DeadLetterWriter(paths.dead_letter if rank == 0 else None)
    validator = Validator(config["spec"], dead)
    history = Path(config["history"]) if config.get("history") else None
    incoming = Path(config["incoming"]) if config.get("incoming") else None
    n = 0
    for shard in follow_data_files(history, incoming, ledger, config["drain"], idle_timeout_s=config.get("idle_timeout_s")):
        before = validator.report.rows_in
        batch = read_data_file(shard, validator)
        metrics = core.step_file(batch, shard.name)
        ledger.record(shard, validator.report.rows_in - before, complete=validator.last_file.complete)
        n += 1
        if rank == 0:
            cum = core.validator.cumulative()["auc"]
            rate = core.last_trained / metrics.train_seconds if metrics.train_seconds > 0 else float("nan")
            record = {**dataclasses.asdict(metrics), "examples_trained": core.last_trained, "examples_per_s": rate,
                      "cumulative_auc": cum,
                      "ledger_rows": ledger.total_rows, "wall_time": time.time()}
            with open(paths.metrics, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            tmp = paths.ledger.with_suffix(".tmp")
            tmp.write_text(ledger.to_json())
            tmp.replace(paths.ledger)
    dead.close()
    if rank == 0:
        torch.save({"dense": core.dense_state(), "stats": core.stats.state_dict(), "steps": core.step}, paths.dense)
    ray.train.report({"shards": n, "steps": core.step, "examples": core.examples_trained})


@dataclasses.dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: list[dict]
    shards: int
    steps: int
    seconds: float


def run_ps_training(spec, model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: Path, *,
                    history: Path | None = None, incoming: Path | None = None, drain: bool = True,
                    num_workers: int = 1, num_shards: int = 2, mode: str = "sync", client=None,
                    idle_timeout_s: float | None = None, keep_ps: bool = False, on_shard=None):
    """Start the PS (unless ``client`` is given) and a Ray Train run over the shards.

    ``on_shard(i, record)`` is called in the driver as each shard is done (for progress lines). Returns ``(RunResult, client)``; the PS is shut down unless ``keep_ps``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.ray_runtime import ensure_ray
    from paramserver import create_parameter_server
    from trainer.embeddings import ps_config_for

    ensure_ray()
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (RunPaths(run_dir).metrics, RunPaths(run_dir).ledger):
        stale.unlink(missing_ok=True)
    if client is None:
        client = create_parameter_server(ps_config_for(spec, train_cfg, num_shards=num_shards, num_workers=num_workers,
                                                       mode=mode))
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
    follower = MetricsFollower(RunPaths(run_dir).metrics, on_shard or (lambda i, rec: None))
    follower.start()
    t0 = time.perf_counter()
    try:
        trainer.fit()
    finally:
        follower.stop()
    seconds = time.perf_counter() - t0
    paths = RunPaths(run_dir)
    metrics = [json.loads(line) for line in paths.metrics.read_text().splitlines()] if paths.metrics.exists() else []
    steps = int(torch.load(paths.dense)["steps"]) if paths.dense.exists() else 0
    out = RunResult(run_dir, metrics, len(metrics), steps, seconds)
    if not keep_ps:
        client.shutdown()
    return out, client
