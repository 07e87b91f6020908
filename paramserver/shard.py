"""One parameter-server shard as a plain Python/torch object (an actor merely hosts it).

The shard holds its part of every table in one FBGEMM table-batched embedding module
(``SplitTableBatchedEmbeddingBagsCodegen``) with the optimizer fused into backward. Raw
ids map to slots through :class:`IdMap`; per-slot metadata is ``count`` (times pulled, aged),
``last_seen`` (shard version when last pulled or pushed), ``last_version`` (shard version of
the last update), ``touched`` (the cut epoch of the row's last change: what a delta version
must carry), ``pinned`` (leases held on the row) and ``seen_at`` (clock seconds of the last
sight, for ``ttl_seconds``).

Rules (vectorised; no Python loop over ids, only over tables):

* A pull *sees* its ids: counts go up, and an id that reaches ``admission_threshold``
  gets a slot whose row is ``init_rows(table, id, seed)``. Ids without a slot read zeros.
* A push of (ids, grads) is ONE fused backward + optimizer step over all tables: each id
  is its own SUM bag of length 1, tables with fewer ids are padded with empty bags, and
  ``grad_output`` is [B, sum(dims)]. On CPU the push calls FBGEMM's backward kernel
  directly, without the forward lookup (:func:`paramserver.tbe.fused_update`). Duplicate
  ids are summed first (what a TBE backward does with duplicates in one batch). Gradients
  for ids without a slot are dropped and counted. Everything is validated before any table changes.
* Leases: a pull with ``lease=(rank, step)`` pins the rows it returns; a pinned row is never
  evicted (LFU or TTL) until :meth:`release` (the step's push was applied) or the lease
  times out (``lease_timeout_s``, counted in ``lease_timeouts``).
* Eviction: TTL (rows not seen for ``ttl_versions`` shard versions or ``ttl_seconds``) and
  aged LFU when a table is full (counts decay by ``lfu_decay`` every ``lfu_decay_every``
  versions); never a row of the current batch or a leased row. What cannot be freed is
  refused (counted in ``refused_rows``) or raises TableFullError (``full_table``). An evicted
  row is zeroed with its optimizer state and its id recorded for the next delta version.
* Versions (:mod:`paramserver.cuts`): ``prepare_cut`` takes what a version needs without
  clearing anything (a delta copies its rows; a full cut is copy-on-write: rows it has not
  written yet are saved before a pull, push or eviction changes them), ``commit_cut`` clears
  exactly what the cut covered, ``abort_cut`` forgets it; ``restore`` rebuilds the shard from a
  version's content, one hash slice at a time.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import torch

from common.config import ConfigError
from paramserver import cuts
from paramserver.config import PSConfig, TableConfig
from paramserver.errors import BadPullError, BadPushError, TableFullError, UnknownTableError
from paramserver.hashing import init_rows
from paramserver.idmap import CountTable, IdMap
from paramserver.policies import aged_counts, expired_slots, lfu_victims
from paramserver.tbe import autograd_update, build_tbe, fused_update, sum_duplicates

PullBatch = Mapping[str, "np.ndarray | tuple[np.ndarray, np.ndarray]"]
PushBatch = Mapping[str, "tuple[np.ndarray, np.ndarray]"]


@dataclasses.dataclass
class _TableState:
    cfg: TableConfig
    col: int  # first column of this table in the TBE output
    ids: IdMap
    pending: CountTable
    count: np.ndarray
    last_seen: np.ndarray
    last_version: np.ndarray
    touched: np.ndarray  # int32: cut epoch of the last change (pull, admission, push); 0 = none since restore
    evicted: list  # [(epoch, ids)] evicted and not yet covered by a committed cut
    pinned: np.ndarray  # int32: leases holding the row (never evicted while > 0)
    seen_at: np.ndarray  # float64: clock seconds of the last pull or push (ttl_seconds)


@dataclasses.dataclass(frozen=True)
class PreparedPush:
    """A validated push: per table, distinct ids (ascending) and their summed float32 grads."""

    tables: dict[str, tuple[np.ndarray, np.ndarray]]


def resolve_device(cfg: PSConfig) -> torch.device:
    """The torch device of a shard; ConfigError when the optimizer needs CUDA and there is none."""
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ConfigError("ps.device='cuda' but no CUDA device is visible here; use 'cpu' or 'auto'")
    if not want_cuda and cfg.optimizer == "adam":
        raise ConfigError(
            "ps.optimizer='adam' needs CUDA (FBGEMM's CPU kernels have no Adam); "
            "use rowwise_adagrad, adagrad or sgd on CPU"
        )
    return torch.device("cuda") if want_cuda else torch.device("cpu")


class EmbeddingShard:
    """Shard ``index`` of ``num_shards``: storage, id map, admission/eviction and updates."""

    def __init__(
        self, cfg: PSConfig, index: int = 0, clock: Callable[[], float] = time.time, direct_update: bool = True
    ) -> None:
        """``direct_update``: a push calls FBGEMM's fused backward + optimizer kernel directly
        (:func:`paramserver.tbe.fused_update`; CPU with rowwise_adagrad, adagrad or sgd); False, or
        where there is no such kernel (CUDA, Adam), it runs the module's forward then backward. Both
        give the same bits; the direct call skips the forward lookup nobody reads."""
        self.cfg = cfg.require_tables()
        self.index = index
        self._clock = clock  # seconds: ttl_seconds and lease timeouts (tests pass a fake clock)
        self.device = resolve_device(cfg)
        self._tbe = build_tbe(
            cfg.tables,
            cfg.capacity_per_shard,
            cfg.optimizer,
            cfg.learning_rate,
            cfg.eps,
            cfg.weights_dtype,
            self.device,
        )
        direct = fused_update(self._tbe, cfg.optimizer) if direct_update else None
        self.direct_update = direct is not None
        self._update = direct or autograd_update(self._tbe)
        self._weights = self._tbe.split_embedding_weights()
        states = self._tbe.split_optimizer_states() if cfg.optimizer != "sgd" else []
        self._states = [list(s) for s in states] if states else [[] for _ in cfg.tables]
        cap = cfg.capacity_per_shard
        self._tables: dict[str, _TableState] = {}
        col = 0
        for t, w in zip(cfg.tables, self._weights):
            w.zero_()
            self._tables[t.name] = _TableState(
                cfg=t,
                col=col,
                ids=IdMap(cap),
                pending=CountTable(2 * cap),
                count=np.zeros(cap, np.int64),
                last_seen=np.zeros(cap, np.int64),
                last_version=np.zeros(cap, np.int64),
                touched=np.zeros(cap, np.int32),
                evicted=[],
                pinned=np.zeros(cap, np.int32),
                seen_at=np.zeros(cap, np.float64),
            )
            col += t.dim
        for states_t in self._states:
            for s in states_t:
                s.zero_()
        self._total_dim = col
        self.version = 0  # updates applied (async: pushes; sync: steps)
        self.step = 0  # highest step seen
        self._next_ttl_sweep = 0  # shard version of the next ttl_versions sweep
        self._next_time_sweep = 0.0  # clock seconds of the next ttl_seconds sweep
        # key (rank, step) -> [created_at, [(table state, pinned slots)], {table: (ids, slots) with every id held}]
        self._leases: dict = {}  # oldest first
        self._epoch = 1  # changes are stamped with the current cut epoch; prepare_cut starts a new one
        self._committed_epoch = 0  # changes stamped <= this are in a committed version
        self._cuts: dict = {}  # cut_id -> PreparedCut (at most one)
        self.lazy_full_cuts = True  # a full cut is written copy-on-write (cuts.LazyTable), not copied at prepare
        self._lazy = None  # {table: cuts.LazyTable} while a lazy full cut is prepared and not committed
        self._cut_lock = threading.Lock()  # the cut writer's thread against changes of rows it still has to write
        self._stats = dict(
            admitted=0,
            evicted=0,
            evicted_ttl=0,
            evicted_lfu=0,
            dropped_grads=0,
            stale_pushes=0,
            dropped_stale_pushes=0,
            pulls=0,
            pushes=0,
            rows_pulled=0,
            rows_pushed=0,
            refused_rows=0,
            lease_timeouts=0,
        )

    # ------------------------------------------------------------------ reads
    def pull(self, batch: PullBatch, step: int | None = None, lease: Hashable | None = None) -> dict[str, np.ndarray]:
        """Rows of the ids of each table: {table: float32 [n, dim]} aligned with the input ids.

        ``batch[table]`` is an int64 id array (duplicates allowed) or ``(distinct_ids, counts)``
        as the client sends it. The pull counts as seeing the ids (admission, LFU, TTL).
        ``lease`` (a key, ``(rank, step)``): the rows returned stay resident until
        ``release(lease)`` (or the lease times out); pulling again under the same key adds rows.
        With ``full_table="error"`` a pull that cannot get its rows raises TableFullError first.
        The arrays are views into one buffer (see :meth:`pull_flat`).
        """
        flat = self.pull_flat(batch, step, lease)
        out, at = {}, 0
        for name, value in batch.items():
            n, dim = len(value[0] if isinstance(value, tuple) else value), self._tables[name].cfg.dim
            out[name] = flat[at : at + n * dim].reshape(n, dim)
            at += n * dim
        return out

    def pull_flat(self, batch: PullBatch, step: int | None = None, lease: Hashable | None = None) -> np.ndarray:
        """:meth:`pull`, the rows in the pull reply's wire form (:mod:`paramserver.wire`): ONE float32
        array, table after table in ``batch`` order, each ``[n_t, dim_t]`` row-major.

        Every table's rows are gathered straight into their part of this buffer (one copy of each
        row); rows of ids without a slot are zeros.

        >>> shard.pull_flat({"item": np.array([7, 3]), "user": np.array([1])})   # doctest: +SKIP
        array([...item 7 (dim floats)..., ...item 3..., ...user 1...], dtype=float32)
        """
        prepared = {name: self._prepare_pull(name, v) for name, v in batch.items()}
        self._advance(step)
        now = self._clock()
        self._maintain(now)
        if self.cfg.full_table == "error":
            for name, (ids, counts, _) in prepared.items():
                self._check_room(self._tables[name], ids, counts)
        sizes = [
            len(ids if inverse is None else inverse) * self._tables[name].cfg.dim
            for name, (ids, _, inverse) in prepared.items()
        ]
        flat = np.empty(sum(sizes), np.float32)
        held, plans, at = [], {}, 0
        for (name, (ids, counts, inverse)), size in zip(prepared.items(), sizes):
            ts = self._tables[name]
            slots = self._see(ts, ids, counts, now)
            if lease is not None:
                ok = slots >= 0
                got = slots if ok.all() else slots[ok]  # distinct (the ids are)
                ts.pinned[got] += 1
                held.append((ts, got))
                if len(got) == len(ids) and inverse is None:  # the step's push may reuse this lookup
                    plans[name] = (ids, slots)
            self._gather_into(flat[at : at + size], name, slots if inverse is None else slots[inverse])
            at += size
            self._stats["rows_pulled"] += len(ids)
        if lease is not None:
            entry = self._leases.get(lease)
            if entry is None:
                self._leases[lease] = [now, held, plans]
            else:  # a second pull under the same key: pin its rows too, forget the lookups
                entry[1].extend(held)
                entry[2] = {}
        self._stats["pulls"] += 1
        return flat

    # ----------------------------------------------------------------- leases
    def release(self, lease: Hashable) -> bool:
        """Unpin the rows of ``lease`` (its step's push was applied); False if there is no such lease."""
        entry = self._leases.pop(lease, None)
        if entry is None:
            return False
        for ts, slots in entry[1]:
            ts.pinned[slots] -= 1
        return True

    def release_through(self, step: int, rank: int | None = None) -> int:
        """Release every lease ``(rank, s)`` with ``s <= step``, of every rank (sync: the step is applied) or of
        ``rank`` (async: its push of ``step`` is done, and it never goes back); returns how many."""
        done = [key for key in self._leases if key[1] <= step and (rank is None or key[0] == rank)]
        for key in done:
            self.release(key)
        return len(done)

    def leases(self) -> list:
        """The keys of the leases held, oldest first."""
        return list(self._leases)

    def read(self, table: str, ids: np.ndarray) -> np.ndarray:
        """Current rows of ``ids`` without counting them as seen (zeros where no slot)."""
        ts = self._table(table)
        ids = _as_ids(ids, table, BadPullError)
        return self._gather(table, ts.ids.lookup(ids))

    def metadata(self, table: str, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row metadata of ``ids``: count, last_seen, last_version (0 where no slot), admitted."""
        ts = self._table(table)
        slots = ts.ids.lookup(_as_ids(ids, table, BadPullError))
        has = slots >= 0
        out = {"admitted": has}
        for key in ("count", "last_seen", "last_version"):
            arr = np.zeros(len(slots), np.int64)
            arr[has] = getattr(ts, key)[slots[has]]
            out[key] = arr
        return out

    # ----------------------------------------------------------------- writes
    def prepare_push(self, batch: PushBatch) -> PreparedPush:
        """Validate every table of ``batch`` and sum duplicate ids; raises before any change."""
        out = {}
        for name, value in batch.items():
            ts = self._table(name)
            if not isinstance(value, tuple) or len(value) != 2:
                raise BadPushError(name, "expected a pair (ids, grads)")
            ids = _as_ids(value[0], name, BadPushError)
            grads = value[1]
            if not isinstance(grads, np.ndarray) or grads.dtype != np.float32:
                raise BadPushError(
                    name, f"grads must be a float32 numpy array, got {getattr(grads, 'dtype', type(grads).__name__)}"
                )
            if grads.ndim != 2 or grads.shape != (len(ids), ts.cfg.dim):
                raise BadPushError(
                    name, f"grads must have shape [len(ids)={len(ids)}, dim={ts.cfg.dim}], got {list(grads.shape)}"
                )
            if not np.isfinite(grads).all():
                bad = int(np.count_nonzero(~np.isfinite(grads).all(axis=1)))
                raise BadPushError(name, f"{bad} gradient row(s) hold NaN or inf")
            out[name] = sum_duplicates(ids, grads)
        return PreparedPush(out)

    def apply_push(self, prepared: PreparedPush, step: int | None = None, lease: Hashable | None = None) -> int:
        """One fused backward + optimizer step over all tables of ``prepared``; the shard version moves
        on by one (then the ``ttl_versions`` sweep runs when due). Returns the gradient rows dropped
        (ids without a row). ``lease``: the key of the step's pull; where a table's ids are the ones
        that pull held, its id-map lookup is reused (the rows are pinned, so the slots are theirs)."""
        self._advance(step)
        self.version += 1
        now = self._clock()
        parts, dropped = [], 0
        plans = self._leases[lease][2] if lease is not None and lease in self._leases else {}
        for name, (ids, grads) in prepared.tables.items():
            ts = self._tables[name]
            plan = plans.get(name)
            if plan is not None and len(plan[0]) == len(ids) and np.array_equal(plan[0], ids):
                slots = plan[1]
            else:
                slots = ts.ids.lookup(ids)
            hit = slots >= 0
            dropped += int(len(ids) - np.count_nonzero(hit))
            hs = slots[hit]
            if self._lazy is not None:
                cuts.preserve(self, ts, hs)
            if self.cfg.lfu_decay_every is not None:  # age the count to now before moving last_seen
                ts.count[hs] = self._aged(ts, hs)
            ts.last_seen[hs] = self.version
            ts.seen_at[hs] = now
            ts.last_version[hs] = self.version
            ts.touched[hs] = self._epoch
            parts.append((ts, hs, grads[hit] if not hit.all() else grads))
            self._stats["rows_pushed"] += len(hs)
        self._stats["dropped_grads"] += dropped
        self._stats["pushes"] += 1
        self._fused_step(parts)
        self._sweep_versions()
        return dropped

    def push(self, batch: PushBatch, step: int | None = None) -> int:
        """Validate then apply (see :meth:`prepare_push`, :meth:`apply_push`); returns the gradient rows dropped."""
        return self.apply_push(self.prepare_push(batch), step)

    def count_stale(self, dropped: bool) -> None:
        self._stats["stale_pushes"] += 1
        if dropped:
            self._stats["dropped_stale_pushes"] += 1

    # --------------------------------------------------------------- versions
    def prepare_cut(self, cut_id: str, full: bool) -> dict:
        """Copy what a version needs (see :func:`paramserver.cuts.prepare`); nothing is cleared."""
        return cuts.prepare(self, cut_id, full)

    def commit_cut(self, cut_id: str) -> None:
        """The version holding cut ``cut_id`` is committed: clear exactly the changes it covered."""
        cuts.commit(self, cut_id)

    def abort_cut(self, cut_id: str) -> bool:
        """Forget cut ``cut_id``; every change stays pending for the next cut. False if unknown."""
        if cut_id in self._cuts:
            self._lazy = None
        return self._cuts.pop(cut_id, None) is not None

    def write_cut(self, cut_id: str, store, version: int, storage_options=None) -> list:
        """Write the parts of prepared cut ``cut_id`` into ``version`` of ``store`` (a VersionStore or
        URL): ``ps/shard-{index}/{table}`` per table. Returns their PartInfos."""
        return cuts.write(self, cut_id, store, version, storage_options)

    def restore(self, content, counters: dict | None = None) -> None:
        """Rebuild every table from materialised content: a :class:`paramserver.cuts.RestoreContent`, or
        ``{table: {"ids", "rows", "opt_state_0".., "count", "last_seen", "last_version"}}`` (as
        :meth:`table_state` returns) with ``counters`` ``{"version", "step", "next_ttl_sweep"}``.
        Tables not given end up empty. Everything is checked before anything changes (RestoreError)."""
        if not isinstance(content, cuts.RestoreContent):
            content = cuts.RestoreContent(None, dict(content), {}, dict(counters or {}))
        cuts.restore(self, content)

    def restore_from_store(self, store, version: int, storage_options=None) -> None:
        """Read ``version`` of ``store`` (its chain) and keep the ids that route to this shard, one hash
        slice at a time (see :func:`paramserver.cuts.restore_from_store`)."""
        cuts.restore_from_store(self, store, version, storage_options)

    def table_state(self, table: str) -> dict[str, np.ndarray]:
        """Every admitted row of ``table`` with its optimizer state and metadata, ids ascending:
        ``{"ids", "rows" (stored dtype), "opt_state_0"..., "count", "last_seen", "last_version"}``."""
        ts = self._table(table)
        ids, slots = ts.ids.items()
        return cuts.table_arrays(self, ts, ids, slots)

    def table_rows(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """Every admitted (id, row) of ``table``, ids ascending (a full snapshot)."""
        ids, slots = self._table(table).ids.items()
        return ids, self._gather(table, slots)

    def stats(self) -> dict[str, int]:
        """Counters since start: rows (admitted and resident), admitted, evicted, dropped_grads, ..."""
        rows = {name: len(ts.ids) for name, ts in self._tables.items()}
        leased = sum(int(np.count_nonzero(ts.pinned)) for ts in self._tables.values())
        return {
            "shard": self.index,
            "rows": sum(rows.values()),
            "rows_per_table": rows,
            "version": self.version,
            "step": self.step,
            "leases": len(self._leases),
            "leased_rows": leased,
            **self._stats,
        }

    # -------------------------------------------------------------- internals
    def _table(self, name: str) -> _TableState:
        try:
            return self._tables[name]
        except (KeyError, TypeError):
            raise UnknownTableError(str(name), self.cfg.table_names) from None

    def _prepare_pull(self, name, value):
        self._table(name)
        if isinstance(value, tuple):
            if len(value) != 2:
                raise BadPullError(name, "expected ids or a pair (distinct ids, counts)")
            ids = _as_ids(value[0], name, BadPullError)
            counts = np.asarray(value[1], dtype=np.int64)
            if counts.shape != ids.shape or (counts < 1).any():
                raise BadPullError(name, "counts must be >= 1 and as long as ids")
            if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # a repeated id would get two slots
                raise BadPullError(
                    name,
                    "the (ids, counts) form needs distinct ids in ascending order "
                    "(send raw ids instead, or np.unique them)",
                )
            return ids, counts, None
        ids = _as_ids(value, name, BadPullError)
        uniq, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        return uniq, counts.astype(np.int64), inverse

    def _advance(self, step: int | None) -> None:
        if step is not None and int(step) > self.step:
            self.step = int(step)  # the highest step seen (a counter of versions; eviction uses versions)

    def _aged(self, ts: _TableState, slots: np.ndarray) -> np.ndarray:
        return aged_counts(
            ts.count[slots], ts.last_seen[slots], self.version, self.cfg.lfu_decay_every, self.cfg.lfu_decay
        )

    def _maintain(self, now: float) -> None:
        """Housekeeping before a pull: expired leases (counted), then the ``ttl_seconds`` sweep when due."""
        timeout = self.cfg.lease_timeout_s
        while self._leases:
            key, (created, *_) = next(iter(self._leases.items()))
            if now - created <= timeout:
                break
            self.release(key)
            self._stats["lease_timeouts"] += 1
        ttl = self.cfg.ttl_seconds
        if ttl is not None and now >= self._next_time_sweep:  # O(capacity): every ttl/8 seconds at most
            self._next_time_sweep = now + ttl / 8
            for ts in self._tables.values():
                self._evict(ts, expired_slots(ts.ids.occupied, ts.seen_at, now, ttl, ts.pinned), "evicted_ttl")

    def _sweep_versions(self) -> None:
        """The ``ttl_versions`` sweep, every ttl/8 versions (O(capacity)): a row expires at most ttl/8 late."""
        ttl = self.cfg.ttl_versions
        if ttl is None or self.version < self._next_ttl_sweep:
            return
        self._next_ttl_sweep = self.version + max(1, ttl // 8)
        for ts in self._tables.values():
            self._evict(ts, expired_slots(ts.ids.occupied, ts.last_seen, self.version, ttl, ts.pinned), "evicted_ttl")

    def _check_room(self, ts: _TableState, ids: np.ndarray, counts: np.ndarray) -> None:
        """full_table="error": raise TableFullError, before any change, if the new rows cannot all be had."""
        slots = ts.ids.lookup(ids)
        miss = slots < 0
        if self.cfg.admission_threshold > 1:
            need = int(np.count_nonzero(ts.pending.peek(ids[miss], counts[miss]) >= self.cfg.admission_threshold))
        else:
            need = int(np.count_nonzero(miss))
        if need <= ts.ids.free:
            return
        evictable = ts.ids.occupied & (ts.pinned == 0)
        evictable[slots[~miss]] = False
        available = ts.ids.free + int(np.count_nonzero(evictable))
        if need > available:
            raise TableFullError(ts.cfg.name, need, available, ts.ids.capacity)

    def _see(self, ts: _TableState, ids: np.ndarray, counts: np.ndarray, now: float) -> np.ndarray:
        version = self.version
        slots = ts.ids.lookup(ids)
        hit = slots >= 0
        hs = slots[hit]
        if self._lazy is not None:
            cuts.preserve(self, ts, hs)
        if self.cfg.lfu_decay_every is not None:
            ts.count[hs] = self._aged(ts, hs) + counts[hit]
        else:
            ts.count[hs] += counts[hit]
        ts.last_seen[hs] = version
        ts.seen_at[hs] = now
        ts.touched[hs] = self._epoch  # count and last_seen are part of a version (they drive eviction)
        miss = np.flatnonzero(~hit)
        if len(miss) == 0:
            return slots
        if self.cfg.admission_threshold > 1:
            totals = ts.pending.add(ids[miss], counts[miss], version)
            ready = totals >= self.cfg.admission_threshold
            miss, totals = miss[ready], totals[ready]
        else:
            totals = counts[miss]
        if len(miss) == 0:
            return slots
        short = len(miss) - ts.ids.free
        if short > 0:  # evict 1% of the table beyond what is needed, so a full table does not scan every step
            short = max(short, ts.ids.capacity // 100)
            count = ts.count
            if self.cfg.lfu_decay_every is not None:  # rank by the aged counts (lazily, no stored change)
                count = aged_counts(ts.count, ts.last_seen, version, self.cfg.lfu_decay_every, self.cfg.lfu_decay)
            victims = lfu_victims(ts.ids.occupied, count, ts.last_seen, hs, short, ts.ids.slot_key, ts.pinned)
            self._evict(ts, victims, "evicted_lfu")
        if len(miss) > ts.ids.free:  # still full (this batch and leased rows fill it): refuse, most frequent first
            self._stats["refused_rows"] += len(miss) - ts.ids.free
            keep = np.sort(np.argsort(-totals, kind="stable")[: ts.ids.free])
            miss, totals = miss[keep], totals[keep]
        new_ids = ids[miss]
        new_slots = ts.ids.insert(new_ids)
        self._reset_rows(ts, new_slots, init_rows(ts.cfg, new_ids, self.cfg.seed))
        ts.count[new_slots] = totals
        ts.last_seen[new_slots] = version
        ts.seen_at[new_slots] = now
        ts.last_version[new_slots] = self.version
        ts.touched[new_slots] = self._epoch
        if self.cfg.admission_threshold > 1:
            ts.pending.discard(new_ids)
        self._stats["admitted"] += len(new_slots)
        slots[miss] = new_slots
        return slots

    def _evict(self, ts: _TableState, slots: np.ndarray, reason: str) -> None:
        if len(slots) == 0:
            return
        if self._lazy is not None:
            cuts.preserve(self, ts, slots)
        ts.evicted.append((self._epoch, ts.ids.remove_slots(slots)))
        if len(ts.evicted) > 64:  # no version for a while: fold the log (a later epoch only keeps ids longer)
            ids = np.unique(np.concatenate([e for _, e in ts.evicted]))
            ts.evicted = [(self._epoch, ids[ts.ids.lookup(ids) < 0])]
        self._reset_rows(ts, slots, None)
        ts.count[slots] = 0
        ts.last_seen[slots] = 0
        ts.last_version[slots] = 0
        ts.touched[slots] = 0
        ts.seen_at[slots] = 0.0
        self._stats["evicted"] += len(slots)
        self._stats[reason] += len(slots)

    def _reset_rows(self, ts: _TableState, slots: np.ndarray, rows: np.ndarray | None) -> None:
        t = self.cfg.table_names.index(ts.cfg.name)
        idx = torch.from_numpy(slots).to(self.device)
        w = self._weights[t]
        if rows is None:
            w.index_fill_(0, idx, 0.0)
        else:
            w.index_copy_(0, idx, torch.from_numpy(rows).to(device=self.device, dtype=w.dtype))
        for s in self._states[t]:
            s.index_fill_(0, idx, 0.0)

    def _gather(self, name: str, slots: np.ndarray) -> np.ndarray:
        rows = np.empty((len(slots), self._tables[name].cfg.dim), np.float32)
        self._gather_into(rows.reshape(-1), name, slots)
        return rows

    def _gather_into(self, out: np.ndarray, name: str, slots: np.ndarray) -> None:
        """Rows ``slots`` of table ``name`` as float32 into ``out`` (flat, len(slots) x dim); zeros where
        a slot is -1. One copy: ``index_select`` writes straight into ``out`` (fp32 weights on CPU)."""
        w = self._weights[self.cfg.table_names.index(name)]
        view = torch.from_numpy(out).view(len(slots), w.shape[1])
        hit = slots >= 0
        if hit.all():
            idx = torch.from_numpy(slots)
            if w.dtype == torch.float32 and w.device.type == "cpu":
                torch.index_select(w, 0, idx, out=view)
            else:
                view.copy_(w.index_select(0, idx.to(w.device)))
            return
        view.zero_()
        if hit.any():
            where = torch.from_numpy(np.flatnonzero(hit))
            view.index_copy_(0, where, w.index_select(0, torch.from_numpy(slots[hit]).to(w.device)).float().cpu())

    def _fused_step(self, parts: list) -> None:
        """One update of every table: each slot is its own SUM bag of length 1, tables with fewer
        rows are padded with empty bags; ``grad_output`` is [B, sum(dims)] (zeros in padding)."""
        batch = max((len(hs) for _, hs, _ in parts), default=0)
        if batch == 0:
            return
        by_table = {ts.cfg.name: (hs, g) for ts, hs, g in parts}
        lengths = np.zeros((len(self._tables), batch), np.int64)
        grad_out = np.empty((batch, self._total_dim), np.float32)
        indices = []
        for t, (name, ts) in enumerate(self._tables.items()):  # table order fixes the index layout
            hs, g = by_table.get(name, (None, None))
            n = 0 if hs is None else len(hs)
            grad_out[n:, ts.col : ts.col + ts.cfg.dim] = 0.0  # padding bags
            if n:
                lengths[t, :n] = 1
                indices.append(hs)
                grad_out[:n, ts.col : ts.col + ts.cfg.dim] = g
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths.reshape(-1), out=offsets[1:])
        dev = self.device
        self._update(
            torch.from_numpy(np.concatenate(indices)).to(dev),
            torch.from_numpy(offsets).to(dev),
            torch.from_numpy(grad_out).to(dev),
        )


def _as_ids(ids, table: str, error: type) -> np.ndarray:
    if not isinstance(ids, np.ndarray):
        raise error(table, f"ids must be a numpy int64 array, got {type(ids).__name__}")
    if ids.ndim != 1 or ids.dtype.kind != "i":
        raise error(table, f"ids must be a 1-D signed integer array, got {ids.dtype} with shape {list(ids.shape)}")
    return ids.astype(np.int64, copy=False)
