"""Dynamic features (trainer.features): exact against a per-event reference, strictly from earlier
events (hypothesis: dropping, permuting or relabelling later events changes nothing), bounded state,
saved and restored exactly, and declared in the spec with clear errors."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from trainer.data import EventBatch, load_spec
from trainer.data.spec import spec_from_dict
from trainer.features import DynamicFeatures

ACTIONS = np.array(["pv", "cart", "fav", "buy"])


def spec_with(dynamic=None):
    raw = {
        "name": "t",
        "format": "csv",
        "header": False,
        "columns": [
            {"name": "user_id", "type": "id"},
            {"name": "item_id", "type": "id"},
            {"name": "behavior", "type": "string"},
            {"name": "ts", "type": "timestamp"},
        ],
        "time_column": "ts",
        "event_id": {"derive": ["user_id", "item_id", "behavior", "ts"]},
        "actions": {"column": "behavior", "values": ["pv", "cart", "fav", "buy"]},
        "label": {"actions": ["cart", "fav", "buy"]},
        "sparse": [{"name": "user", "column": "user_id", "dim": 4}, {"name": "item", "column": "item_id", "dim": 4}],
        "dense": [{"name": "hour", "column": "ts", "transform": "hour_of_day"}],
        "dynamic": dynamic
        if dynamic is not None
        else {
            "ttl_s": "30d",
            "counters": [
                {"name": "iv", "key": "item_id", "actions": ["pv"], "half_lives": [60, "1h"]},
                {"name": "ic", "key": "item_id", "actions": ["cart", "buy"], "half_lives": ["1h"]},
                {"name": "ue", "key": "user_id", "half_lives": [600]},
                {"name": "up", "key": "user_id", "positive": True, "half_lives": [600]},
            ],
            "rates": [{"name": "icvr", "numerator": "ic", "denominator": "iv", "prior": 0.1, "strength": 2}],
            "sequences": [
                {"name": "ui", "key": "user_id", "column": "item_id", "length": 3, "dim": 4},
                {"name": "ub", "key": "user_id", "column": "item_id", "length": 2, "dim": 4, "actions": ["buy"]},
            ],
        },
    }
    return spec_from_dict(raw)


SPEC = spec_with()


def make_batch(user, item, act, ts, event_id=None) -> EventBatch:
    n = len(user)
    act = np.asarray(act)
    eid = np.arange(n, dtype=np.int64) if event_id is None else np.asarray(event_id, np.int64)
    return EventBatch(
        source="t",
        event_id=eid,
        ts=np.asarray(ts, np.int64),
        label=np.isin(act, ["cart", "fav", "buy"]).astype(np.float32),
        sparse={"user": np.asarray(user, np.int64), "item": np.asarray(item, np.int64)},
        dense=np.zeros((n, 1), np.float32),
        rows=np.arange(n, dtype=np.int64),
        table=pa.table({"behavior": pa.array([str(a) for a in act], pa.string())}),
    )


def random_batch(rng, n, t0=1_511_658_000, span=3000, users=6, items=5):
    return make_batch(
        rng.integers(0, users, n),
        rng.integers(0, items, n),
        ACTIONS[rng.integers(0, 4, n)],
        t0 + rng.integers(0, span, n),
        event_id=rng.integers(0, 1 << 40, n),
    )


# ------------------------------------------------------------- the reference
def reference(history: list[EventBatch], batch: EventBatch, spec=SPEC):
    """Per event, with plain loops: the features from every earlier event ((ts, row) order within a
    batch, every event of an earlier batch), as the module documents them."""
    d = spec.dynamic
    past = []  # (ts, user, item, action)
    for b in history:  # each earlier batch in its event order
        b = b.take(np.lexsort((np.arange(len(b)), b.ts)))
        past += list(
            zip(b.ts.tolist(), b.sparse["user"].tolist(), b.sparse["item"].tolist(), b.table["behavior"].to_pylist())
        )
    cur = list(
        zip(
            batch.ts.tolist(),
            batch.sparse["user"].tolist(),
            batch.sparse["item"].tolist(),
            batch.table["behavior"].to_pylist(),
        )
    )
    dense, seqs = [], {s.name: [] for s in d.sequences}
    col = {"user_id": 1, "item_id": 2}
    for i, (t, u, it, a) in enumerate(cur):
        earlier = past + [e for j, e in enumerate(cur) if (e[0], j) < (t, i)]
        row, raw = [], {}
        for c in d.counters:
            key = (u, it, a)[col[c.key] - 1]
            vals = []
            for h in c.half_lives:
                s = 0.0
                for e in earlier:
                    ok = (e[3] in c.actions) if c.actions else (e[3] != "pv") if c.positive else True
                    if e[col[c.key]] == key and ok:
                        s += 2.0 ** (-(t - e[0]) / h)
                vals.append(s)
            raw[c.name] = vals
            row += [np.log1p(v) for v in vals]
        by = {c.name: c for c in d.counters}
        for r in d.rates:
            for h in d.rate_half_lives(r):
                num = raw[r.numerator][by[r.numerator].half_lives.index(h)]
                den = raw[r.denominator][by[r.denominator].half_lives.index(h)]
                row.append((num + r.prior * r.strength) / (den + r.strength))
        dense.append(row)
        for s in d.sequences:
            in_order = past + sorted((e for j, e in enumerate(cur) if (e[0], j) < (t, i)), key=lambda e: e[0])
            mine = [e for e in in_order if e[col[s.key]] == u and (not s.actions or e[3] in s.actions)]
            seqs[s.name].append([e[col[s.column]] for e in mine][-s.length :] if mine else [])
    return np.array(dense, np.float64).reshape(len(cur), -1), seqs


def jagged_rows(batch, name):
    v, ln = batch.sparse[name], batch.lengths[name]
    off = np.concatenate([[0], np.cumsum(ln)])
    return [v[off[i] : off[i + 1]].tolist() for i in range(len(ln))]


def test_features_equal_the_per_event_reference_across_files_with_ties():
    rng = np.random.default_rng(3)
    dyn = DynamicFeatures(SPEC)
    history = []
    for k in range(3):
        b = random_batch(rng, 40, t0=1_511_658_000 + 2000 * k, span=2500)  # overlapping spans: late events too
        b = b.take(np.argsort(b.ts, kind="stable"))  # a data file is time-sorted...
        b = b.take(np.r_[np.arange(1, len(b)), 0]) if k == 1 else b  # ...but order within it must not matter
        out = dyn.process(b)
        want_dense, want_seq = reference(history, b)
        late = b.ts < max((h.ts.max() for h in history), default=0)  # late vs the state: documented approximation
        np.testing.assert_allclose(out.dense[~late, 1:], want_dense[~late], rtol=2e-6, atol=1e-6)
        for s in SPEC.dynamic.sequences:
            got = jagged_rows(out, s.name)
            assert [g for g, bad in zip(got, late) if not bad] == [
                w for w, bad in zip(want_seq[s.name], late) if not bad
            ]
        history.append(b)
    assert out.dense.shape == (40, 1 + len(SPEC.dynamic.dense_names))


def test_an_event_never_counts_for_itself_and_ties_follow_row_order():
    b = make_batch([1, 1, 1], [7, 7, 7], ["pv", "pv", "buy"], [100, 100, 100])
    out = DynamicFeatures(SPEC).annotate(b)
    names = SPEC.model_dense_names
    iv = out.dense[:, names.index("iv_1m")]
    np.testing.assert_allclose(iv, np.log1p([0.0, 1.0, 2.0]))  # row 0 sees nothing, row 2 both views
    assert jagged_rows(out, "ui") == [[], [7], [7, 7]]
    assert jagged_rows(out, "ub") == [[], [], []]  # the buy is the last event: nobody sees it


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    cut=st.floats(0, 1),
    how=st.sampled_from(["drop", "permute", "relabel", "retime"]),
)
def test_features_never_depend_on_the_event_itself_or_later_events(seed, n, cut, how):
    rng = np.random.default_rng(seed)
    warm = random_batch(rng, 30, t0=1_511_650_000, span=5000)
    b = random_batch(rng, n, span=600)
    order = np.lexsort((np.arange(n), b.ts))
    k = min(int(cut * n), n - 1)
    early, later = order[: k + 1], order[k + 1 :]  # events 0..k in (ts, row) order, and the rest
    # the subject: event order[k] itself is changed too (its action), and every later event
    acts = b.table["behavior"].to_numpy(zero_copy_only=False).copy()
    changed = np.concatenate([[order[k]], later])
    if how == "drop":
        keep = np.sort(early)
        other = b.take(keep)
        other = make_batch(
            other.sparse["user"],
            other.sparse["item"],
            np.where(keep == order[k], "buy" if acts[order[k]] != "buy" else "pv", acts[keep]),
            other.ts,
        )
        mapping = {int(r): i for i, r in enumerate(keep)}
    else:
        user, item, ts = b.sparse["user"].copy(), b.sparse["item"].copy(), b.ts.copy()
        if how == "permute":  # later events swap their contents among themselves (times stay later)
            p = rng.permutation(len(later))
            user[later], item[later], acts[later] = user[later][p], item[later][p], acts[later][p]
        elif how == "relabel":
            acts[changed] = ACTIONS[rng.integers(0, 4, len(changed))]
        else:  # later events move later still
            ts[later] = ts[later] + rng.integers(0, 10_000, len(later))
        other = make_batch(user, item, acts, ts)
        mapping = {int(r): int(r) for r in early}
    subjects = early  # events 0..k: their features must not move
    for mode in ("annotate", "process"):
        d1, d2 = DynamicFeatures(SPEC), DynamicFeatures(SPEC)
        d1.process(warm)
        d2.process(warm)
        a = getattr(d1, mode)(b)
        o = getattr(d2, mode)(other)
        idx_o = np.array([mapping[int(r)] for r in subjects])
        assert np.array_equal(a.dense[subjects], o.dense[idx_o])  # bit for bit
        for s in SPEC.dynamic.sequences:
            ra, ro = jagged_rows(a, s.name), jagged_rows(o, s.name)
            assert [ra[r] for r in subjects] == [ro[r] for r in idx_o]


def test_splitting_a_file_gives_the_same_features_up_to_rounding():
    rng = np.random.default_rng(5)
    b = random_batch(rng, 200, span=7200)
    b = b.take(np.argsort(b.ts, kind="stable"))
    whole = DynamicFeatures(SPEC).process(b)
    parts = DynamicFeatures(SPEC)
    outs = [parts.process(b.take(np.arange(lo, hi))) for lo, hi in [(0, 50), (50, 51), (51, 200)]]
    np.testing.assert_allclose(whole.dense, np.concatenate([o.dense for o in outs]), rtol=1e-6)  # float32 rounding
    for s in SPEC.dynamic.sequences:
        assert jagged_rows(whole, s.name) == sum((jagged_rows(o, s.name) for o in outs), [])


def test_lookup_reads_the_state_only_and_annotate_leaves_it_unchanged():
    rng = np.random.default_rng(9)
    dyn = DynamicFeatures(SPEC)
    dyn.process(random_batch(rng, 100))
    before = dyn.state_dict()
    cands = make_batch([1, 1, 1, 99], [0, 1, 0, 0], ["pv"] * 4, [1_511_662_000] * 4)
    looked = dyn.lookup(cands)
    one = [dyn.annotate(cands.take([i])) for i in range(4)]  # a single event sees the state only
    assert np.array_equal(looked.dense, np.concatenate([o.dense for o in one]))
    assert jagged_rows(looked, "ui")[0] == jagged_rows(looked, "ui")[1]  # candidates never see each other
    assert jagged_rows(looked, "ui")[3] == []  # an unknown user: empty sequence, zero counts
    assert not looked.dense[3, 1 + SPEC.dynamic.dense_names.index("ue_10m")]
    after = dyn.state_dict()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_export_and_load_restore_the_state_exactly():
    rng = np.random.default_rng(2)
    a = DynamicFeatures(SPEC)
    a.process(random_batch(rng, 150))
    arrays, meta = a.export()
    b = DynamicFeatures(SPEC)
    b.load(arrays, meta)
    nxt = random_batch(rng, 80, t0=1_511_662_000)
    assert np.array_equal(a.process(nxt).dense, b.process(nxt).dense)
    other = spec_with({"counters": [{"name": "x", "key": "item_id"}]})
    with pytest.raises(ValueError, match="declared differently"):
        DynamicFeatures(other).load(arrays, meta)


def test_ttl_and_max_ids_bound_the_state_and_bytes_per_id_are_recorded():
    spec = spec_with(
        {
            "ttl_s": 100,
            "max_ids": 3,
            "counters": [{"name": "c", "key": "item_id", "half_lives": [10]}],
            "sequences": [{"name": "s", "key": "user_id", "column": "item_id", "length": 4, "dim": 4}],
        }
    )
    dyn = DynamicFeatures(spec)
    dyn.process(make_batch([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], ["pv"] * 5, 1_500_000_000 + np.arange(5)))
    assert dyn.tables["item_id"].ids.tolist() == [3, 4, 5]  # capped: the most recently seen
    dyn.process(make_batch([6], [6], ["pv"], [1_500_000_000 + 150]))
    assert dyn.tables["item_id"].ids.tolist() == [6]  # the others are older than ttl_s
    st_ = dyn.stats()
    assert st_["item_id"]["bytes_per_id"] == dyn.bytes_per_id("item_id") == 8 + 8 + 8
    assert dyn.bytes_per_id("user_id") == 8 + 8 + (8 * 4 + 8)


@pytest.mark.parametrize(
    "dynamic, message",
    [
        ({"counters": [{"name": "c", "key": "nope"}]}, "feeds no single-valued sparse feature"),
        ({"counters": [{"name": "c", "key": "item_id", "actions": ["click"]}]}, "not in the spec's actions"),
        ({"counters": [{"name": "c", "key": "item_id", "half_lives": ["soon"]}]}, "not a duration"),
        (
            {
                "counters": [{"name": "c", "key": "item_id"}],
                "rates": [{"name": "r", "numerator": "c", "denominator": "z"}],
            },
            "is not a counter",
        ),
        (
            {
                "counters": [
                    {"name": "c", "key": "item_id", "half_lives": [1]},
                    {"name": "d", "key": "item_id", "half_lives": [2]},
                ],
                "rates": [{"name": "r", "numerator": "c", "denominator": "d"}],
            },
            "share no half-life",
        ),
        ({"sequences": [{"name": "s", "key": "user_id", "column": "item_id", "length": 0}]}, "length"),
        ({"counters": [{"name": "hour", "key": "item_id", "half_lives": [1]}], "ttl_s": "1d"}, None),
        (
            {
                "counters": [{"name": "item", "key": "item_id"}],
                "sequences": [{"name": "user", "key": "user_id", "column": "item_id"}],
            },
            "clash with static features",
        ),
        ({}, "at least one counter or sequence"),
        ({"counters": [{"name": "c", "key": "item_id"}], "bogus": 1}, "unknown key"),
    ],
)
def test_spec_errors_name_what_to_fix(dynamic, message):
    if message is None:
        spec_with(dynamic)
        return
    with pytest.raises(ConfigError, match=message):
        spec_with(dynamic)


def test_builtin_dynamic_specs_extend_the_static_ones():
    for name, static in (("taobao_dynamic", "taobao"), ("movielens100k_dynamic", "movielens100k")):
        spec, base = load_spec(name), load_spec(static)
        assert spec.columns == base.columns and spec.sparse == base.sparse and spec.dense == base.dense
        assert len(spec.model_dense_names) > len(base.model_dense_names)
        assert [f.name for f in spec.model_sparse][: len(base.sparse)] == [f.name for f in base.sparse]


def test_an_empty_batch_and_an_empty_state_are_fine():
    dyn = DynamicFeatures(SPEC)
    empty = make_batch([], [], [], [])
    for out in (dyn.process(empty), dyn.lookup(empty), dyn.annotate(empty)):
        assert out.dense.shape == (0, 1 + len(SPEC.dynamic.dense_names)) and len(out.lengths["ui"]) == 0
    one = dyn.lookup(make_batch([1], [2], ["pv"], [1_511_658_000]))
    counters = [SPEC.model_dense_names.index(n) for c in SPEC.dynamic.counters for n in c.features]
    assert not one.dense[:, counters].any()  # nothing seen: log1p(0) = 0
    assert one.lengths["ui"].tolist() == [0]
    rates = [SPEC.model_dense_names.index("icvr_1h")]
    np.testing.assert_allclose(one.dense[:, rates], 0.1)  # an unseen item's rate is the prior
