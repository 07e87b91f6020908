"""Serving leases in the version store (memory://, a local directory, moto's S3 server): renew,
release, expiry, sanitised holder names, and gc keeping every leased version and its chain."""

import time
import uuid

import numpy as np
import pytest
from moto_s3 import s3_options, s3_server  # noqa: F401

from versions import ServingLease, VersionStore
from versions.leases import holder_file

KEYED = {"role": "table", "table": "user", "merge": "by_id"}


@pytest.fixture(params=["memory", "local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return VersionStore(tmp_path / "versions")
    if request.param == "memory":
        return VersionStore(f"memory://versions-{uuid.uuid4().hex[:8]}")
    url_of, options = request.getfixturevalue("s3_options")
    return VersionStore(url_of("run/versions"), options)


def commit(store, kind="full", parent=None, value=1.0):
    w = store.begin(kind, parent=parent, step=1)
    ids = np.arange(3, dtype=np.int64)
    p = w.write_part(
        "ps/shard-0/user",
        {"ids": ids, "rows": np.full((3, 2), value, np.float16), "deleted": np.empty(0, np.int64)},
        KEYED,
    )
    return w.commit([p]).version


def test_renew_list_and_release_a_lease(store):
    lease = store.renew_lease("replica-1", 3, ttl_s=30, role="replica")
    assert isinstance(lease, ServingLease) and lease.version == 3 and lease.role == "replica" and lease.host
    assert lease.expires_at == pytest.approx(time.time() + 30, abs=5)
    store.renew_lease("shard:0@pod-b", 2, ttl_s=30, role="table-shard")
    other = VersionStore(store.url, store.storage_options)  # another process: only what is in the store
    assert [(x.holder, x.version, x.role) for x in other.leases()] == [
        ("replica-1", 3, "replica"),
        ("shard:0@pod-b", 2, "table-shard"),
    ]
    store.renew_lease("replica-1", 4, ttl_s=30)  # a renewal replaces the holder's lease
    assert {x.holder: x.version for x in other.leases()} == {"replica-1": 4, "shard:0@pod-b": 2}
    store.release_lease("replica-1")
    store.release_lease("replica-1")  # idempotent
    store.release_lease("never-held")
    assert [x.holder for x in other.leases()] == ["shard:0@pod-b"]


def test_an_expired_lease_is_listed_only_when_asked(store):
    store.renew_lease("search-0", 5, ttl_s=0.05, role="search")
    store.renew_lease("replica-0", 5, ttl_s=60)
    time.sleep(0.1)
    assert [x.holder for x in store.leases()] == ["replica-0"]
    expired = {x.holder: x for x in store.leases(include_expired=True)}
    assert set(expired) == {"search-0", "replica-0"} and expired["search-0"].expired(time.time())


def test_bad_lease_arguments_are_refused_with_what_to_do(store):
    for bad in ("", "   ", "x" * 201, "a\nb", None):
        with pytest.raises(ValueError, match="holder"):
            store.renew_lease(bad, 1)
    with pytest.raises(ValueError, match="role must be one of"):
        store.renew_lease("r", 1, role="primary")
    for ttl in (0, -1, float("nan"), float("inf"), "60"):
        with pytest.raises(ValueError, match="ttl_s"):
            store.renew_lease("r", 1, ttl_s=ttl)
    for v in (0, -3, "7", True, 1.5):
        with pytest.raises(ValueError, match="version"):
            store.renew_lease("r", v)
    assert store.leases(include_expired=True) == []


def test_holder_names_are_sanitised_and_never_collide():
    assert holder_file("replica-3") == "replica-3"
    names = ["a/b", "a_b", "a:b", "../../etc/passwd", ".hidden", "a b", "ü"]
    files = [holder_file(n) for n in names]
    assert len(set(files)) == len(files)
    assert all("/" not in f and not f.startswith(".") and f.isascii() for f in files)


def test_a_path_like_holder_stays_inside_the_leases_folder(store):
    store.renew_lease("../../LATEST", 7)
    assert store.latest() is None  # LATEST was not overwritten
    assert [x.holder for x in store.leases()] == ["../../LATEST"]


def test_an_unreadable_lease_object_is_skipped(store, caplog):
    store.renew_lease("good", 1)
    store._write_small(f"{store.root}/leases/junk.json", b"{not json")
    assert [x.holder for x in store.leases()] == ["good"]
    assert "unreadable serving lease" in caplog.text


def test_gc_keeps_every_leased_version_and_its_chain(store):
    v1 = commit(store)
    v2 = commit(store, "delta", v1, 2.0)
    v3 = commit(store)
    v4 = commit(store, "delta", v3, 3.0)
    v5 = commit(store)
    store.renew_lease("lagging-replica", v2, ttl_s=60)
    store.renew_lease("dead-replica", v4, ttl_s=0.01)
    time.sleep(0.05)
    result = store.gc(keep=1, grace_s=0, lease_skew_s=0)
    assert result["kept"] == [v1, v2, v5] and result["removed"] == [v3, v4]
    fresh = VersionStore(store.url, store.storage_options)
    assert fresh.versions() == [v1, v2, v5] and fresh.verify_chain(v2) == []
    store.release_lease("lagging-replica")
    assert store.gc(keep=1, grace_s=0)["removed"] == [v1, v2]


def test_gc_keeps_a_just_expired_lease_for_the_clock_skew_allowance(store):
    v1 = commit(store)
    commit(store)
    store.renew_lease("r", v1, ttl_s=0.01)
    time.sleep(0.05)
    assert store.leases() == []
    assert store.gc(keep=1, grace_s=0, lease_skew_s=60)["removed"] == []
    assert store.gc(keep=1, grace_s=0, lease_skew_s=0)["removed"] == [v1]
