"""freshrec's metrics: every series defined once, exported through Ray's metrics API (Prometheus).

Each package emits where the work happens (``paramserver/actor.py``, ``trainer/telemetry.py``,
``serving/``) by name::

    from common import metrics
    metrics.record("freshrec_ps_pull_latency_seconds", 0.0031, shard="0")
    metrics.record("freshrec_trainer_dead_letters_total", 12, reason="unknown action")

``record`` adds to a counter, sets a gauge or observes a histogram, by the definition's kind.
The Ray metric objects are built lazily, once per process. Where Ray is not initialised (unit
tests, ``freshrec data validate``) ``record`` still checks the name and the tags but sends
nothing. Ray's agent on each node serves the series in the Prometheus text format on its
metrics export port (``ray start --metrics-export-port``, KubeRay's ``metrics`` port 8080);
Ray's agent exports each metric under the ``ray_`` namespace (``ray_freshrec_ps_pull_latency_seconds``)
and appends ``_total`` to a counter only when its name lacks it, so every counter here ends in
``_total``; histograms add ``_bucket``, ``_sum`` and ``_count`` (:func:`exported_names`).

Names follow ``freshrec_<component>_<noun>_<unit>``; tags are few and fixed (no ids, no
file names: every tag value multiplies the series Prometheus keeps).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import threading
from collections.abc import Mapping

NAME_RE = re.compile(
    r"^freshrec_(ps|trainer|versions|serving)_[a-z0-9_]+_(seconds|bytes|total|ratio|nats|"
    r"versions|version|per_second|rows)$"
)
KINDS = ("counter", "gauge", "histogram")
PROMETHEUS_PREFIX = "ray_"  # Ray's metrics agent exports every application metric as ray_<name>

# histogram boundaries (seconds)
_RPC_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PAUSE_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_WRITE_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_FRESH_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclasses.dataclass(frozen=True)
class MetricDef:
    """One series: its exported name, kind, description and the tag keys every sample must carry."""

    name: str
    kind: str
    description: str
    tags: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()  # histograms only

    def __post_init__(self) -> None:
        if not NAME_RE.match(self.name):
            raise ValueError(f"metric name {self.name!r} does not follow freshrec_<component>_<noun>_<unit>")
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters (and only counters) end in _total")
        if (self.kind == "histogram") != bool(self.boundaries):
            raise ValueError(f"{self.name}: histograms (and only histograms) have boundaries")


def _c(name, description, *tags):
    return MetricDef(name, "counter", description, tuple(tags))


def _g(name, description, *tags):
    return MetricDef(name, "gauge", description, tuple(tags))


def _h(name, description, boundaries, *tags):
    return MetricDef(name, "histogram", description, tuple(tags), tuple(boundaries))


DEFINITIONS: tuple[MetricDef, ...] = (
    # parameter server (paramserver/actor.py), per shard actor
    _h(
        "freshrec_ps_pull_latency_seconds",
        "Time a shard actor takes to answer a pull (sync mode: including the wait for the previous step)",
        _RPC_S,
        "shard",
    ),
    _h("freshrec_ps_push_latency_seconds", "Time a shard actor takes to apply or buffer a push", _RPC_S, "shard"),
    _c("freshrec_ps_rows_pulled_total", "Rows served by pulls", "shard"),
    _c("freshrec_ps_rows_pushed_total", "Rows updated by pushes", "shard"),
    _c("freshrec_ps_stale_pushes_total", "Async pushes older than the staleness bound", "shard"),
    _c("freshrec_ps_dropped_pushes_total", "Async pushes dropped for staleness", "shard"),
    _c("freshrec_ps_evictions_total", "Rows evicted from the id map", "shard", "reason"),
    _c(
        "freshrec_ps_full_table_refusals_total",
        "New ids refused a row: the table was full of this batch's and "
        "leased rows (they read zeros, their gradients are dropped)",
        "shard",
    ),
    _c(
        "freshrec_ps_lease_timeouts_total",
        "Leases on pulled rows released by their timeout, not by their step's push",
        "shard",
    ),
    _g("freshrec_ps_resident_rows", "Rows held by the shard (all tables)", "shard"),
    # training (trainer/telemetry.py, called by rank 0 per data file)
    _g("freshrec_trainer_examples_per_second", "Training throughput of the last data file"),
    _c("freshrec_trainer_examples_total", "Examples trained on"),
    _c("freshrec_trainer_data_files_total", "Data files consumed"),
    _g("freshrec_trainer_progressive_auc_ratio", "AUC of the last data file, scored before training on it"),
    _g("freshrec_trainer_progressive_logloss_nats", "Log-loss of the last data file, scored before training on it"),
    _g("freshrec_trainer_cumulative_auc_ratio", "Progressive AUC over every data file of the run"),
    _c("freshrec_trainer_dead_letters_total", "Rows sent to the dead-letter file", "reason"),
    _c("freshrec_trainer_late_rows_total", "Late events trained with a later data file (or dead-lettered)"),
    _g(
        "freshrec_trainer_state_entries_rows",
        "Entries a per-run in-memory structure of rank 0 holds (each bounded: issue 21), by structure "
        "(ledger_objects, ledger_compact, progressive_files, file_reports, decisions, pauses)",
        "structure",
    ),
    # model versions (trainer/versioning.py via trainer/telemetry.py)
    _h(
        "freshrec_versions_write_duration_seconds",
        "Time from a version cut to its commit (parts, manifest, LATEST)",
        _WRITE_S,
        "kind",
    ),
    _h("freshrec_versions_pause_seconds", "Training pause of a version cut (the shards' copies)", _PAUSE_S, "kind"),
    _g("freshrec_versions_size_bytes", "Bytes written by the last committed version", "kind"),
    _c("freshrec_versions_committed_total", "Versions committed", "kind"),
    _c("freshrec_versions_failed_total", "Version writes that failed (their changes go into the next version)"),
    _g("freshrec_versions_latest_version", "Number of the newest committed version"),
    _c("freshrec_versions_published_total", "Versions the publish gate let through to serving"),
    _c("freshrec_versions_held_total", "Versions the publish gate held back, by reason (checksum, auc_drop)", "reason"),
    _g("freshrec_versions_published_version", "Number of the newest published version (what replicas follow)"),
    # serving (defined here, emitted by serving/)
    _h("freshrec_serving_request_latency_seconds", "Time to answer one gRPC request", _RPC_S, "method"),
    _c(
        "freshrec_serving_requests_total",
        "gRPC requests answered, by status code (OK, INVALID_ARGUMENT, ...)",
        "method",
        "code",
    ),
    _g(
        "freshrec_serving_version_lag_versions",
        "Versions the replica is behind the one it should serve "
        "(pinned, else published, else latest committed; minus served)",
        "replica",
    ),
    _g("freshrec_serving_loaded_version", "Number of the version the replica serves", "replica"),
    _c(
        "freshrec_serving_load_failures_total",
        "Version loads that failed: transient (retried with backoff), "
        "corrupt (refused), recheck (a refused version looked at again)",
        "replica",
        "kind",
    ),
    _h(
        "freshrec_serving_freshness_seconds",
        "From a data file landing to a replica serving a version that holds it",
        _FRESH_S,
        "replica",
    ),
)

BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}

_lock = threading.Lock()
_built: dict[str, object] = {}  # name -> ray.util.metrics object, in this process
# Ray (2.60) drops a gauge series from the Prometheus endpoint about two export intervals after
# its last ``set`` (so that the gauges of dead workers go away). A gauge freshrec sets once per
# data file or per version would vanish between two files; each process therefore sets its
# gauges' last values again every GAUGE_REFRESH_S, so a live process keeps them visible.
GAUGE_REFRESH_S = 5.0
_gauges: dict[tuple, tuple[float, dict]] = {}  # (name, tags) -> (last value, tags)
_refresher: threading.Thread | None = None


def _ray_ready() -> bool:
    ray = sys.modules.get("ray")  # never import Ray just to find out it is not running
    return ray is not None and ray.is_initialized()


def _build(d: MetricDef):
    from ray.util import metrics as rm

    if d.kind == "counter":
        # Ray exports a Counter named X as X_total (and X) unless X ends in _total already
        return rm.Counter(d.name, description=d.description, tag_keys=d.tags)
    if d.kind == "gauge":
        return rm.Gauge(d.name, description=d.description, tag_keys=d.tags)
    return rm.Histogram(d.name, description=d.description, boundaries=list(d.boundaries), tag_keys=d.tags)


def _handle(d: MetricDef):
    m = _built.get(d.name)
    if m is None:
        with _lock:
            m = _built.get(d.name)
            if m is None:
                m = _built[d.name] = _build(d)
    return m


def check(name: str, value: float, tags: Mapping[str, str]) -> MetricDef:
    """The definition of ``name``; ValueError for an unknown name, wrong tags or a bad value."""
    d = BY_NAME.get(name)
    if d is None:
        raise ValueError(f"unknown metric {name!r}: define it in common/metrics.py DEFINITIONS")
    if set(tags) != set(d.tags):
        raise ValueError(f"{name}: tags must be exactly {sorted(d.tags)}, got {sorted(tags)}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name}: value must be a number, got {value!r}")
    if d.kind == "counter" and value < 0:
        raise ValueError(f"{name}: a counter only goes up, got {value}")
    return d


def record(name: str, value: float = 1.0, **tags: str) -> bool:
    """Add ``value`` to a counter, set a gauge to it, or observe it in a histogram.

    Returns whether it was sent (False without Ray, or for a NaN, which Prometheus cannot
    aggregate). Tag values are turned into strings.
    """
    tags = {k: str(v) for k, v in tags.items()}
    d = check(name, value, tags)
    if isinstance(value, float) and math.isnan(value):
        return False
    if d.kind == "counter" and value == 0:
        return False
    if not _ray_ready():
        return False
    m = _handle(d)
    if d.kind == "counter":
        m.inc(value, tags=tags or None)
    elif d.kind == "gauge":
        m.set(value, tags=tags or None)
        _keep_gauge(d.name, value, tags)
    else:
        m.observe(value, tags=tags or None)
    return True


def _keep_gauge(name: str, value: float, tags: dict) -> None:
    global _refresher
    with _lock:
        _gauges[(name, tuple(sorted(tags.items())))] = (value, tags)
        if _refresher is None or not _refresher.is_alive():
            _refresher = threading.Thread(target=_refresh_gauges, name="freshrec-gauges", daemon=True)
            _refresher.start()


def _refresh_gauges() -> None:
    import time

    while True:
        time.sleep(GAUGE_REFRESH_S)
        if not _ray_ready():
            continue
        with _lock:
            items = list(_gauges.items())
        for (name, _), (value, tags) in items:
            try:
                _handle(BY_NAME[name]).set(value, tags=tags or None)
            except Exception:
                pass


def names(component: str | None = None) -> list[str]:
    """Every defined name (of one component: ps, trainer, versions, serving)."""
    return [d.name for d in DEFINITIONS if component is None or d.name.startswith(f"freshrec_{component}_")]


def exported_names(d: MetricDef, prefix: str = PROMETHEUS_PREFIX) -> list[str]:
    """The series names Prometheus sees for ``d``: Ray's ``ray_`` prefix, and for histograms
    ``_bucket``, ``_sum`` and ``_count``."""
    if d.kind == "histogram":
        return [f"{prefix}{d.name}_bucket", f"{prefix}{d.name}_sum", f"{prefix}{d.name}_count"]
    return [f"{prefix}{d.name}"]


__all__ = ["BY_NAME", "DEFINITIONS", "PROMETHEUS_PREFIX", "MetricDef", "check", "exported_names", "names", "record"]
