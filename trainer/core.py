"""The training core: ONE implementation of scoring, training and update strategies for every mode.

It holds everything a model version needs except the embedding rows: the dense parameters
and their optimizer state, the feature statistics, the strategy state (which data files a
periodic update may revisit, counters), the step counter and the data ledger. The rows live
in an embedding backend (:mod:`trainer.backends`): in-process FBGEMM (local mode, the
quality benchmark) or the parameter-server client (Ray Train workers).

One training step of worker ``r`` of ``W`` on global minibatch ``k`` (rows [k*B, (k+1)*B) of
the batch, split in W nearly equal parts, part r of b_r rows for worker r)::

    kjt_r = the part's sparse features (TorchRec KeyedJaggedTensor)
    rows  = backend.wait(ticket_k)                   pulled (sync: once step k-1 is applied everywhere)
    ebc.stage(rows) ; logits = model(dense_r, kjt_r)
    loss_r = mean BCE over the b_r rows * (W * b_r / B_k)     (exactly the mean when W = 1)
    loss_r.backward()        dense grads: DDP averages over W -> the mean over the global minibatch
    ticket_k+1 = backend.push_pull(grads / W, ids of k+1, step=k)   one round trip (sync)
    dense_optimizer.step()

Sync mode pushes step k and pulls step k+1 in one call per shard (the shards answer once all
W pushes of step k are applied). Async mode prefetches step k+1's rows before computing step
k and keeps up to four pushes in flight. Progressive validation: rank 0 scores each data file
with the current model before anyone trains on it.

Rules every backend follows, so that local and sync-PS runs end with the same parameters:
``train(batch)`` first folds ``batch.dense`` into the running statistics (training data only;
scoring never changes them), normalises the whole batch (clipped to +-dense_clip), then walks
minibatches in order (or in a permutation seeded by (seed, epoch, examples trained so far)).
A new id's row is ``paramserver.init_rows(table, id, seed)`` with zero optimizer state, created
the first time the id is pulled (scoring included).

Scoring (``score``: progressive validation, evaluation, a serving replica) reads rows like a training step but
stages nothing: freshrec's DLRM is scored without a KJT (:class:`_PooledPlan`: each table's ids and pooled rows
straight from the batch's numpy columns, into the model's ``forward_pooled``), the same ops on the same values as the
KJT path, so the same bits; TorchRec's archs take the KJT path.

Dynamic features (a spec's ``dynamic:`` section, :mod:`trainer.features`): ``step_file`` computes
each event's features from strictly earlier events (the state plus the file's earlier events),
scores and trains on them, and folds the file into the state; ``score`` of a batch without them
(candidates, a serving request) reads the state only; ``train`` never changes the state. The
state is data-derived, not learned: ``reset`` keeps it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import PoolingType

from common.config import ConfigError
from trainer.config import ModelConfig, Strategy, TrainConfig
from trainer.data import DataLedger, EventBatch, RunningStats
from trainer.features import DynamicFeatures
from trainer.metrics import FileMetrics, ProgressiveValidator
from trainer.model import DLRM, build_model
from trainer.sparse import WIDE_SUFFIX, BackendEmbeddingBagCollection, batch_to_kjt, find_collection, take_jagged
from trainer.strategies import Action, Decision, fuse, make_policy

SCORE_BATCH = 8192
MAX_PUSHES_IN_FLIGHT = 4


# the dense optimizer steps every parameter in one multi-tensor (``foreach``) call instead of a Python loop per
# parameter: the same elementwise operations, so the same bits (tests/unit/test_bench_serving_fastpaths.py)
DENSE_FOREACH = True


def dense_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.dense_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.dense_lr, foreach=DENSE_FOREACH)
    return torch.optim.Adagrad(params, lr=cfg.dense_lr, eps=1e-10, foreach=DENSE_FOREACH)


def logits_of(model: nn.Module, dense: torch.Tensor, kjt) -> torch.Tensor:
    """Logits [B] (TorchRec's models return [B, 1])."""
    out = model(dense, kjt)
    return out.squeeze(-1) if out.dim() == 2 else out


def dropped_parts(reply) -> int:
    """Shard parts of a push that were dropped as too stale (async mode), from a push's reply."""
    return sum(1 for r in (reply or {}).values() if isinstance(r, dict) and r.get("decision") == "drop")


def _merge_rows(
    ids: Mapping[str, np.ndarray],
    shared: Mapping[str, np.ndarray],
    rest: Mapping[str, np.ndarray],
    rows_shared: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """A step's rows from its two pulls (sync_prefetch): the ids the step before did not touch and the shared ones."""
    out = {}
    for t, v in ids.items():
        r = np.empty((len(v), rows_shared[t].shape[1]), np.float32)
        r[shared[t]] = rows_shared[t]
        r[~shared[t]] = rest[t]
        out[t] = r
    return out


def count_anchor(ids: np.ndarray, grads: np.ndarray, step_ids: np.ndarray | None = None) -> None:
    """``model.wide_anchor: count``: divide the anchor column (1) of a wide table's per-occurrence gradients by
    the square root of the id's occurrences in the step, in place, so an id in c rows gets an anchor of
    ``beta sqrt(c) / B`` instead of ``beta c / B``: row-wise Adagrad's accumulator then grows with the id's
    occurrences (FTRL's n), not with their square (trainer/model.py).

    >>> g = np.ones((3, 4), np.float32); count_anchor(np.array([7, 7, 9]), g); [round(x, 4) for x in g[:, 1].tolist()]
    [0.7071, 0.7071, 1.0]

    ``step_ids``: the table's ids of the whole global minibatch when this worker trains only its part of it
    (Ray Train, several workers): c counts an id over every worker's rows of the step, as one process does.
    """
    if not len(ids):
        return
    if step_ids is None:
        _, inv, cnt = np.unique(ids, return_inverse=True, return_counts=True)
        grads[:, 1] /= np.sqrt(cnt[inv]).astype(np.float32)
        return
    uniq, cnt = np.unique(step_ids, return_counts=True)
    grads[:, 1] /= np.sqrt(cnt[np.searchsorted(uniq, ids)]).astype(np.float32)


class _PooledPlan:
    """How :meth:`TrainerCore._logits_pooled` scores freshrec's DLRM without a KJT: the collection's layout read
    once per model (its features, each table's features, pooling and dim, the key of each pooled output).

    It does what ``batch_to_kjt`` -> ``table_ids`` -> ``stage`` -> the collection's ``forward`` (``_pool``) ->
    ``KeyedTensor.to_dict`` -> ``forward_pooled`` do, on the same values with the same torch ops where a value is
    computed (the pooling's ``index_add`` and mean), so the logits are the same bits; what it leaves out is the
    Python and the tensors in between (the KJT, its split per key twice, the concatenation of every pooled row
    and its split back), a third of a 100-row score (docs/benchmarks.md, "the Score path's own CPU").
    """

    def __init__(self, ebc: BackendEmbeddingBagCollection) -> None:
        self.features = tuple(ebc.feature_names)
        self.tables = tuple((t.name, tuple(t.feature_names), t) for t in ebc.embedding_bag_configs())
        keys = iter(ebc.output_keys)  # per (table, feature) in order, as the collection's forward keys them
        self.keys = tuple(tuple(next(keys) for _ in t.feature_names) for t in ebc.embedding_bag_configs())

    @classmethod
    def of(cls, model: nn.Module, ebc) -> "_PooledPlan | None":
        """The plan when ``model``'s forward is exactly ``forward_pooled(ebc(kjt).to_dict(), dense)`` (freshrec's
        DLRM, ``forward`` not overridden, over this collection); None otherwise (the KJT path)."""
        if not isinstance(model, DLRM) or type(model).forward is not DLRM.forward:
            return None
        if model.embedding_bag_collection is not ebc or type(ebc).forward is not BackendEmbeddingBagCollection.forward:
            return None
        return cls(ebc)

    def fits(self, batch: EventBatch) -> bool:
        """Every feature's ids are int64 (the KJT's values are their concatenation, whose dtype would otherwise
        be another: such a batch takes the KJT path)."""
        return all(batch.sparse[f].dtype == np.int64 for f in self.features)

    def columns(self, batch: EventBatch, rows: slice, n: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """{feature: (ids of ``rows``, their lengths; None for a single-valued feature: one id per row)}: views of
        the batch's arrays when ``rows`` is every row, ``take_jagged``'s slice otherwise (as ``batch_to_kjt``). The
        ids go to the backend as they are (the KJT path gave it a copy): read-only views, so a backend that wrote
        into them would fail loudly instead of changing the caller's batch."""
        full = rows.start == 0 and rows.stop == n
        out = {}
        for f in self.features:
            v, ln = batch.sparse[f], batch.lengths.get(f)
            if ln is None:
                v = v[rows]
            elif not full:
                v, ln = take_jagged(v, ln, rows)
            v = v.view()
            v.flags.writeable = False
            out[f] = (v, ln)
        return out

    def pool(
        self,
        cols: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
        ids: Mapping[str, np.ndarray],
        pulled: Mapping[str, np.ndarray],
        device: torch.device,
    ) -> dict[str, torch.Tensor]:
        """{output key: pooled rows [rows, dim]} from each table's pulled rows, as the collection's forward pools
        its staged rows (``stage``'s shape check, ``_pool``'s sum or mean per bag, empty bags zero)."""
        out: dict[str, torch.Tensor] = {}
        bags: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # a multi-valued feature's bag index, mean divisor
        for (name, features, cfg), keys in zip(self.tables, self.keys):
            r = pulled[name]
            tensor = torch.from_numpy(r) if isinstance(r, np.ndarray) else r
            if tensor.shape != (len(ids[name]), cfg.embedding_dim):
                raise ValueError(
                    f"table {name}: staged rows {tuple(tensor.shape)} do not fit "
                    f"{len(ids[name])} ids x dim {cfg.embedding_dim}"
                )
            if tensor.device != device:  # stage's .to(device)
                tensor = tensor.to(device)
            at = 0
            for f, key in zip(features, keys):
                values, lengths = cols[f]
                k = len(values)
                part = tensor if len(features) == 1 else tensor[at : at + k]  # a table's only feature: every row
                at += k
                if lengths is None or (k == len(lengths) and bool((lengths == 1).all())):
                    out[key] = part  # one id per row: the bag is the row itself (_pool's exact shortcut)
                    continue
                if f not in bags:  # _pool's ops: repeat_interleave's index, index_add into zeros, / lengths
                    ln = torch.from_numpy(np.asarray(lengths)).to(device)
                    bag = torch.repeat_interleave(torch.arange(len(ln), device=device), ln)
                    bags[f] = (bag, ln)
                bag, ln = bags[f]
                pooled = torch.zeros(len(ln), part.shape[1], dtype=part.dtype, device=device).index_add(0, bag, part)
                if cfg.pooling is PoolingType.MEAN:
                    pooled = pooled / ln.clamp(min=1).to(pooled.dtype).unsqueeze(1)
                out[key] = pooled
        return out


class TrainerCore:
    """Score and train one model over an embedding backend (see the module docstring).

    >>> core = TrainerCore(spec, ModelConfig(), TrainConfig(), LocalBackend(ps_config_for(spec, TrainConfig())))  # doctest: +SKIP
    >>> core.step_file(batch, "part-20171126T010000Z.parquet")                                                # doctest: +SKIP
    FileMetrics(file='part-...', examples=4012, positives=389, auc=0.61, log_loss=0.33, train_seconds=0.2)
    """

    def __init__(
        self,
        spec,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        backend,
        *,
        rank: int = 0,
        world: int = 1,
        wrap_model=None,
        device: torch.device | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside [0, world={world})")
        self.spec, self.model_cfg, self.cfg = spec, model_cfg, train_cfg
        self.backend = backend
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")
        self._wrap = wrap_model
        self._user_model = model is not None
        self.dynamic = DynamicFeatures(spec) if getattr(spec, "dynamic", None) is not None else None
        self._build(model)
        if train_cfg.strategy is Strategy.FULL_RETRAIN and not hasattr(backend, "reset"):
            raise ConfigError(
                "train.strategy=full_retrain is the baseline of `freshrec bench quality`, not a PS "
                "mode: use online, periodic or fusion"
            )
        self.policy = make_policy(train_cfg)
        self.validator = ProgressiveValidator()
        self.ledger = DataLedger()
        self.files_seen = 0  # data files handed to step_file (the strategy's clock)
        self._recent: dict[int, tuple[str, EventBatch]] = {}  # data files a periodic update may revisit
        self.last_trained = 0  # examples trained by the last step_file
        self.dropped_pushes = 0  # async: shard parts of this worker's pushes dropped as too stale

    def _build(self, model: nn.Module | None) -> None:
        base = model if model is not None else build_model(self.spec, self.model_cfg, self.cfg.seed)
        self.base_model = base.to(self.device)
        self.ebc = find_collection(self.base_model)
        self.features = list(self.ebc.feature_names)
        self._plan = _PooledPlan.of(self.base_model, self.ebc)  # scoring without a KJT (None: the KJT path)
        # model.wide_anchor count: the wide tables whose anchor column is scaled per id (count_anchor)
        m = self.model_cfg
        count = m.wide and m.wide_beta and m.wide_anchor == "count" and not self._user_model
        wide = [t.name for t in self.ebc.embedding_bag_configs() if t.name.endswith(WIDE_SUFFIX)]
        self._count_anchor = wide if count else []
        self.model = self._wrap(self.base_model) if self._wrap is not None else self.base_model
        self.optimizer = dense_optimizer(self.base_model.parameters(), self.cfg)
        self.stats = RunningStats(len(self.spec.model_dense_names))
        self.step = 0  # sync steps taken, identical on every worker
        self.examples_trained = 0  # every example of every epoch
        self.train_seconds = 0.0

    @property
    def async_mode(self) -> bool:
        return self.backend.cfg.mode == "async"

    # ------------------------------------------------------------------ inputs
    def with_features(self, batch: EventBatch) -> EventBatch:
        """The events of ``batch`` with their dynamic features (from the state and the batch's strictly
        earlier events; the state is unchanged). The batch itself when the spec has none or it has them."""
        if self.dynamic is None or self.dynamic.is_annotated(batch):
            return batch
        return self.dynamic.annotate(batch)

    def _candidates(self, batch: EventBatch) -> EventBatch:
        """Rows to score with their dynamic features read from the state only (rows never see each other)."""
        if self.dynamic is None or self.dynamic.is_annotated(batch):
            return batch
        return self.dynamic.lookup(batch)

    def _dense(self, batch: EventBatch) -> torch.Tensor:
        """Normalised dense features float32 [n, max(d, 1)] (a constant 1 column when the spec has none)."""
        if batch.dense.shape[1] == 0:
            return torch.ones(len(batch), 1)
        x = self.stats.normalize(batch.dense)
        return torch.from_numpy(np.clip(x, -self.cfg.dense_clip, self.cfg.dense_clip, out=x))

    # ----------------------------------------------------------------- scoring
    def score(self, batch: EventBatch) -> np.ndarray:
        """Probabilities float32 [n] (statistics unchanged); sync mode reads once every step so far is applied.

        A batch without its dynamic features gets them from the state only (:meth:`with_features` gives a
        data file's events theirs from earlier events: what ``step_file`` scores).

        freshrec's own DLRM is scored without a KJT (:meth:`_logits_pooled`: the ids and the pooled rows straight
        from the batch's numpy columns); other models (TorchRec's archs, a model whose ``forward`` is its own, a
        model with a forward hook, which must see the call) go through the KJT and the collection like training
        (:meth:`_logits_kjt`). Both give the same bits
        (tests/unit/test_serve_cpu_score.py)."""
        batch = self._candidates(batch)
        step = None if self.async_mode else self.step
        dense = self._dense(batch)
        n = len(batch)
        out = np.empty(n, np.float32)
        model = self.base_model  # never the DDP wrapper: scoring is rank 0's alone
        if model.training:  # eval() walks every submodule: a serving replica scores in eval mode already
            model.eval()
        # a hook on the model's forward sees every score (bench gate's faults: a collapsed or NaN model): the KJT path
        hooked = bool(model._forward_hooks or model._forward_pre_hooks)
        plan = self._plan if self._plan is not None and not hooked and self._plan.fits(batch) else None
        with torch.no_grad():
            for lo in range(0, n, SCORE_BATCH):
                rows = slice(lo, min(lo + SCORE_BATCH, n))
                d = (dense if rows.stop - lo == n else dense[rows]).to(self.device)
                if plan is not None:
                    logits = self._logits_pooled(plan, batch, rows, n, d, step)
                else:
                    logits = self._logits_kjt(batch, rows, d, step)
                out[rows] = torch.sigmoid(logits).cpu().numpy()
        return out

    def _logits_kjt(self, batch: EventBatch, rows: slice, dense: torch.Tensor, step: int | None) -> torch.Tensor:
        """Logits of ``rows`` through the KJT, the collection's stage and the model's own forward (training's inputs)."""
        kjt = batch_to_kjt(batch, self.features, rows)
        ids = self.ebc.table_ids(kjt)
        self.ebc.stage(ids, self.backend.wait(self.backend.pull_many(ids, step=step)), requires_grad=False)
        return logits_of(self.base_model, dense, kjt)

    def _logits_pooled(
        self, plan: "_PooledPlan", batch: EventBatch, rows: slice, n: int, dense: torch.Tensor, step: int | None
    ) -> torch.Tensor:
        """Logits of ``rows`` without a KJT: what ``model(dense, batch_to_kjt(batch, features, rows))`` computes,
        op for op on the same values (so the same bits), with the Python around it cut: each feature's ids and
        lengths taken from the batch's numpy columns once (a view when ``rows`` is every row), a feature's
        tables (deep and wide) handed the same ids array (the frozen tables then search its positions once),
        a single-valued bag's pooled row the row itself (``_pool``'s own shortcut) and a multi-valued
        feature's bag index built once for its tables."""
        cols = plan.columns(batch, rows, n)
        ids = {
            name: (cols[fs[0]][0] if len(fs) == 1 else np.concatenate([cols[f][0] for f in fs]))
            for name, fs, _ in plan.tables
        }
        pulled = self.backend.wait(self.backend.pull_many(ids, step=step))
        return self.base_model.forward_pooled(plan.pool(cols, ids, pulled, self.ebc.device), dense)

    # ---------------------------------------------------------------- training
    def _parts(self, order: np.ndarray | None, n: int) -> list[tuple[np.ndarray, int, np.ndarray]]:
        """This worker's rows of each global minibatch, the minibatch's size and its rows (every worker's)."""
        bs = self.cfg.batch_size
        out = []
        for lo in range(0, n, bs):
            rows = order[lo : lo + bs] if order is not None else np.arange(lo, min(lo + bs, n))
            out.append((np.array_split(rows, self.world)[self.rank], len(rows), rows))
        return out

    def train(self, batch: EventBatch, epochs: int = 1, shuffle: bool = False) -> dict[str, float]:
        """``epochs`` passes over ``batch``; returns {"examples", "seconds", "loss"} (loss: mean per example).

        ``shuffle`` visits rows in a permutation drawn from (seed, epoch, examples trained so
        far); otherwise in the batch's order (time order for a data file).
        """
        t0 = time.perf_counter()
        batch = self.with_features(batch)
        self.stats.update(batch.dense)
        dense = self._dense(batch).to(self.device)
        labels = torch.from_numpy(np.ascontiguousarray(batch.label, np.float32)).to(self.device)
        n = len(batch)
        self.model.train()
        loss_total, seen = 0.0, 0
        for epoch in range(epochs):
            order = None
            if shuffle:
                order = np.random.default_rng([self.cfg.seed, epoch, self.examples_trained]).permutation(n)
            loss_sum, m = self._pass(batch, dense, labels, self._parts(order, n))
            loss_total += loss_sum
            seen += m
            self.examples_trained += n
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        return {"examples": n * epochs, "seconds": seconds, "loss": loss_total / max(seen, 1)}

    def _pass(
        self,
        batch: EventBatch,
        dense: torch.Tensor,
        labels: torch.Tensor,
        parts: list[tuple[np.ndarray, int, np.ndarray]],
    ) -> tuple[float, int]:
        """Train on ``parts`` (this worker's rows of each global minibatch), the pulls ahead as the backend's
        mode says: async prefetches step k+1 before computing step k; sync pushes step k and pulls step
        k+1+depth in one call (``pipeline_depth``), and with ``sync_prefetch`` (depth 0, one worker) pulls
        step k+1's ids that step k does not touch while step k computes."""
        backend, world, ebc = self.backend, self.world, self.ebc
        kjts = [batch_to_kjt(batch, self.features, idx) for idx, _, _ in parts]
        ids = [ebc.table_ids(k) for k in kjts]
        step0, n = self.step, len(parts)
        cfg = backend.cfg
        depth = 0 if self.async_mode else cfg.pipeline_depth
        prefetch = not self.async_mode and depth == 0 and world == 1 and cfg.sync_prefetch
        # tickets[k]: the rows of step k (leased: pinned until that step's push is applied)
        tickets = {k: backend.pull_many(ids[k], step=step0 + k, lease=True, stale=k) for k in range(min(depth + 1, n))}
        split = None  # sync_prefetch: (shared masks, ticket of the rest) of the next step
        pending: list = []
        loss_sum, seen = 0.0, 0
        for k, (idx, n_global, step_rows) in enumerate(parts):
            rows = backend.wait(tickets.pop(k))
            if split is not None:
                rows = _merge_rows(ids[k], split[0], backend.wait(split[1]), rows)
                split = None
            last = k + 1 == n
            nxt = k + 1 + depth  # the step whose rows travel with this step's push
            if self.async_mode and not last:
                tickets[k + 1] = backend.pull_many(ids[k + 1], step=step0 + k + 1, lease=True)  # during this step
            elif prefetch and not last:
                shared = {
                    t: np.isin(v, ids[k][t]) if t in ids[k] else np.zeros(len(v), bool) for t, v in ids[k + 1].items()
                }
                if not all(m.all() for m in shared.values()):  # the rest cannot change in step k: exact
                    rest = {t: v[~shared[t]] for t, v in ids[k + 1].items()}
                    split = (shared, backend.pull_many(rest, step=step0 + k + 1, lease=True, stale=1))
            ebc.stage(ids[k], rows, requires_grad=True)
            ti = torch.from_numpy(idx).to(self.device)
            logits = logits_of(self.model, dense[ti], kjts[k])
            y = labels[ti]
            if len(idx):
                mean = nn.functional.binary_cross_entropy_with_logits(logits, y)
                loss = mean * (world * len(idx) / n_global) if world > 1 else mean
                loss_sum += float(mean.detach()) * len(idx)
            else:  # an empty part still joins the step (DDP all-reduce, sync push)
                loss = logits.sum() * 0.0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = ebc.take_grads(1.0 / world)
            if self._count_anchor:  # c over the whole global minibatch: several workers count as one process
                step_ids = ebc.table_ids(batch_to_kjt(batch, self.features, step_rows)) if world > 1 else {}
                for t in self._count_anchor:
                    count_anchor(grads[t][0], grads[t][1], step_ids.get(t))
            if self.async_mode or nxt >= n:
                pending.append(backend.push_many(grads, step=step0 + k))
            else:  # sync: one round trip per shard pushes step k and brings step k+1+depth's rows
                want = ids[nxt] if split is None else {t: v[split[0][t]] for t, v in ids[nxt].items()}
                tickets[nxt] = backend.push_pull(grads, want, step=step0 + k)
            self.optimizer.step()
            seen += len(idx)
            while len(pending) > MAX_PUSHES_IN_FLIGHT or (last and pending):  # errors surface here
                self.dropped_pushes += dropped_parts(backend.wait(pending.pop(0)))
        self.step = step0 + n
        return loss_sum, seen

    # --------------------------------------------------------------- strategies
    def apply_decision(self, decision: Decision, batches: Mapping[int, EventBatch]) -> dict[str, float]:
        """Carry out a strategy's decision: the one place where TRAIN, RETRAIN, SKIP and fusion happen.

        ``batches[i]`` is data file i. RETRAIN starts from a fresh model and fresh embeddings
        (local backend only). Returns {"examples": processed in training, all epochs; "seconds"}.
        """
        if decision.action is Action.SKIP or not decision.files:
            return {"examples": 0, "seconds": 0.0}
        if decision.action is Action.RETRAIN:
            self.reset()
        prev = self.dense_state() if decision.fuse_lambda is not None else None
        info = self.train(
            EventBatch.concat([batches[i] for i in decision.files]), epochs=decision.epochs, shuffle=decision.shuffle
        )
        if prev is not None:
            self.load_dense_state(fuse(self.dense_state(), prev, decision.fuse_lambda))
        return {"examples": info["examples"], "seconds": info["seconds"]}

    def step_file(
        self, batch: EventBatch, file=None, rows_read: int | None = None, complete: bool = True
    ) -> FileMetrics | None:
        """Progressive validation (rank 0 scores the whole file first), then the strategy's update.

        ``file`` is the data file's name or its :class:`trainer.data.DataFileRef` (name + sha256);
        with ``rows_read`` (every row the reader took: good, dead, duplicate, late) it goes into the
        ledger, ``complete`` unless the file could not be read to its end (it is retried later;
        the rows trained now are then refused as duplicates). Returns the file's metrics on rank 0.
        """
        name = getattr(file, "name", file) or batch.source
        i = self.files_seen
        self.files_seen += 1
        if self.dynamic is not None:  # features from earlier events; the state moves past this file
            raw, batch = batch, self.with_features(batch)
            self.dynamic.observe(raw)
        if self.rank == 0:
            self.validator.record(name, batch.label, self.score(batch))
        decision = self.policy.decide(i)
        self._recent[i] = (name, batch)
        keep = getattr(self.policy, "window", 1)
        for old in [j for j in self._recent if j <= i - keep]:
            del self._recent[old]
        spent = self.apply_decision(decision, {j: b for j, (_, b) in self._recent.items()})
        self.last_trained = int(spent["examples"])
        if rows_read is not None:
            self.ledger.record(file if file is not None else name, rows_read, complete=complete)
        if self.rank != 0:
            return None
        self.validator.set_train_seconds(spent["seconds"])
        return self.validator.files[-1]

    # -------------------------------------------------------------------- state
    def reset(self) -> None:
        """A fresh, untrained model and empty embeddings (the start of a full retrain); local backend only."""
        if not hasattr(self.backend, "reset"):
            raise ConfigError(
                "a full retrain resets the embeddings, which only the local backend can do: use "
                "strategy online, periodic or fusion with the parameter server"
            )
        if self._user_model:
            raise ConfigError("reset() rebuilds the model from the spec; it cannot rebuild a model passed in")
        self.backend.reset()
        self._build(None)

    def dense_state(self) -> dict[str, torch.Tensor]:
        """A copy of the dense (MLP and interaction) parameters."""
        return {k: v.detach().clone() for k, v in self.base_model.state_dict().items()}

    def load_dense_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.base_model.load_state_dict(state)

    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The core's part of a model version as (arrays, JSON-able meta), for the version store.

        arrays: ``model/<param>`` (dense parameters) and ``optimizer/<i>/<key>`` (dense optimizer
        state per parameter); meta: optimizer param groups, feature statistics, counters, the
        strategy's recent data files and the data ledger. :meth:`import_state` is the inverse.
        """
        arrays = {f"model/{k}": v.detach().cpu().numpy().copy() for k, v in self.base_model.state_dict().items()}
        opt = self.optimizer.state_dict()
        for i, per_param in opt["state"].items():
            for key, value in per_param.items():
                arrays[f"optimizer/{i}/{key}"] = torch.as_tensor(value).detach().cpu().numpy().copy()
        meta = {
            "optimizer_param_groups": opt["param_groups"],
            "stats": self.stats.state_dict(),
            "step": self.step,
            "examples_trained": self.examples_trained,
            "files_seen": self.files_seen,
            "recent_files": {str(i): name for i, (name, _) in self._recent.items()},
            "arch": self.model_cfg.arch,
        }
        return arrays, meta

    def export_features(self) -> tuple[dict[str, np.ndarray], dict] | None:
        """The dynamic-feature state as (arrays, meta) for a version (:mod:`trainer.bundle`; None when
        the spec declares none)."""
        return self.dynamic.export() if self.dynamic is not None else None

    def import_features(self, arrays: Mapping[str, np.ndarray] | None, meta: Mapping | None) -> None:
        """Restore :meth:`export_features`; a spec with dynamic features needs the part."""
        if self.dynamic is None:
            return
        if arrays is None:
            raise ValueError(
                f"the version has no dynamic-feature part, but spec {self.spec.name} declares dynamic "
                "features: it was trained with another spec"
            )
        self.dynamic.load(arrays, meta)

    def import_state(
        self, arrays: Mapping[str, np.ndarray], meta: Mapping, reread=None, ledger: DataLedger | None = None
    ) -> None:
        """Restore what :meth:`export_state` gave (the embedding rows are the backend's business) and
        ``ledger`` (a version's :class:`DataLedger`; versions written before it was a part of its own
        carried it in ``meta``).

        ``reread(name) -> EventBatch`` reads a data file again, for the strategy's recent files
        (a periodic update revisits them); without it they are forgotten.
        """
        params = {
            k[len("model/") :]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("model/")
        }
        self.base_model.load_state_dict(params)
        state: dict = {}
        for key, value in arrays.items():
            if key.startswith("optimizer/"):
                _, i, name = key.split("/", 2)
                state.setdefault(int(i), {})[name] = torch.from_numpy(np.array(value))
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
        for group in self.optimizer.param_groups:  # a version saved before foreach (None) steps with it too
            group["foreach"] = DENSE_FOREACH
        self.stats = RunningStats.from_state_dict(meta["stats"])
        self.step = int(meta["step"])
        self.examples_trained = int(meta["examples_trained"])
        self.files_seen = int(meta["files_seen"])
        if ledger is not None:
            self.ledger = ledger
        elif "ledger" in meta:
            self.ledger = DataLedger.from_dict(meta["ledger"])
        self._recent = {}
        if reread is not None and self.dynamic is None:  # re-read files would not get their original dynamic
            for i, name in meta.get("recent_files", {}).items():  # features back: with them, they are forgotten
                self._recent[int(i)] = (name, reread(name))

    def state_dict(self) -> dict:
        """Everything of the model but its embedding rows: dense params and optimizer, statistics,
        counters, strategy state and the data ledger (and the dynamic-feature state, if any)."""
        extra = {"features": self.dynamic.state_dict()} if self.dynamic is not None else {}
        return {
            "model": self.dense_state(),
            "dense_optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "stats": self.stats.state_dict(),
            "step": self.step,
            "examples_trained": self.examples_trained,
            "files_seen": self.files_seen,
            "recent_files": {i: name for i, (name, _) in self._recent.items()},
            "ledger": self.ledger.to_dict(),
            **extra,
        }
