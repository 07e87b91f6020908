"""The worker's side of the parameter server, in the spirit of ps-lite's KVWorker.

Every call is non-blocking and returns a :class:`Ticket`; ``wait(ticket)`` returns the
result (or raises the shard's error). The id contract, for every method:

* ids are a 1-D numpy array of signed integers (int64 raw ids: any value, negative or
  huge); any order; duplicates allowed;
* pulled rows come back float32 ``[len(ids), dim]``, aligned with the ids as given,
  duplicates included;
* pushed grads are float32 ``[len(ids), dim]``; the grads of duplicate ids are SUMMED
  before sending (as a TBE backward sums duplicates of one batch).

Example, a table "item" of dim 4::

    ids   = [42, 7, 42]                 ->  pulled rows [r42, r7, r42]
    grads = [g0, g1, g2] for [42, 7, 42] ->  shard of 42 receives g0 + g2, shard of 7 g1

The client de-duplicates, routes with :func:`shard_of`, sends ONE actor call per shard
covering all tables of a step, and ships numpy arrays only. It pickles (it holds only the
config and actor handles), so Ray Train workers can receive it; give each worker its own
rank with :meth:`PSClient.for_rank` in sync mode.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping

import numpy as np

from paramserver import actor as _ray
from paramserver import wire
from paramserver.config import PLACEMENTS, PSConfig
from paramserver.errors import BadPullError, BadPushError, UnknownTableError
from paramserver.sharding import group_by_shard
from paramserver.tbe import sum_by_inverse, sum_duplicates


@dataclasses.dataclass
class Ticket:
    """A request in flight: ``client.wait(ticket)`` returns its result (once)."""

    kind: str  # "pull" | "push" | "push_pull"
    refs: list  # [(shard, object ref)]
    plan: dict = dataclasses.field(default_factory=dict)  # how to reassemble a pull
    step: int | None = None
    single: str | None = None
    layout: dict = dataclasses.field(default_factory=dict)  # shard -> (table names, lengths) on the wire


class PSClient:
    """Push/pull client over the shard actors (see the module docstring for the id contract)."""

    def __init__(self, cfg: PSConfig, actors: list, rank: int = 0) -> None:
        if not 0 <= rank < cfg.num_workers:
            raise ValueError(f"rank {rank} is outside [0, num_workers={cfg.num_workers})")
        self.cfg = cfg
        self.rank = rank
        self._actors = list(actors)
        self._dims = {t.name: t.dim for t in cfg.tables}
        self._read_versions: dict = {}
        self._caller = uuid.uuid4().hex[:16]  # this client's id: each shard starts its calls in the order sent
        self._calls = [0] * cfg.num_shards  # calls sent to each shard
        self._plans: dict = {}  # step -> {table: (ids object, uniq, inverse, groups)} of the step's pull

    def for_rank(self, rank: int) -> "PSClient":
        """The same parameter server seen by worker ``rank`` (sync mode needs one rank per worker)."""
        return PSClient(self.cfg, self._actors, rank)

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "rank": self.rank, "actors": self._actors}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state["actors"], state["rank"])

    # ------------------------------------------------------------------- pull
    def pull(self, table: str, ids: np.ndarray, step: int | None = None) -> Ticket:
        """Rows of ``ids`` of one table; ``wait`` returns float32 [len(ids), dim].

        >>> t = client.pull("item", np.array([42, 7, 42]))   # doctest: +SKIP
        >>> client.wait(t).shape                              # doctest: +SKIP
        (3, 16)
        """
        ticket = self.pull_many({table: ids}, step=step)
        ticket.single = table
        return ticket

    def pull_many(
        self, ids_by_table: Mapping[str, np.ndarray], step: int | None = None, lease: bool = False, stale: int = 0
    ) -> Ticket:
        """Rows of several tables in one call per shard; ``wait`` returns {table: rows}.

        Pulling counts as seeing the ids (frequency admission, LFU, TTL). ``lease=True`` marks a
        training pull: its rows stay resident until this worker's push of ``step`` is applied
        (sync: until the step is applied; in sync mode with several workers every worker must
        send its leased pull of each step, which this client then sends to every shard). A
        pull for scoring leases nothing. In sync mode a pull for ``step`` s waits until every
        worker's push of step s-1 is applied; issue it early (prefetch) and ``wait`` for it
        when the rows are needed::

            nxt = client.pull_many({"user": u2, "item": i2}, step=s + 1)  # doctest: +SKIP
            client.wait(client.push_many(grads, step=s))                  # doctest: +SKIP
            rows = client.wait(nxt)                                       # doctest: +SKIP

        ``stale`` (sync mode): the rows may miss the updates of the ``stale`` steps just before
        ``step``, so the shards answer once step ``step - 1 - stale`` is applied. Exact when those
        steps do not touch these ids (the trainer's ``sync_prefetch``), stale by design otherwise
        (``pipeline_depth``).
        """
        if lease and step is None:
            raise BadPullError("*", "a leased (training) pull needs its step: pull_many(..., step=s, lease=True)")
        sent, plan = self._route_pull(ids_by_table, step)
        if lease and self.cfg.mode == "sync" and self.cfg.num_workers > 1:  # every shard gathers every rank's pull
            empty = wire.pack_ids({})
            sent = {s: sent.get(s, empty) for s in range(self.cfg.num_shards)}
        refs = [
            (s, _ray.submit(self._actors[s], "pull", msg, step, self.rank, bool(lease), int(stale), self._order(s)))
            for s, msg in sent.items()
        ]
        return Ticket("pull", refs, plan, step, layout={s: (msg[0], msg[1]) for s, msg in sent.items()})

    def _route_pull(
        self, ids_by_table: Mapping[str, np.ndarray], step: int | None = None
    ) -> tuple[dict[int, tuple], dict]:
        """De-duplicate and route: ({shard: packed request}, plan to reassemble the reply). The plan of a
        step's pull is kept for that step's push of the same id arrays (no second unique or routing)."""
        n = self.cfg.num_shards
        per_shard: list[dict] = [{} for _ in range(n)]
        plan, keep = {}, {}
        for table, raw in ids_by_table.items():
            ids = self._ids(table, raw, BadPullError)
            uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
            groups = group_by_shard(uniq, n)
            keep[table] = (raw, uniq, inverse, groups)
            if n == 1:
                per_shard[0][table] = (uniq, counts)
            else:
                for s, pos in enumerate(groups):
                    if len(pos):
                        per_shard[s][table] = (uniq[pos], counts[pos])
            plan[table] = (len(uniq), inverse, groups)
        if step is not None:
            self._plans[step] = keep
            for old in [k for k in self._plans if k < step - 8]:
                del self._plans[old]
        return {s: wire.pack_ids(b) for s, b in enumerate(per_shard) if b}, plan

    # ------------------------------------------------------------------- push
    def push(self, table: str, ids: np.ndarray, grads: np.ndarray, step: int | None = None) -> Ticket:
        """Push grads of one table (duplicates summed); ``wait`` returns per-shard replies."""
        return self.push_many({table: (ids, grads)}, step=step)

    def push_many(self, grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int | None = None) -> Ticket:
        """Push {table: (ids, grads)} as ONE call per shard.

        Sync mode: ``step`` is required and counts up from 0; every worker pushes every
        step (an empty dict is fine) and the shard applies step s once all have. Async
        mode: the push carries the version this worker read at ``pull_many(step=step)``,
        so the shard can measure its staleness. Everything is validated here first: a bad
        push raises BadPushError and nothing is sent.
        """
        sent = self._route_push(grads_by_table, step)
        refs = [
            (s, _ray.submit(self._actors[s], "push", msg, step, self.rank, version, self._order(s)))
            for s, (msg, version) in sent.items()
        ]
        return Ticket("push", refs, step=step)

    def push_pull(
        self,
        grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]],
        next_ids_by_table: Mapping[str, np.ndarray],
        step: int,
    ) -> Ticket:
        """Push step ``step``'s grads and pull the rows of step ``step + 1 + cfg.pipeline_depth``: ONE call
        per shard (a leased, training pull).

        ps-lite's PushPull: it halves the round trips of a training step. ``wait`` returns
        the rows of ``next_ids_by_table`` as :meth:`pull_many` would; in sync mode the shard
        answers once every worker's push of ``step`` is applied (with ``pipeline_depth`` 0 the
        rows are exactly those a separate ``pull_many(step=step + 1)`` would return; with depth d
        they are those of ``pull_many(step=step + 1 + d, stale=d)``).

            rows = client.wait(client.pull_many(ids0, step=0))                 # doctest: +SKIP
            for s in range(steps):                                               # doctest: +SKIP
                grads = compute(rows)                                            # doctest: +SKIP
                rows = client.wait(client.push_pull(grads, ids[s + 1], step=s))  # doctest: +SKIP
        """
        if step is None or step < 0:
            raise BadPushError("*", f"push_pull needs step >= 0, got {step}")
        ahead = 1 + self.cfg.pipeline_depth
        pushes = self._route_push(grads_by_table, step)
        pulls, plan = self._route_pull(next_ids_by_table, step + ahead)
        empty = wire.pack_ids({})
        refs = []
        for s in sorted(set(pushes) | set(pulls)):
            if s in pushes:
                msg, version = pushes[s]
                refs.append(
                    (
                        s,
                        _ray.submit(
                            self._actors[s],
                            "push_pull",
                            msg,
                            pulls.get(s, empty),
                            step,
                            self.rank,
                            version,
                            ahead,
                            self._order(s),
                        ),
                    )
                )
            else:  # async mode: nothing to push to this shard
                refs.append(
                    (s, _ray.submit(self._actors[s], "pull", pulls[s], step + 1, self.rank, True, 0, self._order(s)))
                )
        return Ticket("push_pull", refs, plan, step + ahead, layout={s: (m[0], m[1]) for s, m in pulls.items()})

    def _route_push(
        self, grads_by_table: Mapping[str, tuple[np.ndarray, np.ndarray]], step: int | None
    ) -> dict[int, tuple]:
        """Validate, sum duplicates, route: {shard: (packed push, read version)}; raises before sending."""
        n = self.cfg.num_shards
        if self.cfg.mode == "sync" and (step is None or step < 0):
            raise BadPushError(
                "*", f"sync mode needs push_many(..., step=s) with s >= 0 counting up from 0, got {step}"
            )
        per_shard: list[dict] = [{} for _ in range(n)]
        plans = self._plans.pop(step, {}) if step is not None else {}
        for table, value in grads_by_table.items():
            if not isinstance(value, tuple) or len(value) != 2:
                raise BadPushError(table, "expected a pair (ids, grads)")
            ids = self._ids(table, value[0], BadPushError)
            grads = value[1]
            dim = self._dims[table]
            if not isinstance(grads, np.ndarray) or grads.dtype != np.float32:
                raise BadPushError(
                    table, f"grads must be a float32 numpy array, got {getattr(grads, 'dtype', type(grads).__name__)}"
                )
            if grads.shape != (len(ids), dim):
                raise BadPushError(
                    table, f"grads must have shape [len(ids)={len(ids)}, dim={dim}], got {list(grads.shape)}"
                )
            if not np.isfinite(grads).all():
                raise BadPushError(table, "gradients hold NaN or inf")
            cached = plans.get(table)
            if cached is not None and cached[0] is value[0]:  # the ids this step pulled: reuse that plan
                _, uniq, inverse, groups = cached
                summed = (
                    grads
                    if len(uniq) == len(ids) and (ids[1:] > ids[:-1]).all()
                    else sum_by_inverse(len(uniq), inverse, grads)
                )
            else:
                uniq, summed = sum_duplicates(ids, grads)
                groups = group_by_shard(uniq, n) if n > 1 else None
            if n == 1:
                per_shard[0][table] = (uniq, summed)
                continue
            for s, pos in enumerate(groups):
                if len(pos):
                    per_shard[s][table] = (uniq[pos], summed[pos])
        versions = self._read_versions.pop(step, None) if step is not None else None
        sync = self.cfg.mode == "sync"
        out = {
            s: (wire.pack_grads(batch), None if versions is None else versions.get(s))
            for s, batch in enumerate(per_shard)
            if batch or sync
        }  # in sync mode every shard must hear from every worker each step
        unread = sorted(s for s, (_, v) in out.items() if v is None)
        if not sync and unread:
            if versions is not None:
                self._read_versions[step] = versions  # nothing was sent: the caller may retry
            raise BadPushError(
                "*",
                f"async push of step {step} to shard(s) {unread} that this worker's "
                f"pull_many(..., step={step}) did not read (or whose rows were not waited "
                "for): the shard measures staleness from the read; nothing was sent",
            )
        return out

    def _order(self, shard: int) -> tuple[str, int]:
        """(this client's id, the number of this call to ``shard``): the shard starts them in that order."""
        n = self._calls[shard]
        self._calls[shard] = n + 1
        return self._caller, n

    # ------------------------------------------------------------------- wait
    def wait(self, ticket: Ticket, timeout_s: float | None = None):
        """Block until ``ticket`` is done; returns the pull's rows or the pushes' replies.

        ``timeout_s`` bounds the wait for each shard (ShardUnavailableError past it; the
        request itself is not cancelled).
        """
        replies = list(zip([s for s, _ in ticket.refs], _ray.get_many(ticket.refs, timeout_s)))  # one ray.get
        if ticket.kind == "push":
            return {s: r for s, r in replies}
        by_shard = {
            s: wire.unpack_rows(*ticket.layout[s], self._dims, flat) for s, (flat, _) in replies if s in ticket.layout
        }
        if ticket.step is not None:
            self._read_versions[ticket.step] = {s: v for s, (_, v) in replies}
            for old in [k for k in self._read_versions if k < ticket.step - 64]:
                del self._read_versions[old]
        out = {}
        for table, (n_uniq, inverse, groups) in ticket.plan.items():
            if len(groups) == 1 and n_uniq:
                out[table] = by_shard[0][table][inverse]
                continue
            uniq_rows = np.empty((n_uniq, self._dims[table]), np.float32)
            for s, pos in enumerate(groups):
                if len(pos):
                    uniq_rows[pos] = by_shard[s][table]
            out[table] = uniq_rows[inverse]
        return out[ticket.single] if ticket.single is not None else out

    # ------------------------------------------------------------- management
    def stats(self) -> list[dict]:
        """Per-shard counters: rows, admitted, evicted, dropped_grads, stale_pushes, pulls, pushes, ..."""
        return [_ray.get(_ray.submit(a, "stats"), s) for s, a in enumerate(self._actors)]

    # --------------------------------------------------------------- versions
    def _all(self, method: str, *args, timeout_s: float | None = None) -> list:
        """Call ``method`` on every shard at once; wait for all, then raise the first error (if any)."""
        refs = [(s, _ray.submit(a, method, *args)) for s, a in enumerate(self._actors)]
        out, first = [], None
        for s, ref in refs:
            try:
                out.append(_ray.get(ref, s, timeout_s))
            except Exception as exc:  # keep waiting for the others: no call is left running unseen
                first = first or exc
                out.append(None)
        if first is not None:
            raise first
        return out

    def pids(self) -> list[int]:
        """The process id of each shard actor, by shard index."""
        return self._all("pid")

    def orphan_guarded(self) -> list[bool]:
        """Whether each shard's process runs an orphan guard (exits once its raylet is gone; common.orphans)."""
        return self._all("orphan_guarded")

    def node_ids(self) -> list[str | None]:
        """The Ray node of the process hosting each shard, by shard index (None where no Ray runs)."""
        return self._all("node_id")

    def prepare_cut(self, cut_id: str, full: bool) -> list[dict]:
        """Every shard copies what version cut ``cut_id`` needs (call it with training paused).

        Returns one summary per shard: ``{"cut_id", "full", "rows": {table: n}, "deleted": {table: n}, "pause_ms"}``.
        """
        return self._all("prepare_cut", cut_id, bool(full))

    def write_cut(self, cut_id: str, store_url: str, version: int, storage_options: dict | None = None) -> list:
        """Every shard writes its parts of ``version`` (``ps/shard-{i}/{table}``) itself; returns all PartInfos."""
        return [
            info for infos in self._all("write_cut", cut_id, store_url, int(version), storage_options) for info in infos
        ]

    def commit_cut(self, cut_id: str) -> None:
        """The version is committed: every shard forgets the changes the cut covered."""
        self._all("commit_cut", cut_id)

    def abort_cut(self, cut_id: str) -> None:
        """The version failed: every shard forgets the copy and keeps every change pending."""
        self._all("abort_cut", cut_id)

    def restore(self, store_url: str, version: int, storage_options: dict | None = None) -> list[dict]:
        """Every shard replaces its state with its ids of ``version`` (any shard count wrote it); returns stats."""
        return self._all("restore", store_url, int(version), storage_options)

    def table_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Every table's rows, optimizer state and metadata from all shards, ids ascending (for
        :func:`versions.model_digest`; this ships every row to the caller)."""
        out = {}
        for table in self.cfg.table_names:
            parts = self._all("table_state", table)
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            order = np.argsort(merged["ids"], kind="stable")
            out[table] = {k: v[order] for k, v in merged.items()}
        return out

    def shutdown(self) -> None:
        """Kill the shard actors (their rows are lost)."""
        _ray.kill(self._actors)

    def _ids(self, table: str, ids, error: type) -> np.ndarray:
        if table not in self._dims:
            raise UnknownTableError(table, self.cfg.table_names)
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind != "i":
            raise error(
                table, f"ids must be a 1-D numpy signed integer array, got {getattr(ids, 'dtype', type(ids).__name__)}"
            )
        return ids.astype(np.int64, copy=False)


def create_parameter_server(cfg: PSConfig, placement: str | None = None) -> PSClient:
    """Start the shards of ``cfg`` and return a client (rank 0).

    ``placement`` (default ``cfg.placement``; ``"auto"`` means ``"ray"`` here):
    ``"ray"``: shard actors on the current Ray (any worker process can use them).
    ``"in_process"``: shards on threads of THIS process (:mod:`paramserver.inprocess`), no
    Ray round trips; for a single worker on the shards' node (the client cannot be pickled).
    """
    cfg.require_tables()  # before any shard starts
    placement = placement or cfg.placement
    if placement == "in_process":
        from paramserver.inprocess import create_in_process_shards

        return PSClient(cfg, create_in_process_shards(cfg))
    if placement not in ("ray", "auto"):
        raise ValueError(f"placement must be one of {list(PLACEMENTS)}, got {placement!r}")
    return PSClient(cfg, _ray.create_shard_actors(cfg))
