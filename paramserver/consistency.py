"""Bulk-synchronous step assembly (sync mode), plain Python and testable without Ray.

With W workers, the shard applies step s only once all W workers pushed step s, and it
applies the ranks' gradients concatenated in rank order (then duplicates are summed in
that order), so the result does not depend on arrival order: bit-identical runs.
"""

from __future__ import annotations

import numpy as np

from paramserver.errors import BadPushError
from paramserver.shard import PreparedPush


class SyncAggregator:
    """Collect the W pushes of each step; hand back complete steps in order.

    >>> agg = SyncAggregator(num_workers=2)
    >>> agg.add(1, 0, PreparedPush({}), next_step=0)
    []
    >>> [s for s, _ in agg.add(0, 0, PreparedPush({}), next_step=0)]
    [0]
    """

    def __init__(self, num_workers: int) -> None:
        self.num_workers = num_workers
        self._waiting: dict[int, dict[int, PreparedPush]] = {}

    def add(self, rank: int, step: int, push: PreparedPush, next_step: int) -> list[tuple[int, PreparedPush]]:
        """Record ``rank``'s push for ``step``; return the steps now complete, merged, in order."""
        if not 0 <= rank < self.num_workers:
            raise BadPushError("*", f"rank {rank} is outside [0, num_workers={self.num_workers})")
        if step is None or step < next_step:
            raise BadPushError(
                "*",
                f"sync push for step {step}, but steps before {next_step} are already "
                "applied; steps must count up from 0 without gaps",
            )
        ranks = self._waiting.setdefault(step, {})
        if rank in ranks:
            raise BadPushError("*", f"rank {rank} already pushed step {step}")
        ranks[rank] = push
        ready = []
        s = next_step
        while len(self._waiting.get(s, ())) == self.num_workers:
            ready.append((s, merge_in_rank_order(self._waiting.pop(s))))
            s += 1
        return ready


def merge_in_rank_order(by_rank: dict[int, PreparedPush]) -> PreparedPush:
    """Concatenate the ranks' (ids, grads) per table in rank order and sum duplicates in that order."""
    from paramserver.tbe import sum_duplicates

    ranks = sorted(by_rank)
    if len(ranks) == 1:
        return by_rank[ranks[0]]
    names: list[str] = []
    for r in ranks:
        names += [n for n in by_rank[r].tables if n not in names]
    out = {}
    for name in names:
        parts = [by_rank[r].tables[name] for r in ranks if name in by_rank[r].tables]
        ids = np.concatenate([p[0] for p in parts])
        grads = np.concatenate([p[1] for p in parts])
        out[name] = sum_duplicates(ids, grads)
    return PreparedPush(out)
