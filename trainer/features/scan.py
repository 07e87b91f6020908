"""Vectorised kernels of dynamic features: events grouped by key, decayed counts and last-N
sequences from strictly earlier events, and lookups against a saved state.

Order of events: by (ts, row position in the batch); "earlier" is strictly earlier in that
order, so of two events with the same timestamp the one on the earlier row counts for the later
one, never the reverse, and an event never counts for itself.

No Python loop runs per row or per id: decayed counts are a segmented doubling scan
(log2(events of the busiest key) vectorised steps), sequences are gathers. Each event's value
combines only its own key's earlier events, so dropping or permuting later events (or other
keys' events) leaves it bit for bit unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from trainer.data.columns import jagged_take


@dataclasses.dataclass(frozen=True)
class Groups:
    """Events of a batch grouped by key, each group in event order.

    ``order[j]`` is the batch row at grouped position j; ``uniq[s]`` the key of group s, whose
    events are grouped positions ``start[s] .. start[s] + count[s] - 1``; ``seg[j]`` the group
    and ``rank[j]`` the position within it of grouped position j.
    """

    order: np.ndarray
    uniq: np.ndarray
    start: np.ndarray
    count: np.ndarray
    seg: np.ndarray
    rank: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, ts: np.ndarray) -> "Groups":
        n = len(keys)
        by_time = np.lexsort((np.arange(n), ts))  # (ts, row): ties keep row order
        order = by_time[np.argsort(keys[by_time], kind="stable")]
        ks = keys[order]
        if n == 0:
            z = np.zeros(0, np.int64)
            return cls(order.astype(np.int64), z, z, z, z, z)
        start = np.flatnonzero(np.concatenate([[True], ks[1:] != ks[:-1]])).astype(np.int64)
        count = np.diff(np.concatenate([start, [n]])).astype(np.int64)
        seg = np.repeat(np.arange(len(start), dtype=np.int64), count)
        rank = np.arange(n, dtype=np.int64) - start[seg]
        return cls(order.astype(np.int64), ks[start], start, count, seg, rank)

    def to_rows(self, values: np.ndarray) -> np.ndarray:
        """Per-grouped-position values back in batch row order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


def decayed_counts(
    g: Groups, ts: np.ndarray, x: np.ndarray, half_lives: np.ndarray, cur: np.ndarray, tref: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decayed counts of each event's strictly earlier events, and the state after all of them.

    ``ts`` int64 [n] and ``x`` float [n, C] (1.0 where event j counts for column c) are in batch
    row order; ``half_lives`` float [C]; ``cur`` float64 [U, C] the groups' saved counts at their
    time ``tref`` int64 [U] (zeros and the group's first event time for a new key).
    Returns (values [n, C] in row order, counts [U, C] at time tref' [U] = the later of tref and
    the group's last event).

    value_i[c] = cur[c] * 2^(-(t_i - tref)/h_c) + sum over earlier j of x_j[c] * 2^(-(t_i - t_j)/h_c).
    An event older than the saved time (a late event) reads the saved count undecayed and is
    added with the weight 2^(-(tref - t_j)/h_c).

    Within a group the counts follow S_j = a_j * S_(j-1) + w_j * x_j (a_j the decay since the
    previous event, w_j < 1 only for a late event), a linear recurrence solved by a segmented
    doubling scan: ceil(log2(events of the largest group)) vectorised steps. Position j's result
    combines only positions j-2^k.. of its own group, so later events and other keys never change
    it (bit for bit); cutting the same events into other files changes it by float rounding only.
    """
    n, c = x.shape
    cur = np.asarray(cur, np.float64)
    tref = np.asarray(tref, np.int64)
    if n == 0:
        return np.empty((n, c), np.float64), cur.copy(), tref.copy()
    tg = ts[g.order]
    first = g.rank == 0
    # the reference time before each event: the saved time for a group's first event, else the later
    # of the saved time and the previous event's (events of a group are in time order)
    prev = np.where(first, tref[g.seg], np.maximum(tref[g.seg], np.concatenate([[0], tg[:-1]])))
    dt = (tg - prev).astype(np.float64)
    inv_h = 1.0 / np.asarray(half_lives, np.float64)
    a = np.exp2(-np.maximum(dt, 0.0)[:, None] * inv_h[None, :])  # decay since the previous reference
    b = np.asarray(x, np.float64)[g.order] * np.exp2(np.minimum(dt, 0.0)[:, None] * inv_h[None, :])
    s0 = cur[g.seg[first]]  # the saved counts enter at each group's first event
    A, B = a.copy(), b.copy()
    B[first] += a[first] * s0
    step = 1
    while step < int(g.count.max()):
        j = np.flatnonzero(g.rank >= step)
        k = j - step
        B_new = B[k] * A[j] + B[j]
        A[j] = A[k] * A[j]
        B[j] = B_new
        step *= 2
    # B[j] = counts just after event j; the value read by event j is a_j * (counts after event j-1)
    before = np.empty_like(B)
    before[first] = s0
    rest = np.flatnonzero(~first)
    before[rest] = B[rest - 1]
    out = before * a
    last = g.start + g.count - 1
    return g.to_rows(out), B[last], np.maximum(tref, tg[last])


def decayed_lookup(counts: np.ndarray, last_ts: np.ndarray, ts: np.ndarray, half_lives: np.ndarray) -> np.ndarray:
    """Saved counts [m, C] at times last_ts [m], decayed to ``ts`` [m] (never grown for an earlier ts)."""
    dt = np.maximum(ts - last_ts, 0).astype(np.float64)
    return counts * np.exp2(-dt[:, None] / np.asarray(half_lives, np.float64)[None, :])


def sequences(
    g: Groups, mask: np.ndarray, values: np.ndarray, length: int, saved: np.ndarray, saved_len: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each event's last ``length`` values (oldest first) among its key's strictly earlier events
    where ``mask`` holds, after the group's saved sequence; and the groups' sequences after all.

    ``mask`` bool [n] and ``values`` int64 [n] in batch row order; ``saved`` int64 [U, length]
    right-aligned (the newest at column length-1, ``saved_len`` [U] valid entries, zeros else).
    Returns (flat values, lengths [n]) in row order (a jagged feature), and (new saved [U, length],
    new saved_len [U]).
    """
    n, N = len(g.order), length
    mg = np.asarray(mask, bool)[g.order]
    vg = np.asarray(values, np.int64)[g.order]
    m_int = mg.astype(np.int64)
    before = np.cumsum(m_int) - m_int  # matching events before each grouped position (all groups)
    first = before[g.start] if n else np.zeros(0, np.int64)  # index in mv of each group's first match
    mv = vg[mg]
    saved_len = np.asarray(saved_len, np.int64)
    L = saved_len[g.seg]
    tot = L + before - first[g.seg]
    ln = np.minimum(tot, N)
    flat = _gather(tot, ln, L, g.seg, saved, mv, first, N)
    vals, lens = jagged_take(flat, ln, np.argsort(g.order, kind="stable"))  # row r is at grouped position inv[r]
    # the groups' sequences after every event of the batch
    in_group = np.add.reduceat(m_int, g.start) if n else np.zeros(0, np.int64)
    total = saved_len + in_group
    q = total[:, None] - N + np.arange(N)[None, :]
    from_saved = q < saved_len[:, None]
    a = np.take_along_axis(saved, np.clip(N - saved_len[:, None] + q, 0, N - 1), axis=1) if len(saved) else saved
    b = mv[np.clip(first[:, None] + q - saved_len[:, None], 0, max(len(mv) - 1, 0))] if len(mv) else np.zeros_like(q)
    new = np.where(q < 0, 0, np.where(from_saved, a, b)).astype(np.int64)
    return vals, lens, new, np.minimum(total, N)


def _gather(tot, ln, L, seg, saved, mv, first, N) -> np.ndarray:
    total = int(ln.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    ev = np.repeat(np.arange(len(ln), dtype=np.int64), ln)
    o = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(ln) - ln, ln)
    q = tot[ev] - ln[ev] + o  # index in (saved sequence ++ the group's matching batch values)
    Le = L[ev]
    from_saved = q < Le
    a = saved[seg[ev], np.clip(N - Le + q, 0, N - 1)] if len(saved) else np.zeros(total, np.int64)
    b = mv[np.clip(first[seg[ev]] + q - Le, 0, len(mv) - 1)] if len(mv) else np.zeros(total, np.int64)
    return np.where(from_saved, a, b).astype(np.int64)


def sequence_lookup(saved: np.ndarray, saved_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned saved sequences [m, N] with ``saved_len`` valid entries -> (flat values, lengths)."""
    m, N = saved.shape
    lens = np.asarray(saved_len, np.int64)
    keep = np.arange(N)[None, :] >= (N - lens)[:, None]
    return saved[keep].astype(np.int64), lens
