"""Small policies that return decisions: staleness (async mode) and eviction victims."""

from __future__ import annotations

import enum

import numpy as np


@enum.unique
class StaleDecision(enum.Enum):
    APPLY = "apply"
    APPLY_STALE = "apply_stale"  # too stale, applied anyway (policy "apply"); counted
    DROP = "drop"                # too stale, dropped (policy "drop"); counted


class StalenessPolicy:
    """Decide what to do with an async push read at ``read_version`` when the shard is at ``version``.

    Staleness = version - read_version = updates this shard applied since the pusher read.
    Within ``max_staleness`` a push is applied; beyond it, ``on_stale`` ("drop" or "apply")
    decides. A push with no read version (``None``) is always applied.

    >>> StalenessPolicy(2, "drop").decide(read_version=3, version=6)
    <StaleDecision.DROP: 'drop'>
    """

    def __init__(self, max_staleness: int, on_stale: str = "drop") -> None:
        self.max_staleness = max_staleness
        self.on_stale = on_stale

    def decide(self, read_version: int | None, version: int) -> StaleDecision:
        if read_version is None or version - read_version <= self.max_staleness:
            return StaleDecision.APPLY
        return StaleDecision.DROP if self.on_stale == "drop" else StaleDecision.APPLY_STALE


def expired_slots(occupied: np.ndarray, last_seen: np.ndarray, step: int, ttl_steps: int | None) -> np.ndarray:
    """TTL: occupied slots not seen during the last ``ttl_steps`` steps."""
    if ttl_steps is None:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(occupied & (last_seen < step - ttl_steps))


def lfu_victims(occupied: np.ndarray, count: np.ndarray, last_seen: np.ndarray,
                protected: np.ndarray, n: int, slot_key: np.ndarray | None = None) -> np.ndarray:
    """LFU: the ``n`` occupied, unprotected slots with the lowest count (older last_seen first on ties,
    then lower id when ``slot_key`` (slot -> id) is given).

    With ``slot_key`` the choice depends only on (id, count, last_seen), not on which slot holds
    which id, so a shard restored from a version (other slots) evicts exactly the same rows.
    """
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    eligible = occupied.copy()
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
    tied = tied[np.argsort(slot_key[tied], kind="stable")[:n - len(below)]]
    return np.concatenate([below, tied])
