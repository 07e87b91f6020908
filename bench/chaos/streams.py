"""Seeded dirty streams for the fault harness, and what a correct system must make of them.

A :class:`StreamPlan` is a list of *waves*: the data-file operations the harness performs on
the incoming directory, one wave after the stream has consumed the previous one. It is cut
from a real log (the shared Taobao excerpt; MovieLens or a synthetic log when it is absent)
and carries the anomalies that :class:`Anomalies` switches on:

* ``duplicates``   the first rows of a data file repeat rows of the file before it (across the
                   file boundary, so across a version boundary: a restart in between must not
                   train them twice)
* ``late_file``    one file's rows are held back and land in a later wave, under their natural
                   name, which sorts before files already consumed
* ``future_ts``    one row carries a timestamp decades ahead (2098: inside the old 2100 sanity range)
* ``dead_rows``    a few malformed rows (unknown action, missing field)
* ``in_progress``  the first file of the next wave appears half written under an in-progress
                   name (``.x``, ``_x``, ``x.tmp``, ``x.inprogress``, ``x._COPYING_``) and is
                   completed and renamed only in that next wave
* ``replaced``     a file consumed in an earlier wave is rewritten with other bytes
* ``slow_write``   a file is written in chunks with pauses while the stream runs (appended after
                   it was first seen): timing-dependent, so its expectation is "at most once"

:func:`expected` is an independent model of the data contract (docs/data.md, DESIGN.md's
exactly-once guarantee, issue 19): per consumed file ``rows_in``, ``good``, ``dead`` by reason,
``duplicate``, ``deferred`` and the rows ``trained`` with it. It is written from the contract,
not from ``trainer/data``: where the code and the contract differ, the harness reports it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np

TAOBAO = Path("/work/shared/data/taobao_userbehavior/UserBehavior_timeordered_96k.csv")
MOVIELENS = Path("/work/shared/data/ml-100k/ml-100k.inter")
ACTIONS = ("pv", "cart", "fav", "buy")
POSITIVE = ("cart", "fav", "buy")
FUTURE_TS = 4_071_000_000  # 2099-01-01: inside the old [1990, 2100) sanity range, decades ahead
IN_PROGRESS = (".{}", "_{}", "{}.tmp", "{}.inprogress", "{}._COPYING_")

# reasons as the expectation names them; the checker matches the system's reason strings to these
R_UNKNOWN_ACTION = "unknown action"
R_MISSING = "missing field"
R_FUTURE = "future"
R_LATE = "late"

SPEC_YAML = """\
# The fault harness's spec: the Taobao log (user_id,item_id,category_id,behavior,ts), streamed.
name: chaos_taobao
format: csv
header: false
max_dead_share: 0.9
columns:
  - {{name: user_id, type: id}}
  - {{name: item_id, type: id}}
  - {{name: category_id, type: id}}
  - {{name: behavior, type: string, max_len: 8}}
  - {{name: ts, type: timestamp, unit: s}}
time_column: ts
event_id: {{derive: [user_id, item_id, behavior, ts]}}
actions: {{column: behavior, values: [pv, cart, fav, buy]}}
label: {{actions: [cart, fav, buy]}}
lateness: {{allowed_s: {allowed_s}, policy: {policy}}}
sparse:
  - {{name: user, column: user_id, dim: 8}}
  - {{name: item, column: item_id, dim: 8}}
  - {{name: category, column: category_id, dim: 8}}
dense:
  - {{name: hour, column: ts, transform: hour_of_day}}
"""


@dataclasses.dataclass(frozen=True)
class Anomalies:
    duplicates: bool = True
    late_file: bool = True
    future_ts: bool = True
    dead_rows: bool = True
    in_progress: bool = True
    replaced: bool = True
    slow_write: bool = False

    @classmethod
    def none(cls) -> Anomalies:
        return cls(**{f.name: False for f in dataclasses.fields(cls)})

    @classmethod
    def parse(cls, text: str) -> Anomalies:
        """``all``, ``none``, or a comma list of names (``duplicates,late_file``); ``-name`` removes one from all."""
        text = text.strip()
        if text in ("", "none"):
            return cls.none()
        names = {f.name for f in dataclasses.fields(cls)}
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if text == "all" or all(p.startswith("-") for p in parts):
            on = dict.fromkeys(names, True)
        else:
            on = dict.fromkeys(names, False)
        for p in parts:
            if p == "all":
                continue
            name = p.lstrip("-")
            if name not in names:
                raise ValueError(f"unknown anomaly {name!r}: choose from {', '.join(sorted(names))}")
            on[name] = not p.startswith("-")
        return cls(**on)

    def names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]


@dataclasses.dataclass(frozen=True)
class FileOp:
    """One operation on the incoming directory.

    kind: ``write`` (temp name + rename: the writer contract), ``replace`` (rewrite a consumed
    file's bytes in place), ``partial`` (write ``data`` under the in-progress ``temp`` name),
    ``finish`` (complete ``temp`` with ``data`` and rename it to ``name``), ``slow`` (write
    ``data`` under ``name`` in ``chunks`` appends while the stream runs)."""

    kind: str
    name: str
    data: bytes
    temp: str = ""
    chunks: int = 1


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    seed: int
    anomalies: Anomalies
    waves: tuple[tuple[FileOp, ...], ...]
    allowed_s: int
    policy: str  # defer | dead_letter
    source: str

    def spec_yaml(self) -> str:
        return SPEC_YAML.format(allowed_s=self.allowed_s, policy=self.policy)

    @property
    def timing_dependent(self) -> bool:
        return any(op.kind == "slow" for wave in self.waves for op in wave)

    def describe(self) -> list[str]:
        out = []
        for i, wave in enumerate(self.waves):
            out.append(
                f"wave {i}: " + ", ".join(f"{op.kind} {op.temp + '->' if op.temp else ''}{op.name}" for op in wave)
            )
        return out


# ----------------------------------------------------------------------------- the log
def load_log(max_rows: int = 96_168) -> tuple[list[str], str]:
    """Lines ``user,item,category,behavior,ts`` in time order, and where they came from."""
    if TAOBAO.exists():
        with open(TAOBAO) as fh:
            lines = [ln.rstrip("\n") for _, ln in zip(range(max_rows), fh)]
        return lines, str(TAOBAO)
    if MOVIELENS.exists():  # user, item, rating, ts -> user,item,genre 0,behavior by rating,ts
        rows = MOVIELENS.read_text().splitlines()[1 : max_rows + 1]
        parsed = sorted((int(float(r.split("\t")[3])), r.split("\t")) for r in rows)
        lines = [f"{p[0]},{p[1]},0,{'buy' if float(p[2]) >= 4 else 'pv'},{ts}" for ts, p in parsed]
        return lines, str(MOVIELENS)
    rng = np.random.default_rng(0)  # synthetic: the same shape
    ts = 1_511_658_000 + np.sort(rng.integers(0, 7200, max_rows))
    acts = rng.choice(ACTIONS, max_rows, p=[0.85, 0.06, 0.05, 0.04])
    lines = [
        f"{u},{i},{i % 97},{a},{t}"
        for u, i, a, t in zip(rng.integers(1, 5000, max_rows), rng.integers(1, 20000, max_rows), acts, ts)
    ]
    return lines, "synthetic"


def _blob(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""


# ----------------------------------------------------------------------------- plans
def make_plan(
    seed: int,
    anomalies: Anomalies = Anomalies(),
    files: int = 6,
    rows_per_file: int = 120,
    waves: int = 3,
    allowed_s: int = 2,
    policy: str = "defer",
    log: tuple[list[str], str] | None = None,
) -> StreamPlan:
    """A seeded stream of ``files`` data files of about ``rows_per_file`` rows, delivered in ``waves``."""
    if files < 4 or waves < 2:
        raise ValueError("a chaos stream needs at least 4 files and 2 waves")
    rng = np.random.default_rng(seed)
    lines, source = log or load_log()
    total = files * rows_per_file
    start = int(rng.integers(0, max(1, len(lines) - total)))
    block = lines[start : start + total]
    names = [f"part-{10 * (i + 1):05d}.csv" for i in range(files)]
    content = [list(block[i * rows_per_file : (i + 1) * rows_per_file]) for i in range(files)]

    if anomalies.dead_rows:
        for k in rng.choice(files, size=2, replace=False):
            rows = content[k]
            j = int(rng.integers(0, len(rows)))
            u, i, c, a, t = rows[j].split(",")
            bad = [f"{u},{i},{c},zap,{t}", f",{i},{c},{a},{t}"][int(rng.integers(0, 2))]
            rows.insert(j, bad)
    if anomalies.duplicates:
        for k in range(1, files):
            n = int(rng.integers(1, 4))
            content[k] = content[k - 1][-n:] + content[k]  # the last rows of the file before, again
    if anomalies.future_ts:
        k = int(rng.integers(1, files - 1))
        u, i, c, a, _ = content[k][len(content[k]) // 2].split(",")
        content[k].insert(len(content[k]) // 2, f"{u},{i},{c},{a},{FUTURE_TS}")

    # which wave each file lands in: contiguous, in name order
    cuts = sorted(rng.choice(np.arange(1, files), size=waves - 1, replace=False).tolist())
    wave_of = np.searchsorted(np.array(cuts), np.arange(files), side="right")
    late = None
    if anomalies.late_file:  # a file of wave w (not its last) held back to wave w + 1
        cand = [k for k in range(files - 1) if wave_of[k] < waves - 1]
        late = int(rng.choice(cand))
        wave_of[late + 1] = wave_of[late]  # a later-named file lands (and is taken) first
    slow = None
    if anomalies.slow_write:
        slow = int(rng.integers(files // 2, files))
    plan: list[list[FileOp]] = [[] for _ in range(waves)]
    for k in range(files):
        w = int(wave_of[k]) + (1 if k == late else 0)
        kind = "slow" if k == slow else "write"
        plan[w].append(FileOp(kind, names[k], _blob(content[k]), chunks=4 if kind == "slow" else 1))
    if anomalies.in_progress:  # the first file of a later wave shows up half written in the wave before
        w = int(rng.integers(1, waves))
        ops = [op for op in plan[w] if op.kind == "write"]
        if ops:
            op = ops[0]
            temp = IN_PROGRESS[int(rng.integers(0, len(IN_PROGRESS)))].format(op.name)
            half = op.data[: len(op.data) // 2 + 3]  # cut mid-line
            plan[w - 1].append(FileOp("partial", op.name, half, temp=temp))
            plan[w][plan[w].index(op)] = FileOp("finish", op.name, op.data, temp=temp)
    if anomalies.replaced:  # a file consumed in wave 0 rewritten in a later wave
        w = int(rng.integers(1, waves))
        victims = [op for op in plan[0] if op.kind == "write"]
        if victims:
            op = victims[int(rng.integers(0, len(victims)))]
            other = block[int(rng.integers(0, len(block) - 30)) :][:30]
            plan[w].append(FileOp("replace", op.name, _blob(other)))
    return StreamPlan(seed, anomalies, tuple(tuple(w) for w in plan), allowed_s, policy, source)


# ----------------------------------------------------------------------------- delivery
def deliver(plan: StreamPlan, wave: int, incoming: Path, slow_pause_s: float = 0.6) -> list:
    """Perform wave ``wave``'s operations on ``incoming``; slow writes return a started thread."""
    import threading

    incoming.mkdir(parents=True, exist_ok=True)
    threads = []
    for op in plan.waves[wave]:
        if op.kind == "write":
            tmp = incoming / f".{op.name}.writing"
            tmp.write_bytes(op.data)
            tmp.rename(incoming / op.name)
        elif op.kind == "replace":
            (incoming / op.name).write_bytes(op.data)
        elif op.kind == "partial":
            (incoming / op.temp).write_bytes(op.data)
        elif op.kind == "finish":
            (incoming / op.temp).write_bytes(op.data)
            (incoming / op.temp).rename(incoming / op.name)
        elif op.kind == "slow":
            t = threading.Thread(
                target=_slow_write,
                args=(incoming / op.name, op.data, op.chunks, slow_pause_s),
                daemon=True,
                name=f"chaos-slow-{op.name}",
            )
            t.start()
            threads.append(t)
        else:
            raise ValueError(f"unknown file operation {op.kind!r}")
    return threads


def _slow_write(path: Path, data: bytes, chunks: int, pause_s: float) -> None:
    import time

    step = max(1, len(data) // chunks)
    with open(path, "ab") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(pause_s)


# ----------------------------------------------------------------------------- the expectation
@dataclasses.dataclass
class FileExpect:
    name: str
    sha256: str
    rows_in: int = 0
    good: int = 0
    dead: dict = dataclasses.field(default_factory=dict)
    duplicate: int = 0
    deferred: int = 0
    trained: int = 0  # rows trained with this file: its good rows and the deferred rows it carries
    refused: bool = False  # its bytes changed after it was consumed: refused loudly, nothing trained
    # written slowly, or consumed after a file written slowly: what is trained depends on timing (the slow file's
    # rows taken before its later appends were refused decide the duplicates and the watermark of every later
    # file); checked as at most once and balanced, not against these counts
    uncertain: bool = False

    def balanced(self) -> bool:
        return self.rows_in == self.good + sum(self.dead.values()) + self.duplicate + self.deferred

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _event_key(fields: list[str]) -> tuple:
    return (fields[0].strip(), fields[1].strip(), fields[3].strip(), fields[4].strip())


def expected(plan: StreamPlan, now: float | None = None, max_future_s: int = 3600) -> list[FileExpect]:
    """What a correct system consumes, in order: one record per data file taken (refusals included)."""
    import time

    now = time.time() if now is None else now
    seen_events: set[tuple] = set()
    watermark = None
    pending = 0
    consumed: dict[str, str] = {}  # name -> sha of the bytes consumed
    after_slow = False  # a slowly written file was consumed: its accepted rows, and so all that follows, vary
    out: list[FileExpect] = []
    for wave in plan.waves:
        # a wave's files, in name order, are consumed once the wave has landed (in-progress names wait)
        ops = sorted((op for op in wave if op.kind != "partial"), key=lambda op: op.name)
        for op in ops:
            sha = hashlib.sha256(op.data).hexdigest()
            rec = FileExpect(op.name, sha)
            if op.name in consumed:
                if consumed[op.name] != sha:
                    rec.refused = True
                    out.append(rec)
                continue
            consumed[op.name] = sha
            after_slow = after_slow or op.kind == "slow"
            rec.uncertain = after_slow
            for line in io.StringIO(op.data.decode()):
                line = line.rstrip("\n")
                if not line:
                    continue
                rec.rows_in += 1
                f = line.split(",")
                reason = None
                if len(f) != 5 or any(not x.strip() for x in f):
                    reason = R_MISSING
                elif f[3].strip() not in ACTIONS:
                    reason = R_UNKNOWN_ACTION
                else:
                    ts = int(f[4])
                    if ts > max(now, watermark or now) + max_future_s:
                        reason = R_FUTURE
                if reason is not None:
                    rec.dead[reason] = rec.dead.get(reason, 0) + 1
                    continue
                key = _event_key(f)
                if key in seen_events:
                    rec.duplicate += 1
                    continue
                seen_events.add(key)
                if watermark is not None and ts < watermark - plan.allowed_s:
                    if plan.policy == "defer":
                        rec.deferred += 1
                    else:
                        rec.dead[R_LATE] = rec.dead.get(R_LATE, 0) + 1
                    continue
                rec.good += 1
                watermark = ts if watermark is None else max(watermark, ts)
            rec.trained = rec.good + pending
            pending = rec.deferred
            out.append(rec)
    return out


def final_files(plan: StreamPlan) -> dict[str, bytes]:
    """The incoming directory's data files after the last wave (name -> bytes)."""
    files: dict[str, bytes] = {}
    for wave in plan.waves:
        for op in wave:
            if op.kind != "partial":
                files[op.name] = op.data
    return files
