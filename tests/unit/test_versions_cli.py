"""``freshrec snapshots list / show / verify / gc`` on a real local store, with exit codes."""

import json

import numpy as np
import pytest

from cluster.cli import main
from versions import VersionStore, model_digest

KEYED = {"role": "table", "table": "user", "merge": "by_id"}


@pytest.fixture
def run_dir(tmp_path):
    store = VersionStore(tmp_path / "versions")
    ids = np.arange(10, dtype=np.int64)
    rows = np.ones((10, 4), np.float16)
    tables = {"user": {"ids": ids, "rows": rows}}
    w = store.begin("full", step=100)
    parts = [
        w.write_part(
            "ps/shard-0/user", {"ids": ids, "rows": rows, "deleted": np.empty(0, np.int64)}, {**KEYED, "rows_after": 10}
        )
    ]
    w.commit(
        parts,
        ledger={"version": 2, "entries": [{"file": "part-1.parquet", "rows": 7, "complete": True}]},
        model_digest=model_digest(tables),
    )
    w = store.begin("delta", parent=1, step=200)
    rows2 = np.full((1, 4), 2, np.float16)
    part = w.write_part(
        "ps/shard-0/user", {"ids": np.array([3]), "rows": rows2, "deleted": np.array([9])}, {**KEYED, "rows_after": 9}
    )
    tables2 = {"user": {"ids": np.delete(ids, 9), "rows": np.delete(rows, 9, axis=0)}}
    tables2["user"]["rows"][3] = 2
    w.commit([part], model_digest=model_digest(tables2))
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_and_show(run_dir, capsys):
    code, out, _ = run(capsys, "snapshots", "list", "--run-dir", str(run_dir), "--json")
    rows = json.loads(out)
    assert code == 0 and [r["version"] for r in rows] == [1, 2]
    assert rows[0]["data_files"] == ["part-1.parquet"] and rows[1]["parent"] == 1 and rows[1]["rows"] == 9
    assert set(rows[0]) >= {
        "version",
        "parent",
        "kind",
        "step",
        "committed_at",
        "data_files",
        "rows",
        "bytes",
        "model_digest",
    }
    code, out, _ = run(capsys, "snapshots", "list", "--store", str(run_dir / "versions"))
    assert code == 0 and "delta" in out and "part-1.parquet" in out
    code, out, _ = run(capsys, "snapshots", "show", "latest", "--run-dir", str(run_dir), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 2 and shown["parts"][0]["name"] == "ps/shard-0/user"


def test_verify_passes_then_names_the_bad_part(run_dir, capsys):
    code, out, _ = run(capsys, "snapshots", "verify", "2", "--run-dir", str(run_dir))
    assert code == 0 and "OK" in out and "digest matches" in out
    store = VersionStore(run_dir / "versions")
    path = store.part_path(1, "ps/shard-0/user")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10
    open(path, "wb").write(bytes(data))
    code, _, err = run(capsys, "snapshots", "verify", "2", "--run-dir", str(run_dir))
    assert code == 1 and "ps/shard-0/user" in err and "version 1" in err


def test_verify_detects_a_digest_mismatch(run_dir, capsys):
    store = VersionStore(run_dir / "versions")
    m = store.manifest(2)
    text = open(f"{store.vdir(2)}/MANIFEST.json").read().replace(m.model_digest, "0" * 64)
    open(f"{store.vdir(2)}/MANIFEST.json", "w").write(text)
    code, out, _ = run(capsys, "snapshots", "verify", "2", "--run-dir", str(run_dir), "--json")
    result = json.loads(out)
    assert code == 1 and "digest mismatch" in result["problems"][0] and result["recomputed_digest"] == m.model_digest
    code, _, _ = run(capsys, "snapshots", "verify", "2", "--run-dir", str(run_dir), "--no-digest")
    assert code == 0


def test_gc_and_user_errors(run_dir, capsys):
    code, out, _ = run(capsys, "snapshots", "gc", "--keep", "1", "--run-dir", str(run_dir), "--json")
    assert code == 0 and json.loads(out)["removed"] == []  # 2 needs its base 1
    code, _, err = run(capsys, "snapshots", "show", "7", "--run-dir", str(run_dir))
    assert code == 2 and "freshrec: error: no committed version 7" in err and "[1, 2]" in err
    code, _, err = run(capsys, "snapshots", "show", "latest", "--store", str(run_dir / "empty"))
    assert code == 2 and "no committed version" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["snapshots", "gc", "--keep", "0", "--run-dir", "x"], "integer >= 1"),
        (["snapshots", "gc", "--grace-s", "-1", "--run-dir", "x"], "seconds >= 0"),
        (["snapshots", "show", "abc", "--run-dir", "x"], "positive integer or 'latest'"),
        (["snapshots", "list"], "one of the arguments --store --run-dir is required"),
        (["snapshots", "list", "--store", "a", "--run-dir", "b"], "not allowed with"),
        (["snapshots", "list", "--store", "a", "--storage-option", "novalue"], "KEY=VALUE"),
    ],
)
def test_bad_arguments_are_refused_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_status_lists_who_serves_what_and_who_writes(run_dir, capsys):
    import time

    store = VersionStore(run_dir / "versions")
    store.renew_lease("replica-0@pod-a", 2, ttl_s=60, role="replica")
    store.renew_lease("shard-1@pod-b", 1, ttl_s=0.01, role="table-shard")
    time.sleep(0.05)
    code, out, _ = run(capsys, "snapshots", "status", "--run-dir", str(run_dir), "--json")
    state = json.loads(out)
    assert code == 0
    leases = {x["holder"]: x for x in state["leases"]}
    assert leases["replica-0@pod-a"]["version"] == 2 and not leases["replica-0@pod-a"]["expired"]
    assert leases["shard-1@pod-b"]["expired"] and leases["shard-1@pod-b"]["role"] == "table-shard"
    assert state["writer"]["epoch"] == 1 and state["writer"]["live"] and state["writer"]["last_version"] == 2
    code, out, _ = run(capsys, "snapshots", "status", "--run-dir", str(run_dir))
    assert code == 0 and "serving leases (1 live)" in out
    line = next(x for x in out.splitlines() if "shard-1@pod-b" in x)
    assert "EXPIRED" in line and "table-shard" in line
    assert "expires in" in next(x for x in out.splitlines() if "replica-0@pod-a" in x)
    assert "writer:" in out and "epoch 1" in out
    code, out, _ = run(capsys, "snapshots", "gc", "--keep", "1", "--run-dir", str(run_dir), "--json")
    assert code == 0 and json.loads(out)["kept"] == [1, 2]  # version 1: the base of 2, leased too
