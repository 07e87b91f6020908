"""The progressive-validation metrics of a version, for ModelInfo, from the run's ``metrics.jsonl``.

The trainer scores every data file before it trains on it and appends one JSON line per file
to ``RUN_DIR/metrics.jsonl`` (``{"file", "auc", "log_loss", "cumulative_auc", ...}``). A version's
metrics are those of the newest data file in its ledger::

    {"progressive_auc": 0.61, "progressive_log_loss": 0.33, "cumulative_auc": 0.64, "files_validated": 12}

A missing or partly written file gives what can be read (never an error: serving goes on).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence


def validation_metrics(path: str | None, data_files: Sequence[str]) -> dict[str, float]:
    if not path or not data_files:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    wanted = set(data_files)
    by_file = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(rec, dict) and rec.get("file") in wanted:
            by_file[rec["file"]] = rec
    last = by_file.get(data_files[-1])
    out: dict[str, float] = {"files_validated": float(len(by_file))}
    if last is not None:
        for key, name in (
            ("auc", "progressive_auc"),
            ("log_loss", "progressive_log_loss"),
            ("cumulative_auc", "cumulative_auc"),
        ):
            v = last.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[name] = float(v)
    return out
