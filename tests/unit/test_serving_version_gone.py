"""A table shard asked for a version that gc removed meanwhile answers "gone" (UNAVAILABLE), not INTERNAL.

Found by quiet serving chaos seeds 11 and 15 (2026-12-07): a Scorer replica swapped to a newer version and moved
its lease; gc (keep 2) removed the older version; a request still in flight on the previous model reached a
table shard restarted since (a kill), which had to load that version and found its parts gone:
``CorruptVersionError: ... part 'ps/shard-0/user' is missing`` reached the client as INTERNAL. Now the shard
says the version is gone (a fresh listing), the replica answers UNAVAILABLE, and the client's retry reaches the
replica's current version. A version still committed whose part is damaged stays corrupt.
"""

from __future__ import annotations

import numpy as np
import pytest

from paramserver.config import TableConfig
from serving.cache import HotRowCache
from serving.model import ps_config_of
from serving.shards import RemoteTable, ShardSlice, ShardUnavailableError, VersionGoneError, shard_unavailable
from tests.support.serving import make_store
from versions import VersionStore, table_parts
from versions.errors import CorruptVersionError


@pytest.fixture()
def store(tmp_path):
    make_store(tmp_path, files=3)
    return VersionStore(str(tmp_path / "versions"))


def _ids(store: VersionStore, v: int) -> np.ndarray:
    return store.materialize(v, table_parts("user"), fields=("rows",))["ids"][:16]


def test_a_version_removed_by_gc_is_gone_not_corrupt(store):
    versions = store.versions()
    assert len(versions) == 3
    ps_cfg = ps_config_of(store, versions[-1])
    ids = _ids(store, versions[-1])
    held = ShardSlice(store, ps_cfg, ("user",), 0, 1)
    held.load(versions[-1])
    store.remove_version(versions[1])  # the middle of the newest version's chain, as gc of a lagging one
    fresh = ShardSlice(VersionStore(store.url), ps_cfg, ("user",), 0, 1)  # a restarted shard: holds nothing
    with pytest.raises(VersionGoneError) as err:
        fresh.lookup(versions[-1], "user", ids)
    assert shard_unavailable(err.value) and "no longer in the store" in str(err.value)
    with pytest.raises(VersionGoneError):
        fresh.lookup(versions[1], "user", ids)
    # a shard that still holds the version answers from memory, whatever gc did
    rows, known = held.lookup(versions[-1], "user", ids)
    assert rows.shape == (len(ids), 16) and known.all()


def test_a_damaged_part_of_a_committed_version_stays_corrupt(store):
    versions = store.versions()
    ps_cfg = ps_config_of(store, versions[0])
    part = next(p for p in store.manifest(versions[0]).parts if p.meta.get("table") == "user")
    store.fs.rm_file(store.part_path(versions[0], part.name))
    fresh = ShardSlice(VersionStore(store.url), ps_cfg, ("user",), 0, 1)
    with pytest.raises(CorruptVersionError) as err:
        fresh.lookup(versions[0], "user", np.array([1, 2], np.int64))
    assert not shard_unavailable(err.value)


def test_a_replica_answers_a_gone_version_unavailable():
    def fetch(version, table, asked):
        raise VersionGoneError(version, "memory://store")

    t = RemoteTable(TableConfig("user", 16, 1 << 10), 5, 1, fetch, HotRowCache(64, 16))
    with pytest.raises(ShardUnavailableError) as err:
        t.lookup(np.array([3, 4], np.int64))
    assert err.value.code == "UNAVAILABLE" and "version 5" in str(err.value)
