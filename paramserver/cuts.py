"""A shard's side of consistent versions: prepare / write / commit / abort a cut, and restore.

A cut is two-phase and never destroys anything until the version is committed::

    coordinator          shard
    pause trainers
    prepare_cut(c, full) ──▶ delta: copy (numpy fancy indexing) the changed rows; full: mark the slots
                              the version holds (copy-on-write, LazyTable); start a new epoch
    resume trainers           training goes on; new changes are stamped with the new epoch
    write_cut(c, url, v) ──▶ write the cut as hash-sliced parts ps/shard-{i}/{table}[.s{k}-{bits}],
                              one slice at a time (off the training path)
    store commit (manifest, LATEST)
    commit_cut(c)        ──▶ forget the copy; mark the changes it covered as saved
    (or abort_cut(c)     ──▶ forget the copy; every change stays pending for the next cut)

What a cut copies, per table (a keyed part, ids ascending)::

    full:  every admitted row:  ids, rows (stored dtype), opt_state_0.., count, last_seen, last_version
    delta: the rows changed since the last COMMITTED cut (pulled, admitted or pushed: count and
           last_seen are part of the content), with the same arrays, plus
           deleted: ids evicted since then and not admitted again

Change tracking: each slot holds ``touched`` (int32), the epoch of its last change; a prepare
takes epoch e and starts e+1, a commit records e as saved. So rows changed after the prepare
(epoch e+1) stay pending when the cut commits, and an abort loses nothing.

Restore: the shard reads a version's chain itself, one hash slice at a time
(:func:`restore_from_store`), keeps the ids that route to it (``shard_of(ids, num_shards) ==
index``, so a version written by 1 shard restores into 2) and rebuilds its id map, rows,
optimizer state, metadata, pending admission counts and counters. Peak memory stays near the
table's own: a full cut holds no copy of the table, a write holds one slice, a restore one part
per chain layer and one merged slice (docs/paramserver.md, "Sliced parts").
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from paramserver.errors import CutError, RestoreError
from paramserver.hashing import splitmix64_next
from paramserver.idmap import CountTable, IdMap
from paramserver.sharding import shard_of
from versions import VersionStore, table_parts, write_part
from versions.merge import merge_keyed

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedCut:
    cut_id: str
    epoch: int
    full: bool
    tables: dict  # table -> {"ids", "rows", "opt_state_k", "count", "last_seen", "last_version", "deleted"}
    pending: dict  # table -> {"ids", "count", "last_seen"} (admission_threshold > 1 only)
    rows_after: dict  # table -> rows the table holds at the cut
    counters: dict  # version, step, next_ttl_sweep


@dataclasses.dataclass
class LazyTable:
    """A full cut's table, written without a copy of the table (copy-on-write).

    The prepare (inside the training pause) only copies ``pending`` (per slot: in the cut and not
    written yet: the occupancy, 1 B per slot). Before the shard changes a pending slot (a pull's
    counts, a push, an eviction) it saves the slot's arrays into ``saved[slice]`` and clears
    ``pending`` (:func:`preserve`), so a slot still pending holds exactly what it held at the
    prepare. The writer groups the pending slots by hash slice when it starts (a snapshot: a
    slot that changes meanwhile is no longer pending and is skipped), then takes each slice's
    pending rows live and its saved ones, under ``shard._cut_lock``. The version is the table as
    it was at the prepare; the memory beside the table is the grouping (16 B per row), the rows
    changed while the write runs, and one slice."""

    bits: int
    pending: np.ndarray  # bool per slot
    saved: list  # per slice: [arrays saved before a change]
    written: bool = False  # a lazy cut is written once (the writer consumes what it saved)
    ids: np.ndarray | None = None  # set by the writer: the pending slots' ids grouped by slice
    slots: np.ndarray | None = None  # aligned with ids
    bounds: np.ndarray | None = None  # slice s is ids[bounds[s]:bounds[s + 1]]


@dataclasses.dataclass(frozen=True)
class RestoreContent:
    """What a shard restores: per table the merged keyed arrays (or None: the version has no rows
    of that table), pending admission counts, and the shard counters."""

    version: int | None
    tables: dict
    pending: dict
    counters: dict


def table_arrays(shard, ts, ids: np.ndarray, slots: np.ndarray) -> dict[str, np.ndarray]:
    """The keyed arrays of ``ids`` held in ``slots`` of table ``ts`` (copies)."""
    t = shard.cfg.table_names.index(ts.cfg.name)
    idx = torch.from_numpy(np.ascontiguousarray(slots, np.int64)).to(shard.device)
    out = {"ids": np.ascontiguousarray(ids, np.int64), "rows": shard._weights[t].index_select(0, idx).cpu().numpy()}
    for k, st in enumerate(shard._states[t]):
        out[f"opt_state_{k}"] = st.index_select(0, idx).cpu().numpy()
    out["count"] = ts.count[slots]
    out["last_seen"] = ts.last_seen[slots]
    out["last_version"] = ts.last_version[slots]
    return out


def prepare(shard, cut_id: str, full: bool) -> dict:
    """Copy what the version needs (module docstring); returns ``{"cut_id", "full", "rows", "deleted", "pause_ms"}``."""
    t0 = time.perf_counter()
    if shard._cuts:
        stale = list(shard._cuts)
        log.warning(
            "shard %d: cut(s) %s were never committed or aborted; cut %r replaces them", shard.index, stale, cut_id
        )
        shard._cuts.clear()
        shard._lazy = None
    epoch, committed = shard._epoch, shard._committed_epoch
    tables, pending, rows_after = {}, {}, {}
    lazy = {}
    for name, ts in shard._tables.items():
        if full and shard.lazy_full_cuts:  # no copy: copy-on-write while the cut is written
            n = len(ts.ids)
            nbytes = n * _row_bytes(shard, ts)
            lazy[name] = LazyTable(
                slice_bits(nbytes, _part_target(nbytes, PART_BYTES)),
                ts.ids.occupied.copy(),
                [[] for _ in range(1 << slice_bits(nbytes, _part_target(nbytes, PART_BYTES)))],
            )
            tables[name] = lazy[name]
            rows_after[name] = n
            if shard.cfg.admission_threshold > 1:
                keys, counts, last = ts.pending.items()
                pending[name] = {"ids": keys, "count": counts, "last_seen": last}
            continue
        if full:
            ids, slots = ts.ids.items()
            deleted = np.empty(0, np.int64)
        else:
            slots = np.flatnonzero(ts.touched > committed)  # evicted slots hold 0, so these are occupied
            ids = ts.ids.slot_key[slots]
            order = np.argsort(ids)
            ids, slots = ids[order], slots[order]
            if ts.evicted:
                deleted = np.unique(np.concatenate([e for _, e in ts.evicted]))
                deleted = deleted[ts.ids.lookup(deleted) < 0]  # evicted then admitted again: an upsert
            else:
                deleted = np.empty(0, np.int64)
        arrays = table_arrays(shard, ts, ids, slots)
        arrays["deleted"] = deleted
        tables[name] = arrays
        rows_after[name] = len(ts.ids)
        if shard.cfg.admission_threshold > 1:
            keys, counts, last = ts.pending.items()
            pending[name] = {"ids": keys, "count": counts, "last_seen": last}
    shard._epoch = epoch + 1
    shard._lazy = lazy or None
    shard._cuts[cut_id] = PreparedCut(
        cut_id,
        epoch,
        bool(full),
        tables,
        pending,
        rows_after,
        {"version": shard.version, "step": shard.step, "next_ttl_sweep": shard._next_ttl_sweep},
    )
    return {
        "cut_id": cut_id,
        "full": bool(full),
        "rows": {t: rows_after[t] if isinstance(a, LazyTable) else len(a["ids"]) for t, a in tables.items()},
        "deleted": {t: 0 if isinstance(a, LazyTable) else len(a["deleted"]) for t, a in tables.items()},
        "pause_ms": (time.perf_counter() - t0) * 1e3,
    }


def _cut(shard, cut_id: str) -> PreparedCut:
    try:
        return shard._cuts[cut_id]
    except KeyError:
        known = list(shard._cuts)
        raise CutError(
            cut_id,
            f"shard {shard.index} has no prepared cut of that id (prepared: {known}); "
            "call prepare_cut first, and commit or abort each cut once",
        ) from None


def commit(shard, cut_id: str) -> None:
    cut = _cut(shard, cut_id)
    del shard._cuts[cut_id]
    shard._lazy = None
    shard._committed_epoch = max(shard._committed_epoch, cut.epoch)
    for ts in shard._tables.values():
        ts.evicted = [(e, ids) for e, ids in ts.evicted if e > cut.epoch]


def part_name(index: int, table: str) -> str:
    return f"ps/shard-{index}/{table}"


PART_BYTES = 64 << 20  # a table's part of a cut is split into hash slices of at most about this many bytes ...
_SLICES = 32  # ... and of about 1/32 of the table when that is smaller (restore holds a few slices) ...
_MIN_PART_BYTES = 1 << 20  # ... but not below 1 MiB
_SLICE_SALT = np.uint64(0x6A09E667F3BCC909)  # slices are independent of the routing hash (shard_of)
_MAX_SLICE_BITS = 15


def slice_of(ids: np.ndarray, bits: int) -> np.ndarray:
    """The hash slice (int64 in ``[0, 2**bits)``) of every id: the top ``bits`` of a salted splitmix64.

    Slices nest: the slice of an id at ``bits`` is its slice at ``bits + 1`` shifted right by one,
    so parts written at different granularities (a full and its deltas) line up."""
    ids = np.asarray(ids, dtype=np.int64)
    if bits == 0:
        return np.zeros(len(ids), np.int64)
    return (splitmix64_next(ids.view(np.uint64) ^ _SLICE_SALT) >> np.uint64(64 - bits)).astype(np.int64)


def slice_bits(nbytes: int, part_bytes: int) -> int:
    """The fewest slice bits that bring ``nbytes`` down to about ``part_bytes`` per slice."""
    bits = 0
    while bits < _MAX_SLICE_BITS and (nbytes >> bits) > part_bytes:
        bits += 1
    return bits


def _part_target(nbytes: int, part_bytes: int) -> int:
    return min(part_bytes, max(_MIN_PART_BYTES, nbytes // _SLICES))


def _row_bytes(shard, ts) -> int:
    """Bytes of one row of a table's cut: id, row, optimizer state, count, last_seen, last_version."""
    t = shard.cfg.table_names.index(ts.cfg.name)
    w = shard._weights[t]
    out = 8 + w.shape[1] * w.element_size() + 3 * 8
    for st in shard._states[t]:
        out += (st.numel() // max(1, st.shape[0])) * st.element_size()
    return out


def preserve(shard, ts, slots: np.ndarray) -> None:
    """Copy-on-write for a lazy full cut (:class:`LazyTable`): save the arrays of those of ``slots``
    that the cut still has to write, before the caller changes them."""
    lazy = shard._lazy.get(ts.cfg.name) if shard._lazy else None
    if lazy is None or len(slots) == 0:
        return
    with shard._cut_lock:
        mask = lazy.pending[slots]
        if not mask.any():
            return
        keep = slots[mask]
        lazy.pending[keep] = False
        arrays = table_arrays(shard, ts, ts.ids.slot_key[keep], keep)
        sl = slice_of(arrays["ids"], lazy.bits)
        order = np.argsort(sl, kind="stable")
        bounds = np.searchsorted(sl[order], np.arange((1 << lazy.bits) + 1))
        for s in np.flatnonzero(np.diff(bounds)):
            pos = order[bounds[s] : bounds[s + 1]]
            lazy.saved[s].append({k: v[pos] for k, v in arrays.items()})


def _lazy_slice(shard, ts, lazy: LazyTable, s: int) -> dict:
    """Slice ``s`` of a lazy full cut as it was at the prepare: rows not changed since, read live, and
    the saved ones; ids ascending."""
    with shard._cut_lock:
        ids = lazy.ids[lazy.bounds[s] : lazy.bounds[s + 1]]
        slots = lazy.slots[lazy.bounds[s] : lazy.bounds[s + 1]]
        live = lazy.pending[slots]
        parts = [table_arrays(shard, ts, ids[live], slots[live])]
        lazy.pending[slots] = False
        parts += lazy.saved[s]
        lazy.saved[s] = []
    out = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(out["ids"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _grouped(ids: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): ``order[bounds[s]:bounds[s + 1]]`` are the positions of slice ``s``, ascending."""
    sl = slice_of(ids, bits).astype(np.uint16)  # bits <= 15: a stable sort of uint16 is a radix sort
    order = np.argsort(sl, kind="stable")
    bounds = np.searchsorted(sl[order], np.arange((1 << bits) + 1))
    return order, bounds


def infos_of(infos: list, table: str) -> list:
    return [i for i in infos if i.meta.get("role") == "table" and i.meta.get("table") == table]


def write(shard, cut_id: str, store, version: int, storage_options=None, part_bytes: int | None = None) -> list:
    """Write the parts of a prepared cut; returns their PartInfos (the cut stays prepared).

    A table's arrays become one part per hash slice (:func:`slice_of`, ``slice_bits`` chosen so a
    part holds about ``part_bytes`` (default :data:`PART_BYTES`) or 1/32 of the table if that is
    smaller, but not under 1 MiB: a restore holds a few parts beside the table), each gathered, written and
    dropped in turn: writing holds one slice beside the cut. A table that fits one part keeps
    the name ``ps/shard-{i}/{table}``; slices are ``ps/shard-{i}/{table}.s{slice}-{bits}``. The
    table's ``rows_after`` is carried by its first part written (0 on the others), so summing
    it over a version's parts still gives the rows the model holds."""
    cut = _cut(shard, cut_id)
    cfg = shard.cfg
    part_bytes = PART_BYTES if part_bytes is None else int(part_bytes)
    common = {
        "shard": shard.index,
        "num_shards": cfg.num_shards,
        "kind": "full" if cut.full else "delta",
        "optimizer": cfg.optimizer,
        "weights_dtype": cfg.weights_dtype,
        **{f"ps_{k}": v for k, v in cut.counters.items()},
    }
    infos = []
    for name, arrays in cut.tables.items():
        meta = {
            "role": "table",
            "table": name,
            "merge": "by_id",
            "dim": cfg.table(name).dim,
            "rows_after": cut.rows_after[name],
            **common,
        }
        if isinstance(arrays, LazyTable):
            if arrays.written:
                raise CutError(
                    cut_id,
                    "a full cut is written once (copy-on-write, nothing is kept after the "
                    "write): abort it and prepare a new one",
                )
            arrays.written = True
            ts = shard._tables[name]
            held = np.flatnonzero(arrays.pending)  # a snapshot; slots changed since are skipped per slice
            order, bounds = _grouped(ts.ids.slot_key[held], arrays.bits)
            arrays.ids, arrays.slots, arrays.bounds = ts.ids.slot_key[held][order], held[order], bounds
            for sl in range(1 << arrays.bits):
                part = _lazy_slice(shard, ts, arrays, sl)
                part["deleted"] = np.empty(0, np.int64)
                if len(part["ids"]) == 0 and not (sl == (1 << arrays.bits) - 1 and not infos_of(infos, name)):
                    continue
                name_s = (
                    part_name(shard.index, name)
                    if arrays.bits == 0
                    else f"{part_name(shard.index, name)}.s{sl}-{arrays.bits}"
                )
                first = not infos_of(infos, name)
                infos.append(
                    write_part(
                        store,
                        version,
                        name_s,
                        part,
                        storage_options,
                        {
                            **meta,
                            "slice_bits": arrays.bits,
                            "slice": sl,
                            "rows_after": meta["rows_after"] if first else 0,
                        },
                    )
                )
                del part
            continue
        nbytes = sum(a.nbytes for a in arrays.values())
        bits = slice_bits(nbytes, _part_target(nbytes, part_bytes))
        if bits == 0:
            infos.append(
                write_part(
                    store,
                    version,
                    part_name(shard.index, name),
                    arrays,
                    storage_options,
                    {**meta, "slice_bits": 0, "slice": 0},
                )
            )
            continue
        order, bounds = _grouped(arrays["ids"], bits)
        d_order, d_bounds = _grouped(arrays["deleted"], bits)
        first = True
        for sl in range(1 << bits):
            pos = order[bounds[sl] : bounds[sl + 1]]
            d_pos = d_order[d_bounds[sl] : d_bounds[sl + 1]]
            if len(pos) == 0 and len(d_pos) == 0 and not (first and sl == (1 << bits) - 1):
                continue  # an empty slice has nothing to say (the last one is written if all were empty)
            part = {k: (v[d_pos] if k == "deleted" else v[pos]) for k, v in arrays.items()}
            part_meta = {**meta, "slice_bits": bits, "slice": sl, "rows_after": meta["rows_after"] if first else 0}
            infos.append(
                write_part(
                    store, version, f"{part_name(shard.index, name)}.s{sl}-{bits}", part, storage_options, part_meta
                )
            )
            first = False
            del part
    for name, arrays in cut.pending.items():
        meta = {"role": "pending", "table": name, **common}
        infos.append(
            write_part(store, version, part_name(shard.index, name) + ".pending", arrays, storage_options, meta)
        )
    return infos


def read_content(store, version: int, cfg, index: int, storage_options=None) -> RestoreContent:
    """Read ``version`` (its chain) and keep the ids routed to shard ``index`` of ``cfg.num_shards``."""
    if not isinstance(store, VersionStore):
        store = VersionStore(store, storage_options)
    n = cfg.num_shards
    keep = None if n == 1 else (lambda ids: shard_of(ids, n) == index)
    manifest = store.manifest(version)
    groups = store.groups(version)
    tables, pending = {}, {}
    for t in cfg.table_names:
        tables[t] = store.materialize(version, table_parts(t), keep) if ("table", t) in groups else None
        if ("pending", t) in groups:
            pending[t] = store.materialize(version, table_parts(t, role="pending"), keep)
    unknown = sorted(name for kind, name in groups if kind == "table" and name not in cfg.table_names)
    if unknown:
        log.warning(
            "version %d holds tables %s that this parameter server does not have; they are ignored", version, unknown
        )
    metas = [p.meta for p in manifest.parts if p.meta.get("role") == "table"]
    counters = {
        k: max((int(m.get(f"ps_{k}", 0)) for m in metas), default=0) for k in ("version", "step", "next_ttl_sweep")
    }
    return RestoreContent(version, tables, pending, counters)


def _check_arrays(shard, name: str, arrays: dict, version, n_total: int | None = None) -> None:
    """RestoreError unless ``arrays`` (a table's rows, all or one slice) fit this shard's table ``name``."""
    cfg = shard.cfg
    ts = shard._tables[name]
    t = cfg.table_names.index(name)
    n, dim = len(arrays["ids"]), ts.cfg.dim
    total = n if n_total is None else n_total
    if total > cfg.capacity_per_shard:
        raise RestoreError(
            shard.index,
            version,
            f"table {name!r} has {total} rows for this shard but "
            f"capacity_per_shard is {cfg.capacity_per_shard}: raise ps.capacity_per_shard or use "
            "more shards",
        )
    if arrays["rows"].shape != (n, dim):
        raise RestoreError(
            shard.index,
            version,
            f"table {name!r} rows have shape {list(arrays['rows'].shape)}, this parameter server has dim {dim}",
        )
    states = sorted(k for k in arrays if k.startswith("opt_state_"))
    want = [f"opt_state_{k}" for k in range(len(shard._states[t]))]
    shapes_ok = states == want and all(
        arrays[k].shape[1:] == tuple(shard._states[t][i].shape[1:]) for i, k in enumerate(want)
    )
    if not shapes_ok:
        raise RestoreError(
            shard.index,
            version,
            f"table {name!r}: the version's optimizer state "
            f"{states} does not fit ps.optimizer={cfg.optimizer!r}; restore with the optimizer "
            "the version was trained with",
        )


def _reset(shard) -> None:
    """Every table empty (rows, optimizer state, id map, metadata); restored rows count as seen now."""
    cap = shard.cfg.capacity_per_shard
    shard._lazy = None  # a prepared lazy cut is void (its slots are gone)
    for name, ts in shard._tables.items():
        t = shard.cfg.table_names.index(name)
        shard._weights[t].zero_()
        for st in shard._states[t]:
            st.zero_()
        ts.ids = ts.pending = None  # free the old map before the new one is allocated
        ts.ids, ts.pending = IdMap(cap), CountTable(2 * cap)
        for arr in (ts.count, ts.last_seen, ts.last_version, ts.touched, ts.pinned):
            arr[:] = 0
        ts.seen_at[:] = shard._clock()  # ttl_seconds is not in a version
        ts.evicted = []


def _load_rows(shard, name: str, arrays: dict) -> None:
    """Admit ``arrays["ids"]`` (absent) with their rows, optimizer state and metadata."""
    if not len(arrays["ids"]):
        return
    ts = shard._tables[name]
    t = shard.cfg.table_names.index(name)
    slots = ts.ids.insert(np.asarray(arrays["ids"], np.int64))
    idx = torch.from_numpy(slots).to(shard.device)
    w = shard._weights[t]
    w.index_copy_(0, idx, torch.from_numpy(np.ascontiguousarray(arrays["rows"])).to(w.device, w.dtype))
    for k, st in enumerate(shard._states[t]):
        src = torch.from_numpy(np.ascontiguousarray(arrays[f"opt_state_{k}"]))
        st.index_copy_(0, idx, src.to(st.device, st.dtype))
    ts.count[slots] = arrays["count"]
    ts.last_seen[slots] = arrays["last_seen"]
    ts.last_version[slots] = arrays["last_version"]


def _set_counters(shard, counters: dict) -> None:
    shard.version = int(counters.get("version", 0))
    shard.step = int(counters.get("step", 0))
    shard._next_ttl_sweep = int(counters.get("next_ttl_sweep", 0))
    shard._epoch, shard._committed_epoch, shard._cuts = 1, 0, {}
    shard._lazy = None
    shard._leases = {}  # the leases of the pulls before the restore are void (their pushes never come)


def restore(shard, content: RestoreContent) -> None:
    """Replace the shard's whole state with ``content``; checks everything before changing anything."""
    for name in shard._tables:
        arrays = content.tables.get(name)
        if arrays is not None:
            _check_arrays(shard, name, arrays, content.version)
    _reset(shard)
    for name, ts in shard._tables.items():
        arrays = content.tables.get(name)
        if arrays is not None:
            _load_rows(shard, name, arrays)
        p = content.pending.get(name)
        if p is not None and len(p["ids"]):
            ts.pending.load(p["ids"], p["count"], p["last_seen"])
    _set_counters(shard, content.counters)


def _slices(store: VersionStore, layers: list, keep, verify: bool = True):
    """The merged content of one table over a chain, one hash slice at a time.

    ``layers``: ``[(version, [PartInfo, ...]), ...]`` base first. The finest ``slice_bits`` of the
    parts (K) sets the slices; a part written coarser (k < K bits, e.g. a small delta, or a version
    written before slicing: k = 0) covers ``2**(K-k)`` consecutive slices: it is read once, grouped
    by slice, and dropped when the walk leaves its range. So at any time the walk holds about one
    part per layer beside the merged slice. Yields the merged arrays (ids ascending) of each slice."""
    bits = max((int(p.meta.get("slice_bits", 0)) for _, ps in layers for p in ps), default=0)
    cache: dict = {}
    for unit in range(1 << bits):
        merged_layers = []
        for version, parts in layers:
            layer = []
            for p in parts:
                k, sl = int(p.meta.get("slice_bits", 0)), int(p.meta.get("slice", 0))
                if unit >> (bits - k) != sl:
                    continue
                key = (version, p.name)
                if key not in cache:
                    arrays = store.read_part(version, p.name, verify)
                    groups = None
                    if k < bits:
                        deleted = arrays.get("deleted", np.empty(0, np.int64))
                        groups = (_grouped(arrays["ids"], bits), _grouped(deleted, bits))
                    cache[key] = (k, sl, arrays, groups)
                _, _, arrays, groups = cache[key]
                if groups is None:
                    layer.append(arrays)
                else:
                    (order, bounds), (d_order, d_bounds) = groups
                    pos = order[bounds[unit] : bounds[unit + 1]]
                    d_pos = d_order[d_bounds[unit] : d_bounds[unit + 1]]
                    sub = {k2: v[pos] for k2, v in arrays.items() if k2 != "deleted"}
                    if "deleted" in arrays:
                        sub["deleted"] = arrays["deleted"][d_pos]
                    layer.append(sub)
            merged_layers.append(layer)
        for key in [key for key, (k, sl, _, _) in cache.items() if (unit + 1) >> (bits - k) != sl]:
            del cache[key]  # the walk has left this part's slices
        if any(merged_layers):
            merged = merge_keyed(merged_layers, keep)
            del merged_layers
            if len(merged["ids"]):
                yield merged


def restore_from_store(shard, store, version: int, storage_options=None, verify: bool = True) -> None:
    """Restore ``version`` (its chain) into ``shard``, keeping the ids routed to it, one hash slice at a
    time (:func:`_slices`): beside the shard itself it holds about one part per chain layer and
    one merged slice, not whole-table arrays. Checks what the manifests say (dims, optimizer,
    rows) before changing anything; a slice that does not fit after all (a corrupt or foreign
    version) raises RestoreError and leaves the shard empty."""
    if not isinstance(store, VersionStore):
        store = VersionStore(store, storage_options)
    cfg = shard.cfg
    n_shards, index = cfg.num_shards, shard.index
    keep = None if n_shards == 1 else (lambda ids: shard_of(ids, n_shards) == index)
    chain = store.chain(version)
    plans = {}
    for name in cfg.table_names:
        layers = [
            (m.version, [p for p in m.parts if p.meta.get("role") == "table" and p.meta.get("table") == name])
            for m in chain
        ]
        plans[name] = layers if any(ps for _, ps in layers) else None
    unknown = sorted(
        {p.meta.get("table") for m in chain for p in m.parts if p.meta.get("role") == "table"} - set(cfg.table_names)
    )
    if unknown:
        log.warning(
            "version %d holds tables %s that this parameter server does not have; they are ignored", version, unknown
        )
    for name, layers in plans.items():  # what the manifests tell, before any change
        if layers is None:
            continue
        metas = [p.meta for _, ps in layers for p in ps]
        dims = {int(m["dim"]) for m in metas if "dim" in m}
        if dims and dims != {cfg.table(name).dim}:
            raise RestoreError(
                index,
                version,
                f"table {name!r} rows have dim {sorted(dims)}, this parameter server has dim {cfg.table(name).dim}",
            )
        opts = {m["optimizer"] for m in metas if "optimizer" in m}
        if opts and opts != {cfg.optimizer}:
            raise RestoreError(
                index,
                version,
                f"table {name!r}: the version's optimizer state "
                f"({sorted(opts)}) does not fit ps.optimizer={cfg.optimizer!r}; restore with the "
                "optimizer the version was trained with",
            )
        last = layers[-1][1]
        bound = (
            sum(int(p.meta["rows_after"]) for p in last) if last and all("rows_after" in p.meta for p in last) else None
        )
        if bound is None or bound > cfg.capacity_per_shard:  # count exactly (ids routed here), reading ids only
            total = sum(len(m["ids"]) for m in _slices(store, layers, keep, verify))
            if total > cfg.capacity_per_shard:
                raise RestoreError(
                    index,
                    version,
                    f"table {name!r} has {total} rows for this shard but "
                    f"capacity_per_shard is {cfg.capacity_per_shard}: raise ps.capacity_per_shard "
                    "or use more shards",
                )
    groups = store.groups(version)
    pending = {
        name: store.materialize(version, table_parts(name, role="pending"), keep, verify)
        for name in cfg.table_names
        if ("pending", name) in groups
    }
    metas = [p.meta for p in chain[-1].parts if p.meta.get("role") == "table"]
    counters = {
        k: max((int(m.get(f"ps_{k}", 0)) for m in metas), default=0) for k in ("version", "step", "next_ttl_sweep")
    }
    _reset(shard)
    try:
        for name, layers in plans.items():
            if layers is None:
                continue
            for arrays in _slices(store, layers, keep, verify):
                _check_arrays(shard, name, arrays, version, n_total=len(shard._tables[name].ids) + len(arrays["ids"]))
                _load_rows(shard, name, arrays)
    except BaseException:
        _reset(shard)
        _set_counters(shard, {})
        raise
    for name, p in pending.items():
        if len(p["ids"]):
            shard._tables[name].pending.load(p["ids"], p["count"], p["last_seen"])
    _set_counters(shard, counters)
