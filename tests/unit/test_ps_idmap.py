"""The hash-indexed IdMap and CountTable against a dict model and against the sorted-array
implementations they replaced (kept here as the reference): same lookups, same slots, same
ids forgotten, through inserts, removals (tombstones), re-inserts, index rebuilds and growth."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.idmap import CountTable, IdMap, _HashIndex

# ---------------------------------------------------------------- the previous sorted implementations


def _find(keys, ids):
    if len(keys) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    pos = np.searchsorted(keys, ids)
    clipped = np.minimum(pos, len(keys) - 1)
    return clipped, keys[clipped] == ids


class SortedIdMap:
    def __init__(self, capacity):
        self.capacity = capacity
        self._keys = np.empty(0, np.int64)
        self._slots = np.empty(0, np.int64)
        self._free = np.arange(capacity - 1, -1, -1, dtype=np.int64)
        self._n_free = capacity
        self.slot_key = np.zeros(capacity, dtype=np.int64)

    def lookup(self, ids):
        pos, hit = _find(self._keys, ids)
        if len(self._keys) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        return np.where(hit, self._slots[pos], -1)

    def insert(self, ids):
        n = len(ids)
        slots = self._free[self._n_free - n : self._n_free][::-1].copy()
        self._n_free -= n
        order = np.argsort(ids, kind="stable")
        at = np.searchsorted(self._keys, ids[order])
        self._keys = np.insert(self._keys, at, ids[order])
        self._slots = np.insert(self._slots, at, slots[order])
        self.slot_key[slots] = ids
        return slots

    def remove_slots(self, slots):
        ids = self.slot_key[slots].copy()
        keep = np.ones(len(self._keys), dtype=bool)
        keep[_find(self._keys, ids)[0]] = False
        self._keys, self._slots = self._keys[keep], self._slots[keep]
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        return ids


class SortedCountTable:
    def __init__(self, limit):
        self.limit = limit
        self._keys = self._counts = self._last = np.empty(0, np.int64)

    def add(self, ids, counts, step):
        pos, hit = _find(self._keys, ids)
        self._counts[pos[hit]] += counts[hit]
        self._last[pos[hit]] = step
        totals = counts.astype(np.int64, copy=True)
        totals[hit] = self._counts[pos[hit]]
        new = ~hit
        if new.any():
            order = np.argsort(ids[new], kind="stable")
            new_ids = ids[new][order]
            at = np.searchsorted(self._keys, new_ids)
            self._keys = np.insert(self._keys, at, new_ids)
            self._counts = np.insert(self._counts, at, counts[new][order].astype(np.int64))
            self._last = np.insert(self._last, at, np.full(len(new_ids), step, dtype=np.int64))
        if len(self._keys) > self.limit:
            target = max(1, (self.limit * 9) // 10)
            keep = np.sort(np.argpartition(-self._last, target - 1)[:target])
            self._keys, self._counts, self._last = self._keys[keep], self._counts[keep], self._last[keep]
        return totals

    def peek(self, ids, counts):
        pos, hit = _find(self._keys, ids)
        totals = counts.astype(np.int64, copy=True)
        totals[hit] += self._counts[pos[hit]]
        return totals

    def discard(self, ids):
        pos, hit = _find(self._keys, ids)
        if hit.any():
            keep = np.ones(len(self._keys), dtype=bool)
            keep[pos[hit]] = False
            self._keys, self._counts, self._last = self._keys[keep], self._counts[keep], self._last[keep]

    def items(self):
        return self._keys.copy(), self._counts.copy(), self._last.copy()


# ------------------------------------------------------------------------------------------- tests

# a small id universe makes re-inserts and removals of held ids frequent; the full range checks hashing
id_st = st.one_of(st.integers(-40, 40), st.integers(-(2**63), 2**63 - 1))
ops_st = st.lists(st.tuples(st.sampled_from(["insert", "remove", "lookup"]), st.lists(id_st, max_size=24)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(ops_st, st.integers(1, 40))
def test_id_map_matches_a_dict_and_the_sorted_map_slot_for_slot(ops, capacity):
    m, ref = IdMap(capacity), SortedIdMap(capacity)
    model: dict[int, int] = {}
    for op, raw in ops:
        ids = np.unique(np.array(raw, np.int64))
        got = m.lookup(ids)
        assert got.tolist() == ref.lookup(ids).tolist() == [model.get(k, -1) for k in ids.tolist()]
        if op == "insert":
            new = ids[got < 0][: m.free]
            new = new[np.random.default_rng(len(new)).permutation(len(new))]  # input order is kept
            slots = m.insert(new)
            assert slots.tolist() == ref.insert(new).tolist()  # the free stack decides, as before
            model.update(zip(new.tolist(), slots.tolist()))
        elif op == "remove":
            slots = got[got >= 0]
            gone = m.remove_slots(slots)
            assert gone.tolist() == ref.remove_slots(slots).tolist()
            for key in gone.tolist():
                del model[key]
        keys = np.array(sorted(model), np.int64)
        assert m.lookup(keys).tolist() == [model[k] for k in keys.tolist()]
        held_ids, held_slots = m.items()
        assert held_ids.tolist() == keys.tolist() and held_slots.tolist() == [model[k] for k in keys.tolist()]
        assert len(m) == len(model) == int(m.occupied.sum()) and m.free == capacity - len(model)
        assert (m.slot_key[held_slots] == held_ids).all()
        idx = m._index
        assert idx.live == len(model) and idx.live <= idx.buckets // 2
        assert int(np.count_nonzero(idx.table == -2)) == idx.deleted
        assert int(np.count_nonzero(idx.table >= 0)) == idx.live


def test_id_map_churn_through_many_tombstone_rebuilds_stays_exact():
    """A full table evicting and admitting for many rounds: tombstones pile up and the index is
    rebuilt repeatedly; every lookup stays exact and the slots match the sorted map's."""
    rng = np.random.default_rng(7)
    cap = 512
    m, ref = IdMap(cap), SortedIdMap(cap)
    model: dict[int, int] = {}
    universe = rng.integers(-(2**63), 2**63 - 1, size=4 * cap, dtype=np.int64)
    rebuilds_seen = 0
    for _ in range(300):
        batch = np.unique(rng.choice(universe, size=64))
        slots = m.lookup(batch)
        miss = batch[slots < 0]
        short = len(miss) - m.free
        if short > 0:
            held = np.array(sorted(model.values()), np.int64)
            victims = rng.choice(held, size=short, replace=False)
            gone = m.remove_slots(victims)
            assert gone.tolist() == ref.remove_slots(victims).tolist()
            for key in gone.tolist():
                del model[key]
        before = m._index.deleted
        new = m.insert(miss)
        rebuilds_seen += int(m._index.deleted < before - len(miss))
        assert new.tolist() == ref.insert(miss).tolist()
        model.update(zip(miss.tolist(), new.tolist()))
        keys = np.array(list(model), np.int64)
        assert m.lookup(keys).tolist() == list(model.values())
        assert (m.lookup(universe[~np.isin(universe, keys)]) == -1).all()
    assert rebuilds_seen > 0  # the run did go through index rebuilds


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "add", "peek", "discard"]), st.lists(id_st, max_size=20), st.integers(1, 3)),
        max_size=30,
    ),
    st.integers(1, 30),
)
def test_count_table_matches_the_sorted_table_including_what_it_forgets(ops, limit):
    table, ref = CountTable(limit), SortedCountTable(limit)
    for step, (op, raw, c) in enumerate(ops):
        ids = np.unique(np.array(raw, np.int64))
        ids = ids[np.random.default_rng(step).permutation(len(ids))]
        counts = np.full(len(ids), c, np.int64)
        if op == "add":
            assert table.add(ids, counts, step).tolist() == ref.add(ids, counts, step).tolist()
        elif op == "peek":
            assert table.peek(ids, counts).tolist() == ref.peek(ids, counts).tolist()
        else:
            table.discard(ids)
            ref.discard(ids)
        for got, want in zip(table.items(), ref.items()):
            assert got.tolist() == want.tolist()
        assert len(table) == len(ref._keys) <= limit
    keys, counts, last = table.items()
    loaded = CountTable(limit)
    loaded.load(keys[::-1], counts[::-1], last[::-1])
    for got, want in zip(loaded.items(), (keys, counts, last)):
        assert got.tolist() == want.tolist()


def test_hash_index_grows_and_finds_every_key_after_many_rebuilds():
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, size=5000, dtype=np.int64))
    keys = keys[rng.permutation(len(keys))]
    index = _HashIndex(8)
    held = 0
    for chunk in np.array_split(np.arange(len(keys)), 37):
        try:
            index.insert(keys[chunk], chunk, keys)
        except Exception as need:  # _NeedsRebuild: the owner re-indexes everything held, larger
            everything = np.arange(chunk[-1] + 1)
            index.rebuild(keys[everything], everything, need.entries)
        held = chunk[-1] + 1
        assert index.live == held <= index.buckets // 2
    assert index.lookup(keys, keys).tolist() == list(range(len(keys)))
    others = rng.integers(-(2**63), 2**63 - 1, size=2000, dtype=np.int64)
    others = others[~np.isin(others, keys)]
    assert (index.lookup(others, keys) == -1).all()


def test_keys_that_share_a_start_bucket_are_all_found():
    """Ids chosen to collide on their first bucket (a worst case for one batch's claims)."""
    index = _HashIndex(64)  # 128 buckets
    pool = np.arange(200_000, dtype=np.int64)
    start = index._start(pool)
    same = pool[start == start[0]][:40]
    assert len(same) == 40
    index.insert(same, np.arange(40), same)
    assert index.lookup(same, same).tolist() == list(range(40))
    index.remove(same[::2], np.arange(0, 40, 2))
    want = [-1 if i % 2 == 0 else i for i in range(40)]
    assert index.lookup(same, same).tolist() == want
    assert index.deleted == 20 and index.live == 20
