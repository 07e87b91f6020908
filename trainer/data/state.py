"""The data layer's state, saved with every model version and restored with it.

What a stream's consumer holds besides the model, and what a resumed run needs to drop exactly
the duplicates (and defer exactly the late rows) an uninterrupted run would::

    ledger        which data files were taken, how many rows of each (the position inside a
                  partly read file), with size, mtime and sha256       -> part data/ledger (keyed)
    dedup window  recent event ids with their event time and generation -> part data/dedup (keyed)
    watermark, row ordinal, next dedup generation, the late rows deferred to the next data file
                                                                         -> part data/state (whole)

Saved incrementally: :meth:`DataState.cut` gives, for a delta version, only the ledger entries
and dedup ids that changed since the last *committed* version (plus, as ``deleted``, what was
forgotten or replaced since); a failed version changes nothing (the next one carries it all),
because the marks move only in :meth:`DataState.committed`. A full version holds everything.
The part names and how they are stored are :mod:`trainer.bundle`'s business.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from trainer.data.batch import EventBatch


@dataclasses.dataclass(frozen=True)
class Marks:
    ledger_seq: int = 0  # DataLedger.seq at the cut
    dedup_generation: int = 0  # DedupWindow.generation at the cut
    dedup_journal: int = 0  # DedupWindow.journal_end at the cut


class DataState:
    """The state of one consumer: its :class:`Validator` and the ledger ``ledger_of()`` returns (the
    training core's, which a restore replaces)."""

    def __init__(self, validator, ledger_of) -> None:
        self.validator, self.ledger_of = validator, ledger_of
        self.marks = Marks()  # what the last committed version holds

    def cut(self, full: bool):
        """The state at this cut as a :class:`trainer.bundle.DataExport` (whole when ``full``, else what
        changed since the last committed version)."""
        from trainer.bundle import DataExport

        ledger, dedup = self.ledger_of(), self.validator.dedup
        now = Marks(ledger.seq, dedup.generation, dedup.journal_end)
        base = Marks() if full else self.marks
        led = ledger.to_arrays(since=base.ledger_seq)
        win = dedup.export(since_generation=base.dedup_generation, since_journal=None if full else base.dedup_journal)
        if full:
            led.pop("deleted", None)
        summary = {
            "files": len(ledger),
            "rows": ledger.total_rows,
            "entries": ledger.changed_since(self.marks.ledger_seq),
            "marks": dataclasses.asdict(now),
        }
        return DataExport(led, win, self.validator_state(), summary)

    def dirty(self) -> bool:
        """The ledger changed since the last committed version (a data file was taken or refused)."""
        return self.ledger_of().seq != self.marks.ledger_seq

    def committed(self, export) -> None:
        """The version holding ``export`` is committed: later deltas start from it."""
        marks = Marks(**export.summary["marks"])
        self.marks = marks
        self.ledger_of().trim_journal(marks.ledger_seq)
        self.validator.dedup.trim_journal(marks.dedup_journal)

    def load(self, data: dict | None) -> None:
        """Restore from :func:`trainer.bundle.read_data` (None: a version from before the data layer's state
        was saved: the window starts empty, as it did then)."""
        v = self.validator
        if data is None:
            return
        state = data.get("state") or {}
        v.watermark = int(state["watermark"][0]) if "watermark" in state else v.watermark
        v._ordinal = int(state["ordinal"][0]) if "ordinal" in state else v._ordinal
        generation = int(state["dedup_generation"][0]) if "dedup_generation" in state else 0
        v.dedup.load(data.get("dedup"), generation)
        v._late = [late] if (late := _late_from_arrays(state, v.spec)) is not None else []
        if "dead_letter_bytes" in state:  # rows rejected after the cut are rejected again by the replay
            v.dead_letter.rewind(int(state["dead_letter_bytes"][0]))
        ledger = self.ledger_of()
        self.marks = Marks(ledger.seq, v.dedup.generation, v.dedup.journal_end)

    def validator_state(self) -> dict[str, np.ndarray]:
        """Watermark, row ordinal, the next dedup generation and the deferred late rows (arrays)."""
        v = self.validator
        out = {
            "ids": np.zeros(1, np.int64),
            "watermark": np.array([v.watermark], np.int64),
            "ordinal": np.array([v._ordinal], np.int64),
            "dedup_generation": np.array([v.dedup.generation], np.int64),
            # the dead-letter file's length at the cut: a restart from this version rewinds it there
            "dead_letter_bytes": np.array([v.dead_letter.size()], np.int64),
        }
        late = EventBatch.concat(v._late) if v._late else None
        out.update(_late_to_arrays(late))
        return out


def _late_to_arrays(batch: EventBatch | None) -> dict[str, np.ndarray]:
    if batch is None or len(batch) == 0:
        return {"late/n": np.zeros(1, np.int64)}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.table.schema) as w:
        w.write_table(batch.table)
    out = {
        "late/n": np.array([len(batch)], np.int64),
        "late/event_id": batch.event_id.astype(np.int64),
        "late/ts": batch.ts.astype(np.int64),
        "late/label": batch.label.astype(np.float32),
        "late/dense": np.ascontiguousarray(batch.dense, np.float32),
        "late/rows": batch.rows.astype(np.int64),
        "late/table": np.frombuffer(sink.getvalue().to_pybytes(), np.uint8).copy(),
        "late/source": np.frombuffer(batch.source.encode(), np.uint8).copy(),
    }
    for name, ids in batch.sparse.items():
        out[f"late/sparse/{name}"] = np.asarray(ids, np.int64)
    for name, lens in batch.lengths.items():
        out[f"late/lengths/{name}"] = np.asarray(lens, np.int64)
    return out


def _late_from_arrays(state: dict, spec) -> EventBatch | None:
    if not state or "late/n" not in state or int(state["late/n"][0]) == 0:
        return None
    table = pa.ipc.open_stream(pa.py_buffer(np.asarray(state["late/table"], np.uint8).tobytes())).read_all()
    sparse = {
        k[len("late/sparse/") :]: np.asarray(v, np.int64) for k, v in state.items() if k.startswith("late/sparse/")
    }
    lengths = {
        k[len("late/lengths/") :]: np.asarray(v, np.int64) for k, v in state.items() if k.startswith("late/lengths/")
    }
    return EventBatch(
        bytes(np.asarray(state["late/source"], np.uint8)).decode(),
        np.asarray(state["late/event_id"]),
        np.asarray(state["late/ts"]),
        np.asarray(state["late/label"]),
        sparse,
        np.asarray(state["late/dense"]),
        np.asarray(state["late/rows"]),
        table,
        lengths,
    )
