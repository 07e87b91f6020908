"""The trainer's metrics (defined in :mod:`common.metrics`): one call per data file, one per version.

Called by rank 0 of the Ray Train workers (``trainer/worker.py``) and by the version writer
(``trainer/versioning.py``); without Ray the calls check their arguments and send nothing.
"""

from __future__ import annotations

import math

from common.metrics import record


def record_file(rec: dict, report) -> None:
    """A data file is done: ``rec`` is its metrics.jsonl record, ``report`` its data FileReport."""
    record("freshrec_trainer_data_files_total", 1)
    record("freshrec_trainer_examples_total", int(rec.get("examples_trained", 0)))
    for name, key in (
        ("freshrec_trainer_examples_per_second", "examples_per_s"),
        ("freshrec_trainer_progressive_auc_ratio", "auc"),
        ("freshrec_trainer_progressive_logloss_nats", "log_loss"),
        ("freshrec_trainer_cumulative_auc_ratio", "cumulative_auc"),
    ):
        value = rec.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            record(name, float(value))
    for reason, count in sorted(getattr(report, "by_reason", {}).items()):
        record("freshrec_trainer_dead_letters_total", int(count), reason=reason)
    record("freshrec_trainer_late_rows_total", int(getattr(report, "rows_late", 0)))


def record_version(manifest, pause_ms: float, write_s: float) -> None:
    """A version is committed: its kind, size, the training pause of its cut and its write time."""
    kind = str(manifest.kind)
    record("freshrec_versions_committed_total", 1, kind=kind)
    record("freshrec_versions_size_bytes", int(manifest.bytes), kind=kind)
    record("freshrec_versions_pause_seconds", pause_ms / 1e3, kind=kind)
    record("freshrec_versions_write_duration_seconds", write_s, kind=kind)
    record("freshrec_versions_latest_version", int(manifest.version))


def record_version_failure() -> None:
    record("freshrec_versions_failed_total", 1)


def record_gate(decision, version: int) -> None:
    """The publish gate judged ``version``: published, or held back (by reason code)."""
    if decision.publish:
        record("freshrec_versions_published_total", 1)
        record("freshrec_versions_published_version", int(version))
    else:
        record("freshrec_versions_held_total", 1, reason=decision.code)


def record_state(sizes: dict[str, int]) -> None:
    """Entries held by each per-run structure (bounded; issue 21): ``{"ledger_objects": 256, ...}``."""
    for structure, n in sorted(sizes.items()):
        record("freshrec_trainer_state_entries_rows", int(n), structure=structure)
