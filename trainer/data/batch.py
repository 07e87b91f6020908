"""EventBatch: a batch of validated events as columns (numpy arrays), never Python rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from trainer.data.columns import jagged_take


@dataclasses.dataclass(frozen=True)
class EventBatch:
    """Good rows of one chunk of one data file.

    ================  ==================  ==============================================
    field             dtype / shape       meaning
    ================  ==================  ==============================================
    event_id          int64 [n]           stable event id (a column, derived, or from the row)
    ts                int64 [n]           event time, unix seconds (``time: row_order``: the
                                          row's ordinal in the stream, 0, 1, 2, ...)
    label             float32 [n]         1.0 positive, 0.0 negative
    sparse[name]      int64 [n]           single-valued feature: the raw id of each row
                      int64 [sum(len)]    multi-valued feature: the ids of row 0, then row 1, ...
    lengths[name]     int64 [n]           multi-valued features only: ids per row (0 allowed)
    dense             float32 [n, d]      raw dense features (normalise with RunningStats)
    rows              int64 [n]           1-based row (line) number in ``source``
    table             pyarrow.Table       the canonical typed columns, a missing optional field as its fill
    missing[name]     bool [n]            rows whose optional column ``name`` was missing (null, blank or a
                                          null token) and holds its fill in ``table``; only columns with at
                                          least one such row. Split data files store these fields as nulls,
                                          so a ``missing`` dense flag reads back as it was
    ================  ==================  ==============================================

    A multi-valued feature ``genre`` over three rows (TorchRec's KeyedJaggedTensor layout)::

        row     genre ids          sparse["genre"] = [3, 9, 4]
        0       [3, 9]             lengths["genre"] = [2, 0, 1]
        1       []
        2       [4]
    """

    source: str
    event_id: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    sparse: dict[str, np.ndarray]
    dense: np.ndarray
    rows: np.ndarray
    table: pa.Table
    lengths: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    missing: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.event_id)
        for name, mask in self.missing.items():
            if len(mask) != n:
                raise ValueError(f"EventBatch: missing[{name!r}] has {len(mask)} rows for {n}")
        for name, lens in self.lengths.items():
            if name not in self.sparse:
                raise ValueError(f"EventBatch: lengths[{name!r}] has no sparse[{name!r}]")
            if len(lens) != n or int(np.sum(lens)) != len(self.sparse[name]):
                raise ValueError(
                    f"EventBatch: feature {name}: {len(lens)} lengths summing to {int(np.sum(lens))} "
                    f"for {n} rows and {len(self.sparse[name])} ids"
                )
        for name, ids in self.sparse.items():
            if name not in self.lengths and len(ids) != n:
                raise ValueError(f"EventBatch: single-valued feature {name} has {len(ids)} ids for {n} rows")

    def __len__(self) -> int:
        return len(self.event_id)

    def jagged(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of a sparse feature; a single-valued one has lengths of ones."""
        if name in self.lengths:
            return self.sparse[name], self.lengths[name]
        return self.sparse[name], np.ones(len(self), np.int64)

    def take(self, index: np.ndarray | slice) -> "EventBatch":
        """A new batch of the rows at ``index``: an int array (a permutation, repeats allowed),
        a boolean mask, or a slice."""
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64, copy=False)
        sparse, lengths = {}, {}
        for k, v in self.sparse.items():
            if k in self.lengths:
                sparse[k], lengths[k] = jagged_take(v, self.lengths[k], index)
            else:
                sparse[k] = v[index]
        return EventBatch(
            source=self.source,
            event_id=self.event_id[index],
            ts=self.ts[index],
            label=self.label[index],
            sparse=sparse,
            dense=self.dense[index],
            rows=self.rows[index],
            table=self.table.take(pa.array(index, pa.int64())),
            lengths=lengths,
            missing={k: v[index] for k, v in self.missing.items()},
        )

    @staticmethod
    def concat(batches: list["EventBatch"]) -> "EventBatch":
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        for b in batches[1:]:
            if set(b.sparse) != set(first.sparse) or set(b.lengths) != set(first.lengths):
                raise ValueError(
                    f"concat: batches of different features ({sorted(first.sparse)} vs {sorted(b.sparse)})"
                )
        return EventBatch(
            source=first.source if all(b.source == first.source for b in batches) else "<mixed>",
            event_id=np.concatenate([b.event_id for b in batches]),
            ts=np.concatenate([b.ts for b in batches]),
            label=np.concatenate([b.label for b in batches]),
            sparse={k: np.concatenate([b.sparse[k] for b in batches]) for k in first.sparse},
            dense=np.concatenate([b.dense for b in batches]),
            rows=np.concatenate([b.rows for b in batches]),
            table=pa.concat_tables([b.table for b in batches], promote_options="permissive"),
            lengths={k: np.concatenate([b.lengths[k] for b in batches]) for k in first.lengths},
            missing={
                k: np.concatenate([b.missing.get(k, np.zeros(len(b), bool)) for b in batches])
                for k in dict.fromkeys(k for b in batches for k in b.missing)
            },
        )
