"""A model version's embedding tables, frozen in a replica: vectorised lookups with the cold-start default.

Each table is its ids (ascending int64) and rows (float32 torch tensor, fp16 versions are
widened once at load). A lookup is one ``searchsorted`` plus one gather of rows (numpy ``take``); an id the
version has no row for gets what training would give it on its first pull::

    admission_threshold == 1   paramserver.init_rows(table, id, seed)   (a pull admits it)
    admission_threshold  > 1   zeros                                    (not admitted yet)

(rounded to fp16 when the PS stores fp16 rows, as the shard does when it admits the id). With
``admission_threshold > 1`` training's own scoring pull also counts the ids of the batch and may
admit an id during it; serving never changes the model, so such an id keeps its zero row.

so that an offline score and a served score are the same number.

>>> t = FrozenTable.build(TableConfig("item", 4), np.array([3, 9]), np.ones((2, 4), np.float32), seed=0, admit=True)
>>> rows, known = t.lookup(np.array([9, 5, 3]))
>>> known.tolist(), rows[0].tolist()
([True, False, True], [1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from paramserver import init_rows
from paramserver.config import PSConfig, TableConfig


@dataclasses.dataclass(frozen=True)
class FrozenTable:
    cfg: TableConfig
    ids: np.ndarray  # int64 [n], ascending
    rows: torch.Tensor  # float32 [n, dim]
    seed: int
    admit: bool  # unknown ids get init_rows (True) or zeros (False)
    fp16: bool = False  # the PS stores rows in fp16: an admitted row is its init_rows rounded to fp16

    @classmethod
    def build(
        cls, cfg: TableConfig, ids: np.ndarray, rows: np.ndarray, seed: int, admit: bool, fp16: bool = False
    ) -> "FrozenTable":
        ids = np.ascontiguousarray(ids, np.int64)
        rows = np.asarray(rows)
        if rows.shape != (len(ids), cfg.dim):
            raise ValueError(f"table {cfg.name}: rows {rows.shape} do not fit {len(ids)} ids x dim {cfg.dim}")
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            raise ValueError(f"table {cfg.name}: ids must be strictly ascending")
        return cls(cfg, ids, torch.from_numpy(np.ascontiguousarray(rows, np.float32)), seed, admit, fp16)

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of each id in this table, known mask); unknown ids get position 0."""
        ids = np.asarray(ids, np.int64)
        if len(self.ids) == 0:
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        pos = np.searchsorted(self.ids, ids)
        np.minimum(pos, len(self.ids) - 1, out=pos)
        return pos, self.ids[pos] == ids

    def lookup(self, ids: np.ndarray, at: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(float32 rows [n, dim] aligned with ``ids``, known mask [n]); unknown ids: the cold-start row.
        ``at``: ``positions(ids)`` when the caller has them (a table with the same ids array, same query)."""
        pos, known = self.positions(ids) if at is None else at
        # numpy's take of whole rows: a copy of the same float32 rows as torch's index_select, a few us
        # less per table and request (tests/unit/test_serve_cpu_paths.py)
        rows = self.rows.numpy().take(pos, axis=0) if len(self.ids) else np.zeros((len(pos), self.cfg.dim), np.float32)
        if not known.all():
            miss = ~known
            if self.admit:
                cold = init_rows(self.cfg, np.asarray(ids, np.int64)[miss], self.seed)
                rows[miss] = cold.astype(np.float16).astype(np.float32) if self.fp16 else cold
            else:
                rows[miss] = 0.0
        return rows, known


class FrozenTables:
    """Every table of one version, answering the embedding backend's pull like the PS (read-only).

    ``pull_many({table: ids}) -> {table: rows}`` and ``wait(ticket)`` are the two calls the
    training core's ``score`` makes, so serving scores with the core's own code path.
    """

    def __init__(self, tables: Mapping[str, FrozenTable], ps_cfg: PSConfig) -> None:
        self.tables = dict(tables)
        self.cfg = dataclasses.replace(ps_cfg, mode="sync")  # the core reads cfg.mode
        self.unknown = 0  # ids without a row in the last pull (the caller holds the model's lock)

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Mapping[str, np.ndarray]],
        ps_cfg: PSConfig,
        remote: Mapping[str, object] | None = None,
    ) -> "FrozenTables":
        """``arrays[table] = {"ids", "rows"}`` as :meth:`versions.VersionStore.materialize` gives them;
        ``remote[table]``: a table read through read-only shards (:class:`serving.shards.RemoteTable`)."""
        admit = ps_cfg.admission_threshold <= 1
        out = dict(remote or {})
        built: list[FrozenTable] = []
        for t in ps_cfg.tables:
            if t.name in out:
                continue
            a = arrays.get(t.name, {"ids": np.zeros(0, np.int64), "rows": np.zeros((0, t.dim), np.float32)})
            ids = np.ascontiguousarray(a["ids"], np.int64)
            # a table holding the same ids as one built before (a feature's deep and wide tables are admitted
            # together) shares that ids array: one copy in RAM, and pull_many finds a query's positions once
            same = next((b.ids for b in built if len(b.ids) == len(ids) and np.array_equal(b.ids, ids)), None)
            table = FrozenTable.build(
                t, ids if same is None else same, a["rows"], ps_cfg.seed, admit, ps_cfg.weights_dtype == "fp16"
            )
            built.append(table)
            out[t.name] = table
        return cls(out, ps_cfg)

    def __getitem__(self, name: str) -> FrozenTable:
        return self.tables[name]

    def pull_many(self, ids: Mapping[str, np.ndarray], step: int | None = None) -> dict[str, np.ndarray]:
        """``{table: rows}`` for ``{table: ids}``. Tables that share one ids array (:meth:`from_arrays`) asked for
        the same ids (a feature's deep and wide tables read the same feature) search their positions once: the
        searchsorted over a table's ids is most of a lookup's cost."""
        out, unknown = {}, 0
        found: dict[int, tuple] = {}  # id(table ids array) -> (query ids, positions, known)
        for name, table_ids in ids.items():
            table = self.tables[name]
            at = None
            if isinstance(table, FrozenTable):
                prev = found.get(id(table.ids))
                if prev is not None and (prev[0] is table_ids or np.array_equal(prev[0], table_ids)):
                    at = prev[1:]
                else:
                    at = table.positions(table_ids)
                    found[id(table.ids)] = (table_ids, *at)
                out[name], known = table.lookup(table_ids, at)
            else:
                out[name], known = table.lookup(table_ids)
            unknown += int(len(known) - np.count_nonzero(known))
        self.unknown = unknown
        return out

    def wait(self, ticket):
        return ticket
