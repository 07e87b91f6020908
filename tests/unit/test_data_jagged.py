"""Multi-valued (jagged) sparse features: EventBatch take/concat, id_list parsing from CSV,
JSON Lines and Parquet, their dead-letter reasons, side tables, and MovieLens genres."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import ConfigError
from trainer.data import (
    DeadLetterWriter,
    EventBatch,
    Validator,
    iter_batches,
    load_spec,
    read_data_file,
    read_dead_letters,
)
from trainer.data.hashing import hash_strings
from trainer.data.spec import spec_from_dict
from trainer.data.split import split_into_files


def _batch(lengths: list[int], seed: int = 0) -> EventBatch:
    n = len(lengths)
    rng = np.random.default_rng(seed)
    lens = np.asarray(lengths, np.int64)
    return EventBatch(
        source="t",
        event_id=np.arange(n, dtype=np.int64),
        ts=np.arange(n, dtype=np.int64) * 10,
        label=(np.arange(n) % 2).astype(np.float32),
        sparse={"user": np.arange(n, dtype=np.int64) + 100, "genre": rng.integers(0, 1000, int(lens.sum()))},
        dense=rng.normal(size=(n, 2)).astype(np.float32),
        rows=np.arange(1, n + 1, dtype=np.int64),
        table=pa.table({"event_id": np.arange(n, dtype=np.int64)}),
        lengths={"genre": lens},
    )


def _rows(b: EventBatch) -> list[list[int]]:
    """The reference: each row's genre ids as a Python list."""
    offsets = np.concatenate([[0], np.cumsum(b.lengths["genre"])])
    return [b.sparse["genre"][offsets[i] : offsets[i + 1]].tolist() for i in range(len(b))]


@given(st.lists(st.integers(0, 6), max_size=40), st.data())
@settings(max_examples=150, deadline=None)
def test_take_with_index_permutation_mask_and_slice(lengths, data):
    b = _batch(lengths)
    ref = _rows(b)
    n = len(b)
    index = data.draw(
        st.one_of(
            st.lists(st.integers(0, max(n - 1, 0)), max_size=50).map(lambda ix: np.asarray(ix if n else [], np.int64)),
            st.permutations(list(range(n))).map(lambda p: np.asarray(p, np.int64)),
            st.lists(st.booleans(), min_size=n, max_size=n).map(lambda m: np.asarray(m, bool)),
            st.tuples(st.integers(0, n), st.integers(0, n)).map(lambda t: np.arange(min(t), max(t))),
            st.tuples(st.integers(-n - 1, n + 1), st.integers(-n - 1, n + 1), st.sampled_from([1, 2, -1, -3])).map(
                lambda t: slice(*t)
            ),
        )
    )
    got = b.take(index)
    if isinstance(index, slice):
        pick = np.arange(n)[index]
    else:
        pick = np.flatnonzero(index) if index.dtype == bool else index
    assert len(got) == len(pick)
    assert _rows(got) == [ref[i] for i in pick]
    assert got.sparse["user"].tolist() == b.sparse["user"][pick].tolist()
    assert got.lengths["genre"].dtype == np.int64 and got.sparse["genre"].dtype == b.sparse["genre"].dtype


@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.lists(st.integers(0, 40), max_size=4))
@settings(max_examples=100, deadline=None)
def test_concat_of_pieces_is_the_whole(lengths, cuts):
    b = _batch(lengths, seed=1)
    bounds = sorted({0, len(b), *[c for c in cuts if c <= len(b)]})
    pieces = [b.take(np.arange(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
    whole = EventBatch.concat(pieces)
    assert _rows(whole) == _rows(b) and len(whole) == len(b)
    assert np.array_equal(whole.dense, b.dense)


def test_jagged_accessor_and_constructor_checks():
    b = _batch([2, 0, 1])
    values, lengths = b.jagged("user")
    assert lengths.tolist() == [1, 1, 1] and values.tolist() == [100, 101, 102]
    assert b.jagged("genre")[1].tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="lengths summing to 3"):
        EventBatch(
            "t",
            b.event_id,
            b.ts,
            b.label,
            {"user": b.sparse["user"], "genre": np.zeros(4, np.int64)},
            b.dense,
            b.rows,
            b.table,
            lengths={"genre": np.array([2, 0, 1])},
        )


# -- id_list parsing ------------------------------------------------------------------
def _spec(**column):
    return spec_from_dict(
        {
            "name": "tags",
            "header": True,
            "columns": [
                {"name": "eid", "type": "int_id"},
                {"name": "user", "type": "id"},
                {"name": "tags", "type": "id_list", "max_items": 3, "max_len": 8, **column},
                {"name": "click", "type": "int"},
                {"name": "ts", "type": "timestamp"},
            ],
            "time_column": "ts",
            "event_id": {"column": "eid"},
            "label": {"column": "click", "threshold": 1},
            "sparse": [
                {"name": "user", "column": "user", "dim": 8},
                {"name": "tags", "column": "tags", "dim": 8, "pooling": "mean"},
            ],
        }
    )


def _validate(path, spec, tmp_path):
    dead = tmp_path / "dead.jsonl"
    dead.unlink(missing_ok=True)
    with DeadLetterWriter(dead) as dl:
        v = Validator(spec, dl)
        batches = list(iter_batches([path], v, progress=False))
    reasons = {d["row"]: d["reason"] for d in read_dead_letters(dead)} if dead.exists() else {}
    return v.report, (EventBatch.concat(batches) if batches else None), reasons


def test_csv_with_separator(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text(
        "eid,user,tags,click,ts\n"
        "1,u1,7|alice|9,1,1700000000\n"  # 3 ids: an integer kept, text hashed
        "2,u2,,0,1700000001\n"  # empty: optional -> the empty list
        "3,u3,a|b|c|d,0,1700000002\n"  # 4 ids > max_items 3
        "4,u4,averylongtag,0,1700000003\n"  # an element longer than max_len 8
        "5,u5,x||y,1,1700000004\n"
    )  # empty elements are dropped
    spec = _spec(separator="|", required=False)
    report, b, reasons = _validate(path, spec, tmp_path)
    assert report.balanced and report.rows_good == 3
    assert reasons == {4: "too many items", 5: "oversized string"}
    assert b.lengths["tags"].tolist() == [3, 0, 2] and len(b.sparse["tags"]) == 5
    assert b.sparse["tags"][0] == 7 and b.sparse["tags"][1] != 9
    assert "tags" not in b.lengths.keys() - {"tags"} and b.sparse["user"].shape == (3,)


def test_required_list_missing_is_dead_but_empty_json_list_is_not(tmp_path):
    path = tmp_path / "e.jsonl"
    rows = [
        {"eid": 1, "user": "a", "tags": [], "click": 1, "ts": 1700000000},
        {"eid": 2, "user": "b", "click": 0, "ts": 1700000001},
        {"eid": 3, "user": "c", "tags": None, "click": 0, "ts": 1700000002},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report, b, reasons = _validate(path, _spec(), tmp_path)
    assert reasons == {2: "missing field", 3: "missing field"}
    assert b.lengths["tags"].tolist() == [0] and len(b.sparse["tags"]) == 0


def test_jsonl_arrays_fast_and_slow_paths(tmp_path):
    good = [{"eid": i, "user": f"u{i}", "tags": [i, i + 1], "click": i % 2, "ts": 1700000000 + i} for i in range(1, 4)]
    path = tmp_path / "fast.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in good))
    report, b, _ = _validate(path, _spec(), tmp_path)
    assert report.rows_good == 3 and b.sparse["tags"].tolist() == [1, 2, 2, 3, 3, 4]
    mixed = good + [
        {"eid": 10, "user": "x", "tags": ["red", 5], "click": 0, "ts": 1700000010},  # mixed element types: fine
        {"eid": 11, "user": "x", "tags": [1.5], "click": 0, "ts": 1700000011},  # not an id
        {"eid": 12, "user": "x", "tags": [[1]], "click": 0, "ts": 1700000012},  # nested
        {"eid": 13, "user": "x", "tags": ["ok\u0001"], "click": 0, "ts": 1700000013},  # control character
    ]
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mixed) + "not json\n")
    report, b, reasons = _validate(path, _spec(), tmp_path)
    assert report.balanced and report.rows_good == 4
    assert reasons == {5: "malformed id", 6: "malformed id", 7: "control characters", 8: "invalid json"}
    assert b.lengths["tags"].tolist() == [2, 2, 2, 2] and b.sparse["tags"][7] == 5


def test_parquet_list_column_and_split_data_files_round_trip(tmp_path):
    table = pa.table(
        {
            "eid": [1, 2, 3, 4],
            "user": ["a", "b", "c", "d"],
            "tags": pa.array([[1, 2], [], None, [5, 6, 7, 8]], pa.list_(pa.int64())),
            "click": [1, 0, 1, 0],
            "ts": [1700000300, 1700000000, 1700000100, 1700000200],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet")
    spec = _spec(required=False)
    report, b, reasons = _validate(tmp_path / "in.parquet", spec, tmp_path)
    assert reasons == {4: "too many items"} and b.lengths["tags"].tolist() == [2, 0, 0]
    result = split_into_files(
        [tmp_path / "in.parquet"], Validator(spec), None, tmp_path / "files", progress=False, rows_per_file=2
    )
    back = EventBatch.concat([read_data_file(p, Validator(spec)) for p in result.files])
    assert back.ts.tolist() == [1700000000, 1700000100, 1700000300]  # sorted by time
    assert _rows_of(back, "tags") == [[], [], [1, 2]]


def _rows_of(b, name):
    values, lengths = b.jagged(name)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(b))]


# -- side tables ------------------------------------------------------------------------
SIDE = {
    "name": "shop",
    "format": "csv",
    "header": True,
    "columns": [
        {"name": "user", "type": "id"},
        {"name": "item", "type": "int_id"},
        {"name": "click", "type": "int"},
        {"name": "ts", "type": "timestamp"},
    ],
    "side_tables": [
        {
            "name": "items",
            "path": "items.tsv",
            "format": "tsv",
            "header": True,
            "key": "item_id",
            "on": "item",
            "columns": [
                {"name": "item_id", "type": "int_id"},
                {"name": "genre", "type": "id_list", "separator": " ", "required": False},
                {"name": "brand", "type": "string_id", "required": False, "fill": "none"},
            ],
        }
    ],
    "time_column": "ts",
    "event_id": {"derive": ["user", "item", "ts"]},
    "label": {"column": "click", "threshold": 1},
    "sparse": [
        {"name": "item", "column": "item", "dim": 8},
        {"name": "genre", "column": "genre", "dim": 8},
        {"name": "brand", "column": "brand", "dim": 8},
    ],
}


def test_side_table_join_split_and_read_back_without_it(tmp_path):
    (tmp_path / "items.tsv").write_text(
        "item_id\tgenre\tbrand\n1\tAction Comedy\tacme\n2\t\tzeta\n3\tDrama\t\nx\tbad\tkey\n1\tRepeated\tacme\n"
    )
    (tmp_path / "log.csv").write_text(
        "user,item,click,ts\nu1,1,1,1700000000\nu2,2,0,1700000001\nu3,9,0,1700000002\nu4,3,1,1700000003\n"
    )
    spec = spec_from_dict(SIDE)
    with DeadLetterWriter(tmp_path / "dead.jsonl") as dl:
        v = Validator(spec, dl)
        b = read_data_file(tmp_path / "log.csv", v)
    assert b.lengths["genre"].tolist() == [2, 0, 0, 1]  # item 9 is not in the table: the empty list
    assert v.last_file.warnings == [
        f"side table items ({tmp_path / 'items.tsv'}): 1 rows did not parse "
        "(dead-lettered), 1 repeated keys (first row kept); 3 keys loaded"
    ]
    assert [(d["row"], d["reason"]) for d in read_dead_letters(tmp_path / "dead.jsonl")] == [(5, "malformed id")]
    brands = b.sparse["brand"]
    assert brands[1] != brands[0] and brands[2] == brands[3]  # missing key and empty brand both take fill "none"
    result = split_into_files([tmp_path / "log.csv"], Validator(spec), 3600, tmp_path / "files", progress=False)
    (tmp_path / "items.tsv").unlink()  # data files carry the joined columns
    again = read_data_file(result.files[0], Validator(spec))
    assert _rows_of(again, "genre") == _rows_of(b, "genre") and again.sparse["brand"].tolist() == brands.tolist()
    with pytest.raises(ConfigError, match="--side-table items=PATH"):
        read_data_file(tmp_path / "log.csv", Validator(spec))


def test_side_table_spec_errors():
    bad = {**SIDE, "side_tables": [{**SIDE["side_tables"][0], "key": "nope"}]}
    with pytest.raises(ConfigError, match="key 'nope' is not among"):
        spec_from_dict(bad)
    clash = {**SIDE, "columns": SIDE["columns"] + [{"name": "genre", "type": "id"}]}
    with pytest.raises(ConfigError, match="duplicate column names"):
        spec_from_dict(clash)


def test_movielens_genres_on_real_data(ml100k_dir, tmp_path):
    spec = load_spec("movielens100k_genres")
    assert spec.multi_valued == ("genre",) and spec.sparse[2].multi_valued and not spec.sparse[0].multi_valued
    assert spec.sparse[2].pooling.value == "mean" and spec.sparse[2].dim == 16
    v = Validator(spec)
    b = read_data_file(ml100k_dir / "ml-100k.inter", v)
    assert len(b) == 100_000 and v.report.rows_good == 100_000
    lengths = b.lengths["genre"]
    assert lengths.min() >= 1 and lengths.max() <= 6 and len(b.sparse["genre"]) == lengths.sum()
    # Toy Story (item 1) is "Animation Children's Comedy"
    first = np.flatnonzero(b.sparse["item"] == 1)[0]
    assert lengths[first] == 3
    assert len(np.unique(b.sparse["genre"])) <= 19 + 1  # 18 genres + "unknown" (+ the split "Children's" form)


@given(
    st.dictionaries(st.integers(0, 30), st.lists(st.integers(0, 99), max_size=4), max_size=15),
    st.lists(st.integers(0, 35), max_size=40),
)
@settings(max_examples=80, deadline=None)
def test_side_table_join_matches_a_dict_lookup(catalogue, events):
    from trainer.data.parse import Jagged
    from trainer.data.sidetable import LoadedSideTable

    table = spec_from_dict(SIDE).side_tables[0]
    keys = np.asarray(sorted(catalogue), np.int64)
    genre = Jagged(
        np.asarray([g for k in keys for g in catalogue[int(k)]], np.int64),
        np.asarray([len(catalogue[int(k)]) for k in keys], np.int64),
    )
    brand = keys * 10 + 1
    loaded = LoadedSideTable(table, "mem", keys, {"genre": genre, "brand": brand}, 0)
    out, missing = loaded.join(np.asarray(events, np.int64))
    got = out["genre"]
    offsets = np.concatenate([[0], np.cumsum(got.lengths)])
    assert [got.values[offsets[i] : offsets[i + 1]].tolist() for i in range(len(events))] == [
        catalogue.get(e, []) for e in events
    ]
    assert missing["genre"].tolist() == missing["brand"].tolist() == [e not in catalogue for e in events]
    fill = int(hash_strings(pa.array(["none"]))[0])  # the brand's fill, "none", hashed like any string id
    assert out["brand"].tolist() == [e * 10 + 1 if e in catalogue else fill for e in events]
