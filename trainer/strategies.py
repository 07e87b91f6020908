"""Update strategies: small policies that say what to train when data file ``i`` has landed.

A policy never trains; it returns a :class:`Decision` (which data files, how many epochs,
shuffled or not, from scratch or not, fuse the dense params or not) and
:meth:`trainer.core.TrainerCore.apply_decision` carries it out, the same way in every mode::

    policy                 decide(i) for data file i (0-based)
    ─────────────────────  ────────────────────────────────────────────────────────────
    OnlinePolicy           train [i], 1 epoch, in time order
    PeriodicPolicy(W, P)   every P-th file: train [i-W+1 .. i], 1 epoch, warm start; else skip
    FusionPolicy(lam)      train [i] (online), then theta = lam * theta_new + (1 - lam) * theta_prev
    FullRetrainPolicy(k)   from scratch on [0 .. i], k epochs, shuffled (the baseline)
    history_decision       after the cold start's progressive pass over history files [0 .. H-1]:
                           train [0 .. H-1], passes - 1 epochs, shuffled (training only; passes:
                           train.history_epochs, or with auto from the history's size)

Fusion applies to the dense parameters only (MLP and interaction); embedding rows keep
the online update (they are sparse: a row the new data file did not touch is unchanged anyway).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import torch

from trainer.config import HISTORY_AUTO, Strategy, TrainConfig


@enum.unique
class Action(enum.Enum):
    TRAIN = "train"  # warm start: continue from the current parameters
    RETRAIN = "retrain"  # from scratch: a fresh model
    SKIP = "skip"  # leave the model as it is


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    files: tuple[int, ...] = ()
    epochs: int = 1
    shuffle: bool = False
    fuse_lambda: float | None = None  # None: no fusion


class OnlinePolicy:
    """Plain online learning: each new data file once, in time order.

    >>> OnlinePolicy().decide(3)
    Decision(action=<Action.TRAIN: 'train'>, files=(3,), epochs=1, shuffle=False, fuse_lambda=None)
    """

    def decide(self, i: int) -> Decision:
        return Decision(Action.TRAIN, (i,))


class PeriodicPolicy:
    """Periodic batch update: every ``period`` files, one pass over the last ``window`` files.

    >>> PeriodicPolicy(window=3, period=2).decide(5).files
    (3, 4, 5)
    >>> PeriodicPolicy(window=3, period=2).decide(4).action
    <Action.SKIP: 'skip'>
    """

    def __init__(self, window: int, period: int = 1) -> None:
        if window < 1 or period < 1:
            raise ValueError(f"PeriodicPolicy: window and period must be >= 1, got {window}, {period}")
        self.window, self.period = window, period

    def decide(self, i: int) -> Decision:
        if (i + 1) % self.period:
            return Decision(Action.SKIP)
        return Decision(Action.TRAIN, tuple(range(max(0, i - self.window + 1), i + 1)))


class FusionPolicy:
    """Online, then fuse the dense params: theta = lam * theta_new + (1 - lam) * theta_prev.

    >>> FusionPolicy(0.3).decide(5).fuse_lambda
    0.3
    """

    def __init__(self, lam: float) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"FusionPolicy: lambda must be in [0, 1], got {lam}")
        self.lam = lam

    def decide(self, i: int) -> Decision:
        return Decision(Action.TRAIN, (i,), fuse_lambda=self.lam)


class FullRetrainPolicy:
    """The baseline: a fresh model trained on every data file so far, ``epochs`` shuffled passes.

    >>> FullRetrainPolicy(2).decide(2)
    Decision(action=<Action.RETRAIN: 'retrain'>, files=(0, 1, 2), epochs=2, shuffle=True, fuse_lambda=None)
    """

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"FullRetrainPolicy: epochs must be >= 1, got {epochs}")
        self.epochs = epochs

    def decide(self, i: int) -> Decision:
        return Decision(Action.RETRAIN, tuple(range(i + 1)), epochs=self.epochs, shuffle=True)


def history_decision(cfg: TrainConfig, n_history: int, file_rows: Sequence[int] | None = None) -> Decision:
    """The extra passes of a cold start over its ``n_history`` history files (0..n-1), once the first,
    progressive pass over them is done: ``cfg.history_passes(file_rows) - 1`` shuffled epochs, warm start (SKIP
    when that is one pass or there is no history). Training only: no file is scored again. ``file_rows``: the
    history files' rows, which ``history_epochs: auto`` needs (its passes depend on the history's size).

    >>> history_decision(TrainConfig(history_epochs=3), 2)
    Decision(action=<Action.TRAIN: 'train'>, files=(0, 1), epochs=2, shuffle=True, fuse_lambda=None)
    >>> history_decision(TrainConfig(history_epochs=1), 2).action
    <Action.SKIP: 'skip'>
    >>> history_decision(TrainConfig(history_epochs="auto"), 2, [4000, 4000]).epochs  # 32 steps: 2 passes
    1
    """
    if n_history <= 0:
        return Decision(Action.SKIP)
    if file_rows is None:
        if cfg.history_epochs == HISTORY_AUTO:
            raise ValueError("history_decision: train.history_epochs auto needs the history files' rows (file_rows)")
        file_rows = ()
    passes = cfg.history_passes(file_rows)
    if passes <= 1:
        return Decision(Action.SKIP)
    return Decision(Action.TRAIN, tuple(range(n_history)), epochs=passes - 1, shuffle=True)


def make_policy(cfg: TrainConfig):
    """The policy named by ``cfg.strategy``."""
    return {
        Strategy.ONLINE: lambda: OnlinePolicy(),
        Strategy.PERIODIC: lambda: PeriodicPolicy(cfg.window, cfg.period),
        Strategy.FUSION: lambda: FusionPolicy(cfg.fusion_lambda),
        Strategy.FULL_RETRAIN: lambda: FullRetrainPolicy(cfg.epochs_full_retrain),
    }[cfg.strategy]()


def fuse(new: dict[str, torch.Tensor], prev: dict[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """theta = lam * theta_new + (1 - lam) * theta_prev, tensor by tensor (same keys and shapes)."""
    if new.keys() != prev.keys():
        raise KeyError(f"fuse: parameter names differ: {sorted(set(new) ^ set(prev))}")
    return {k: lam * new[k] + (1.0 - lam) * prev[k] for k in new}
