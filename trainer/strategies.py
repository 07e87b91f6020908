"""Update strategies: small policies that say what to train when shard ``i`` has landed.

A policy never trains; it returns a :class:`Decision` (which shards, how many epochs,
shuffled or not, from scratch or not, fuse the dense params or not) and
:func:`apply_decision` carries it out on a :class:`trainer.local.LocalTrainer`::

    policy                 decide(i) for shard i (0-based)
    ─────────────────────  ────────────────────────────────────────────────────────────
    OnlinePolicy           train [i], 1 epoch, in time order
    PeriodicPolicy(W, P)   every P-th shard: train [i-W+1 .. i], 1 epoch, warm start; else skip
    FusionPolicy(lam)      train [i] (online), then theta = lam * theta_new + (1 - lam) * theta_prev
    FullRetrainPolicy(k)   from scratch on [0 .. i], k epochs, shuffled (the baseline)

Fusion applies to the dense parameters only (MLP and interaction); embedding rows keep
the online update (they are sparse: a row the new shard did not touch is unchanged anyway).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

import torch

from trainer.config import Strategy, TrainConfig


@enum.unique
class Action(enum.Enum):
    TRAIN = "train"  # warm start: continue from the current parameters
    RETRAIN = "retrain"  # from scratch: a fresh model
    SKIP = "skip"  # leave the model as it is


@dataclasses.dataclass(frozen=True)
class Decision:
    action: Action
    shards: tuple[int, ...] = ()
    epochs: int = 1
    shuffle: bool = False
    fuse_lambda: float | None = None  # None: no fusion


class OnlinePolicy:
    """Plain online learning: each new shard once, in time order.

    >>> OnlinePolicy().decide(3)
    Decision(action=<Action.TRAIN: 'train'>, shards=(3,), epochs=1, shuffle=False, fuse_lambda=None)
    """

    def decide(self, i: int) -> Decision:
        return Decision(Action.TRAIN, (i,))


class PeriodicPolicy:
    """Periodic batch update: every ``period`` shards, one pass over the last ``window`` shards.

    >>> PeriodicPolicy(window=3, period=2).decide(5).shards
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
    """The baseline: a fresh model trained on every shard so far, ``epochs`` shuffled passes.

    >>> FullRetrainPolicy(2).decide(2)
    Decision(action=<Action.RETRAIN: 'retrain'>, shards=(0, 1, 2), epochs=2, shuffle=True, fuse_lambda=None)
    """

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"FullRetrainPolicy: epochs must be >= 1, got {epochs}")
        self.epochs = epochs

    def decide(self, i: int) -> Decision:
        return Decision(Action.RETRAIN, tuple(range(i + 1)), epochs=self.epochs, shuffle=True)


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


def apply_decision(trainer, decision: Decision, shards: Sequence) -> tuple[object, dict[str, float]]:
    """Carry out ``decision`` on ``trainer`` with ``shards`` (EventBatch per index).

    Returns the trainer to use from now on (a new one after RETRAIN) and the compute spent:
    {"examples": examples processed in training, all epochs; "seconds": wall seconds}.
    """
    from trainer.data import EventBatch

    if decision.action is Action.SKIP or not decision.shards:
        return trainer, {"examples": 0, "seconds": 0.0}
    if decision.action is Action.RETRAIN:
        trainer = trainer.fresh()
    prev = trainer.dense_state() if decision.fuse_lambda is not None else None
    batch = EventBatch.concat([shards[i] for i in decision.shards])
    info = trainer.train(batch, epochs=decision.epochs, shuffle=decision.shuffle)
    if prev is not None:
        trainer.load_dense_state(fuse(trainer.dense_state(), prev, decision.fuse_lambda))
    return trainer, {"examples": info["examples"], "seconds": info["seconds"]}
