"""Merging keyed parts across a version chain (full base, then deltas), vectorised.

A keyed part holds ``ids`` (int64, distinct within the part) and per-id arrays aligned with
them (``rows [n, dim]``, ``count [n]``, ...); a delta's part also holds ``deleted`` (int64):
ids dropped since the parent. Within one version deletions apply first, then the upserts;
later versions win. Example, one table over a chain v1 (full) <- v2 (delta)::

    v1 full   ids [3, 5, 9]  rows [a, b, c]
    v2 delta  ids [5, 11]    rows [b', d]    deleted [9]
    merged    ids [3, 5, 11] rows [a, b', d]

All entries of the chain are concatenated in chain order and stably sorted by id (parts are
written sorted, so the sort merges a few runs); the last entry of each id wins, and a
deletion that wins drops the id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Keep = Callable[[np.ndarray], np.ndarray]  # ids -> bool mask of the ids to keep


def merge_keyed(
    layers: Sequence[Sequence[dict[str, np.ndarray]]], keep: Keep | None = None, fields: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Merge ``layers`` (one list of part arrays per version, base first) into one sorted table.

    ``keep(ids) -> bool mask`` filters ids as parts are read (a shard restoring only its own
    ids); ``fields`` limits the arrays gathered (serving needs ``("rows",)`` only). Returns
    ``{"ids": int64 ascending, name: array aligned with ids, ...}`` without ``deleted``.
    A materialised table is itself a valid first layer, so a reader holding version v applies
    the delta v+1 with ``merge_keyed([[table_v], parts_of_v_plus_1])``.
    """
    sources: list[dict[str, np.ndarray]] = []
    ids_l, src_l, pos_l = [], [], []
    for layer in layers:
        for part in layer:  # deletions of this version first ...
            deleted = part.get("deleted")
            if deleted is not None and len(deleted):
                d = np.asarray(deleted, np.int64)
                if keep is not None:
                    d = d[keep(d)]
                ids_l.append(d)
                src_l.append(np.full(len(d), -1, np.int32))
                pos_l.append(np.zeros(len(d), np.int64))
        for part in layer:  # ... then its upserts
            if "ids" not in part:
                raise ValueError(f"a keyed part has no 'ids' array (arrays: {sorted(part)})")
            ids = np.asarray(part["ids"], np.int64)
            pos = np.flatnonzero(keep(ids)) if keep is not None else np.arange(len(ids), dtype=np.int64)
            sources.append(part)
            ids_l.append(ids[pos])
            src_l.append(np.full(len(pos), len(sources) - 1, np.int32))
            pos_l.append(pos)
    if not sources:
        raise ValueError("nothing to merge: no keyed part in the chain")
    names = [k for k in sources[0] if k not in ("ids", "deleted")]
    for s in sources[1:]:
        if sorted(k for k in s if k not in ("ids", "deleted")) != sorted(names):
            raise ValueError(
                f"keyed parts disagree on their arrays: {sorted(names)} vs "
                f"{sorted(k for k in s if k not in ('ids', 'deleted'))}"
            )
    if fields is not None:
        missing = sorted(set(fields) - set(names))
        if missing:
            raise ValueError(f"keyed parts have no array(s) {missing}; they hold {sorted(names)}")
        names = [k for k in names if k in fields]
    if len(sources) == 1 and len(ids_l) == 1:  # one part, no deletions: no sort or gather when sorted
        ids, pos = ids_l[0], pos_l[0]
        if len(ids) < 2 or (ids[1:] > ids[:-1]).all():
            whole = len(pos) == len(sources[0]["ids"])
            return {
                "ids": ids,
                **{k: (np.asarray(sources[0][k]) if whole else np.asarray(sources[0][k])[pos]) for k in names},
            }
    all_ids = np.concatenate(ids_l) if ids_l else np.empty(0, np.int64)
    all_src = np.concatenate(src_l) if src_l else np.empty(0, np.int32)
    all_pos = np.concatenate(pos_l) if pos_l else np.empty(0, np.int64)
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    last = np.ones(len(order), bool)
    np.not_equal(sorted_ids[1:], sorted_ids[:-1], out=last[:-1])
    winners = order[last]
    winners = winners[all_src[winners] >= 0]
    w_src, w_pos = all_src[winners], all_pos[winners]
    out = {"ids": all_ids[winners]}
    for name in names:
        ref = np.asarray(sources[0][name])
        arr = np.empty((len(winners),) + ref.shape[1:], ref.dtype)
        for k, part in enumerate(sources):
            m = w_src == k
            if m.any():
                arr[m] = np.asarray(part[name])[w_pos[m]]
        out[name] = arr
    return out
