"""A shard actor's metrics (defined in :mod:`common.metrics`): call latencies and its counters.

Latencies are observed on every pull and push; the shard's counters (``EmbeddingShard.stats()``)
are turned into counter increments at most once per ``every_s`` seconds, so a hot push path
costs one dictionary walk a second, not one per call. Plain Python: tested without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from common import metrics

# shard stats key -> (metric, extra tags)
COUNTERS: dict[str, tuple[str, dict]] = {
    "rows_pulled": ("freshrec_ps_rows_pulled_total", {}),
    "rows_pushed": ("freshrec_ps_rows_pushed_total", {}),
    "stale_pushes": ("freshrec_ps_stale_pushes_total", {}),
    "dropped_stale_pushes": ("freshrec_ps_dropped_pushes_total", {}),
    "evicted_ttl": ("freshrec_ps_evictions_total", {"reason": "ttl"}),
    "evicted_lfu": ("freshrec_ps_evictions_total", {"reason": "lfu"}),
    "refused_rows": ("freshrec_ps_full_table_refusals_total", {}),
    "lease_timeouts": ("freshrec_ps_lease_timeouts_total", {}),
}


class ShardTelemetry:
    """Emits one shard's series; ``record`` and ``clock`` are knobs for tests."""

    def __init__(
        self,
        shard: int,
        every_s: float = 1.0,
        record: Callable = metrics.record,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard, self.every_s, self._record, self._clock = str(shard), every_s, record, clock
        self._last: dict[str, int] = {}
        self._next = 0.0

    def latency(self, kind: str, seconds: float) -> None:
        """``kind`` is "pull" or "push"."""
        self._record(f"freshrec_ps_{kind}_latency_seconds", seconds, shard=self.shard)

    def counters(self, stats: Callable[[], dict], force: bool = False) -> None:
        """Increments since the last call (a restore that lowers a counter starts it afresh)."""
        now = self._clock()
        if not force and now < self._next:
            return
        self._next = now + self.every_s
        current = stats()
        for key, (name, tags) in COUNTERS.items():
            value = int(current.get(key, 0))
            delta = value - self._last.get(key, 0)
            if delta < 0:  # the shard was restored: its counters restarted
                delta = value
            if delta:
                self._record(name, delta, shard=self.shard, **tags)
            self._last[key] = value
        self._record("freshrec_ps_resident_rows", int(current.get("rows", 0)), shard=self.shard)
