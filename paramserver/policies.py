"""Small policies that return decisions: staleness (async mode) and eviction victims."""

from __future__ import annotations

import enum

import numpy as np


@enum.unique
class StaleDecision(enum.Enum):
    APPLY = "apply"
    APPLY_STALE = "apply_stale"  # too stale, applied anyway (policy "apply"); counted
    DROP = "drop"  # too stale, dropped (policy "drop"); counted


class StalenessPolicy:
    """Decide what to do with an async push read at ``read_version`` when the pusher's clock is at ``version``.

    Both are counts of the PUSHING worker's own pushes this shard applied (its own steps), so
    staleness = version - read_version = the worker's own updates the rows it read did not hold
    yet; other workers' pushes do not count, so the bound does not tighten as workers are added.
    Within ``max_staleness`` a push is applied; beyond it, ``on_stale`` ("drop" or "apply")
    decides. A push without a read version is refused by the shard (BadPushError), never guessed.

    >>> StalenessPolicy(2, "drop").decide(read_version=3, version=6)
    <StaleDecision.DROP: 'drop'>
    """

    def __init__(self, max_staleness: int, on_stale: str = "drop") -> None:
        self.max_staleness = max_staleness
        self.on_stale = on_stale

    def decide(self, read_version: int, version: int) -> StaleDecision:
        if version - read_version <= self.max_staleness:
            return StaleDecision.APPLY
        return StaleDecision.DROP if self.on_stale == "drop" else StaleDecision.APPLY_STALE


def expired_slots(occupied: np.ndarray, seen: np.ndarray, now, ttl, pinned: np.ndarray | None = None) -> np.ndarray:
    """TTL: occupied, unleased slots whose last sight ``seen`` is more than ``ttl`` before ``now``
    (versions or seconds: the same rule for both clocks).

    >>> expired_slots(np.array([True, True, False]), np.array([1, 9, 0]), now=10, ttl=5).tolist()
    [0]
    """
    if ttl is None:
        return np.empty(0, dtype=np.int64)
    mask = occupied & (seen < now - ttl)
    if pinned is not None:
        mask &= pinned == 0
    return np.flatnonzero(mask)


def aged_counts(count: np.ndarray, last_seen: np.ndarray, version: int, every: int | None, decay: float) -> np.ndarray:
    """Aged LFU, lazily: a count stored when its row was last seen (shard version ``last_seen``) has
    decayed by ``decay`` once per period of ``every`` versions since: ``floor(count * decay**periods)``
    (one floor, so the value depends only on (count, last_seen, version): deterministic, and a
    restored shard ages alike). No periodic scan: only rows looked at are aged.

    >>> aged_counts(np.array([9, 9, 9]), np.array([10, 7, 0]), version=10, every=5, decay=0.5).tolist()
    [9, 4, 2]
    """
    if every is None:
        return count
    periods = version // every - last_seen // every
    return np.floor(count * np.power(decay, periods.astype(np.float64))).astype(np.int64)


def lfu_victims(
    occupied: np.ndarray,
    count: np.ndarray,
    last_seen: np.ndarray,
    protected: np.ndarray,
    n: int,
    slot_key: np.ndarray | None = None,
    pinned: np.ndarray | None = None,
) -> np.ndarray:
    """LFU: the ``n`` occupied slots, neither ``protected`` (this batch) nor ``pinned`` (leased to a step
    whose push is pending), with the lowest count (older last_seen first on ties, then lower id
    when ``slot_key`` (slot -> id) is given).

    With ``slot_key`` the choice depends only on (id, count, last_seen), not on which slot holds
    which id, so a shard restored from a version (other slots) evicts exactly the same rows.
    """
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    eligible = occupied.copy() if pinned is None else occupied & (pinned == 0)
    eligible[protected] = False
    cand = np.flatnonzero(eligible)
    if len(cand) <= n:
        return cand
    key = (np.minimum(count[cand], (1 << 31) - 1) << 32) | (last_seen[cand] & 0xFFFFFFFF)
    if slot_key is None:
        return cand[np.argpartition(key, n - 1)[:n]]
    kth = np.partition(key, n - 1)[n - 1]
    below = cand[key < kth]
    tied = cand[key == kth]
    tied = tied[np.argsort(slot_key[tied], kind="stable")[: n - len(below)]]
    return np.concatenate([below, tied])
