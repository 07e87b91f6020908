"""Validation: every reason, the rows_in invariant under fuzzing, garbage never crashes the reader."""

import json
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data import DeadLetterWriter, Validator, iter_batches, load_spec, read_dead_letters
from trainer.data.spec import spec_from_dict

SPEC = spec_from_dict(
    {
        "name": "shop",
        "format": "csv",
        "header": True,
        "columns": [
            {"name": "event_id", "type": "id"},
            {"name": "user_id", "type": "id", "max_len": 12},
            {"name": "item_id", "type": "id"},
            {"name": "action", "type": "string"},
            {"name": "price", "type": "float", "min": 0, "max": 1e6},
            {"name": "query", "type": "string", "required": False, "max_len": 20},
            {"name": "ts", "type": "timestamp", "min": 0},
        ],
        "time_column": "ts",
        "event_id": {"column": "event_id"},
        "actions": {"column": "action", "values": ["view", "click", "buy"]},
        "label": {"actions": ["click", "buy"]},
        "sparse": [{"name": "user", "column": "user_id", "dim": 8}, {"name": "item", "column": "item_id", "dim": 8}],
        "dense": [{"name": "price", "column": "price", "transform": "log1p"}],
        "lateness": {"allowed_s": 60},
    }
)
HEADER = "event_id,user_id,item_id,action,price,query,ts\n"


def run(path, spec=SPEC, dead=None, block_size=256):
    with DeadLetterWriter(dead) as dl:
        v = Validator(spec, dl)
        batches = list(iter_batches([path], v, progress=False, block_size=block_size))
    return v.report, batches


def test_each_reason_is_dead_lettered_with_row_and_source(tmp_path):
    rows = [
        "1,u1,i1,view,9.5,,1000",  # good (line 2)
        "2,,i1,view,9.5,,1000",  # missing field
        "3,u1,i1,teleport,9.5,,1000",  # unknown action
        "4,u1,i1,view,inf,,1000",  # non-finite
        "5,u1,i1,view,-3,,1000",  # out of range
        "6,u1,i1,view,abc,,1000",  # not a number
        "7,u1,i1,view,1,,yesterday",  # unparsable time
        "8,averyveryverylonguserid,i1,view,1,,1000",  # oversized string
        "9,u1,i1,view,1,,1000,extra",  # wrong column count
        "1,u1,i1,view,9.5,,1001",  # duplicate event id
        "10,u1,i1,click,1,,2000",  # good, moves the watermark
        "11,u1,i1,click,1,,1000",  # out of order: fine in batch mode (split sorts)
        '12,u2,i3,buy,2,"red, shoes",2000',  # good, quoted comma
    ]
    path = tmp_path / "day.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    dead = tmp_path / "dead.jsonl"
    report, batches = run(path, dead=dead)
    assert report.balanced
    assert (report.rows_in, report.rows_good, report.rows_duplicate) == (13, 4, 1)
    got = {(d["row"], d["reason"]) for d in read_dead_letters(dead)}
    assert got == {
        (3, "missing field"),
        (4, "unknown action"),
        (5, "non-finite number"),
        (6, "out-of-range number"),
        (7, "not a number"),
        (8, "unparsable time"),
        (9, "oversized string"),
        (10, "wrong column count"),
        (11, "duplicate event id"),
    }
    assert all(d["source"] == str(path) and d["raw"] for d in read_dead_letters(dead))
    labels = np.concatenate([b.label for b in batches])
    rows = np.concatenate([b.rows for b in batches])
    assert rows.tolist() == [2, 12, 13, 14] and labels.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert np.concatenate([b.dense for b in batches]).shape == (4, 1)


def test_iso_times_string_ids_and_jsonl(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = [
        {
            "event_id": "e-1",
            "user_id": "alice",
            "item_id": 7,
            "action": "click",
            "price": 3,
            "ts": "2024-01-01T00:00:00",
        },
        {"event_id": "e-2", "user_id": "bob", "item_id": 8, "action": "view", "price": 1.5, "ts": 1704067201},
        {"event_id": "e-3", "user_id": "carol", "item_id": 9, "action": "view", "ts": 1704067202},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n[1,2]\n")
    spec = spec_from_dict({**_raw(), "format": None})
    report, batches = run(path, spec, dead=tmp_path / "d.jsonl")
    assert report.balanced and report.rows_good == 2 and report.rows_dead == 3
    b = batches[0]
    assert b.ts.tolist() == [1704067200, 1704067201]
    assert b.sparse["item"].tolist() == [7, 8]
    assert b.sparse["user"][0] != b.sparse["user"][1]


def _raw():

    return {
        "name": "shop",
        "header": True,
        "columns": [
            {"name": "event_id", "type": "id"},
            {"name": "user_id", "type": "id", "max_len": 12},
            {"name": "item_id", "type": "id"},
            {"name": "action", "type": "string"},
            {"name": "price", "type": "float", "min": 0, "max": 1e6},
            {"name": "query", "type": "string", "required": False, "max_len": 20},
            {"name": "ts", "type": "timestamp", "min": 0},
        ],
        "time_column": "ts",
        "event_id": {"column": "event_id"},
        "actions": {"column": "action", "values": ["view", "click", "buy"]},
        "label": {"actions": ["click", "buy"]},
        "sparse": [{"name": "user", "column": "user_id", "dim": 8}, {"name": "item", "column": "item_id", "dim": 8}],
        "lateness": {"allowed_s": 60},
    }


def test_parquet_and_garbage_file(tmp_path):
    pq.write_table(
        pa.table(
            {
                "event_id": [1, 2],
                "user_id": ["a", None],
                "item_id": [1, 2],
                "action": ["view", "buy"],
                "price": [1.0, 2.0],
                "ts": [10, 11],
            }
        ),
        tmp_path / "a.parquet",
    )
    report, _ = run(tmp_path / "a.parquet")
    assert (report.rows_good, report.rows_dead) == (1, 1) and report.balanced
    (tmp_path / "b.parquet").write_bytes(b"\x00garbage" * 50)
    report, batches = run(tmp_path / "b.parquet")
    assert report.files_unreadable == 1 and report.rows_in == 0 and batches == []


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "e.csv").write_bytes(b"")
    (tmp_path / "h.csv").write_text(HEADER)
    for name in ("e.csv", "h.csv"):
        report, batches = run(tmp_path / name)
        assert report.rows_in == 0 and batches == []


# -- property-based fuzzing -----------------------------------------------------------

field = st.one_of(
    st.sampled_from(
        ["", "1", "-7", "u1", "view", "click", "buy", "nan", "inf", "1e308", "9" * 30, "2024-01-01", '"', '"a,b"']
    ),
    st.text(alphabet=string.printable, max_size=30),
    st.integers(-(2**63), 2**63).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
line = st.one_of(
    st.lists(field, min_size=7, max_size=7).map(",".join),
    st.lists(field, min_size=0, max_size=10).map(",".join),
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
)


@given(st.lists(line, max_size=40), st.binary(max_size=200), st.sampled_from([64, 256, 4096]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_invariant_holds_and_reader_never_crashes(tmp_path, lines, junk, block):
    path = tmp_path / "fuzz.csv"
    body = (HEADER + "\n".join(lines)).encode("utf-8", "surrogateescape") + b"\n" + junk
    path.write_bytes(body)
    dead = tmp_path / "fuzz-dead.jsonl"
    dead.unlink(missing_ok=True)
    with DeadLetterWriter(dead) as dl:
        v = Validator(SPEC, dl)
        good = sum(len(b) for b in iter_batches([path], v, progress=False, block_size=block))
    r = v.report
    assert r.rows_in == r.rows_good + r.rows_dead + r.rows_duplicate
    assert good == r.rows_good
    written = read_dead_letters(dead) if dead.exists() else []
    assert len(written) == r.rows_dead + r.rows_duplicate
    assert all(d["reason"] and d["row"] >= 2 for d in written)
    assert len({d["row"] for d in written}) == len(written)  # one entry per bad row


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 200)), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzz_good_rows_are_each_kept_once(tmp_path, events):
    path = tmp_path / "ok.csv"
    path.write_text(HEADER + "".join(f"{eid},u{eid},i1,view,1,,{1000 + t}\n" for eid, t in events))
    report, batches = run(path)
    assert report.balanced
    kept = np.concatenate([b.event_id for b in batches]) if batches else np.zeros(0)
    assert len(kept) == len(set(kept.tolist())) == report.rows_good


def test_real_taobao_log_is_clean(taobao_csv, tmp_path):
    report, batches = run(taobao_csv, load_spec("taobao"), block_size=1 << 20)
    assert report.balanced and report.rows_in == 96_168
    labels = np.concatenate([b.label for b in batches])
    assert report.rows_good == 96_168 and labels.sum() == 5_292 + 2_959 + 2_144  # cart + fav + buy


def test_real_movielens(ml100k_dir):
    report, batches = run(ml100k_dir / "ml-100k.inter", load_spec("movielens100k"), block_size=1 << 20)
    assert report.balanced and report.rows_in == 100_000 and report.rows_good == 100_000
    users = np.unique(np.concatenate([b.sparse["user"] for b in batches]))
    assert len(users) == 943
