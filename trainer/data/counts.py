"""Counts of a validation run, per file and in total, and the loud-failure check.

Per file and in total::

    rows_in == rows_good + rows_dead + rows_duplicate + rows_late

(``rows_late``: late events deferred to the next data file in a stream; they are
trained there, not lost). A file is *refused* as a whole when it cannot be read or lacks
the header the spec expects (``error`` says why), and *incomplete* when it cannot be read
to its end (``unreadable``: a truncated or half-copied file, to be retried, never marked
complete).

``check_file_report(report, max_dead_share)`` raises :class:`FileQualityError` when more
than that share of a file's rows was dead-lettered (the usual cause: the wrong spec), or
when the file was refused. Warnings (an empty file, a label of one class) are listed on
the report and printed, not raised.
"""

from __future__ import annotations

import dataclasses
from collections import Counter


@dataclasses.dataclass
class FileReport:
    """One input file's counts.

    >>> FileReport("day1.csv", rows_in=10, rows_good=2, rows_dead=8, by_reason=Counter({"unknown action": 8})).dead_share
    0.8
    """

    name: str
    rows_in: int = 0
    rows_good: int = 0
    rows_dead: int = 0
    rows_duplicate: int = 0
    rows_late: int = 0
    positives: int = 0  # good rows labelled 1
    by_reason: Counter = dataclasses.field(default_factory=Counter)
    error: str | None = None  # the file was refused (no header although the spec expects one): why
    unreadable: str | None = None  # the file could not be read to its end (e.g. still being copied): retry it later
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def dead_share(self) -> float:
        return self.rows_dead / self.rows_in if self.rows_in else 0.0

    @property
    def complete(self) -> bool:
        """Read to its end: a consumer may mark it complete in the ledger (else: retry it later)."""
        return self.error is None and self.unreadable is None

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_good + self.rows_dead + self.rows_duplicate + self.rows_late

    def finish(self) -> "FileReport":
        """Add the warnings that need the whole file."""
        if self.unreadable:
            self.warnings.append(f"unreadable, not complete: {self.unreadable}")
        elif self.error is None and self.rows_in == 0:
            self.warnings.append("empty input: no rows")
        elif self.rows_good and self.positives in (0, self.rows_good):
            cls = "1 (positive)" if self.positives else "0 (negative)"
            self.warnings.append(f"label has one class: all {self.rows_good:,} good rows are {cls}; AUC is undefined")
        return self

    def top_reasons(self, k: int = 3) -> str:
        return ", ".join(f"{r} {c:,}" for r, c in self.by_reason.most_common(k)) or "none"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "rows_in": self.rows_in,
            "rows_good": self.rows_good,
            "rows_dead": self.rows_dead,
            "rows_duplicate": self.rows_duplicate,
            "rows_late": self.rows_late,
            "positives": self.positives,
            "by_reason": dict(sorted(self.by_reason.items())),
            "error": self.error,
            "unreadable": self.unreadable,
            "complete": self.complete,
            "warnings": list(self.warnings),
        }

    def line(self) -> str:
        """One human line, e.g. for a trainer's per-file log."""
        text = (
            f"{self.name}: rows in {self.rows_in:,}, good {self.rows_good:,}, dead {self.rows_dead:,}, "
            f"duplicate {self.rows_duplicate:,}, late {self.rows_late:,}"
        )
        if self.error:
            text += f"; REFUSED: {self.error}"
        for w in self.warnings:
            text += f"; warning: {w}"
        return text


@dataclasses.dataclass
class ValidationReport:
    rows_in: int = 0
    rows_good: int = 0
    rows_dead: int = 0
    rows_duplicate: int = 0
    rows_late: int = 0
    files: int = 0
    files_unreadable: int = 0  # files that could not be read (to their end), or lack the header the spec expects
    by_reason: Counter = dataclasses.field(default_factory=Counter)
    per_file: list[FileReport] = dataclasses.field(default_factory=list)  # the latest reports (bounded)
    per_file_dropped: int = 0  # older reports dropped from per_file (their counts stay in the totals)
    files_warned: int = 0  # files with a warning, and files refused: over every report, dropped ones too
    files_refused: int = 0

    def add(self, report: FileReport, keep: int) -> None:
        """Keep ``report`` in ``per_file``, dropping the oldest beyond ``keep`` (a long stream)."""
        self.per_file.append(report)
        self.files_warned += bool(report.warnings)
        self.files_refused += bool(report.error)
        if len(self.per_file) > keep:
            drop = len(self.per_file) - keep
            del self.per_file[:drop]
            self.per_file_dropped += drop

    def as_dict(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_good": self.rows_good,
            "rows_dead": self.rows_dead,
            "rows_duplicate": self.rows_duplicate,
            "rows_late": self.rows_late,
            "files": self.files,
            "files_unreadable": self.files_unreadable,
            "by_reason": dict(sorted(self.by_reason.items())),
            "warnings": [f"{f.name}: {w}" for f in self.per_file for w in f.warnings],
            "refused": [f"{f.name}: {f.error}" for f in self.per_file if f.error],
            "files_warned": self.files_warned,
            "files_refused": self.files_refused,
            "per_file_dropped": self.per_file_dropped,
        }

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.rows_good + self.rows_dead + self.rows_duplicate + self.rows_late


class FileQualityError(RuntimeError):
    """A file was refused, or too much of it was dead-lettered; the message names the top reasons."""

    def __init__(self, report: FileReport, max_dead_share: float):
        self.report = report
        self.max_dead_share = max_dead_share
        if report.error:
            msg = f"{report.name} was refused: {report.error}"
        else:
            msg = (
                f"{report.name}: {report.rows_dead:,} of {report.rows_in:,} rows ({report.dead_share:.0%}) were "
                f"dead-lettered, more than the allowed {max_dead_share:.0%}; top reasons: {report.top_reasons()}. "
                "Is this the right spec for this file? (The dead-letter file has each row and its reason.)"
            )
        super().__init__(msg)

    def __reduce__(self):
        return (FileQualityError, (self.report, self.max_dead_share))


def check_file_report(report: FileReport, max_dead_share: float = 0.5) -> FileReport:
    """Raise FileQualityError if the file was refused or more than ``max_dead_share`` of its
    rows were dead-lettered; return the report otherwise (its warnings are for the caller to print)."""
    if report.error or report.dead_share > max_dead_share:
        raise FileQualityError(report, max_dead_share)
    return report
