"""EventBatch: a batch of validated events as columns (numpy arrays), never Python rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa


@dataclasses.dataclass(frozen=True)
class EventBatch:
    """Good rows of one chunk of one data file.

    ================  ==================  ==============================================
    field             dtype / shape       meaning
    ================  ==================  ==============================================
    event_id          int64 [n]           stable event id (a column, or derived)
    ts                int64 [n]           event time, unix seconds
    label             float32 [n]         1.0 positive, 0.0 negative
    sparse[name]      int64 [n]           raw id for embedding table ``name``
    dense             float32 [n, d]      raw dense features (normalise with RunningStats)
    rows              int64 [n]           1-based row (line) number in ``source``
    table             pyarrow.Table       the canonical typed columns (what split data files store)
    ================  ==================  ==============================================
    """

    source: str
    event_id: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    sparse: dict[str, np.ndarray]
    dense: np.ndarray
    rows: np.ndarray
    table: pa.Table

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, index: np.ndarray) -> "EventBatch":
        """A new batch of the rows at ``index`` (an int array or a boolean mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return EventBatch(
            source=self.source,
            event_id=self.event_id[index],
            ts=self.ts[index],
            label=self.label[index],
            sparse={k: v[index] for k, v in self.sparse.items()},
            dense=self.dense[index],
            rows=self.rows[index],
            table=self.table.take(pa.array(index, pa.int64())),
        )

    @staticmethod
    def concat(batches: list["EventBatch"]) -> "EventBatch":
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        return EventBatch(
            source=first.source if all(b.source == first.source for b in batches) else "<mixed>",
            event_id=np.concatenate([b.event_id for b in batches]),
            ts=np.concatenate([b.ts for b in batches]),
            label=np.concatenate([b.label for b in batches]),
            sparse={k: np.concatenate([b.sparse[k] for b in batches]) for k in first.sparse},
            dense=np.concatenate([b.dense for b in batches]),
            rows=np.concatenate([b.rows for b in batches]),
            table=pa.concat_tables([b.table for b in batches]),
        )
