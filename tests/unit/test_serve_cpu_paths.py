"""Issue 22's cuts of the replica's CPU per request keep every answer bit for bit: int64 id columns skip the parser
(the parser's own result, checked over generated arrays and every id column of three specs), a one-row column is
repeated with ``pa.repeat`` (the same array as ``take``), the tables gather rows with numpy's ``take`` (the same
rows as torch's ``index_select``), the forward runs under ``torch.inference_mode`` (the same scores as under
``no_grad``, and the core still scores outside it afterwards), and Recommend's reply is built in place (the
same message as from a list of items)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paramserver.config import TableConfig
from serving.features import _passes_through, _rows
from serving.tables import FrozenTable
from trainer.data import load_spec
from trainer.data.parse import Rejections, parse_columns
from trainer.data.spec import ID_TYPES, ColumnType

SPECS = [load_spec(name) for name in ("taobao", "movielens100k_genres", "criteo")]
ID_COLUMNS = [(spec, col) for spec in SPECS for col in spec.columns if col.type in ID_TYPES]
# no built-in spec has an int_id column: the taobao user column as one
ID_COLUMNS.append((SPECS[0], dataclasses.replace(SPECS[0].column_map["user_id"], type=ColumnType.INT_ID)))


def test_the_specs_have_id_columns_of_every_id_type():
    assert {col.type for _, col in ID_COLUMNS} == set(ID_TYPES)


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(ID_COLUMNS),
    st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3) | st.integers(0, 10**18), max_size=40),
)
def test_an_int64_id_column_passes_through_as_the_parser_gives_it(spec_col, values):
    spec, col = spec_col
    arr = pa.array(np.asarray(values, np.int64), pa.int64())
    assert _passes_through(col, {col.name: arr})
    rej = Rejections(len(arr))
    parsed, missing = parse_columns(pa.table({col.name: arr}), (col,), spec.null_tokens, rej)
    want = np.asarray(parsed[col.name])
    got = arr.to_numpy(zero_copy_only=False)
    assert rej.good.all() and not missing[col.name].any()
    assert got.dtype == want.dtype == np.int64 and np.array_equal(got, want)


def test_other_columns_and_arrays_still_take_the_parser():
    spec = load_spec("taobao")
    item, ts = spec.column_map["item_id"], spec.column_map["ts"]
    for arr in (pa.array([1, None], pa.int64()), pa.array([1, 2], pa.int32()), pa.array(["1", "2"])):
        assert not _passes_through(item, {"item_id": arr})
    assert not _passes_through(ts, {"ts": pa.array([1_511_700_000], pa.int64())})  # a time, not an id


_ONE = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: pa.array([v], pa.int64())),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: pa.array([v], pa.float64())),
    st.text(max_size=8).map(lambda v: pa.array([v], pa.string())),
    st.just(pa.nulls(1, pa.string())),
    st.just(pa.array([float.fromhex("-0x0.0p+0")], pa.float64())),
)


@settings(max_examples=80, deadline=None)
@given(_ONE, st.integers(0, 40))
def test_a_one_row_column_repeated_is_the_array_take_gives(one, n):
    got, want = _rows(one, n), one.take(pa.array(np.zeros(n, np.int64)))
    assert got.type == want.type and got.null_count == want.null_count and len(got) == n
    if pa.types.is_floating(one.type):  # bit for bit (NaN payloads, -0.0)
        assert got.to_numpy().view(np.int64).tolist() == want.to_numpy().view(np.int64).tolist()
    else:
        assert got.equals(want)


@pytest.mark.parametrize("admit,fp16", [(True, False), (False, False), (True, True)])
def test_table_lookups_gather_the_rows_index_select_gave(admit, fp16):
    rng = np.random.default_rng(3)
    ids = np.sort(rng.choice(10**6, 500, replace=False)).astype(np.int64)
    t = FrozenTable.build(TableConfig("item", 8), ids, rng.normal(size=(500, 8)).astype(np.float32), 7, admit, fp16)
    asked = np.concatenate([rng.choice(ids, 60), rng.integers(10**6, 2 * 10**6, 20), ids[:1], ids[-1:]])
    rng.shuffle(asked)
    rows, known = t.lookup(asked)
    pos, want_known = t.positions(asked)
    want = t.rows.index_select(0, torch.from_numpy(pos)).numpy()
    assert np.array_equal(known, want_known) and rows.dtype == np.float32 and rows.flags["C_CONTIGUOUS"]
    assert rows[known].tobytes() == want[known].tobytes()
    cold = FrozenTable.build(TableConfig("item", 8), np.zeros(0, np.int64), np.zeros((0, 8)), 7, admit, fp16)
    assert np.array_equal(t.lookup(asked[~known])[0], cold.lookup(asked[~known])[0])  # cold rows: as before


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.support.serving import make_service

    _, _, svc = make_service(tmp_path_factory.mktemp("servecpu"), files=2)
    yield svc
    svc.stop()


def _score_requests(svc, n_req: int = 6, n: int = 40):
    from serving.wire import pb

    m = svc.follower.model
    rng = np.random.default_rng(5)
    users = m.tables[m.roles.user_feature].ids
    out = []
    for _ in range(n_req):
        r = pb.ScoreRequest()
        r.context["user_id"].id = int(rng.choice(users))
        r.context["ts"].id = 1_511_700_000
        r.candidate_columns["item_id"].ids.extend(rng.choice(m.index.ids, n).tolist() + [987654321])  # + unknown
        out.append(r)
    return out


def test_the_forward_under_inference_mode_gives_the_no_grad_scores_and_the_core_still_scores_outside(served):
    from serving.service import candidate_columns, context_values

    m = served.follower.model
    for req in _score_requests(served):
        columns, n = candidate_columns(req, 1000)
        batch, _ = m.features.batch(context_values(req.context, "context"), columns, n)
        got, _ = m.score(batch)  # under inference_mode
        assert not torch.is_inference_mode_enabled()
        want = m.core.score(batch)  # the core alone: no_grad only
        assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes()
        assert list(served.score(req).scores) == got.tolist()  # the reply carries these float32 scores


def test_recommends_reply_built_in_place_is_the_message_a_list_of_items_gave(served):
    from serving.wire import pb

    m = served.follower.model
    rng = np.random.default_rng(6)
    for user in rng.choice(m.tables[m.roles.user_feature].ids, 4).tolist():
        req = pb.RecommendRequest(k=10)
        req.context["user_id"].id = int(user)
        req.context["ts"].id = 1_511_700_000
        got = served.recommend(req)
        ids, retrieval = m.index.top(m.user_vector(m.user_id(int(user))), max(served.cfg.retrieve, 10))
        batch, _ = m.features.batch({"user_id": int(user), "ts": 1_511_700_000}, {"item_id": pa.array(ids)}, len(ids))
        scores = m.core.score(batch)
        order = np.argsort(-scores, kind="stable")[:10]
        items = [
            pb.RecommendedItem(item_id=i, score=s, retrieval_score=r)
            for i, s, r in zip(ids[order].tolist(), scores[order].tolist(), retrieval[order].tolist())
        ]
        want = pb.RecommendResponse(items=items, model_version=m.version, catalogue_items=len(m.index))
        assert got.SerializeToString() == want.SerializeToString() and len(got.items) == 10


def test_tables_with_the_same_ids_share_them_and_a_pull_finds_positions_once_with_the_same_rows(monkeypatch):
    from paramserver.config import PSConfig
    from serving.tables import FrozenTables

    rng = np.random.default_rng(8)
    ids = np.sort(rng.choice(10**6, 300, replace=False)).astype(np.int64)
    other = np.sort(rng.choice(10**6, 300, replace=False)).astype(np.int64)
    cfgs = [TableConfig("user", 8), TableConfig("user__wide", 4), TableConfig("item", 8)]
    ps = PSConfig(tables=tuple(cfgs))
    arrays = {
        "user": {"ids": ids, "rows": rng.normal(size=(300, 8)).astype(np.float32)},
        "user__wide": {"ids": ids.copy(), "rows": rng.normal(size=(300, 4)).astype(np.float32)},
        "item": {"ids": other, "rows": rng.normal(size=(300, 8)).astype(np.float32)},
    }
    tables = FrozenTables.from_arrays(arrays, ps)
    assert tables["user"].ids is tables["user__wide"].ids and tables["item"].ids is not tables["user"].ids
    q = np.concatenate([rng.choice(ids, 30), rng.integers(2 * 10**6, 3 * 10**6, 5)])
    asks = [
        {"user": q, "user__wide": q.copy(), "item": rng.choice(other, 10)},  # the same query: positions once
        {"user": q, "user__wide": q[::-1].copy(), "item": q},  # another query on the shared ids: its own
    ]
    searches = []
    real = FrozenTable.positions
    monkeypatch.setattr(FrozenTable, "positions", lambda self, x: searches.append(self.cfg.name) or real(self, x))
    for ask in asks:
        searches.clear()
        got = tables.pull_many(ask)
        unknown, during = tables.unknown, list(searches)
        want = {}
        for name, x in ask.items():  # each table alone
            want[name], known = tables[name].lookup(x)
        assert all(got[k].tobytes() == want[k].tobytes() for k in ask)
        assert unknown == sum(int((~tables[k].positions(x)[1]).sum()) for k, x in ask.items()) > 0
        assert during == (["user", "item"] if ask is asks[0] else ["user", "user__wide", "item"])


def test_the_cpu_ab_puts_each_cuts_old_code_back_only_while_it_measures_it_and_the_answers_stay(served):
    import serving.features as features
    import serving.model as model
    import serving.tables as tables
    from bench.profiling import cpu_ab, cpu_cuts

    current = {(o, a): getattr(o, a) for cut in cpu_cuts().values() for o, a, _ in cut}
    reqs = _score_requests(served, 3, 20)
    want = [served.score(r).SerializeToString() for r in reqs]
    answers = []

    def score(r):
        answers.append(served.score(r).SerializeToString())

    out = cpu_ab({"Score": (score, reqs)}, alternations=2, block=3, names=["all", "numpy_take"])
    assert set(out) == {"all", "numpy_take", "note"}
    for name in ("all", "numpy_take"):
        s = out[name]["Score"]
        assert s["before_ms"] > 0 and s["after_ms"] > 0 and s["range"][0] <= s["after_over_before"] <= s["range"][1]
    assert len(answers) == 2 * 2 * 2 * 3 and set(answers) <= set(want)  # old code or new: the same replies
    assert all(getattr(o, a) is f for (o, a), f in current.items())  # the current code is back
    assert (
        features._rows is current[(features, "_rows")]
        and model.ServableModel.score is current[(model.ServableModel, "score")]
    )
    assert tables.FrozenTable.lookup is current[(tables.FrozenTable, "lookup")]
