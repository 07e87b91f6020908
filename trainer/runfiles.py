"""A run directory's files, and the driver-side follower of its metrics.

RUN_DIR/metrics.jsonl      one JSON record per data file (progressive AUC, throughput, ...)
RUN_DIR/ledger.json        the data ledger: which data files, how many rows of each
RUN_DIR/dead-letter.jsonl  every rejected row with its reason
RUN_DIR/dense.pt           the core's state at a clean end (dense params, optimizer, statistics)
RUN_DIR/versions/          the version store (unless the run names another store URL)
RUN_DIR/STOP               asks the workers to commit a final version and stop (Ctrl-C)
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

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def stop(self) -> Path:
        return self.root / "STOP"


def request_stop(run_dir: Path) -> None:
    """Ask a run's workers to stop at the next data-file boundary after committing a final version."""
    RunPaths(Path(run_dir)).stop.write_text("stop requested\n")


def keep_metrics_of(path: Path, files: set[str]) -> int:
    """Keep only the metrics records of ``files`` (those a restored version has consumed); the
    replaced file is kept beside as ``metrics.jsonl.<time>.replaced``. Returns the records kept."""
    import time

    if not path.exists():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("file") in files]
    if len(kept) != len(lines):
        path.rename(path.with_name(f"{path.name}.{int(time.time())}.replaced"))
        write_atomic(path, "".join(ln + "\n" for ln in kept))
    return len(kept)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name and a rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class MetricsFollower(threading.Thread):
    """Tails a run's metrics.jsonl in the driver and hands each new record to ``on_record(i, record)``."""

    def __init__(self, path: Path, on_record, poll_s: float = 0.2, skip: int = 0) -> None:
        super().__init__(daemon=True, name="freshrec-metrics")
        self.path, self.on_record, self.poll_s = path, on_record, poll_s
        self._stop_event = threading.Event()
        self._seen = skip  # records already there (a resumed run) are not reported again

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.drain()
            self._stop_event.wait(self.poll_s)

    def drain(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text()
        complete = text[: text.rfind("\n") + 1].splitlines()  # a line still being written waits
        for line in complete[self._seen :]:
            self._seen += 1
            self.on_record(self._seen, json.loads(line))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.drain()
