"""The version store on real files (a local directory and fsspec's memory://): round trip, commit
protocol and crash safety, corruption, chains, compaction, gc, errors."""

import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from versions import (
    CorruptVersionError,
    NoSuchVersionError,
    StoreUnavailableError,
    VersionStore,
    VersionWriteError,
    model_digest,
    table_parts,
    write_part,
)
from versions.manifest import Manifest
from versions.store import MANIFEST

KEYED = {"role": "table", "table": "user", "merge": "by_id"}


def table(ids, value, dim=4, deleted=()):
    ids = np.asarray(ids, np.int64)
    return {
        "ids": ids,
        "rows": np.full((len(ids), dim), value, np.float16),
        "count": np.arange(len(ids), dtype=np.int64),
        "deleted": np.asarray(deleted, np.int64),
    }


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return VersionStore(tmp_path / "versions")
    return VersionStore(f"memory://versions-{uuid.uuid4().hex[:8]}")


def commit_full(store, ids=(1, 2, 3), value=1.0, step=10, **kw):
    w = store.begin("full", step=step)
    parts = [
        w.write_part("ps/shard-0/user", table(ids, value), {**KEYED, "rows_after": len(ids)}),
        w.write_part("dense", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"role": "dense"}),
    ]
    return w.commit(parts, **kw)


def commit_delta(store, parent, ids, value, deleted=(), step=20):
    w = store.begin("delta", parent=parent, step=step)
    part = w.write_part("ps/shard-0/user", table(ids, value, deleted=deleted), KEYED)
    return w.commit([part])


def test_round_trip_manifest_parts_and_latest(store):
    ledger = {
        "version": 2,
        "entries": [
            {"file": "part-1.parquet", "rows": 5, "complete": True},
            {"file": "part-2.parquet", "rows": 3, "complete": False},
        ],
    }
    assert store.latest() is None and store.list() == []
    m = commit_full(store, ledger=ledger, model_digest="abc", extra={"spec": "taobao"})
    assert (m.version, m.kind, m.parent, m.step, m.rows) == (1, "full", None, 10, 3)
    assert m.data_files == ("part-1.parquet", "part-2.parquet") and m.extra == {"spec": "taobao"}
    assert m.bytes == sum(p.bytes for p in m.parts) and all(len(p.sha256) == 64 for p in m.parts)
    assert store.latest() == 1 and [x.version for x in store.list()] == [1]
    again = VersionStore(store.url, store.storage_options).manifest(1)  # a fresh reader sees the same JSON
    assert again == m and Manifest.from_json(m.to_json()) == m
    arrays = store.read_part(1, "ps/shard-0/user")
    assert arrays["rows"].dtype == np.float16 and arrays["ids"].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(store.read_part(1, "dense")["w"], np.arange(6).reshape(2, 3))
    assert store.verify(1) == []
    commit_delta(store, 1, [2, 7], 2.0, deleted=[3])
    assert store.latest() == 2 and [x.version for x in store.chain(2)] == [1, 2]


def test_delta_chain_materialises_upserts_and_deletions(store):
    commit_full(store, ids=[3, 5, 9], value=1.0)
    commit_delta(store, 1, [5, 11], 2.0, deleted=[9])
    commit_delta(store, 2, [9], 3.0, deleted=[11])  # 9 comes back, 11 goes
    got = store.materialize(3, table_parts("user"))
    assert got["ids"].tolist() == [3, 5, 9]
    assert got["rows"][:, 0].tolist() == [1.0, 2.0, 3.0] and "deleted" not in got
    # the same id deleted and upserted in one version: the upsert wins (deletions apply first)
    commit_delta(store, 3, [3], 4.0, deleted=[3])
    assert store.materialize(4, table_parts("user"))["rows"][:, 0].tolist() == [4.0, 2.0, 3.0]
    # keep: a shard restoring only its ids
    assert store.materialize(4, "ps/shard-*/user", keep=lambda ids: ids > 4)["ids"].tolist() == [5, 9]
    # whole parts come from the newest version of the chain that has them
    np.testing.assert_array_equal(store.materialize(4, "dense")["w"], np.arange(6).reshape(2, 3))


def test_a_delta_needs_a_committed_parent_and_commit_checks_its_parts(store):
    with pytest.raises(VersionWriteError, match="needs parent"):
        store.begin("delta")
    with pytest.raises(VersionWriteError, match="must be committed"):
        store.begin("delta", parent=4)
    w = store.begin("full")
    info = w.write_part("dense", {"w": np.zeros(3)})
    ghost = info.__class__("ps/shard-1/user", info.sha256, 10)
    with pytest.raises(VersionWriteError, match="was not written"):
        w.commit([info, ghost])
    with pytest.raises(VersionWriteError, match="listed twice"):
        w.commit([info, info])
    w.commit([info])
    with pytest.raises(VersionWriteError, match="already committed"):
        w.commit([info])


def test_an_uncommitted_version_is_invisible_and_gc_removes_it_after_the_grace(store):
    commit_full(store)
    w = store.begin("delta", parent=1, step=11)
    info = w.write_part("ps/shard-0/user", table([1], 5.0), KEYED)  # a writer that never commits
    assert store.versions() == [1] and store.latest() == 1
    with pytest.raises(NoSuchVersionError, match=r"committed versions: \[1\]"):
        store.manifest(w.version)
    assert store.gc(keep=5)["removed_uncommitted"] == []  # within the grace period: maybe still writing
    w3 = store.begin("full")
    assert w3.version == 3
    w3.abort()  # an aborted number is not reused before gc: a late part write of 3 cannot land in a new 3
    assert store.begin("full").version == 4 and store.versions() == [1]
    # 2 and 4 are in flight for the live writer (its lease lists them): kept whatever the grace
    assert store.gc(keep=5, grace_s=0)["removed_uncommitted"] == [3]
    assert store._version_dirs() == [1, 2, 4]
    store.release_writer()  # the writer is gone (a crash: its lease lapses): nothing of it can commit now
    assert store.gc(keep=5, grace_s=0)["removed_uncommitted"] == [2, 4]
    assert store._version_dirs() == [1]
    with pytest.raises(VersionWriteError, match="fenced"):
        w.commit([info])


def test_abort_removes_the_parts(store):
    commit_full(store)
    w = store.begin("full")
    w.write_part("dense", {"w": np.zeros(3)})
    w.abort()
    assert store.fs.find(store.vdir(w.version)) == [f"{store.vdir(w.version)}/_ABORTED"]
    assert store.versions() == [1] and store.latest() == 1


def test_a_writer_killed_mid_write_leaves_nothing_visible(tmp_path):
    """A real process writing a big part is killed with SIGKILL; readers see only version 1."""
    store = VersionStore(tmp_path / "v")
    commit_full(store)
    store.release_writer()  # this process stops writing: the child is the writer now
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from versions import VersionStore
        store = VersionStore({str(store.url)!r})
        w = store.begin("full", step=99)
        print(w.version, flush=True)
        big = np.ones((4_000_000, 16), np.float32)
        while True:
            w.write_part("ps/shard-0/user", {{"ids": np.arange(len(big)), "rows": big}})
    """)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=repo, env={**os.environ, "PYTHONPATH": repo}
    )
    try:
        version = int(proc.stdout.readline())
        deadline = time.time() + 30
        vdir = store.vdir(version)
        while time.time() < deadline:  # wait until it is inside a part write
            found = [f for f in store.fs.find(vdir) if ".tmp-" in f or f.endswith(".part")]
            if found:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert store.versions() == [1] and store.latest() == 1 and store.latest_valid() == 1
    assert not store.fs.exists(f"{store.vdir(version)}/{MANIFEST}")
    assert store.gc(keep=1, grace_s=0)["removed_uncommitted"] == [version]
    assert not store.fs.exists(store.vdir(version))


def test_a_commit_that_stopped_before_latest_is_still_found(store):
    commit_full(store)
    m2 = commit_full(store)
    store._write_small(f"{store.root}/LATEST", b"1\n")  # as if the writer died between manifest and LATEST
    assert VersionStore(store.url).latest() == m2.version


def corrupt(store, version, name, how):
    path = store.part_path(version, name)
    data = bytearray(store.fs.cat_file(path))
    if how == "flip":
        data[-5] ^= 0xFF
    elif how == "truncate":
        data = data[:-7]
    if how == "delete":
        store.fs.rm_file(path)
    else:
        store.fs.pipe_file(path, bytes(data))


@pytest.mark.parametrize(
    "how, reason", [("flip", "fails its checksum"), ("truncate", "bytes, the manifest says"), ("delete", "is missing")]
)
def test_a_corrupt_part_is_refused_and_loading_falls_back(store, how, reason, caplog):
    commit_full(store)
    commit_delta(store, 1, [4], 2.0)
    commit_full(store, ids=[8], value=3.0)
    corrupt(store, 3, "ps/shard-0/user", how)
    with pytest.raises(CorruptVersionError, match=reason) as err:
        store.read_part(3, "ps/shard-0/user")
    assert err.value.version == 3 and err.value.part == "ps/shard-0/user"
    assert "latest_valid" in str(err.value)  # says what to do
    problems = store.verify(3)
    assert len(problems) == 1 and "ps/shard-0/user" in problems[0]
    with caplog.at_level(logging.WARNING, logger="versions.store"):
        assert store.latest_valid() == 2
    assert "version 3 is refused" in caplog.text and "ps/shard-0/user" in caplog.text
    # a corrupt base poisons the deltas on it
    corrupt(store, 1, "dense", "flip")
    assert store.latest_valid() is None
    assert any("version 1" in p for p in store.verify_chain(2))


def test_gc_keeps_every_base_and_delta_a_kept_version_needs(store):
    commit_full(store)  # 1
    commit_delta(store, 1, [4], 2.0)  # 2
    commit_delta(store, 2, [5], 2.0)  # 3
    commit_full(store, ids=[9])  # 4
    commit_delta(store, 4, [6], 2.0)  # 5
    assert store.gc(keep=3) == {"removed": [], "kept": [1, 2, 3, 4, 5], "removed_uncommitted": [], "removed_temp": []}
    assert store.gc(keep=2)["removed"] == [1, 2, 3]
    assert store.versions() == [4, 5] and store.materialize(5, table_parts("user"))["ids"].tolist() == [6, 9]
    with pytest.raises(ValueError, match="keep"):
        store.gc(keep=0)


def test_compaction_writes_a_full_version_with_the_same_content(store):
    commit_full(store, ids=[3, 5, 9], value=1.0, model_digest="d1")
    commit_delta(store, 1, [5, 11], 2.0, deleted=[9])
    before = store.digest(2)
    m = store.compact(2)
    assert (m.kind, m.parent, m.step) == ("full", 2, 20) and m.rows == 3
    assert store.digest(m.version) == before and [c.version for c in store.chain(m.version)] == [m.version]
    for k, v in store.materialize(2, table_parts("user")).items():
        np.testing.assert_array_equal(store.materialize(m.version, table_parts("user"))[k], v)


def test_digest_is_independent_of_how_rows_are_split():
    rng = np.random.default_rng(0)
    ids = rng.permutation(1000).astype(np.int64)
    full = {
        "ids": ids,
        "rows": rng.standard_normal((1000, 8)).astype(np.float16),
        "opt_state_0": rng.random(1000).astype(np.float32),
        "count": rng.integers(0, 9, 1000),
        "last_seen": rng.integers(0, 9, 1000),
        "last_version": rng.integers(0, 9, 1000),
    }
    dense = {"mlp.w": rng.standard_normal((3, 3)).astype(np.float32), "mlp.b": np.zeros(3, np.float32)}
    one = model_digest({"user": full}, dense, {"stats/mean": np.ones(2)})
    halves = [{k: v[:400] for k, v in full.items()}, {k: v[400:] for k, v in full.items()}]
    swapped = {k: np.concatenate([halves[1][k], halves[0][k]]) for k in full}
    assert model_digest({"user": swapped}, dict(reversed(dense.items())), {"stats/mean": np.ones(2)}) == one
    assert (
        model_digest({"user": {**full, "last_version": full["last_version"] + 1}}, dense, {"stats/mean": np.ones(2)})
        == one
    )  # last_version counts one shard's updates: not hashed
    changed = {**full, "count": full["count"] + (np.arange(1000) == 7)}
    assert model_digest({"user": changed}, dense, {"stats/mean": np.ones(2)}) != one
    assert model_digest({"user": full}, dense) != one
    dup = {k: np.concatenate([v, v[:1]]) for k, v in full.items()}
    with pytest.raises(ValueError, match="same id twice"):
        model_digest({"user": dup})


def test_store_digest_recomputes_the_manifest_digest_across_parts_and_versions(store):
    rng = np.random.default_rng(1)
    ids = np.arange(100, dtype=np.int64)
    rows = rng.standard_normal((100, 4)).astype(np.float16)
    dense = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    expect = model_digest({"user": {"ids": ids, "rows": rows}}, dense)
    w = store.begin("full")
    odd = ids % 2 == 1
    parts = [
        w.write_part(f"ps/shard-{i}/user", {"ids": ids[m], "rows": rows[m], "deleted": np.empty(0, np.int64)}, KEYED)
        for i, m in enumerate((odd, ~odd))
    ]
    parts.append(w.write_part("dense", dense, {"role": "dense"}))
    w.commit(parts[::-1], model_digest=expect)
    assert store.digest(1) == expect == store.manifest(1).model_digest


def test_errors_pickle_with_their_fields_and_say_what_to_do(tmp_path):
    for err in (
        CorruptVersionError(3, "ps/shard-0/user", "is missing"),
        NoSuchVersionError(7, (1, 2)),
        StoreUnavailableError("s3://b/p", "timeout"),
        VersionWriteError(4, "no parts"),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.args == err.args and str(back) == str(err)
    assert "latest_valid" in str(CorruptVersionError(3, "dense", "is missing"))
    assert "[1, 2]" in str(NoSuchVersionError(7, (1, 2)))
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        VersionStore(blocked / "versions").begin("full")
    store = VersionStore(tmp_path / "v")
    assert pickle.loads(pickle.dumps(store)).url == store.url


def test_write_part_from_another_process_by_url(tmp_path):
    """What a Ray actor does: write its part given only (url, version, name)."""
    store = VersionStore(tmp_path / "v")
    w = store.begin("full")
    writer = pickle.loads(pickle.dumps(w.part_writer()))
    a = writer.write("ps/shard-0/user", table([1], 1.0), KEYED)
    b = write_part(str(store.url), w.version, "ps/shard-1/user", table([2], 2.0), meta=KEYED)
    w.commit([a, b])
    assert store.materialize(1, table_parts("user"))["ids"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="bad part name"):
        w.write_part("../escape", {"x": np.zeros(1)})


def test_versions_is_a_leaf_package():
    """versions/ imports only common (plus numpy, fsspec and the standard library)."""
    import ast
    import pathlib
    import sys as _sys

    allowed = {"common", "versions", "numpy", "fsspec", "__future__"}
    for path in pathlib.Path(__file__).resolve().parents[2].joinpath("versions").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            )
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in _sys.stdlib_module_names, f"{path.name} imports {name}"


def test_a_reader_applies_each_delta_to_what_it_holds(store):
    """What a serving replica does: hold ids + rows of v, apply v+1's own parts, equal to materialising v+1."""
    commit_full(store, ids=[3, 5, 9], value=1.0)
    held = store.materialize(1, table_parts("user"), fields=("rows",))
    assert sorted(held) == ["ids", "rows"]
    commit_delta(store, 1, [5, 11], 2.0, deleted=[9])
    commit_delta(store, 2, [9, 3], 3.0, deleted=[11])
    for v in (2, 3):
        held = store.apply(held, v, table_parts("user"))
        want = store.materialize(v, table_parts("user"), fields=("rows",))
        assert held["ids"].tolist() == want["ids"].tolist()
        np.testing.assert_array_equal(held["rows"], want["rows"])
    with pytest.raises(ValueError, match="no array"):
        store.materialize(3, table_parts("user"), fields=("nope",))


def test_transient_store_errors_are_unavailable_not_corrupt(store, monkeypatch):
    """Connection resets, timeouts and other OSErrors are StoreUnavailableError (retry), which is an
    OSError and NOT a VersionError; only checksum/format failures are CorruptVersionError."""
    from versions import StoreError, VersionError

    assert not issubclass(StoreUnavailableError, VersionError) and issubclass(StoreUnavailableError, ConnectionError)
    assert issubclass(CorruptVersionError, VersionError) and issubclass(VersionError, StoreError)
    commit_full(store)
    reader = VersionStore(store.url)
    fs = reader.fs
    for exc in (
        ConnectionResetError("reset by peer"),
        TimeoutError("read timed out"),
        OSError(5, "EIO"),
        PermissionError("503 SlowDown"),
    ):

        def fail(*a, exc=exc, **k):
            raise exc

        for name in ("cat_file", "size", "open" if store.local else "cat_file"):  # memory:// reads by cat_file
            with monkeypatch.context() as m:
                m.setattr(fs, name, fail)
                with pytest.raises(StoreUnavailableError) as err:
                    reader._manifests.clear()
                    reader.read_part(1, "dense")
                assert not isinstance(err.value, VersionError) and type(exc).__name__ in str(err.value)
    assert reader.read_part(1, "dense")["w"].shape == (2, 3)  # the faults were transient: it reads again
    store._write_small(f"{store.vdir(1)}/{MANIFEST}", b'{"version": 1, "kind": ')  # a torn manifest
    with pytest.raises(CorruptVersionError, match="MANIFEST.json"):
        VersionStore(store.url).manifest(1)


def test_the_manifest_cache_is_bounded_while_reading_2000_manifests(tmp_path):
    """An LRU of a few hundred manifests, whatever a long-lived reader reads (a replica over days)."""
    from versions.manifest import PartInfo

    store = VersionStore(f"memory://versions-{uuid.uuid4().hex[:8]}", manifest_cache=300)
    part = PartInfo(name="dense", sha256="0" * 64, bytes=1, rows=0, meta={})
    for v in range(1, 2001):  # 2,000 committed manifests, written directly (no parts needed to read them)
        m = Manifest(
            version=v,
            parent=None,
            kind="full",
            step=v,
            committed_at=0.0,
            committed_at_iso="",
            ledger={},
            data_files=(),
            rows=0,
            bytes=1,
            model_digest="",
            parts=(part,),
        )
        store._write_small(f"{store.vdir(v)}/{MANIFEST}", m.to_json().encode())
    sizes = []
    for v in range(1, 2001):
        assert store.manifest(v).step == v
        sizes.append(store.manifest_cache_size)
    assert max(sizes) == 300 and store.manifest_cache_size == 300
    assert store.manifest(2000) is store.manifest(2000)  # recent ones are served from the cache
    assert store.manifest(1).version == 1  # an evicted one is read again
    assert VersionStore(store.url).manifest_cache_size == 0
    assert len(store.list()) == 2000 and store.manifest_cache_size == 300
    with pytest.raises(ValueError, match="manifest_cache"):
        VersionStore(store.url, manifest_cache=0)


def test_temp_files_of_failed_writes_are_cleaned_by_the_next_commit_and_by_gc(tmp_path):
    store = VersionStore(tmp_path / "v")
    commit_full(store)
    root = tmp_path / "v"
    (root / "leases").mkdir()
    old = [
        root / "PUBLISHED.tmp-0123456789ab",
        root / "leases" / "r.json.tmp-0123456789ab",
        root / "v00000001" / "ps" / "shard-0" / "user.part.tmp-0123456789ab",
    ]
    fresh = root / "LATEST.tmp-ba9876543210"  # a write in progress right now (another process): kept
    for p in old + [fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (time.time() - 3600, time.time() - 3600))
    w = store.begin("full")  # the next commit: the store's root, leases/ and its own version folder
    old.append(type(root)(store.vdir(w.version)) / "dense.part.tmp-0123456789ab")
    old[-1].parent.mkdir(parents=True, exist_ok=True)
    old[-1].write_bytes(b"partial")
    os.utime(old[-1], (time.time() - 3600, time.time() - 3600))
    w.commit([w.write_part("dense", {"w": np.zeros(2)})])
    assert [p.exists() for p in old] == [False, False, True, False] and fresh.exists()
    result = store.gc(keep=5)  # gc: every version folder
    assert result["removed_temp"] == [str(old[2])] and not old[2].exists() and fresh.exists()
    assert store.verify_chain(1) == [] and store.verify_chain(2) == []
