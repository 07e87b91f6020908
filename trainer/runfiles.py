"""A run directory's files, and the driver-side follower of its metrics.

    RUN_DIR/metrics.jsonl      one JSON record per data file (progressive AUC, throughput, ...)
    RUN_DIR/ledger.json        the data ledger: which data files, how many rows of each
    RUN_DIR/dead-letter.jsonl  every rejected row with its reason
    RUN_DIR/dense.pt           the core's state at a clean end (dense params, optimizer, statistics)
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.json"

    @property
    def dead_letter(self) -> Path:
        return self.root / "dead-letter.jsonl"

    @property
    def dense(self) -> Path:
        return self.root / "dense.pt"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name and a rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class MetricsFollower(threading.Thread):
    """Tails a run's metrics.jsonl in the driver and hands each new record to ``on_record(i, record)``."""

    def __init__(self, path: Path, on_record, poll_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="freshrec-metrics")
        self.path, self.on_record, self.poll_s = path, on_record, poll_s
        self._stop_event = threading.Event()
        self._seen = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.drain()
            self._stop_event.wait(self.poll_s)

    def drain(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        complete = text[: text.rfind("\n") + 1].splitlines()  # a line still being written waits
        for line in complete[self._seen:]:
            self._seen += 1
            self.on_record(self._seen, json.loads(line))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.drain()
