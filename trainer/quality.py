"""Quality of incremental training against full retrain, by replaying a log in time order.

The log is cut into time-ordered files 0..N-1. After ``warmup`` files, at each
evaluation point t (a file index) two models score file t, which neither has trained on:

* incremental: the online model that has trained on files 0..t-1 one pass each, in
  time order (its score of file t is its progressive-validation score);
* full retrain: a fresh model (same architecture, hyper-parameters and seed) trained on
  files 0..t-1 concatenated, ``epochs`` passes, shuffled each pass.

Compute is counted in examples processed by training (each example of each epoch once;
scoring is not counted, both sides score the same files) and in wall seconds of
training. For the run as a whole::

    incremental compute  = sum of n_s over files s < last point        (each file once;
                           plus (passes - 1) * the history's rows with a history)
    full-retrain compute = sum over points t of epochs * sum_{s < t} n_s (a retrain per point)
    compute_ratio        = incremental compute / full-retrain compute

i.e. what it costs to have a fresh model at every point either way. Per point,
``inc_examples`` is what the online model trained since the previous point.

With ``lr`` (:class:`trainer.ftrl.FTRLConfig`) an FTRL-Proximal logistic regression follows the same
files in the same order, one pass each, and scores file t at each point before training on it: the
``auc_lr`` / ``logloss_lr`` baseline beside the model's figures.

Dynamic features (a spec's ``dynamic:`` section) are a function of the data, not of the model:
:func:`with_features` computes every file's once, in order, each event from strictly earlier
events, and both models (and every strategy) score and train on those same values.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.config import ModelConfig, TrainConfig
from trainer.data import EventBatch, Validator, iter_batches, load_spec, read_data_file
from trainer.ftrl import FTRLConfig, FTRLProximal
from trainer.local import LocalTrainer
from trainer.metrics import auc, log_loss
from trainer.strategies import FullRetrainPolicy, history_decision


def mean_auc(aucs: Sequence[float], losses: Sequence[float]) -> float:
    """Mean of per-file AUCs, files with one class (AUC NaN, log-loss finite) left out; NaN when
    any file's scores were not finite (its log-loss is NaN): a broken model never averages away.

    >>> mean_auc([0.6, float("nan"), 0.8], [0.4, 0.3, 0.5])
    0.7
    >>> mean_auc([0.6, float("nan")], [0.4, float("nan")])
    nan
    """
    if not len(aucs) or not np.isfinite(np.asarray(losses, np.float64)).all():
        return float("nan")
    a = np.asarray(aucs, np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


@dataclasses.dataclass(frozen=True)
class QualityPoint:
    point: int  # data file index t
    file: str
    examples: int  # rows of data file t (scored by both models)
    positives: int
    auc_incremental: float
    log_loss_incremental: float
    auc_full_retrain: float
    log_loss_full_retrain: float
    inc_examples: int  # examples the online model trained on since the previous point
    inc_seconds: float
    full_examples: int  # examples the full retrain processed (epochs * rows of files < t)
    full_seconds: float
    auc_lr: float = float("nan")  # the FTRL-LR baseline trained on files 0..t-1 once each, in order (nan: not run)
    log_loss_lr: float = float("nan")


@dataclasses.dataclass(frozen=True)
class QualityResult:
    dataset: str
    files: tuple[str, ...]
    file_rows: tuple[int, ...]
    points: tuple[QualityPoint, ...]
    epochs_full_retrain: int
    incremental_auc_by_file: tuple[float, ...]  # progressive AUC of every file (nan before any training)
    incremental_examples_per_s: tuple[float, ...]  # training throughput of the online model per file

    def summary(self) -> dict[str, float]:
        p = self.points
        inc_ex = sum(q.inc_examples for q in p)  # each file before the last point once (+ history epochs)
        inc_s = sum(q.inc_seconds for q in p)
        full_ex = sum(q.full_examples for q in p)
        full_s = sum(q.full_seconds for q in p)
        a_inc = mean_auc([q.auc_incremental for q in p], [q.log_loss_incremental for q in p])
        a_full = mean_auc([q.auc_full_retrain for q in p], [q.log_loss_full_retrain for q in p])
        lr = [q for q in p if not np.isnan(q.auc_lr)]
        a_lr = mean_auc([q.auc_lr for q in lr], [q.log_loss_lr for q in lr]) if lr else float("nan")
        return {
            "auc_incremental": a_inc,
            "auc_full_retrain": a_full,
            "auc_gap": a_full - a_inc,
            "log_loss_incremental": float(np.mean([q.log_loss_incremental for q in p])) if p else float("nan"),
            "log_loss_full_retrain": float(np.mean([q.log_loss_full_retrain for q in p])) if p else float("nan"),
            "auc_lr": a_lr,
            "logloss_lr": float(np.mean([q.log_loss_lr for q in lr])) if lr else float("nan"),
            "auc_incremental_minus_lr": a_inc - a_lr,
            "compute_ratio": inc_ex / full_ex if full_ex else float("nan"),
            "compute_ratio_seconds": inc_s / full_s if full_s else float("nan"),
            "incremental_examples": inc_ex,
            "full_retrain_examples": full_ex,
            "incremental_seconds": inc_s,
            "full_retrain_seconds": full_s,
            "points": len(p),
            "files": len(self.files),
            "epochs_full_retrain": self.epochs_full_retrain,
        }


# ---------------------------------------------------------------- data sets
def log_files(
    spec,
    inputs: Sequence[str | Path],
    every_s: int | None = None,
    n_files: int | None = None,
    work_dir: str | Path | None = None,
) -> tuple[list[EventBatch], list[str]]:
    """Any log replayed as data files, for a feature spec: ``every_s``-second time windows (split
    as ``freshrec data split`` does, parquet in a temp dir, read back), or ``n_files`` files of
    equal count in time order (row order for a spec without a time column)."""
    from trainer.data.split import split_into_files

    if (every_s is None) == (n_files is None):
        raise ValueError("log_files: give exactly one of every_s or n_files")
    if every_s is not None:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            result = split_into_files(list(inputs), Validator(spec), every_s, tmp, progress=False)
            v = Validator(spec)
            batches = [read_data_file(p, v) for p in result.files]
            names = [p.stem for p in result.files]
        return batches, names
    batch = EventBatch.concat(list(iter_batches(list(inputs), Validator(spec), progress=False)))
    batch = batch.take(np.argsort(batch.ts, kind="stable"))
    bounds = np.linspace(0, len(batch), n_files + 1).round().astype(np.int64)
    files = [batch.take(np.arange(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    names = [
        f"part-{i:02d}-" + time.strftime("%Y%m%d", time.gmtime(int(f.ts[0]))) if len(f) else f"part-{i:02d}"
        for i, f in enumerate(files)
    ]
    return files, names


def taobao_files(
    csv: str | Path, every_s: int = 300, work_dir: str | Path | None = None
) -> tuple[list[EventBatch], list[str]]:
    """The Taobao log split into ``every_s``-second files."""
    return log_files(load_spec("taobao"), [csv], every_s=every_s, work_dir=work_dir)


def choose_points(file_rows: Sequence[int], warmup: int, points: int, min_rows: int = 1000) -> list[int]:
    """``points`` file indices >= warmup spread evenly (0: all), skipping files under ``min_rows``.

    >>> choose_points([5000] * 10, warmup=2, points=3)
    [2, 6, 9]
    """
    cand = [i for i in range(warmup, len(file_rows)) if file_rows[i] >= min_rows]
    if points <= 0 or points >= len(cand):
        return cand
    pick = np.linspace(0, len(cand) - 1, points).round().astype(int)
    return [cand[i] for i in sorted(set(pick.tolist()))]


# ------------------------------------------------------------------- replay
def with_features(spec, files: Sequence[EventBatch]) -> list[EventBatch]:
    """``files`` with their dynamic features, each event's from strictly earlier events (the files in
    order, then earlier rows of its own file); the files themselves for a spec without any."""
    if spec.dynamic is None:
        return list(files)
    from trainer.features import DynamicFeatures

    dyn = DynamicFeatures(spec)
    return [dyn.process(f) for f in files]


def run_quality(
    dataset: str,
    spec,
    files: Sequence[EventBatch],
    names: Sequence[str],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    points: Sequence[int],
    progress=None,
    lr: FTRLConfig | None = None,
    history: int = 0,
    full_retrain: bool = True,
) -> QualityResult:
    """Replay ``files`` in order; at each of ``points`` compare incremental with a full retrain and, with
    ``lr``, with an FTRL-Proximal logistic regression (:mod:`trainer.ftrl`) fed the same files in the same
    order, scored at the same points before training on the file (progressive validation).

    ``history``: ``train.history_epochs`` of the online model, counted in files: its cold start passes
    over files ``0..history-1`` that many times (``train_cfg.history_passes`` of their rows: the integer, or
    with ``auto`` from the history's size) before following the rest once each; the points must be at or
    after ``history`` (0: plain online from the first file).
    ``full_retrain=False`` skips the full retrains (their figures are nan): a sweep of the online model's
    settings against the LR baseline at a fraction of the cost.
    """
    points = sorted(points)
    if points and history > points[0]:
        raise ValueError(
            f"run_quality: history of {history} files overlaps the first point {points[0]}: a history "
            "file is trained on more than once, so it cannot be scored honestly"
        )
    files = with_features(spec, files)
    online = LocalTrainer(spec, model_cfg, train_cfg)
    baseline = FTRLProximal(spec, lr) if lr is not None else None
    retrain = FullRetrainPolicy(train_cfg.epochs_full_retrain)
    out: list[QualityPoint] = []
    last = points[-1] if points else -1
    since_ex, since_s = 0, 0.0
    for t, batch in enumerate(files[: last + 1]):
        if t in points:
            inc_scores = online.score(batch)
            lr_scores = baseline.score(batch) if baseline is not None else None
            if full_retrain:
                full = online.fresh()
                spent = full.apply_decision(retrain.decide(t - 1), files)
                full_scores = full.score(batch)
            else:
                spent, full_scores = {"examples": 0, "seconds": 0.0}, np.full(len(batch), np.nan, np.float32)
            out.append(
                QualityPoint(
                    point=t,
                    file=names[t],
                    examples=len(batch),
                    positives=int((batch.label > 0.5).sum()),
                    auc_incremental=auc(batch.label, inc_scores),
                    log_loss_incremental=log_loss(batch.label, inc_scores),
                    auc_full_retrain=auc(batch.label, full_scores) if full_retrain else float("nan"),
                    log_loss_full_retrain=log_loss(batch.label, full_scores) if full_retrain else float("nan"),
                    inc_examples=since_ex,
                    inc_seconds=since_s,
                    full_examples=int(spent["examples"]),
                    full_seconds=float(spent["seconds"]),
                    **(
                        {"auc_lr": auc(batch.label, lr_scores), "log_loss_lr": log_loss(batch.label, lr_scores)}
                        if lr_scores is not None
                        else {}
                    ),
                )
            )
            since_ex, since_s = 0, 0.0
            if progress:
                progress(out[-1])
        if t == last:
            online.validator.record(names[t], batch.label, online.score(batch))
            break
        if baseline is not None:
            baseline.train(batch)
        m = online.step_file(batch, names[t])
        since_ex += m.examples
        since_s += m.train_seconds
        if t == history - 1:  # the cold start's extra passes over the history (training only)
            rows = [len(f) for f in files[:history]]
            spent = online.apply_decision(history_decision(train_cfg, history, rows), files)
            since_ex += int(spent["examples"])
            since_s += float(spent["seconds"])
            passes = train_cfg.history_passes(rows)
            if baseline is not None and passes > 1:  # the LR gets the same passes
                baseline.train(EventBatch.concat(list(files[:history])), epochs=passes - 1)
    v = online.validator.files
    return QualityResult(
        dataset=dataset,
        files=tuple(names),
        file_rows=tuple(len(b) for b in files),
        points=tuple(out),
        epochs_full_retrain=train_cfg.epochs_full_retrain,
        incremental_auc_by_file=tuple(m.auc for m in v),
        incremental_examples_per_s=tuple(m.examples_per_s for m in v),
    )


def run_strategy(
    spec, files: Sequence[EventBatch], model_cfg: ModelConfig, train_cfg: TrainConfig, policy, points: Sequence[int]
) -> dict[str, float]:
    """Progressive replay under ``policy`` (:mod:`trainer.strategies`): before each file t in
    ``points`` the current model scores file t; after every file the policy's decision is
    applied. Returns the mean AUC / log-loss over ``points`` and the examples trained up to the
    last point.
    """
    files = with_features(spec, files)
    trainer = LocalTrainer(spec, model_cfg, train_cfg)
    aucs, losses, examples, seconds = [], [], 0, 0.0
    last = max(points)
    for t in range(last + 1):
        if t in points:
            s = trainer.score(files[t])
            aucs.append(auc(files[t].label, s))
            losses.append(log_loss(files[t].label, s))
        if t == last:
            break
        spent = trainer.apply_decision(policy.decide(t), files)
        examples += spent["examples"]
        seconds += spent["seconds"]
    return {"auc": mean_auc(aucs, losses), "log_loss": float(np.mean(losses)), "examples": examples, "seconds": seconds}


# --------------------------------------------------------------- the newcomer path, replicated
@dataclasses.dataclass(frozen=True)
class NewcomerWindows:
    """The newcomer comparison repeated on many disjoint windows of one log (:func:`newcomer_windows`)."""

    train_rows: int
    test_rows: int
    starts: tuple[
        int, ...
    ]  # first row of every window scored (windows whose held-out rows hold one class are left out)
    auc_model: tuple[float, ...]
    auc_lr: tuple[float, ...]

    def summary(self) -> dict[str, float]:
        """Means, the paired difference model - LR with its standard error (over windows), wins / ties / losses."""
        m, b = np.asarray(self.auc_model, np.float64), np.asarray(self.auc_lr, np.float64)
        d = m - b
        n = len(d)
        return {
            "windows": n,
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "auc_model": float(m.mean()) if n else float("nan"),
            "auc_lr": float(b.mean()) if n else float("nan"),
            "auc_model_minus_lr": float(d.mean()) if n else float("nan"),
            "stderr": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
            "wins": int((d > 0).sum()),
            "ties": int((d == 0).sum()),
            "losses": int((d < 0).sum()),
        }


def newcomer_windows(
    spec,
    log: EventBatch,
    train_rows: int,
    test_rows: int,
    windows: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    lr: FTRLConfig | None = None,
    file_rows: int | None = None,
) -> NewcomerWindows:
    """Issue 24's newcomer case (a new log: train on its first rows, score held-out rows that follow, against
    an FTRL-LR trained on the same rows) repeated on ``windows`` disjoint windows of ``log`` (time order),
    so that a claim about a few hundred rows is not decided by one 20-row AUC (its standard error is ~0.1).

    In each window a fresh model (seed ``train_cfg.seed``) follows the first ``train_rows`` rows cut into data
    files of ``file_rows`` rows (None: one file) as ``freshrec train`` does (each file scored, then trained on
    once, then ``train_cfg.history_passes(rows) - 1`` more passes over them), a fresh LR takes the same rows once, and
    both score the next ``test_rows`` rows. A window whose held-out rows hold one class (AUC undefined) is
    left out. Windows are spread evenly over the log and never overlap (fewer when the log is short).
    """
    span = train_rows + test_rows
    if train_rows < 1 or test_rows < 1 or windows < 1:
        raise ValueError(
            f"newcomer_windows: train_rows, test_rows and windows must be >= 1, got {train_rows}, {test_rows}, {windows}"
        )
    if len(log) < span:
        raise ValueError(f"newcomer_windows: the log has {len(log)} rows, fewer than one window ({span})")
    n = min(windows, len(log) // span)
    starts = np.linspace(0, len(log) - span, n).round().astype(np.int64) if n > 1 else np.zeros(1, np.int64)
    step = file_rows or train_rows
    kept, a_model, a_lr = [], [], []
    for s in starts.tolist():
        test = log.take(np.arange(s + train_rows, s + span))
        if test.label.min() == test.label.max():
            continue
        parts = [log.take(np.arange(lo, min(lo + step, s + train_rows))) for lo in range(s, s + train_rows, step)]
        model = LocalTrainer(spec, model_cfg, train_cfg)
        for i, part in enumerate(parts):
            model.step_file(part, f"part-{i:05d}")
        model.apply_decision(history_decision(train_cfg, len(parts), [len(p) for p in parts]), dict(enumerate(parts)))
        baseline = FTRLProximal(spec, lr or FTRLConfig())
        for part in parts:
            baseline.train(part)
        kept.append(s)
        a_model.append(auc(test.label, model.score(test)))
        a_lr.append(auc(test.label, baseline.score(test)))
    return NewcomerWindows(train_rows, test_rows, tuple(kept), tuple(a_model), tuple(a_lr))
