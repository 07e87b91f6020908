"""The invariants: what a run left behind, against the data contract and against a fault-free reference.

:func:`observe` reads a finished run from the outside (no trainer imports): the newest committed
version's manifest (``model_digest``, ``data_files``, the ledger), ``RUN_DIR/metrics.jsonl``
(one record per data file trained: ``examples``, ``examples_trained``, ``rows_dead``,
``rows_late``), ``RUN_DIR/dead-letter.jsonl`` (every rejected row with its reason), the
checksums of every committed version, and leftover temporary files. :func:`check` compares

* the reference run with :func:`bench.chaos.streams.expected` (``contract``: the data layer
  does what docs/data.md and DESIGN.md promise on a dirty stream),
* the faulted run with the reference (``digest``, ``counts``: faults change nothing),
* and the faulted run on its own (``exactly_once``, ``balance``, ``verify``, ``temp_files``,
  ``liveness``).

Each broken invariant is a :class:`Violation` (invariant, file, what was wanted, what was found).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from bench.chaos.streams import R_FUTURE, R_LATE, R_MISSING, R_UNKNOWN_ACTION, FileExpect

INVARIANTS = (
    "liveness",
    "contract",
    "digest",
    "counts",
    "exactly_once",
    "balance",
    "verify",
    "temp_files",
    "drain_idempotent",
    "orphans",
)
TEMP_NAME = re.compile(r"(\.tmp($|-)|\.tmp-[0-9a-f]+$|^\..*\.tmp$)")


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    file: str
    want: object
    got: object
    note: str = ""

    def line(self) -> str:
        where = f" {self.file}:" if self.file else ""
        return f"{self.invariant}:{where} want {self.want!r}, got {self.got!r}" + (
            f" ({self.note})" if self.note else ""
        )


@dataclasses.dataclass
class FileSeen:
    """One data file as a finished run shows it."""

    name: str
    records: int = 0  # metrics records (trainings) of this name
    examples: int = 0  # rows scored and trained with it, deferred rows it carried included (last record)
    trained: int = 0  # examples_trained (last record)
    trained_total: int = 0  # over every record of this name
    deferred: int = 0  # rows_late
    rows_dead_metric: int = 0
    ledger_rows: int | None = None
    ledger_entries: int = 0  # ledger entries under this name (different shas)
    ledger_complete: int = 0  # entries of bytes taken in full (a refusal of changed bytes is not one)
    ledger_refused: int = 0  # entries refusing bytes that changed after consumption (status "changed")
    dead: dict = dataclasses.field(default_factory=dict)  # expectation's reason -> rows (dead letters, unique)
    duplicate: int = 0

    def counts(self) -> tuple:
        return (
            self.records,
            self.trained,
            self.deferred,
            self.ledger_rows,
            tuple(sorted(self.dead.items())),
            self.duplicate,
        )


@dataclasses.dataclass
class Observation:
    latest: int | None = None
    model_digest: str | None = None
    data_files: tuple = ()
    files: dict = dataclasses.field(default_factory=dict)  # name -> FileSeen
    order: list = dataclasses.field(default_factory=list)  # metrics records' file names, in order
    verify_problems: dict = dataclasses.field(default_factory=dict)  # version -> [problems]
    temp_files: list = dataclasses.field(default_factory=list)
    versions: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["files"] = {k: dataclasses.asdict(v) for k, v in self.files.items()}
        return d


def reason_category(reason: str) -> str:
    """The system's dead-letter reason, named as the expectation names it."""
    r = reason.lower()
    if "future" in r:
        return R_FUTURE
    if "duplicate" in r:
        return "duplicate"
    if "late" in r:
        return R_LATE
    if "unknown action" in r:
        return R_UNKNOWN_ACTION
    if "missing" in r:
        return R_MISSING
    return r


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a SIGKILL
    return out


def observe_files(metrics: list[dict], dead_letters: list[dict], ledger_entries: list[dict]) -> dict[str, FileSeen]:
    """Per data file: metrics records, the ledger's entries, and the dead letters (unique by file and row)."""
    files: dict[str, FileSeen] = {}

    def get(name: str) -> FileSeen:
        return files.setdefault(name, FileSeen(name))

    for rec in metrics:
        f = get(rec["file"])
        f.records += 1
        f.examples = int(rec.get("examples", 0))
        f.trained = int(rec.get("examples_trained", rec.get("examples", 0)))
        f.trained_total += f.trained
        f.deferred = int(rec.get("rows_late", 0))
        f.rows_dead_metric = int(rec.get("rows_dead", 0))
    for e in ledger_entries:
        f = get(e["file"])
        f.ledger_entries += 1
        if e.get("status", "ok") != "ok":  # a refusal (0 rows, never trained): not a consumption of the name
            f.ledger_refused += 1
            continue
        f.ledger_complete += bool(e.get("complete"))
        f.ledger_rows = int(e["rows"]) if f.ledger_rows is None else max(f.ledger_rows, int(e["rows"]))
    seen: dict[str, dict[int, str]] = defaultdict(dict)
    for d in dead_letters:
        name = Path(str(d.get("source", ""))).name
        seen[name][int(d.get("row", -1))] = reason_category(str(d.get("reason", "")))
    for name, rows in seen.items():
        f = get(name)
        by = Counter(rows.values())
        f.duplicate = by.pop("duplicate", 0)
        f.dead = dict(sorted(by.items()))
    return files


CHANGED = "changed after consumption"  # trainer.data.reasons.CHANGED_FILE: a data file rewritten after it was consumed


def check_contract(expect: list[FileExpect], seen: dict[str, FileSeen], who: str = "reference") -> list[Violation]:
    """A run against the data contract: per file what is trained, dead, duplicate, deferred."""
    out: list[Violation] = []
    names = set()
    refused = {e.name for e in expect if e.refused}
    for e in expect:
        names.add(e.name)
        f = seen.get(e.name)
        if e.refused:  # exactly_once checks that a replaced file is never trained again; here: refused loudly
            if f is None or f.dead.get(CHANGED, 0) < 1:
                out.append(Violation("contract", e.name, f"a dead-letter line '{CHANGED}'", "none", who))
            continue
        if f is None or f.records == 0:
            out.append(Violation("contract", e.name, "consumed", "never trained", who))
            continue
        if e.uncertain:
            continue
        for field, want, got in (
            ("rows_in", e.rows_in, f.ledger_rows),
            ("trained", e.trained, f.trained),
            ("deferred", e.deferred, f.deferred),
            ("duplicate", e.duplicate, f.duplicate),
            # the refusal of a later rewrite is dead-lettered under the same name: not this consumption's rows
            (
                "dead",
                dict(sorted(e.dead.items())),
                {k: v for k, v in f.dead.items() if not (k == CHANGED and e.name in refused)},
            ),
        ):
            if want != got:
                out.append(Violation("contract", e.name, {field: want}, {field: got}, who))
    for name, f in seen.items():
        if name not in names and f.records:
            out.append(Violation("contract", name, "not a data file of the stream", f"trained {f.records}x", who))
    return out


def check_exactly_once(
    expect: list[FileExpect], seen: dict[str, FileSeen], final_sizes: dict[str, int]
) -> list[Violation]:
    """Each data file trained once; a rewritten or slowly written file never trained a second time."""
    out = []
    for name, f in seen.items():
        if f.records > 1:
            out.append(
                Violation(
                    "exactly_once", name, "trained once", f"trained {f.records} times ({f.trained_total} rows in all)"
                )
            )
        if f.ledger_complete > 1:
            out.append(
                Violation(
                    "exactly_once",
                    name,
                    "one complete ledger entry",
                    f"{f.ledger_complete} complete entries (different bytes under one name)",
                )
            )
    for e in expect:
        f = seen.get(e.name)
        if e.uncertain and f is not None and f.ledger_rows is not None and f.ledger_rows > final_sizes.get(e.name, 0):
            out.append(
                Violation("exactly_once", e.name, f"<= {final_sizes.get(e.name)} rows read", f"{f.ledger_rows} rows")
            )
    return out


def check_balance(seen: dict[str, FileSeen], order: list[str]) -> list[Violation]:
    """rows_in == good + dead + duplicate + deferred per file, with good = examples - the deferred rows carried in."""
    out, carried = [], 0
    for name in order:
        f = seen[name]
        good = f.examples - carried
        # the refusal of a later rewrite is dead-lettered under the same name: not a row of this consumption
        dead = sum(n for reason, n in f.dead.items() if reason != CHANGED)
        if f.ledger_rows is not None and f.ledger_rows != good + dead + f.duplicate + f.deferred:
            out.append(
                Violation(
                    "balance",
                    name,
                    {"rows_in": f.ledger_rows},
                    {"good": good, "dead": dead, "duplicate": f.duplicate, "deferred": f.deferred},
                )
            )
        carried = f.deferred
    return out


def compare(ref: Observation, run: Observation, timing_dependent: bool) -> list[Violation]:
    """The faulted run against the reference: the same model, the same files, the same counts."""
    out = []
    if not timing_dependent:
        if ref.model_digest != run.model_digest:
            out.append(Violation("digest", "", ref.model_digest, run.model_digest, "final model_digest"))
        # a version whose write failed (a store error) leaves its files to the next one: the faulted run's latest
        # version may carry files before the reference's, never other ones (each file once: check_exactly_once)
        want, got = tuple(ref.data_files), tuple(run.data_files)
        if len(got) < len(want) or got[len(got) - len(want) :] != want:
            out.append(
                Violation(
                    "counts",
                    "",
                    list(want),
                    list(got),
                    "data files of the latest version (the reference's, after any a failed version left to it)",
                )
            )
    for name in sorted(set(ref.files) | set(run.files)):
        a, b = ref.files.get(name), run.files.get(name)
        ca = a.counts() if a else None
        cb = b.counts() if b else None
        if ca != cb and not (timing_dependent and a is not None and b is not None):
            fields = ("records", "trained", "deferred", "rows_in", "dead", "duplicate")
            if ca is not None and cb is not None:
                diff = {k: (x, y) for k, x, y in zip(fields, ca, cb) if x != y}
                out.append(
                    Violation("counts", name, {k: v[0] for k, v in diff.items()}, {k: v[1] for k, v in diff.items()})
                )
            else:
                out.append(Violation("counts", name, ca, cb))
    return out


def check_store(obs: Observation) -> list[Violation]:
    out = [
        Violation("verify", f"v{v}", [], problems) for v, problems in sorted(obs.verify_problems.items()) if problems
    ]
    out += [Violation("temp_files", path, "none", "left behind") for path in obs.temp_files]
    return out


def is_temp_name(name: str) -> bool:
    return bool(TEMP_NAME.search(name))
