"""A shard's side of consistent versions: prepare / write / commit / abort a cut, and restore.

A cut is two-phase and never destroys anything until the version is committed::

    coordinator          shard
    pause trainers
    prepare_cut(c, full) ──▶ copy (numpy fancy indexing) what the version needs; start a new epoch
    resume trainers           training goes on; new changes are stamped with the new epoch
    write_cut(c, url, v) ──▶ write the copy as parts ps/shard-{i}/{table} (off the training path)
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

Restore: the shard reads a version's chain itself, keeps the ids that route to it
(``shard_of(ids, num_shards) == index``, so a version written by 1 shard restores into 2) and
rebuilds its id map, rows, optimizer state, metadata, pending admission counts and counters.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from paramserver.errors import CutError, RestoreError
from paramserver.idmap import CountTable, IdMap
from paramserver.sharding import shard_of
from versions import VersionStore, table_parts, write_part

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
    out = {"ids": np.ascontiguousarray(ids, np.int64),
           "rows": shard._weights[t].index_select(0, idx).cpu().numpy()}
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
        log.warning("shard %d: cut(s) %s were never committed or aborted; cut %r replaces them",
                    shard.index, stale, cut_id)
        shard._cuts.clear()
    epoch, committed = shard._epoch, shard._committed_epoch
    tables, pending, rows_after = {}, {}, {}
    for name, ts in shard._tables.items():
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
    shard._cuts[cut_id] = PreparedCut(cut_id, epoch, bool(full), tables, pending, rows_after,
                                      {"version": shard.version, "step": shard.step,
                                       "next_ttl_sweep": shard._next_ttl_sweep})
    return {"cut_id": cut_id, "full": bool(full), "rows": {t: len(a["ids"]) for t, a in tables.items()},
            "deleted": {t: len(a["deleted"]) for t, a in tables.items()},
            "pause_ms": (time.perf_counter() - t0) * 1e3}


def _cut(shard, cut_id: str) -> PreparedCut:
    try:
        return shard._cuts[cut_id]
    except KeyError:
        known = list(shard._cuts)
        raise CutError(cut_id, f"shard {shard.index} has no prepared cut of that id (prepared: {known}); "
                               "call prepare_cut first, and commit or abort each cut once") from None


def commit(shard, cut_id: str) -> None:
    cut = _cut(shard, cut_id)
    del shard._cuts[cut_id]
    shard._committed_epoch = max(shard._committed_epoch, cut.epoch)
    for ts in shard._tables.values():
        ts.evicted = [(e, ids) for e, ids in ts.evicted if e > cut.epoch]


def part_name(index: int, table: str) -> str:
    return f"ps/shard-{index}/{table}"


def write(shard, cut_id: str, store, version: int, storage_options=None) -> list:
    """Write the parts of a prepared cut; returns their PartInfos (the cut stays prepared)."""
    cut = _cut(shard, cut_id)
    cfg = shard.cfg
    common = {"shard": shard.index, "num_shards": cfg.num_shards, "kind": "full" if cut.full else "delta",
              "optimizer": cfg.optimizer, "weights_dtype": cfg.weights_dtype,
              **{f"ps_{k}": v for k, v in cut.counters.items()}}
    infos = []
    for name, arrays in cut.tables.items():
        meta = {"role": "table", "table": name, "merge": "by_id", "dim": cfg.table(name).dim,
                "rows_after": cut.rows_after[name], **common}
        infos.append(write_part(store, version, part_name(shard.index, name), arrays, storage_options, meta))
    for name, arrays in cut.pending.items():
        meta = {"role": "pending", "table": name, **common}
        infos.append(write_part(store, version, part_name(shard.index, name) + ".pending", arrays,
                                storage_options, meta))
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
        log.warning("version %d holds tables %s that this parameter server does not have; they are ignored",
                    version, unknown)
    metas = [p.meta for p in manifest.parts if p.meta.get("role") == "table"]
    counters = {k: max((int(m.get(f"ps_{k}", 0)) for m in metas), default=0)
                for k in ("version", "step", "next_ttl_sweep")}
    return RestoreContent(version, tables, pending, counters)


def restore(shard, content: RestoreContent) -> None:
    """Replace the shard's whole state with ``content``; checks everything before changing anything."""
    cfg = shard.cfg
    cap = cfg.capacity_per_shard
    for name, ts in shard._tables.items():
        arrays = content.tables.get(name)
        if arrays is None:
            continue
        n, dim = len(arrays["ids"]), ts.cfg.dim
        t = cfg.table_names.index(name)
        if n > cap:
            raise RestoreError(shard.index, content.version, f"table {name!r} has {n} rows for this shard but "
                               f"capacity_per_shard is {cap}: raise ps.capacity_per_shard or use more shards")
        if arrays["rows"].shape != (n, dim):
            raise RestoreError(shard.index, content.version, f"table {name!r} rows have shape "
                               f"{list(arrays['rows'].shape)}, this parameter server has dim {dim}")
        states = sorted(k for k in arrays if k.startswith("opt_state_"))
        want = [f"opt_state_{k}" for k in range(len(shard._states[t]))]
        shapes_ok = states == want and all(
            arrays[k].shape[1:] == tuple(shard._states[t][i].shape[1:]) for i, k in enumerate(want))
        if not shapes_ok:
            raise RestoreError(shard.index, content.version, f"table {name!r}: the version's optimizer state "
                               f"{states} does not fit ps.optimizer={cfg.optimizer!r}; restore with the optimizer "
                               "the version was trained with")
    for name, ts in shard._tables.items():
        t = cfg.table_names.index(name)
        shard._weights[t].zero_()
        for st in shard._states[t]:
            st.zero_()
        ts.ids, ts.pending = IdMap(cap), CountTable(2 * cap)
        for arr in (ts.count, ts.last_seen, ts.last_version, ts.touched, ts.pinned):
            arr[:] = 0
        ts.seen_at[:] = shard._clock()  # restored rows count as seen now (ttl_seconds is not in a version)
        ts.evicted = []
        arrays = content.tables.get(name)
        if arrays is not None and len(arrays["ids"]):
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
        p = content.pending.get(name)
        if p is not None and len(p["ids"]):
            ts.pending.load(p["ids"], p["count"], p["last_seen"])
    shard.version = int(content.counters.get("version", 0))
    shard.step = int(content.counters.get("step", 0))
    shard._next_ttl_sweep = int(content.counters.get("next_ttl_sweep", 0))
    shard._epoch, shard._committed_epoch, shard._cuts = 1, 0, {}
    shard._leases = {}  # the leases of the pulls before the restore are void (their pushes never come)
