"""A replica's metrics (defined in :mod:`common.metrics`): per request, per poll, per swap.

    t = ReplicaTelemetry()                      # replica tag: host-pid (one per replica process)
    t.request("Score", "OK", 0.0021)            # freshrec_serving_request_latency_seconds{method}
                                                # freshrec_serving_requests_total{method,code}
    t.poll(served=12, target=13)                # freshrec_serving_loaded_version, _version_lag_versions
    t.swap(manifest_extra, now)                 # freshrec_serving_freshness_seconds
    t.load_failure("transient")                 # freshrec_serving_load_failures_total{kind}

Without Ray (unit tests, the plain grpcio server outside Ray) the calls check their arguments
and send nothing; ``record`` is injectable for tests.
"""

from __future__ import annotations

import os
import socket
import time

from common.metrics import record as _record


def replica_name() -> str:
    """This replica's tag: ``host-pid`` (one process per Ray Serve replica)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ReplicaTelemetry:
    def __init__(self, replica: str | None = None, record=_record) -> None:
        self.replica = replica or replica_name()
        self._record = record

    def request(self, method: str, code: str, seconds: float) -> None:
        self._record("freshrec_serving_request_latency_seconds", float(seconds), method=method)
        self._record("freshrec_serving_requests_total", 1, method=method, code=code)

    def poll(self, served: int | None, target: int | None) -> None:
        """After each poll: the served version and how far it is behind the one it should serve."""
        if served is None:
            return
        self._record("freshrec_serving_loaded_version", int(served), replica=self.replica)
        lag = max(0, int(target) - int(served)) if target is not None else 0
        self._record("freshrec_serving_version_lag_versions", lag, replica=self.replica)

    def swap(self, extra: dict | None, now: float | None = None) -> float | None:
        """A version was swapped in: freshness = now minus when its newest data file was taken by the
        trainer (``extra["freshness"]["newest_file_picked_up_at"]``). Returns it (None if unknown)."""
        picked = ((extra or {}).get("freshness") or {}).get("newest_file_picked_up_at")
        if not isinstance(picked, (int, float)) or isinstance(picked, bool):
            return None
        fresh = max(0.0, (time.time() if now is None else now) - float(picked))
        self._record("freshrec_serving_freshness_seconds", fresh, replica=self.replica)
        return fresh

    def load_failure(self, kind: str) -> None:
        """A version failed to load: ``transient`` (retried with backoff), ``corrupt`` (refused) or
        ``recheck`` (a refused version is looked at again)."""
        self._record("freshrec_serving_load_failures_total", 1, replica=self.replica, kind=kind)
