"""Issue 22's per-request savings keep the answers bit-identical: the catalogue's item ids are not parsed a
second time when a request gives them as int64 ids, and scoring does not re-enter eval mode per request."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.features import RequestFeatures, SpecRoles
from trainer.data import load_spec
from trainer.data.parse import Rejections, parse_columns

SPEC = load_spec("taobao")
FEATURES = RequestFeatures(SPEC, SpecRoles.of(SPEC, None, None))


def _parsed(name: str, arr: pa.Array) -> np.ndarray:
    rej = Rejections(len(arr))
    parsed, _ = parse_columns(pa.table({name: arr}), (SPEC.column_map[name],), SPEC.null_tokens, rej)
    return np.asarray(parsed[name], np.int64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=50))
def test_int64_item_ids_skip_the_second_parse_with_the_same_ids(ids):
    item = FEATURES.roles.item_column
    arr = pa.array(np.asarray(ids, np.int64))
    fast = FEATURES._ids_of(item, arr)
    assert fast.dtype == np.int64 and np.array_equal(fast, _parsed(item, arr))


def test_text_or_null_ids_still_take_the_parser():
    item = FEATURES.roles.item_column
    for arr in (pa.array(["12", " 7", "x"]), pa.array([1, None, 3], pa.int64()), pa.array([1, 2], pa.int32())):
        assert np.array_equal(FEATURES._ids_of(item, arr), _parsed(item, arr))


def test_scoring_leaves_eval_mode_alone_and_training_sets_it_back(tmp_path):
    from bench.servedata import write_taobao_csv
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer

    batch = read_data_file(write_taobao_csv(tmp_path / "p.csv", 300, 0), Validator(SPEC))
    core = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=64))
    core.base_model.train()  # as training leaves it
    first = core.score(batch)
    assert not any(m.training for m in core.base_model.modules())
    seen = []
    for m in core.base_model.modules():
        m.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    again = core.score(batch)  # already in eval mode: scored as such, the same bits
    assert seen and not any(seen) and np.array_equal(first, again)
    core.base_model.train()
    after = core.score(batch)  # back from training: eval mode again
    assert seen[-1] is False and not core.base_model.training and after.shape == first.shape


def test_the_foreach_dense_optimizer_trains_the_same_bits(tmp_path, monkeypatch):
    """Adagrad (and SGD) stepping all dense parameters in one foreach call: the same weights and state,
    bit for bit, as the per-parameter loop; a version's param groups restore with foreach on."""
    import torch

    import trainer.core as core_mod
    from bench.servedata import write_taobao_csv
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import Validator, read_data_file
    from trainer.local import LocalTrainer

    batch = read_data_file(write_taobao_csv(tmp_path / "p.csv", 200, 3), Validator(SPEC))
    out = {}
    for foreach in (False, True):
        monkeypatch.setattr(core_mod, "DENSE_FOREACH", foreach)
        t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(batch_size=64, seed=5))
        t.train(batch)
        out[(foreach, "adagrad")] = t
    # SGD on the same kinds of tensors (a trainer each would double the test's time)
    for foreach in (False, True):
        monkeypatch.setattr(core_mod, "DENSE_FOREACH", foreach)
        gen = torch.Generator().manual_seed(1)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((64, 32), (32,), (32, 1), (1,))]
        opt = core_mod.dense_optimizer(params, TrainConfig(dense_optimizer="sgd"))
        for _ in range(5):
            for q in params:
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()
        out[(foreach, "sgd")] = params
    assert all(torch.equal(a, b) for a, b in zip(out[(False, "sgd")], out[(True, "sgd")], strict=True))
    for opt in ("adagrad",):
        loop, fused = out[(False, opt)], out[(True, opt)]
        assert fused.optimizer.param_groups[0]["foreach"] is True
        for (k, a), b in zip(loop.dense_state().items(), fused.dense_state().values(), strict=True):
            assert torch.equal(a, b), k
        arrays, meta = loop.export_state()
        for key in [k for k in arrays if k.startswith("optimizer/")]:
            assert np.array_equal(arrays[key], fused.export_state()[0][key]), key
    # a version written with the loop (foreach False in its param groups) restores stepping with foreach
    monkeypatch.setattr(core_mod, "DENSE_FOREACH", True)
    arrays, meta = out[(False, "adagrad")].export_state()
    restored = out[(True, "adagrad")]
    restored.import_state(arrays, meta)
    assert restored.optimizer.param_groups[0]["foreach"] is True


# --------------------------------------------------------------------- the context parsed once (issue 22)
def _reference_batch(features: RequestFeatures, context: dict, columns: dict, n: int, now: int):
    """The features as they were built before the context was parsed once: every context value and every
    default repeated to n rows, then all columns parsed row by row in one table (the old code, kept here
    as the reference)."""
    from serving.errors import InvalidRequestError
    from serving.features import _repeat
    from trainer.data.batch import EventBatch
    from trainer.data.parse import fill_value
    from trainer.data.spec import ColumnType
    from trainer.data.validate import dense_values

    spec = features.spec
    table, defaulted = {}, []
    for col in features.columns:
        if col.name in columns:
            table[col.name] = columns[col.name]
        elif col.name in context:
            table[col.name] = _repeat(context[col.name], n)
        else:
            defaulted.append(col.name)
            arr = None
            item = features.roles.item_column
            if col.name == spec.time_column:
                arr = pa.array(np.full(n, now, np.int64))
            elif col.name in features.roles.item_columns and features.catalogue is not None and item is not None:
                ids = columns.get(item)
                if ids is None and item in context:
                    ids = _repeat(context[item], n)
                if ids is not None:
                    values = features.catalogue.lookup(col.name, _parsed_with(spec, item, ids))
                    arr = pa.array(values) if values is not None else None
            if arr is None:
                if col.type is ColumnType.STRING:
                    arr = pa.array([fill_value(col)] * n, pa.string())
                elif col.type is ColumnType.ID_LIST:
                    arr = pa.nulls(n, pa.string())
                else:
                    dtype = np.float64 if col.type is ColumnType.FLOAT else np.int64
                    arr = pa.array(np.full(n, fill_value(col), dtype))
            table[col.name] = arr
    table = pa.table(table)
    rej = Rejections(n)
    parsed, missing = parse_columns(table, features.columns, spec.null_tokens, rej)
    if not rej.good.all():
        raise InvalidRequestError("refused")
    idx = np.arange(n)
    dense = np.zeros((n, len(spec.dense)), np.float32)
    for j, f in enumerate(spec.dense):
        dense[:, j] = dense_values(f, parsed[f.column], missing.get(f.column), idx)
    if not np.isfinite(dense).all():
        raise InvalidRequestError("not finite")
    sparse, lengths = {}, {}
    for f in spec.sparse:
        v = parsed[f.column]
        if hasattr(v, "lengths"):
            sparse[f.name], lengths[f.name] = v.values, v.lengths
        else:
            sparse[f.name] = np.asarray(v, np.int64)
    ts = np.asarray(parsed[spec.time_column], np.int64) if spec.time_column in parsed else np.zeros(n, np.int64)
    batch = EventBatch(
        "<request>", np.zeros(n, np.int64), ts, np.zeros(n, np.float32), sparse, dense, idx, table, lengths
    )
    return batch, tuple(sorted(defaulted))


def _parsed_with(spec, name: str, arr: pa.Array) -> np.ndarray:
    rej = Rejections(len(arr))
    parsed, _ = parse_columns(pa.table({name: arr}), (spec.column_map[name],), spec.null_tokens, rej)
    return np.asarray(parsed[name], np.int64)


def _specs():
    from serving.catalogue import ItemCatalogue

    out = {}
    for name in ("taobao", "movielens100k_genres", "criteo"):
        spec = load_spec(name)
        roles = SpecRoles.of(spec, None, None)
        out[name] = [RequestFeatures(spec, roles)]
        if name == "taobao":  # item-side defaults read per row from a catalogue
            cat = ItemCatalogue(np.arange(0, 60, 3), {"category_id": np.arange(20) % 7 + 1})
            out[name].append(RequestFeatures(spec, roles, cat))
    return out


FEATURE_SETS = _specs()
_ints = st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 60) | st.integers(1_400_000_000, 1_700_000_000)
_texts = (
    st.text(max_size=12)
    | st.sampled_from(["", " ", "7", " 42 ", "-3", "null", "NaN", "a b", "1 2 3", "2017-11-26T01:00:00", "x\x01"])
    | st.from_regex(r"[0-9]{1,20}", fullmatch=True)
)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e3, 2e9)


@st.composite
def _requests(draw):
    name = draw(st.sampled_from(sorted(FEATURE_SETS)))
    features = draw(st.sampled_from(FEATURE_SETS[name]))
    n = draw(st.integers(1, 12))
    context, columns = {}, {}
    names = list(features.roles.needed)
    for col in draw(st.lists(st.sampled_from(names), unique=True, max_size=min(len(names), 8))):
        where = draw(st.sampled_from(["context", "context", "rows"]))
        kind = draw(st.sampled_from(["int", "text", "float"]))
        strat = {"int": _ints, "text": _texts, "float": _floats}[kind]
        if where == "context":
            context[col] = draw(strat)
        else:
            values = draw(st.lists(strat, min_size=n, max_size=n))
            dtype = {"int": pa.int64(), "text": pa.string(), "float": pa.float64()}[kind]
            columns[col] = pa.array(values, dtype)
    return features, context, columns, n, draw(st.integers(1_400_000_000, 1_700_000_000))


def _same_batch(a, b) -> None:
    assert a.sparse.keys() == b.sparse.keys() and a.lengths.keys() == b.lengths.keys()
    for k in a.sparse:
        assert a.sparse[k].dtype == b.sparse[k].dtype and np.array_equal(a.sparse[k], b.sparse[k]), k
    for k in a.lengths:
        assert np.array_equal(a.lengths[k], b.lengths[k]), k
    assert a.dense.dtype == b.dense.dtype and a.dense.tobytes() == b.dense.tobytes()  # bit for bit
    for f in ("event_id", "ts", "label", "rows"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert a.table.equals(b.table)


@settings(max_examples=100, deadline=None)
@given(_requests())
def test_the_context_parsed_once_gives_the_batch_of_every_row_parsed(req):
    """The same feature tensors (bits, dtypes, the raw table, defaulted columns) as the repeat-then-parse
    path, and a refusal exactly where it refused: over three specs (ids, hashed string ids with fills,
    id lists, floats with ranges, timestamps), context values of every kind, with and without a catalogue."""
    from serving.errors import InvalidRequestError

    features, context, columns, n, now = req
    try:
        want = _reference_batch(features, context, columns, n, now)
    except InvalidRequestError:
        want = None
    try:
        got = features.batch(context, columns, n, now=now)
    except InvalidRequestError as exc:
        assert want is None, f"refused ({exc.message}) a request the reference answered"
        assert exc.message
        return
    assert want is not None, "answered a request the reference refused"
    _same_batch(got[0], want[0])
    assert got[1] == want[1]


def test_context_columns_and_constant_defaults_are_parsed_as_one_row_once(monkeypatch):
    """What makes it cheaper: the user, the time and a left-out column with a constant fill go through the
    parser as one row, and a value seen before not at all (the bounded cache); the candidates' columns as n
    rows every time; a bad context value is named as such, also when it comes from the cache."""
    import serving.features as features_mod
    from serving.errors import InvalidRequestError

    features = RequestFeatures(SPEC, SpecRoles.of(SPEC, None, None))
    seen = []
    real = features_mod.parse_columns

    def spy(table, cols, nulls, rej):
        seen.extend((c.name, table.num_rows) for c in cols)
        return real(table, cols, nulls, rej)

    monkeypatch.setattr(features_mod, "parse_columns", spy)
    # text item ids: int64 ones skip the parser altogether (serving.features._passes_through)
    context, items = {"user_id": "u-7", "ts": 1_511_700_000}, {"item_id": pa.array([str(i) for i in range(100)])}
    batch, defaulted = features.batch(context, items, 100)
    assert sorted(seen) == [("category_id", 1), ("item_id", 100), ("ts", 1), ("user_id", 1)]
    assert defaulted == ("category_id",) and len(set(batch.sparse["user"].tolist())) == 1 and len(batch) == 100
    seen.clear()
    again, _ = features.batch(context, items, 100)
    assert seen == [("item_id", 100)] and np.array_equal(again.sparse["user"], batch.sparse["user"])
    seen.clear()
    features.batch({"user_id": 0.0, "ts": 1_511_700_000}, items, 100)
    features.batch({"user_id": -0.0, "ts": 1_511_700_000}, items, 100)  # another value: parsed, not a hit
    features.batch({"user_id": 0, "ts": 1_511_700_000}, items, 100)  # an int is not the float 0.0
    assert [c for c in seen if c[0] == "user_id"] == [("user_id", 1)] * 3
    for _ in range(2):  # parsed, then from the cache: the same refusal
        try:
            features.batch({"user_id": "a\x01b"}, {"item_id": pa.array(["1", "x\x02"])}, 2)
        except InvalidRequestError as exc:
            assert "context user_id: control characters" in exc.message and "candidates [1]" in exc.message
        else:
            raise AssertionError("a control character in the context was accepted")
