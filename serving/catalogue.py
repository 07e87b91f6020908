"""The item catalogue: each item's item-side columns (e.g. its category), for Recommend and Score.

A Taobao event carries its item's category; the model needs it to rank an item, so a replica
keeps, per item id, the last value of every item-side column seen in the catalogue's data files
(read with the spec's own reader and validator: ids are parsed and hashed as in training)::

    ids          [42, 57, 90]     int64, ascending
    category_id  [ 3,  3, 11]     parsed values aligned with ids

>>> c = ItemCatalogue(np.array([42, 57]), {"category_id": np.array([3, 11])})
>>> c.lookup("category_id", np.array([57, 1])).tolist()
[11, 0]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)


class ItemCatalogue:
    def __init__(self, ids: np.ndarray, columns: Mapping[str, np.ndarray], fill: Mapping[str, object] | None = None):
        self.ids = np.ascontiguousarray(ids, np.int64)
        self.columns = {k: np.asarray(v) for k, v in columns.items()}
        self.fill = dict(fill or {})
        for k, v in self.columns.items():
            if len(v) != len(self.ids):
                raise ValueError(f"catalogue column {k} has {len(v)} values for {len(self.ids)} items")

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, column: str, item_ids: np.ndarray) -> np.ndarray | None:
        """Values of ``column`` for ``item_ids`` (the column's fill, default 0, for unknown items);
        None when the catalogue has no such column."""
        values = self.columns.get(column)
        if values is None:
            return None
        item_ids = np.asarray(item_ids, np.int64)
        out = np.full(len(item_ids), self.fill.get(column, 0), values.dtype)
        if len(self.ids):
            pos = np.minimum(np.searchsorted(self.ids, item_ids), len(self.ids) - 1)
            hit = self.ids[pos] == item_ids
            out[hit] = values[pos[hit]]
        return out

    @classmethod
    def from_batches(cls, batches: Iterable, item_column: str, columns: Iterable[str]) -> "ItemCatalogue":
        """The last value per item of ``columns`` over EventBatches (their ``table`` holds parsed columns)."""
        columns = [c for c in columns if c != item_column]
        ids, values = [], {c: [] for c in columns}
        for b in batches:
            ids.append(np.asarray(b.table.column(item_column).to_numpy(), np.int64))
            for c in columns:
                values[c].append(b.table.column(c).to_numpy(zero_copy_only=False))
        if not ids:
            return cls(np.zeros(0, np.int64), {c: np.zeros(0, np.int64) for c in columns})
        all_ids = np.concatenate(ids)
        # the LAST occurrence of each id: unique over the reversed array
        uniq, first_rev = np.unique(all_ids[::-1], return_index=True)
        last = len(all_ids) - 1 - first_rev
        return cls(uniq, {c: np.concatenate(v)[last] for c, v in values.items()})

    @classmethod
    def from_files(cls, spec, paths: Iterable[str], item_column: str, columns: Iterable[str]) -> "ItemCatalogue":
        """Read data files (the spec's format) with the training reader; bad rows are skipped (counted)."""
        from trainer.data import Validator, iter_batches

        v = Validator(spec)
        cat = cls.from_batches(iter_batches(list(paths), v, progress=False), item_column, columns)
        log.info(
            "item catalogue: %d items from %d rows (%d rows refused)", len(cat), v.report.rows_in, v.report.rows_dead
        )
        return cat
