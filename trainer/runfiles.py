"""A run directory's files, and how they reach it from the training workers through Ray (no shared disk).

RUN_DIR/metrics.jsonl      one JSON record per data file (progressive AUC, throughput, ...)
RUN_DIR/ledger.json        the data ledger: which data files, how many rows of each (a readable copy, at most
                           LEDGER_COPY_S old while files stream; current whenever the stream waits, and at the end)
RUN_DIR/dead-letter.jsonl  every rejected row with its reason
RUN_DIR/dense.pt           the core's state at a clean end (dense params, optimizer, statistics)
RUN_DIR/versions/          the version store (unless the run names another store URL)
RUN_DIR/STOP               asks the workers to commit a final version and stop (Ctrl-C)

The run directory is the **driver's** (the process that called :func:`trainer.run.run_ps_training`, on
its node): training rank 0 may run on another node with no disk in common. Rank 0 sends what it would
have written (a data file's record, the ledger, its dead-letter lines, the dense state) as operations
through a :class:`RunChannel` actor on the driver's node (:class:`RankZeroFiles`); the driver's
:class:`RunBook` thread applies them to RUN_DIR in order, hands each record to ``on_file`` and
acknowledges; rank 0 goes on only once its operations are applied (so a version that records the
dead-letter file's size is committed after those lines are on the driver's disk). The driver forwards
RUN_DIR/STOP to the workers through the same actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from pathlib import Path

from trainer.data.deadletter import DeadLetterWriter, dead_letter_lines

log = logging.getLogger(__name__)

# the operations rank 0 sends to the driver: (kind, payload)
RECORD = "record"  # a data file's metrics record (a dict): appended to metrics.jsonl, handed to on_file
LEDGER = "ledger"  # the ledger's JSON text: RUN_DIR/ledger.json, replaced
DEAD = "dead"  # dead-letter lines (text, newline-terminated): appended to dead-letter.jsonl
REWIND = "rewind"  # a byte size: dead-letter.jsonl cut back to it (a restore replays what came after)
DENSE = "dense"  # torch.save bytes of the core's state: RUN_DIR/dense.pt, replaced
APPLY_TIMEOUT_S = 300.0  # rank 0 gives up (the run fails) if the driver applies nothing for this long
LEDGER_COPY_S = 10.0  # RUN_DIR/ledger.json is rewritten at most this often while files stream (LedgerCopy)


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


class RunChannel:
    """The run's mailbox between training rank 0 and the driver (a Ray actor on the driver's node, made by
    :func:`create_run_channel`; it lives as long as the driver's run, across restarts of the workers).

    ``put(ops)`` returns once the driver has applied them (or False after ``timeout_s``); the driver
    ``take``s what is queued (waiting up to ``wait_s`` for something) and ``ack``s it."""

    def __init__(self) -> None:
        self._ops: list = []
        self._put = 0  # operations queued so far
        self._taken = 0
        self._applied = 0
        self._stop = False
        self._dead_letter_bytes = 0
        self._changed = asyncio.Condition()

    async def put(self, ops: list, timeout_s: float = APPLY_TIMEOUT_S) -> bool:
        async with self._changed:
            self._ops.extend(ops)
            self._put += len(ops)
            seq = self._put
            self._changed.notify_all()
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._applied >= seq), timeout_s)
            except TimeoutError:
                return False
            return True

    async def take(self, wait_s: float) -> tuple[list, int]:
        async with self._changed:
            if not self._ops and wait_s > 0:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._ops)), wait_s)
                except TimeoutError:
                    pass
            ops, self._ops = self._ops, []
            self._taken += len(ops)
            return ops, self._taken

    async def ack(self, seq: int) -> None:
        async with self._changed:
            self._applied = max(self._applied, seq)
            self._changed.notify_all()

    async def request_stop(self) -> None:
        self._stop = True

    async def stop_requested(self) -> bool:
        return self._stop

    async def set_dead_letter_bytes(self, size: int) -> None:
        self._dead_letter_bytes = int(size)

    async def dead_letter_bytes(self) -> int:
        return self._dead_letter_bytes


def create_run_channel():
    """A :class:`RunChannel` actor on this process's node (needs a running Ray; 0 CPUs)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return (
        ray.remote(RunChannel)
        .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False))
        .remote()
    )


class RunBook(threading.Thread):
    """The driver's side: applies rank 0's operations to the run directory in order, hands each data file's
    record to ``on_record(i, record)``, and forwards RUN_DIR/STOP to the workers."""

    def __init__(self, channel, paths: RunPaths, on_record, skip: int = 0, wait_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="freshrec-run-book")
        self.channel, self.paths, self.on_record, self.wait_s = channel, paths, on_record, wait_s
        self._stop_event = threading.Event()
        self._seen = skip  # records already there (a resumed run) are not reported again
        self._stop_sent = False

    def start(self) -> None:
        import ray

        # rank 0 counts its dead-letter bytes from the file as it is now (every earlier operation is applied)
        size = self.paths.dead_letter.stat().st_size if self.paths.dead_letter.exists() else 0
        ray.get(self.channel.set_dead_letter_bytes.remote(size))
        super().start()

    def run(self) -> None:
        import ray

        while not self._stop_event.is_set():
            try:
                self.drain(self.wait_s)
                if not self._stop_sent and self.paths.stop.exists():
                    ray.get(self.channel.request_stop.remote())
                    self._stop_sent = True
            except Exception as exc:  # the channel is gone (Ray shut down under us): nothing more can arrive
                if not self._stop_event.is_set():
                    log.warning("run directory %s: the channel from rank 0 failed (%s)", self.paths.root, exc)
                return

    def drain(self, wait_s: float = 0.0) -> int:
        """Take and apply what rank 0 has sent (waiting up to ``wait_s`` for something); returns how many."""
        import ray

        ops, seq = ray.get(self.channel.take.remote(wait_s))
        for kind, payload in ops:
            try:
                self._apply(kind, payload)
            except Exception:  # acknowledged all the same: rank 0 must not wait for a file that cannot be written
                log.exception("run directory %s: could not apply %s", self.paths.root, kind)
        if ops:
            ray.get(self.channel.ack.remote(seq))
        return len(ops)

    def _apply(self, kind: str, payload) -> None:
        p = self.paths
        if kind == RECORD:
            with open(p.metrics, "a") as fh:
                fh.write(json.dumps(payload) + "\n")
            self._seen += 1
            self.on_record(self._seen, payload)
        elif kind == LEDGER:
            write_atomic(p.ledger, payload)
        elif kind == DEAD:
            with open(p.dead_letter, "a", encoding="utf-8") as fh:
                fh.write(payload)
        elif kind == REWIND:
            if p.dead_letter.exists() and p.dead_letter.stat().st_size > payload:
                with open(p.dead_letter, "r+b") as fh:
                    fh.truncate(payload)
        elif kind == DENSE:
            tmp = p.dense.with_name(f".{p.dense.name}.tmp")
            tmp.write_bytes(payload)
            tmp.replace(p.dense)
        else:
            raise ValueError(f"unknown run-directory operation {kind!r}")

    def stop(self) -> None:
        """Stop the thread after applying everything sent so far."""
        self._stop_event.set()
        self.join()
        try:
            while self.drain():
                pass
        except Exception as exc:
            log.warning("run directory %s: the last operations of rank 0 were not applied (%s)", self.paths.root, exc)


class RankZeroFiles:
    """Rank 0's side: what it would write to the run directory, sent to the driver's :class:`RunBook`."""

    def __init__(self, channel) -> None:
        self.channel = channel

    def send(self, ops: list) -> None:
        import ray

        if not ray.get(self.channel.put.remote(ops)):
            raise RuntimeError(
                f"the driver applied nothing to the run directory in {APPLY_TIMEOUT_S:.0f} s (is it stuck?)"
            )

    def file_done(self, record: dict, ledger_json: str | None, dead: "ShippedDeadLetters | None" = None) -> None:
        """A data file is done: its dead-letter lines (of ``dead``), its record and the ledger (None: not this
        time, see :class:`LedgerCopy`), in one call."""
        ops = (dead.take_ops() if dead is not None else []) + [(RECORD, record)]
        self.send(ops + ([(LEDGER, ledger_json)] if ledger_json is not None else []))

    def ledger(self, ledger_json: str) -> None:
        self.send([(LEDGER, ledger_json)])

    def dense(self, state: dict) -> None:
        import io

        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        self.send([(DENSE, buf.getvalue())])

    def stop_requested(self) -> bool:
        import ray

        return bool(ray.get(self.channel.stop_requested.remote()))

    def dead_letters(self) -> "ShippedDeadLetters":
        import ray

        return ShippedDeadLetters(self, ray.get(self.channel.dead_letter_bytes.remote()))


class LedgerCopy:
    """Rank 0's copy of the ledger in RUN_DIR/ledger.json. Its JSON grows with every file ever consumed, so
    serialising, sending and rewriting it after each file made a long stream's cost per file grow with its
    history; it is sent with a file's record at most every ``every_s`` (the first file's at once), whenever the
    stream waits for files (:meth:`flush` on an idle tick) and at the end. The ledger of record is in every
    version; this copy is for people and tools reading the run directory."""

    def __init__(self, files: RankZeroFiles, every_s: float = LEDGER_COPY_S, clock=None) -> None:
        import time

        self.files, self.every_s = files, float(every_s)
        self.clock = clock or time.monotonic
        self.sent_seq: int | None = None  # DataLedger.seq of the copy last sent
        self.sent_at = -float("inf")

    def due(self, ledger) -> str | None:
        """The ledger's JSON when a copy is due with this file's record (mark it sent), else None."""
        now = self.clock()
        if ledger.seq == self.sent_seq or now - self.sent_at < self.every_s:
            return None
        self.sent_seq, self.sent_at = ledger.seq, now
        return ledger.to_json()

    def flush(self, ledger) -> None:
        """Send the ledger now if it changed since the last copy (the stream waits, or it ends)."""
        if ledger.seq != self.sent_seq:
            self.sent_seq, self.sent_at = ledger.seq, self.clock()
            self.files.ledger(ledger.to_json())


class LocalRunChannel:
    """The run channel of a worker loop that runs in the driver's own process, without Ray (bench chaos's
    in-process reference and final drain): rank 0's operations are applied to ``run_dir`` at once, by the
    same code as the driver's :class:`RunBook`. Pass it as ``WorkerConfig.channel``."""

    def __init__(self, run_dir, on_record=None) -> None:
        self.paths = RunPaths(Path(run_dir))
        self.book = RunBook(None, self.paths, on_record or (lambda i, rec: None))

    def files(self) -> RankZeroFiles:
        return _LocalFiles(self)


class _LocalFiles(RankZeroFiles):
    def send(self, ops: list) -> None:
        for kind, payload in ops:
            self.channel.book._apply(kind, payload)

    def stop_requested(self) -> bool:
        return self.channel.paths.stop.exists()

    def dead_letters(self) -> "ShippedDeadLetters":
        p = self.channel.paths.dead_letter
        return ShippedDeadLetters(self, p.stat().st_size if p.exists() else 0)


class ShippedDeadLetters(DeadLetterWriter):
    """A dead-letter writer whose lines go to the driver's RUN_DIR/dead-letter.jsonl. Lines are buffered and
    sent by :meth:`flush`, which :meth:`size` (what a version records), :meth:`rewind` and :meth:`close` call
    first; ``size`` counts the bytes of the driver's file."""

    def __init__(self, files: RankZeroFiles, size: int) -> None:
        super().__init__(None)
        self.files = files
        self._bytes = int(size)
        self._pending: list[str] = []

    def write(self, source: str, rows, reasons, details, raws) -> None:
        lines = dead_letter_lines(source, rows, reasons, details, raws)
        if lines:
            text = "\n".join(lines) + "\n"
            self._pending.append(text)
            self._bytes += len(text.encode("utf-8"))
        self.written += len(lines)

    def take_ops(self) -> list:
        """The buffered lines as operations to send (the caller sends them)."""
        if not self._pending:
            return []
        text, self._pending = "".join(self._pending), []
        return [(DEAD, text)]

    def flush(self) -> None:
        ops = self.take_ops()
        if ops:
            self.files.send(ops)

    def size(self) -> int:
        self.flush()
        return self._bytes

    def rewind(self, size: int) -> None:
        self.flush()
        if size < 0 or size >= self._bytes:
            return
        self.files.send([(REWIND, int(size))])
        self._bytes = int(size)

    def close(self) -> None:
        self.flush()
