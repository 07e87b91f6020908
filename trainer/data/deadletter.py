"""The dead-letter file: one JSON object per rejected row, with its source, row and reason.

{"source": "day1.csv", "row": 17, "reason": "unknown action", "detail": "behavior", "raw": "1,2,3,clik,1511658000"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO


def dead_letter_lines(source: str, rows, reasons, details, raws) -> list[str]:
    """The JSON Lines (without newlines) of rejected rows, as a dead-letter file holds them."""
    return [
        json.dumps(
            {"source": source, "row": int(r), "reason": str(reason), "detail": d, "raw": raw}, ensure_ascii=False
        )
        for r, reason, d, raw in zip(rows, reasons, details, raws)
    ]


class DeadLetterWriter:
    """Appends rejected rows to a JSON Lines file (opened lazily, flushed per write)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._fh: IO[str] | None = None
        self.written = 0

    def write(self, source: str, rows, reasons, details, raws) -> None:
        if self.path is None:
            self.written += len(rows)
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        lines = dead_letter_lines(source, rows, reasons, details, raws)
        if lines:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
        self.written += len(lines)

    def size(self) -> int:
        """Bytes in the file now (every write is flushed): what a version records of it (-1: no file kept)."""
        if self.path is None:
            return -1
        return self.path.stat().st_size if self.path.exists() else 0

    def rewind(self, size: int) -> None:
        """Drop what was appended after a version recorded ``size`` bytes: a restart from that version
        replays those rows and writes them again, so every rejected row is in the file once."""
        if self.path is None or size < 0 or not self.path.exists() or self.path.stat().st_size <= size:
            return
        self.close()
        with open(self.path, "r+b") as fh:
            fh.truncate(size)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "DeadLetterWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_dead_letters(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
