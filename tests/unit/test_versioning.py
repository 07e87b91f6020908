"""Model versions written from the training core (local backend, no Ray): resume equals an
uninterrupted run, corrupt versions are refused, a failed write loses nothing."""

import json

import numpy as np
import pytest

from tests.support.data import synthetic_file
from trainer import bundle
from trainer.config import ModelConfig, TrainConfig
from trainer.data import load_spec
from trainer.local import LocalTrainer
from trainer.versioning import CORE_PART, VersionKeeper
from versions import SnapshotConfig, VersionStore, table_parts

SPEC = load_spec("taobao")
FILES = [synthetic_file(SPEC, 600, seed=s) for s in range(5)]


def _run(url, upto, snapshots=None, strategy="online"):
    """Train files [ledger..upto) on a trainer that first restores the newest valid version of ``url``."""
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=2, batch_size=128, strategy=strategy, window=2, period=2))
    keeper = VersionKeeper(url, t.backend, t, snapshots, extra={"spec": "taobao"})
    keeper.restore(reread=lambda name: FILES[int(name[1:])])
    for i in range(len(t.ledger.entries), upto):
        t.step_file(FILES[i], f"f{i}", rows_read=len(FILES[i]))
        keeper.after_file()
    keeper.wait()
    return t, keeper


@pytest.mark.parametrize("strategy", ["online", "periodic"])
def test_a_resumed_run_ends_with_the_digest_of_an_uninterrupted_one(tmp_path, strategy):
    _run(str(tmp_path / "a"), 5, strategy=strategy)
    _run(str(tmp_path / "b"), 2, strategy=strategy)  # "killed" after two data files
    t, keeper = _run(str(tmp_path / "b"), 5, strategy=strategy)
    a, b = VersionStore(str(tmp_path / "a")), VersionStore(str(tmp_path / "b"))
    assert [e.file for e in t.ledger.entries] == [f"f{i}" for i in range(5)]  # each data file once
    assert a.manifest(a.latest()).model_digest == b.manifest(b.latest()).model_digest
    assert b.digest(b.latest()) == b.manifest(b.latest()).model_digest  # recomputed from the parts
    assert [m.kind for m in b.list()] == ["full"] + ["delta"] * 4  # a resumed run goes on with the chain
    assert [m.parent for m in b.list()] == [None, 1, 2, 3, 4]
    assert all(p < 1000 for p in keeper.pauses_ms)


def test_deltas_hold_only_changed_rows_and_the_chain_materialises_the_model(tmp_path):
    t, _ = _run(str(tmp_path), 5, SnapshotConfig(full_every=3, keep=10))
    store = VersionStore(str(tmp_path))
    # the 3rd version is followed by a compacted full one (built from the store, no pause)
    versions = store.list()
    assert [m.kind for m in versions] == ["full", "delta", "delta", "full", "delta", "delta", "full"]
    assert versions[3].model_digest == versions[2].model_digest and versions[4].parent == 4
    last = versions[-1]
    user = store.materialize(last.version, table_parts("user"))
    state = t.backend.table_state()["user"]
    for key in ("ids", "rows", "opt_state_0", "count"):
        np.testing.assert_array_equal(user[key], state[key], err_msg=key)
    meta = last.part(CORE_PART).meta["core"]
    assert meta["step"] == t.step and "ledger" not in meta  # the ledger is the bundle's, not the core's
    assert bundle.read_ledger(store, last.version).entries[-1].file == "f4"


def test_a_corrupt_version_is_refused_and_resume_falls_back(tmp_path, caplog):
    _run(str(tmp_path), 3)
    store = VersionStore(str(tmp_path))
    latest = store.manifest(store.latest())
    victim = next(
        p
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file() and f"v{latest.version:08d}" in str(p) and p.suffix == ".part"
    )
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert store.verify(latest.version)
    t, keeper = _run(str(tmp_path), 3)  # resumes from the version before, replays the third file
    assert keeper.last_version > latest.version and "refused" in caplog.text
    assert [e.file for e in t.ledger.entries] == ["f0", "f1", "f2"]


def test_a_failed_write_loses_no_dirty_row(tmp_path):
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=2, batch_size=128))
    keeper = VersionKeeper(str(tmp_path), t.backend, t)
    t.step_file(FILES[0], "f0", rows_read=600)
    keeper.after_file()
    keeper.wait()
    t.step_file(FILES[1], "f1", rows_read=600)
    real = t.backend.write_cut
    t.backend.write_cut = lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
    keeper.after_file()
    with pytest.raises(RuntimeError, match="disk full"):
        keeper.wait()
    t.backend.write_cut = real
    keeper.after_file(force=True)  # the next version carries what the failed one would have
    keeper.wait()
    store = VersionStore(str(tmp_path))
    assert [m.version for m in store.list()] == [1, 3] and store.verify(3) == []
    user = store.materialize(3, "ps/shard-*/user")
    np.testing.assert_array_equal(user["rows"], t.backend.table_state()["user"]["rows"])
    assert json.loads(json.dumps(store.manifest(3).ledger))["entries"][-1]["file"] == "f1"


def test_retention_keeps_the_newest_versions_and_the_bases_they_need(tmp_path):
    _run(str(tmp_path), 5, SnapshotConfig(full_every=2, keep=2))
    store = VersionStore(str(tmp_path))
    kept = store.versions()
    assert len(kept) < 8 and kept[-1] == store.latest()  # older versions went at each compaction
    for v in kept:
        assert store.verify_chain(v) == []  # no kept version lost a base or a delta it needs


def test_a_restore_holds_a_lease_so_a_gc_beside_the_restart_cannot_remove_its_version(tmp_path):
    """bench chaos seed 33 (under load): the harness's gc loop (compaction, then gc keep=2) removed the version
    a restarted trainer was restoring, mid-read: `CorruptVersionError: part ... is missing`, on every restart.
    The restore now leases its version (as a serving replica does) until every rank has read it."""
    url = str(tmp_path)
    _, first = _run(url, 3)
    first.store.release_writer()  # the first run is over
    operator = VersionStore(url, writer_id="operator", writer_wait_s=0)
    t = LocalTrainer(SPEC, ModelConfig(), TrainConfig(seed=2, batch_size=128, window=2, period=2))
    keeper = VersionKeeper(url, t.backend, t, extra={"spec": "taobao"})
    chosen = operator.latest()
    restore = t.backend.restore

    def gc_beside_the_restart(*args, **kwargs):  # once the version is chosen, before its parts are read
        operator.compact(operator.latest())
        operator.gc(keep=1, grace_s=0.0)
        assert [lease.role for lease in operator.leases()] == ["restore"]
        return restore(*args, **kwargs)

    t.backend.restore = gc_beside_the_restart
    assert keeper.restore(reread=lambda name: FILES[int(name[1:])]) == chosen
    assert [e.file for e in t.ledger.entries] == ["f0", "f1", "f2"]
    assert operator.leases(include_expired=True) == []  # released once read: gc may remove the version again


def test_the_drivers_resume_read_holds_a_lease_so_a_gc_beside_the_restart_cannot_remove_its_version(
    tmp_path, monkeypatch
):
    """bench chaos seed 2 (fifth session, under load): the restarted driver chose the newest version, then
    started its shard actors (seconds under load) and only then read that version's ledger, with no lease:
    the harness's gc loop (compaction, then gc keep=2) had removed it: `CorruptVersionError: part
    'compacted/data/ledger.pending' is missing`, on every restart. The driver now reads under a restore
    lease (`trainer.run.newest_consumed`)."""
    from trainer import run

    url = str(tmp_path)
    _, first = _run(url, 3)
    first.store.release_writer()
    operator = VersionStore(url, writer_id="operator", writer_wait_s=0)
    operator.compact(operator.latest())  # the newest is a compaction: not published, so only a lease keeps it
    store = VersionStore(url)
    chosen = operator.latest()
    read_ledger = bundle.read_ledger
    roles = []

    def gc_beside_the_restart(s, version):  # once the version is chosen, before its ledger is read
        operator.compact(operator.latest())
        operator.compact(operator.latest())
        operator.gc(keep=1, grace_s=0.0)
        roles.extend(lease.role for lease in operator.leases())
        return read_ledger(s, version)  # without the lease: CorruptVersionError, the version is gone

    monkeypatch.setattr(bundle, "read_ledger", gc_beside_the_restart)
    version, (manifest, consumed) = run.newest_consumed(store)
    assert version == chosen and manifest.version == chosen
    assert consumed == {"f0", "f1", "f2"} and roles == ["restore"]
    assert operator.leases(include_expired=True) == []  # released once read
    monkeypatch.setattr(bundle, "read_ledger", read_ledger)
    assert run.newest_consumed(VersionStore(str(tmp_path / "empty"))) == (None, (None, set()))


def test_a_version_removed_by_a_gc_that_listed_the_leases_just_before_the_lease_is_read_again_not_corrupt(tmp_path):
    """The lease cannot stop a gc that read the leases a moment before it was written: that gc removes the
    version mid-read (manifest first). `read_newest` then reads the newest version again; a version whose
    manifest is still there but whose part is missing is really corrupt and is reported."""
    from trainer.versioning import read_newest
    from versions import CorruptVersionError

    url = str(tmp_path)
    _, first = _run(url, 3)
    first.store.release_writer()
    operator = VersionStore(url, writer_id="operator", writer_wait_s=0)
    store = VersionStore(url)
    seen = []

    def read(version):
        seen.append(version)
        if len(seen) == 1:  # the racing gc: a newer version, then this one removed (its lease came too late)
            operator.compact(version)
            operator.remove_version(version)
        return bundle.read_ledger(store, version)

    version, ledger = read_newest(store, read)
    assert seen == [seen[0], version] and version > seen[0]
    assert [e.file for e in ledger.entries] == ["f0", "f1", "f2"]
    assert operator.leases(include_expired=True) == []

    def corrupted_mid_read(version):  # its parts go, its manifest stays: not a gc (gc removes the manifest first)
        for part in store.manifest(version).parts:
            store.fs.rm_file(store.part_path(version, part.name))
        return bundle.read_ledger(store, version)

    with pytest.raises(CorruptVersionError):
        read_newest(store, corrupted_mid_read)
    assert operator.leases(include_expired=True) == []
