"""`freshrec data split` keeps a missing field missing: a data file stores it as a null, so reading the file
back gives every feature (a ``transform: missing`` flag included) exactly what reading the input gave.

Before the fix a split file stored the fill (0) in place of a missing count, and Criteo's ``i1_missing`` read
back from it was 0 where the input's was 1 (docs/benchmarks.md, issue 24's fourth and fifth passes).
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.cli import main
from trainer.data import EventBatch, Validator, iter_batches, load_spec, read_data_file
from trainer.data.spec import spec_from_dict
from trainer.data.split import split_into_files


def _criteo_row(label: int, counts: list[str], cats: list[str]) -> str:
    return "\t".join([str(label), *counts, *cats]) + "\n"


def _read(path, spec) -> EventBatch:
    return EventBatch.concat(list(iter_batches([path], Validator(spec), progress=False)))


def _same_features(a: EventBatch, b: EventBatch) -> None:
    assert len(a) == len(b)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.dense, b.dense)
    assert a.sparse.keys() == b.sparse.keys()
    for k in a.sparse:
        np.testing.assert_array_equal(a.sparse[k], b.sparse[k], err_msg=k)
    for k in a.lengths:
        np.testing.assert_array_equal(a.lengths[k], b.lengths[k], err_msg=k)


def test_a_criteo_row_with_an_empty_i1_split_then_read_back_has_i1_missing_1_as_a_direct_read(tmp_path, capsys):
    spec = load_spec("criteo")
    cats = [f"{k:08x}" for k in range(26)]
    full = [str(k) for k in range(1, 14)]
    no_i1 = [""] + full[1:]  # I1 empty
    gaps = [""] + full[1:9] + [""] + full[10:11] + [""] + full[12:]  # I1, I10, I12 empty
    src = tmp_path / "criteo.tsv"
    src.write_text(
        _criteo_row(0, no_i1, cats)
        + _criteo_row(1, full, cats)
        + _criteo_row(0, gaps, cats[:20] + [""] * 6)  # trailing categoricals empty too
        + _criteo_row(1, full, cats)
    )
    direct = _read(src, spec)
    names = [f.name for f in spec.dense]
    flag = {n: names.index(n) for n in ("i1_missing", "i10_missing", "i12_missing")}
    assert direct.dense[:, flag["i1_missing"]].tolist() == [1, 0, 1, 0]
    assert direct.dense[:, flag["i10_missing"]].tolist() == [0, 0, 1, 0]

    out = tmp_path / "split"
    assert main(["data", "split", "--spec", "criteo", "--rows", "2", "--out", str(out), str(src), "--json"]) == 0
    capsys.readouterr()
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 2
    assert pq.read_table(files[0]).column("I1").to_pylist() == [None, 1]  # stored as a null, not the fill 0
    back = EventBatch.concat([read_data_file(f, Validator(spec)) for f in files])
    _same_features(direct, back)
    assert back.dense[:, flag["i1_missing"]].tolist() == [1, 0, 1, 0]
    assert back.dense[:, flag["i12_missing"]].tolist() == [0, 0, 1, 0]


SPEC = {
    "name": "gaps",
    "format": "csv",
    "header": True,
    "null_tokens": ["", "NA"],
    "columns": [
        {"name": "eid", "type": "int_id"},
        {"name": "ts", "type": "timestamp"},
        {"name": "click", "type": "int", "min": 0, "max": 1},
        {"name": "user", "type": "id"},
        {"name": "count", "type": "int", "required": False, "fill": 7},
        {"name": "price", "type": "float", "required": False},
        {"name": "brand", "type": "string_id", "required": False, "fill": "none"},
        {"name": "shop", "type": "id", "required": False},
        {"name": "tags", "type": "id_list", "separator": " ", "required": False},
        {"name": "note", "type": "string", "required": False},
    ],
    "time_column": "ts",
    "event_id": {"column": "eid"},
    "label": {"column": "click", "threshold": 1},
    "sparse": [
        {"name": "user", "column": "user", "dim": 4},
        {"name": "brand", "column": "brand", "dim": 4},
        {"name": "shop", "column": "shop", "dim": 4},
        {"name": "tags", "column": "tags", "dim": 4, "pooling": "sum"},
    ],
    "dense": [
        {"name": "count", "column": "count", "transform": "log1p"},
        {"name": "price", "column": "price"},
        {"name": "count_missing", "column": "count", "transform": "missing"},
        {"name": "price_missing", "column": "price", "transform": "missing"},
        {"name": "brand_missing", "column": "brand", "transform": "missing"},
        {"name": "shop_missing", "column": "shop", "transform": "missing"},
        {"name": "tags_missing", "column": "tags", "transform": "missing"},
        {"name": "note_missing", "column": "note", "transform": "missing"},
    ],
}
GAP = st.sampled_from(["", "NA", " "])
ROW = st.tuples(
    st.one_of(GAP, st.integers(0, 99).map(str)),
    st.one_of(GAP, st.floats(-5, 5, allow_nan=False).map(lambda x: f"{x:.3f}")),
    st.one_of(GAP, st.sampled_from(["acme", "zeta", "007"])),
    st.one_of(GAP, st.integers(1, 9).map(str)),
    st.one_of(GAP, st.lists(st.integers(1, 30), min_size=1, max_size=3).map(lambda v: " ".join(map(str, v)))),
    st.one_of(GAP, st.sampled_from(["a", "b"])),
    st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=40), shuffle_seed=st.integers(0, 2**16), by_rows=st.booleans())
def test_any_pattern_of_missing_fields_reads_back_from_split_files_as_from_the_input(
    tmp_path_factory, rows, shuffle_seed, by_rows
):
    """Random gaps (blank, a null token, whitespace) in every optional column type, the input out of time order
    so that split sorts it (spilled runs merged: ``memory_rows`` 7), cut by window or by count: the split files
    read back give the same labels, ids and dense features (missing flags included) as the input read directly,
    row for row in time order."""
    tmp = tmp_path_factory.mktemp("gaps")
    spec = spec_from_dict(SPEC)
    order = np.random.default_rng(shuffle_seed).permutation(len(rows))
    lines = ["eid,ts,click,user,count,price,brand,shop,tags,note"]
    for k in order.tolist():  # event k happens at 1_600_000_000 + 37 k: distinct times, shuffled rows
        count, price, brand, shop, tags, note, click = rows[k]
        lines.append(
            f"{k + 1},{1_600_000_000 + 37 * k},{int(click)},{k % 5},{count},{price},{brand},{shop},{tags},{note}"
        )
    src = tmp / "log.csv"
    src.write_text("\n".join(lines) + "\n")
    direct = _read(src, spec)
    assert len(direct) == len(rows)
    direct = direct.take(np.argsort(direct.ts, kind="stable"))
    every, per_file = (None, 6) if by_rows else (300, None)
    result = split_into_files(
        [src], Validator(spec), every, tmp / "split", progress=False, rows_per_file=per_file, memory_rows=7
    )
    v = Validator(spec)
    back = EventBatch.concat([read_data_file(f, v) for f in result.files])
    np.testing.assert_array_equal(back.event_id, direct.event_id)
    _same_features(direct, back)
