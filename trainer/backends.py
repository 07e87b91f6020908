"""Embedding backends: where the training core's embedding rows live.

Every backend speaks the parameter-server client's ticket API (ps-lite's worker API), so
the core is written once::

    ticket = backend.pull_many({table: ids}, step=s)          rows of step s
    rows   = backend.wait(ticket)                             {table: float32 [len(ids), dim]}
    ticket = backend.push_pull({table: (ids, grads)}, next_ids, step=s)   push s, pull s + 1
    backend.wait(backend.push_many({table: (ids, grads)}, step=s))
    backend.cfg.mode                                          "sync" | "async" (a paramserver.PSConfig)

The API is declared as :class:`EmbeddingBackend` (a ``typing.Protocol``); every implementation passes the
conformance test ``tests/unit/test_protocols.py``:

* :class:`LocalBackend`: one :class:`paramserver.EmbeddingShard` in this process (FBGEMM TBE,
  fused row-wise optimizer, collisionless id map, admission and eviction), no Ray.
* :class:`paramserver.PSClient`: the shard actors of a Ray parameter server, or (``ps.placement``
  in_process) shard threads of this process.

Both run the same shard code, so a sync run gives the same parameters on either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from paramserver.config import PSConfig, TableConfig
from paramserver.shard import EmbeddingShard
from trainer.config import ModelConfig, TrainConfig


@runtime_checkable
class EmbeddingBackend(Protocol):
    """Where the training core's embedding rows live: the parameter server's ticket API (ps-lite's worker API).

    Requests return a ticket at once; :meth:`wait` blocks for its result. A sync backend applies one
    worker's calls in the order they are made. ``cfg`` is the backend's :class:`paramserver.PSConfig`
    (the core reads ``cfg.mode``, ``cfg.pipeline_depth``, ``cfg.table_names``).
    """

    cfg: PSConfig

    def pull_many(
        self, ids_by_table: Mapping[str, np.ndarray], step: int | None = None, lease: bool = False, stale: int = 0
    ) -> Any:
        """A ticket for the rows of ``ids`` in every table (as of ``step``; ``lease``: kept resident until the
        push of ``step``). Its result: {table: float32 [len(ids), dim]}, rows in the order of the ids."""
        ...

    def push_many(self, grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int | None = None) -> Any:
        """A ticket for applying {table: (ids, grads)} of ``step`` (the sparse optimizer runs on the backend)."""
        ...

    def push_pull(
        self,
        grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]],
        next_ids_by_table: Mapping[str, np.ndarray],
        step: int,
    ) -> Any:
        """Push ``step``, then pull the rows of step ``step + 1 + cfg.pipeline_depth`` (one round trip)."""
        ...

    def wait(self, ticket: Any, timeout_s: float | None = None) -> Any:
        """The result of a ticket (pull: {table: rows}; push: per-shard decisions)."""
        ...

    def table_state(self) -> dict[str, dict[str, np.ndarray]]:
        """{table: {"ids", "rows", "opt_state_0".., "count", "last_seen", "last_version"}}, ids ascending."""
        ...

    def prepare_cut(self, cut_id: str, full: bool) -> list[dict]:
        """Versions, step 1: freeze a consistent cut of every shard (full, or the rows changed since the last)."""
        ...

    def write_cut(self, cut_id: str, store_url: str, version: int, storage_options: dict | None = None) -> list:
        """Versions, step 2: write the cut's parts under ``version`` of the store."""
        ...

    def commit_cut(self, cut_id: str) -> None: ...

    def abort_cut(self, cut_id: str) -> None: ...

    def restore(self, store_url: str, version: int, storage_options: dict | None = None) -> list[dict]:
        """Replace every row by those of committed ``version`` (any shard count); the shards' stats."""
        ...

    def shutdown(self) -> None: ...


def table_configs(spec, init_scale: float | None = None, wide: bool = False) -> tuple[TableConfig, ...]:
    """The PS table configs of a :class:`trainer.data.FeatureSpec` (name, dim, init scale); with ``wide``
    (``model.wide``) then the first-order tables ``<feature>__wide`` (dim 4, FBGEMM's smallest; zero init)."""
    deep = tuple(TableConfig(f.name, f.dim, init_scale) for f in spec.model_sparse)  # dynamic sequences included
    if not wide:
        return deep
    from trainer.sparse import WIDE_DIM, wide_table_names

    return deep + tuple(TableConfig(name, WIDE_DIM, 0.0) for name in wide_table_names(spec))


def ps_config_for(
    spec, train: TrainConfig, ps: PSConfig | None = None, num_workers: int = 1, model: ModelConfig | None = None
) -> PSConfig:
    """The parameter-server config of a run: ``ps`` (the run's ``ps:`` section; None: the PSConfig defaults)
    with the fields of ``paramserver.config.RUN_FILLED`` filled in: tables from the spec (and ``model.wide``;
    None: the ModelConfig defaults), the sparse optimizer, its learning rate, eps and the seed from ``train``,
    ``num_workers``. Tables ``ps`` already lists are replaced."""
    ps = ps or PSConfig()
    wide = (model or ModelConfig()).wide
    return dataclasses.replace(
        ps,
        tables=table_configs(spec, train.init_scale, wide),
        optimizer=train.sparse_optimizer,
        learning_rate=train.sparse_lr,
        eps=train.sparse_eps,
        seed=train.seed,
        num_workers=num_workers,
    )


@dataclasses.dataclass
class _Done:
    """A finished request (the local backend answers at once)."""

    result: object


class LocalBackend:
    """The embedding rows in this process: one :class:`EmbeddingShard` behind the PS ticket API.

    >>> from paramserver.config import PSConfig, TableConfig
    >>> b = LocalBackend(PSConfig(tables=(TableConfig("item", 4),)))
    >>> b.wait(b.pull_many({"item": np.array([42, 7, 42])}, step=0))["item"].shape
    (3, 4)
    """

    def __init__(self, cfg: PSConfig) -> None:
        self.cfg = dataclasses.replace(cfg, num_shards=1, num_workers=1)
        self.shard = EmbeddingShard(self.cfg, 0)

    def pull_many(
        self, ids_by_table: Mapping[str, np.ndarray], step: int | None = None, lease: bool = False, stale: int = 0
    ) -> _Done:
        """Every call is done when it returns, so calls take effect in the order they are made (what a PS
        shard does with one worker's calls) and ``stale`` needs no wait. ``lease``: the rows stay resident
        until the push of ``step`` (pipelined or prefetched pulls run ahead of the pushes, as on the PS)."""
        return _Done(self.shard.pull(ids_by_table, step, lease=(0, step) if lease else None))

    def push_many(self, grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int | None = None) -> _Done:
        """Every push is applied, an empty one too: the shard version then counts steps as a sync PS
        does (TTL in versions and aged LFU age alike in both backends)."""
        dropped = self.shard.push(grads_by_table, step)
        if step is not None:
            self.shard.release_through(step)  # the step is applied: its rows may go
        return _Done({0: {"decision": "apply", "dropped_rows": dropped, "version": self.shard.version}})

    def push_pull(self, grads_by_table, next_ids_by_table, step: int) -> _Done:
        """Push ``step``, then pull the rows of step ``step + 1 + cfg.pipeline_depth`` (as the PS client)."""
        self.push_many(grads_by_table, step)
        return self.pull_many(next_ids_by_table, step + 1 + self.cfg.pipeline_depth, lease=True)

    def wait(self, ticket: _Done, timeout_s: float | None = None):
        return ticket.result

    def reset(self) -> None:
        """Forget every row (a full retrain starts from scratch)."""
        self.shard = EmbeddingShard(self.cfg, 0)

    def shutdown(self) -> None:
        pass

    # ------------------------------------------------------------------ reads
    def table_rows(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, row) of ``table``, ids ascending."""
        return self.shard.table_rows(table)

    # --------------------------------------------------- versions (as PSClient)
    def table_state(self) -> dict[str, dict[str, np.ndarray]]:
        """{table: {"ids", "rows", "opt_state_0".., "count", "last_seen", "last_version"}}, ids ascending."""
        return {t: self.shard.table_state(t) for t in self.cfg.table_names}

    def prepare_cut(self, cut_id: str, full: bool) -> list[dict]:
        return [self.shard.prepare_cut(cut_id, full)]

    def write_cut(self, cut_id: str, store_url: str, version: int, storage_options: dict | None = None) -> list:
        return self.shard.write_cut(cut_id, store_url, version, storage_options)

    def commit_cut(self, cut_id: str) -> None:
        self.shard.commit_cut(cut_id)

    def abort_cut(self, cut_id: str) -> None:
        self.shard.abort_cut(cut_id)

    def restore(self, store_url: str, version: int, storage_options: dict | None = None) -> list[dict]:
        self.shard.restore_from_store(store_url, version, storage_options)
        return [self.shard.stats()]
