"""Property tests (hypothesis): pushes are applied exactly or rejected with nothing changed,
and the id map never lets two distinct ids share a slot."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paramserver import BadPushError, EmbeddingShard, PSConfig, TableConfig
from paramserver.idmap import IdMap

TABLE = TableConfig("t", 4)
ids_st = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-5, 5)), min_size=1, max_size=12)
value_st = st.one_of(st.floats(-4, 4, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))


@st.composite
def pushes(draw):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        ids = draw(ids_st)
        vals = draw(st.lists(value_st, min_size=len(ids) * 4, max_size=len(ids) * 4))
        out.append((np.array(ids, np.int64), np.array(vals, np.float32).reshape(len(ids), 4)))
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pushes(), st.integers(4, 12))
def test_push_is_applied_exactly_or_rejected_untouched(batches, capacity):
    shard = EmbeddingShard(PSConfig(tables=(TABLE,), capacity_per_shard=capacity, optimizer="sgd", learning_rate=0.5))
    for step, (ids, g) in enumerate(batches):
        shard.pull({"t": ids}, step=step)
        before_ids, before_rows = shard.table_rows("t")
        before_stats = shard.stats()
        if not np.isfinite(g).all():
            try:
                shard.push({"t": (ids, g)}, step=step)
            except BadPushError:
                pass
            else:
                raise AssertionError("a non-finite push was accepted")
            after_ids, after_rows = shard.table_rows("t")
            assert (after_ids == before_ids).all() and (after_rows == before_rows).all()
            assert shard.stats() == before_stats
            continue
        uniq, inverse = np.unique(ids, return_inverse=True)
        summed = np.zeros((len(uniq), 4), np.float32)
        np.add.at(summed, inverse, g)
        admitted = np.isin(uniq, before_ids)
        expected = before_rows.copy()
        pos = np.searchsorted(before_ids, uniq[admitted])
        expected[pos] -= np.float32(0.5) * summed[admitted]
        shard.push({"t": (ids, g)}, step=step)
        after_ids, after_rows = shard.table_rows("t")
        assert (after_ids == before_ids).all()
        np.testing.assert_array_equal(after_rows, expected)
        assert shard.stats()["dropped_grads"] - before_stats["dropped_grads"] == int((~admitted).sum())
        assert len(after_ids) <= capacity


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["insert", "remove"]), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=10)),
        max_size=12,
    ),
    st.integers(1, 16),
)
def test_id_map_stays_collision_free(ops, capacity):
    m = IdMap(capacity)
    model: dict[int, int] = {}
    for op, raw in ops:
        ids = np.unique(np.array(raw, np.int64))
        if op == "insert":
            new = ids[m.lookup(ids) < 0][: m.free]
            slots = m.insert(new)
            model.update(zip(new.tolist(), slots.tolist()))
        else:
            slots = m.lookup(ids)
            gone = m.remove_slots(slots[slots >= 0])
            for key in gone.tolist():
                del model[key]
        keys = np.array(sorted(model), np.int64)
        got = m.lookup(keys)
        assert got.tolist() == [model[k] for k in keys.tolist()]
        assert len(set(got.tolist())) == len(got)  # distinct ids, distinct slots
        assert ((got >= 0) & (got < capacity)).all() and len(m) == len(model)
        assert (m.slot_key[got] == keys).all() and m.occupied.sum() == len(model)
